//! `convagent store migrate`: a populated SQLite store copied into a real
//! Postgres database (a throwaway cluster), checked by what `history`
//! shows on each, run twice, and refused with a reason when it cannot run.

use convagent::adapters::store::{PostgresStore, SqliteStore};
use convagent::core::ports::all::*;
use convagent::core::{Breaker, Channel, ConversationKey, Outcome, Stage, Summary, TraceEvent};

use crate::support::postgres::Cluster;
use crate::{Env, stderr_of, stdout_of};

/// `history`'s fill, plus a trace, a violation, a summary, a burst
/// answered together, an open breaker and a dead letter: every table.
fn populate(env: &Env) {
    crate::history::fill(env);
    let store = SqliteStore::open(&env.store()).unwrap();
    let alice = store
        .open_conversation(&ConversationKey::new(Channel::Telegram, "alice", ""))
        .unwrap()
        .unwrap();
    let messages = store.messages(alice).unwrap();
    store
        .record_traces(&[TraceEvent {
            correlation_id: messages[0].correlation_id.clone().unwrap(),
            stage: Stage::Received,
            attempt: None,
            started_at: 1,
            duration_us: 5,
            outcome: Outcome::Ok,
            detail: Some("telegram".into()),
        }])
        .unwrap();
    store.record_violation(messages[0].id, "secret", 2).unwrap();
    store
        .save_summary(&Summary {
            conversation_id: alice,
            from_message_id: messages[0].id,
            to_message_id: messages[1].id,
            text: "Alice asked about a parcel.".into(),
            provider: "ollama".into(),
            model: "mistral:7b".into(),
            created_at: 3,
        })
        .unwrap();
    let key = ConversationKey::new(Channel::Telegram, "bob", "");
    let burst: Vec<i64> = ["one", "two"]
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let m = crate::support::inbound(Channel::Telegram, "bob", &format!("b{i}"), text, 5);
            assert_eq!(m.key, key);
            store.accept(&m).unwrap().message_id
        })
        .collect();
    let reply = store
        .record_turn_reply(burst[1], &burst[..1], &crate::support::answer("both", 1, 6))
        .unwrap();
    let item = store
        .outbox_entries(convagent::core::OutboxView::All, 100)
        .unwrap()
        .into_iter()
        .find(|e| e.text == reply.text)
        .unwrap();
    store
        .update_outbox(
            item.id,
            &convagent::core::OutboxUpdate::Dead {
                code: "403".into(),
                error: "bot was blocked".into(),
            },
            7,
        )
        .unwrap();
    let mut breaker = Breaker::new("ollama", "mistral:7b", 8);
    breaker.state = convagent::core::BreakerState::Open;
    breaker.failures = 3;
    store.save_breaker(&breaker, None).unwrap();
    // What issues 25 and 26 added: a linked person, a takeover, an opt-out,
    // an operator's token, a document.
    use convagent::core::Write;
    use convagent::core::ports::SenderRef;
    store
        .write_now(Write::Link {
            a: SenderRef {
                channel: Channel::Telegram,
                id: "alice".into(),
            },
            b: SenderRef {
                channel: Channel::Whatsapp,
                id: "+15551234567".into(),
            },
            at: 10,
        })
        .unwrap();
    let bob = store.open_conversation(&key).unwrap().unwrap();
    store
        .write_now(Write::Handoff(convagent::core::handoff::Handoff {
            conversation_id: bob,
            mode: convagent::core::handoff::Mode::Human,
            by: "ana".into(),
            at: 11,
        }))
        .unwrap();
    store
        .write_now(Write::OptOut {
            channel: Channel::Telegram,
            sender: "bob".into(),
            out: true,
            at: 12,
        })
        .unwrap();
    store
        .write_now(Write::Token(convagent::core::ports::TokenChange::Create {
            name: "desk".into(),
            sha256: "ab12".into(),
            at: 13,
            operator: true,
        }))
        .unwrap();
    store
        .write_now(Write::Knowledge(
            convagent::core::knowledge::KnowledgeChange::Put {
                path: "/kb/returns.md".into(),
                sha256: "cd34".into(),
                title: "Returns".into(),
                chunks: vec!["Returns within thirty days.".into()],
                at: 14,
                embedder: None,
                vectors: Vec::new(),
            },
        ))
        .unwrap();
}

