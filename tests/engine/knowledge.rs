//! Retrieval quality over a public-domain document set (thirteen pages of
//! SQLite's documentation, `tests/knowledge/`): each question names the
//! page that answers it; recall@5 is how often a chunk of that page is
//! among the five retrieved. Both stores, through the same reader and port
//! the agent uses. The figures are printed (`--nocapture`) and kept in
//! `benches/README.md`.

use std::path::Path;

use convagent::adapters::knowledge_files;
use convagent::adapters::store::{PostgresStore, SqliteStore};
use convagent::core::knowledge::{self, Source};
use convagent::core::ports::AnyStore;

fn recall_at_5(store: &dyn AnyStore) -> f64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/knowledge");
    let synced =
        knowledge_files::sync(store, &[root.join("sqlite-docs")], 1_000, false, 1).unwrap();
    assert_eq!(synced.added.len(), 13, "{synced:?}");
    assert!(synced.failed.is_empty(), "{synced:?}");
    let questions: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("questions.json")).unwrap())
            .unwrap();
    let mut found = 0;
    for q in &questions {
        let words = knowledge::query_words(q["q"].as_str().unwrap());
        let passages = store.search_knowledge(&words, 5).unwrap();
        let page = q["page"].as_str().unwrap();
        let hit = passages.iter().any(|p| {
            matches!(&p.source, Source::Document { path, .. } if path.ends_with(&format!("/{page}")))
        });
        if hit {
            found += 1;
        } else {
            eprintln!("missed: {} ({page})", q["q"]);
        }
    }
    found as f64 / questions.len() as f64
}

#[test]
fn recall_at_5_over_the_sqlite_docs() {
    let sqlite = SqliteStore::open_in_memory().unwrap();
    let bm25 = recall_at_5(&sqlite);
    let cluster = crate::support::postgres::Cluster::start();
    let postgres = PostgresStore::open(&cluster.database("recall"), 2).unwrap();
    let ts_rank = recall_at_5(&postgres);
    eprintln!("recall@5: SQLite FTS5 BM25 {bm25:.2}, Postgres ts_rank_cd {ts_rank:.2}");
    assert!(bm25 >= 0.8, "SQLite recall@5 {bm25}");
    assert!(ts_rank >= 0.7, "Postgres recall@5 {ts_rank}");
}
