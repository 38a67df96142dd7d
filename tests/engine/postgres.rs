//! The Postgres store's foundation on a real, throwaway cluster: migrations
//! applied once when several processes start together, the pool usable
//! from async code, clear errors for a bad URL.

use std::sync::Arc;

use convagent::adapters::store::PostgresStore;
use convagent::core::StoreError;

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
        assert_eq!(store.schema_version().unwrap(), (1, 1));
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
    assert_eq!((versions, tables), (1, 6));
    // Opening again applies nothing new.
    let again = PostgresStore::open(&url, 2).unwrap();
    assert_eq!(again.schema_version().unwrap(), (1, 1));
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
