//! The Postgres store's foundation on a real, throwaway cluster: migrations
//! applied once when several processes start together, the pool usable
//! from async code, clear errors for a bad URL.

use std::sync::Arc;

use convagent::adapters::store::PostgresStore;
use convagent::core::StoreError;
use convagent::core::ports::all::*;

use crate::support::postgres::Cluster;

#[test]
fn migrations_apply_once_when_several_daemons_start_together() {
    let cluster = Cluster::start();
    let url = Arc::new(cluster.database("together"));
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&url, 1))
        })
        .collect();
    let stores: Vec<PostgresStore> = starts
        .into_iter()
        .map(|s| s.join().unwrap().expect("every start succeeds"))
        .collect();
    for store in &stores {
        assert_eq!(store.schema_version().unwrap(), (9, 9));
    }
    let (versions, tables) = stores[0]
        .pool()
        .run(|c| {
            let versions: i64 = c
                .query_one("SELECT count(*) FROM convagent_migrations", &[])?
                .get(0);
            let tables: i64 = c
                .query_one(
                    "SELECT count(*) FROM information_schema.tables
                     WHERE table_schema = 'public' AND table_name IN
                       ('conversations', 'messages', 'outbox', 'traces', 'claims', 'token_usage')",
                    &[],
                )?
                .get(0);
            Ok((versions, tables))
        })
        .unwrap();
    assert_eq!((versions, tables), (9, 6));
    // Opening again applies nothing new.
    let again = PostgresStore::open(&url, 2).unwrap();
    assert_eq!(again.schema_version().unwrap(), (9, 9));
}

/// The pool's connections live on threads of their own: a store call from
/// inside a (single-threaded) runtime neither panics nor blocks it for
/// good.
#[tokio::test]
async fn the_pool_answers_calls_from_async_code() {
    let cluster = Cluster::start();
    let store = PostgresStore::open(&cluster.database("async"), 2).unwrap();
    let sum: i64 = store
        .pool()
        .run(|c| Ok(c.query_one("SELECT 40::BIGINT + 2", &[])?.get(0)))
        .unwrap();
    assert_eq!(sum, 42);
}

#[test]
fn a_bad_url_or_an_absent_server_is_a_clear_error() {
    match PostgresStore::open("postgres://[not a url", 1) {
        Err(StoreError::Invalid(reason)) => assert!(reason.contains("Postgres URL"), "{reason}"),
        other => panic!("expected Invalid, got {:?}", other.err()),
    }
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!(
        "postgres://postgres@{}/x",
        dir.path().to_str().unwrap().replace('/', "%2F")
    );
    match PostgresStore::open(&nowhere, 1) {
        Err(StoreError::Backend(reason)) => {
            assert!(reason.contains("cannot connect to Postgres"), "{reason}")
        }
        other => panic!("expected Backend, got {:?}", other.err()),
    }
}

/// A message and its redeliveries reaching two daemons at once are stored
/// once: one of them stores it, every other call reports the duplicate,
/// and the conversation counts one message.
#[test]
fn the_same_message_at_two_daemons_at_once_is_stored_once() {
    let cluster = Cluster::start();
    let url = cluster.database("redelivery");
    let daemons = [
        Arc::new(PostgresStore::open(&url, 2).unwrap()),
        Arc::new(PostgresStore::open(&url, 2).unwrap()),
    ];
    let message = crate::support::inbound(
        convagent::core::Channel::Telegram,
        "42",
        "update-7",
        "only once please",
        1_000,
    );
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let (store, message) = (daemons[i % 2].clone(), message.clone());
            std::thread::spawn(move || store.accept(&message).unwrap())
        })
        .collect();
    let results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|a| !a.duplicate).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|a| a.message_id == results[0].message_id)
    );
    let (messages, counted) = daemons[0]
        .pool()
        .run(|c| {
            let row = c.query_one(
                "SELECT (SELECT count(*) FROM messages), (SELECT sum(message_count)::BIGINT FROM conversations)",
                &[],
            )?;
            Ok((row.get::<_, i64>(0), row.get::<_, i64>(1)))
        })
        .unwrap();
    assert_eq!((messages, counted), (1, 1));
}

