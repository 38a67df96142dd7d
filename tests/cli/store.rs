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