/// What `args` prints, on the SQLite store or (with `url`) on Postgres.
fn output(env: &Env, url: Option<&str>, args: &[&str]) -> String {
    let mut cmd = env.cmd(args);
    if let Some(url) = url {
        cmd.env("CONVAGENT_DATABASE_URL", url);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    stdout_of(&out)
}

#[test]
fn a_populated_store_moves_to_postgres_and_history_shows_the_same() {
    let env = Env::new();
    populate(&env);
    let cluster = Cluster::start();
    let url = cluster.database("moved");

    let moved = output(&env, None, &["store", "migrate", "--to", &url]);
    assert!(moved.contains("Every row is there"), "{moved}");
    for line in ["messages", "outbox", "traces", "summaries", "breakers"] {
        assert!(
            moved.lines().any(|l| l.trim_start().starts_with(line)),
            "{line}: {moved}"
        );
    }
    // Again: nothing new, the same counts.
    let again = output(&env, None, &["store", "migrate", "--to", &url]);
    assert_eq!(again, moved);

    for args in [
        &["history", "--json"][..],
        &["history", "show", "1", "--json"],
        &["history", "show", "3", "--json"],
        &["history", "export", "--sender", "telegram:alice"],
        &["history", "export", "--sender", "telegram:bob"],
        &["outbox", "--all", "--json"],
        &["people", "list", "--json"],
        &["knowledge", "list", "--json"],
        &["mcp", "token", "list", "--json"],
        &["history", "export", "--person", "telegram:alice"],
    ] {
        assert_eq!(
            output(&env, Some(&url), args),
            output(&env, None, args),
            "{args:?}"
        );
    }
    let search = output(&env, Some(&url), &["history", "search", "parcel"]);
    assert!(search.contains("Where is my [parcel]?"), "{search}");

    // The ids go on where the file's ended: a new message stores.
    let store = PostgresStore::open(&url, 1).unwrap();
    let m = crate::support::inbound(Channel::Telegram, "carol", "c1", "new", 9);
    let accepted = store.accept(&m).unwrap();
    assert!(!accepted.duplicate);
    assert!(accepted.message_id > 8, "{accepted:?}");
    assert_eq!(store.breakers().unwrap()[0].failures, 3);
    let alice = convagent::core::ports::SenderRef {
        channel: Channel::Telegram,
        id: "alice".into(),
    };
    assert_eq!(
        store.person_of(&alice).unwrap().unwrap().identities.len(),
        2,
        "the link came along"
    );
    assert!(store.opted_out(Channel::Telegram, "bob").unwrap().is_some());
    let words = convagent::core::knowledge::query_words("returns");
    assert_eq!(store.search_knowledge(&words, 4).unwrap().len(), 1);
    let moved = output(&env, Some(&url), &["history"]);
    assert!(moved.contains("(human: ana)"), "{moved}");
}

#[test]
fn migrate_says_what_is_wrong_and_changes_nothing() {
    let env = Env::new();
    let out = env
        .cmd(&[
            "store",
            "migrate",
            "--to",
            "postgres://nobody@127.0.0.1:1/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("no SQLite store at") && stderr.contains("hint:"),
        "{stderr}"
    );

    crate::history::fill(&env);
    let out = env
        .cmd(&["store", "migrate", "--to", "mysql://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("not a Postgres URL"),
        "{}",
        stderr_of(&out)
    );

    // A database that already holds other conversations: the clash is
    // reported, not hidden.
    let cluster = Cluster::start();
    let url = cluster.database("busy");
    let store = PostgresStore::open(&url, 1).unwrap();
    store
        .accept(&crate::support::inbound(
            Channel::Telegram,
            "zed",
            "z1",
            "first",
            1,
        ))
        .unwrap();
    drop(store);
    let out = env
        .cmd(&["store", "migrate", "--to", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("holds conversation 1, which is not this store's")
            && stderr.contains("empty database"),
        "{stderr}{}",
        stdout_of(&out)
    );
    let store = PostgresStore::open(&url, 1).unwrap();
    assert_eq!(
        store.conversations(&Default::default()).unwrap().len(),
        1,
        "nothing copied"
    );
}

/// The provider ids of the user messages a store file holds.
fn stored_ids(db: &std::path::Path) -> std::collections::BTreeSet<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT provider_message_id FROM messages WHERE role = 'user'")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_acknowledged_message_and_restores() {
    use crate::serve::{Daemon, accepting_telegram, post_update, telegram_update};
    let telegram = accepting_telegram().await;
    let env = Env::new();
    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let url = daemon.url.clone();
    let backup = env.home.path().join("backups/convagent-backup.db");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();

    tokio::task::block_in_place(|| {
        // 120 messages acknowledged before the backup begins.
        let mut acknowledged = Vec::new();
        for i in 0..120 {
            let chat = 1000 + i % 40;
            assert_eq!(
                post_update(&url, &telegram_update(chat, 10_000 + i, "before")),
                200
            );
            acknowledged.push(format!("{chat}:{}", 10_000 + i));
        }
        // More keep coming while it runs.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                    assert_eq!(
                        post_update(&url, &telegram_update(5000 + i % 50, 50_000 + i, "during")),
                        200
                    );
                    i += 1;
                }
                i
            })
        };
        let out = env
            .cmd(&["store", "backup", backup.to_str().unwrap()])
            .output()
            .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let during = load.join().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(
            stdout_of(&out).contains("integrity_check ok"),
            "{}",
            stdout_of(&out)
        );
        assert!(during > 0, "the load ran during the backup");
        let held = stored_ids(&backup);
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|id| !held.contains(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "acknowledged before the backup, not in it: {missing:?}"
        );

        // A second backup to the same path is refused, and leaves it alone.
        let out = env
            .cmd(&["store", "backup", backup.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("exists already"),
            "{}",
            stderr_of(&out)
        );
        assert_eq!(stored_ids(&backup), held);

        // No restore while serve has the store open.
        let out = env
            .cmd(&["store", "restore", backup.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr_of(&out).contains("in use"), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("stop it first"),
            "{}",
            stderr_of(&out)
        );

        // Stopped, the restore puts the backup in place and keeps the store
        // it replaced.
        crate::send_signal(daemon.child.id(), "-TERM");
        assert!(daemon.child.wait().unwrap().success());
        let before_restore = stored_ids(&env.store());
        let out = env
            .cmd(&["store", "restore", backup.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(
            stdout_of(&out).contains("the store it replaced"),
            "{}",
            stdout_of(&out)
        );
        assert_eq!(stored_ids(&env.store()), held);
        let aside = std::fs::read_dir(env.store().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(".before-restore-"))
            .expect("the replaced store is kept");
        assert_eq!(stored_ids(&aside), before_restore);

        // A damaged file is refused before anything is touched.
        let garbage = env.home.path().join("backups/garbage.db");
        std::fs::write(&garbage, b"not a database at all, just bytes").unwrap();
        let out = env
            .cmd(&["store", "restore", garbage.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr_of(&out).contains("not restored"),
            "{}",
            stderr_of(&out)
        );
        assert_eq!(stored_ids(&env.store()), held);
    });

    // And the restored store serves: the daemon starts on it and answers.
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let out = tokio::task::block_in_place(|| env.cmd(&["history", "--json"]).output().unwrap());
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("1000"), "{}", stdout_of(&out));
    drop(daemon);
}