/// A conversation is worked by one daemon at a time: a claim holds until
/// its lease is past (its holder died), the holder renews it, and only the
/// holder gives it up.
#[test]
fn a_claim_is_one_daemons_until_its_lease_is_past() {
    use convagent::core::ClaimKind::{Outbox, Turns};
    let cluster = Cluster::start();
    let store = PostgresStore::open(&cluster.database("claims"), 1).unwrap();
    assert!(store.shared());
    assert!(store.claim(Turns, 7, "a", 30_000).unwrap());
    assert!(!store.claim(Turns, 7, "b", 30_000).unwrap(), "a holds it");
    assert!(store.claim(Outbox, 7, "b", 30_000).unwrap(), "another kind");
    assert!(store.claim(Turns, 7, "a", 30_000).unwrap(), "renewed");
    assert!(!store.claim(Turns, 7, "b", 30_000).unwrap());
    // a renews for a moment only, then dies: once its lease is past, b
    // takes over, and a's renewal fails.
    assert!(store.claim(Turns, 7, "a", 1).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(store.claim(Turns, 7, "b", 30_000).unwrap());
    assert!(!store.claim(Turns, 7, "a", 30_000).unwrap());
    store.release(Turns, 7, "a").unwrap();
    assert!(
        !store.claim(Turns, 7, "c", 30_000).unwrap(),
        "only b releases it"
    );
    store.release(Turns, 7, "b").unwrap();
    assert!(store.claim(Turns, 7, "c", 30_000).unwrap());
}

/// The sweep's view: conversations with unanswered messages whose turns
/// nobody holds.
#[test]
fn the_sweep_finds_pending_conversations_nobody_holds() {
    use convagent::core::ClaimKind::Turns;
    let cluster = Cluster::start();
    let store = PostgresStore::open(&cluster.database("sweep"), 1).unwrap();
    let ids: Vec<i64> = ["1", "2"]
        .iter()
        .map(|sender| {
            let m = crate::support::inbound(
                convagent::core::Channel::Telegram,
                sender,
                &format!("m{sender}"),
                "hello",
                1_000,
            );
            store.accept(&m).unwrap().conversation_id
        })
        .collect();
    assert_eq!(store.unclaimed_pending(10).unwrap(), ids);
    assert!(store.claim(Turns, ids[0], "a", 30_000).unwrap());
    assert_eq!(store.unclaimed_pending(10).unwrap(), [ids[1]]);
    assert!(store.claim(Turns, ids[1], "b", 1).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        store.unclaimed_pending(10).unwrap(),
        [ids[1]],
        "b's lease is past"
    );
}

/// Two daemons that both answered one message record one answer: the
/// second gets the first's id back, one outbox row is queued (by the
/// trigger), and its tokens are counted once.
#[test]
fn one_answer_per_message_whichever_daemon_records_it() {
    let cluster = Cluster::start();
    let url = cluster.database("answers");
    let daemons = [
        Arc::new(PostgresStore::open(&url, 2).unwrap()),
        Arc::new(PostgresStore::open(&url, 2).unwrap()),
    ];
    let burst: Vec<i64> = ["first", "second"]
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let m = crate::support::inbound(
                convagent::core::Channel::Telegram,
                "42",
                &format!("u{i}"),
                text,
                1_000 + i as i64,
            );
            daemons[0].accept(&m).unwrap().message_id
        })
        .collect();
    let turn = |text: &str| convagent::core::TurnRecord {
        message_id: burst[1],
        covers: vec![burst[0]],
        violations: vec![],
        reply: convagent::core::NewReply {
            prompt_tokens: Some(30),
            completion_tokens: Some(12),
            ..crate::support::answer(text, 1, 2_000)
        },
    };
    daemons[0]
        .pool()
        .run(|c| {
            c.execute(
                "INSERT INTO system_prompts (text, created_at) VALUES ('be nice', 0)",
                &[],
            )?;
            Ok(())
        })
        .unwrap();
    let calls: Vec<_> = ["from a", "from b"]
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let (store, turn) = (daemons[i].clone(), turn(text));
            std::thread::spawn(move || {
                store
                    .record_turn_reply(turn.message_id, &turn.covers, &turn.reply)
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(results[0], results[1], "the second gets the first back");
    let counts = daemons[1]
        .pool()
        .run(|c| {
            let row = c.query_one(
                "SELECT (SELECT count(*) FROM messages WHERE role = 'assistant'),
                        (SELECT count(*) FROM outbox),
                        (SELECT sum(tokens)::BIGINT FROM token_usage),
                        (SELECT count(*) FROM messages WHERE role = 'user' AND answered_at IS NULL),
                        (SELECT message_count FROM conversations)",
                &[],
            )?;
            Ok((0..5).map(|i| row.get::<_, i64>(i)).collect::<Vec<_>>())
        })
        .unwrap();
    assert_eq!(
        counts,
        [1, 1, 42, 0, 3],
        "answer, outbox, tokens, pending, messages"
    );
}

/// `sslmode=require`: TLS, the server's certificate checked against the
/// CA given as `sslrootcert` (a certificate nobody vouches for is refused
/// with the reason); without it, a plain connection.
#[test]
fn tls_when_the_url_asks_for_it_with_the_certificate_checked() {
    let cluster = Cluster::start_tls();
    cluster.database("tls");
    let ssl = |store: &PostgresStore| -> bool {
        store
            .pool()
            .run(|c| {
                Ok(c.query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )?
                .get(0))
            })
            .unwrap()
    };
    let ca = cluster.ca();
    let secured = PostgresStore::open(
        &cluster.tcp_url(
            "tls",
            &format!("?sslmode=require&sslrootcert={}", ca.display()),
        ),
        1,
    )
    .unwrap();
    assert!(ssl(&secured));
    assert_eq!(secured.schema_version().unwrap(), (9, 9));

    match PostgresStore::open(&cluster.tcp_url("tls", "?sslmode=require"), 1) {
        Err(StoreError::Backend(reason)) => {
            assert!(
                reason.contains("certificate") || reason.contains("issuer"),
                "{reason}"
            )
        }
        other => panic!("an unknown issuer must be refused, got {:?}", other.err()),
    }
    match PostgresStore::open(
        &cluster.tcp_url("tls", "?sslmode=require&sslrootcert=/nonexistent.pem"),
        1,
    ) {
        Err(StoreError::Invalid(reason)) => assert!(reason.contains("sslrootcert"), "{reason}"),
        other => panic!("expected Invalid, got {:?}", other.err()),
    }
    let plain = PostgresStore::open(&cluster.tcp_url("tls", ""), 1).unwrap();
    assert!(!ssl(&plain));
}

/// MCP consumers of two daemons waiting for messages at once
/// (`wait_for_message`): each message is taken by exactly one of them.
#[test]
fn consumers_of_two_daemons_take_each_message_once() {
    use convagent::core::ports::{Take, Write};
    let cluster = Cluster::start();
    let url = cluster.database("takes");
    let daemons = [
        Arc::new(PostgresStore::open(&url, 4).unwrap()),
        Arc::new(PostgresStore::open(&url, 4).unwrap()),
    ];
    let mut accepted = Vec::new();
    for i in 0..30 {
        let message = crate::support::inbound(
            convagent::core::Channel::Telegram,
            &format!("{}", i % 5),
            &format!("take-{i}"),
            "waiting for an outside agent",
            1_000 + i,
        );
        accepted.push(daemons[0].accept(&message).unwrap().message_id);
    }
    let consumers: Vec<_> = (0..8)
        .map(|i| {
            let store = daemons[i % 2].clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let take = Take {
                        consumer: format!("consumer-{i}"),
                        channel: None,
                        conversation_id: None,
                        until: i64::MAX,
                        now: 5_000,
                    };
                    match store.write_now(Write::Take(take)).unwrap().taken().unwrap() {
                        Some(m) => mine.push(m.id),
                        None => return mine,
                    }
                }
            })
        })
        .collect();
    let mut taken: Vec<i64> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    taken.sort();
    assert_eq!(taken, accepted, "every message taken, none twice");
}
