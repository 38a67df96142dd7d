//! Retrieval quality over a public-domain document set (thirteen pages of
//! SQLite's documentation, `tests/knowledge/`): each question names the
//! page that answers it; recall@5 is how often a chunk of that page is
//! among the five retrieved. Both stores, through the same reader, port
//! and ranking functions the agent uses: full text alone, the vectors of
//! the local embedding model (all-MiniLM-L6-v2) alone, and both fused
//! (hybrid, what a turn does with `[knowledge.embeddings]`). The figures
//! are printed (`--nocapture`) and kept in `benches/README.md`.

use std::path::Path;

use convagent::adapters::embeddings::LocalEmbedder;
use convagent::adapters::knowledge_files::{self, Embedding};
use convagent::core::embeddings::{self, Embedder};
use convagent::core::knowledge::{self, Passage, Source};
use convagent::core::ports::AnyStore;

/// The local model, remembering what it embedded: the second store is
/// given the same vectors without the minutes of arithmetic again.
struct Remembering {
    model: LocalEmbedder,
    seen: std::sync::Mutex<std::collections::HashMap<String, Vec<f32>>>,
}

impl Embedder for Remembering {
    fn name(&self) -> &str {
        self.model.name()
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> convagent::core::llm::BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move {
            let missing: Vec<String> = {
                let seen = self.seen.lock().unwrap();
                texts
                    .iter()
                    .filter(|t| !seen.contains_key(*t))
                    .cloned()
                    .collect()
            };
            let made = self.model.embed(&missing).await?;
            let mut seen = self.seen.lock().unwrap();
            seen.extend(missing.into_iter().zip(made));
            Ok(texts.iter().map(|t| seen[t].clone()).collect())
        })
    }
}

/// recall@5 of full text, vectors and hybrid ranking.
struct Recall {
    words: f64,
    vectors: f64,
    hybrid: f64,
}

fn recall_at_5(store: &dyn AnyStore, embedder: &Remembering) -> Recall {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/knowledge");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let embedding = Embedding {
        embedder,
        runtime: runtime.handle().clone(),
    };
    let synced = knowledge_files::sync(
        store,
        &[root.join("sqlite-docs")],
        1_000,
        false,
        1,
        Some(&embedding),
    )
    .unwrap();
    assert_eq!(synced.added.len(), 13, "{synced:?}");
    assert!(synced.failed.is_empty(), "{synced:?}");
    let vectors = store.knowledge_vectors(embedder.name()).unwrap();
    let chunks: i64 = store
        .knowledge_docs()
        .unwrap()
        .iter()
        .map(|d| d.chunks)
        .sum();
    assert_eq!(vectors.len() as i64, chunks, "every chunk has its vector");
    let questions: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("questions.json")).unwrap())
            .unwrap();
    let (mut words_found, mut vectors_found, mut hybrid_found) = (0, 0, 0);
    for q in &questions {
        let question = q["q"].as_str().unwrap().to_string();
        let page = q["page"].as_str().unwrap();
        let hit = |passages: &[Passage]| {
            passages.iter().any(|p| {
                matches!(&p.source, Source::Document { path, .. } if path.ends_with(&format!("/{page}")))
            })
        };
        let words = knowledge::query_words(&question);
        let by_words = store
            .search_knowledge(&words, 5 * embeddings::CANDIDATES)
            .unwrap();
        let query = runtime
            .block_on(embedder.embed(std::slice::from_ref(&question)))
            .unwrap()
            .remove(0);
        let top_words: Vec<Passage> = by_words.iter().take(5).cloned().collect();
        let by_vector = embeddings::nearest(&query, &vectors, 5);
        let hybrid = embeddings::hybrid(by_words, &query, &vectors, 5);
        words_found += usize::from(hit(&top_words));
        vectors_found += usize::from(hit(&by_vector));
        if hit(&hybrid) {
            hybrid_found += 1;
        } else {
            eprintln!("hybrid missed: {question} ({page})");
        }
    }
    let n = questions.len() as f64;
    Recall {
        words: words_found as f64 / n,
        vectors: vectors_found as f64 / n,
        hybrid: hybrid_found as f64 / n,
    }
}

#[test]
fn recall_at_5_over_the_sqlite_docs() {
    let embedder = Remembering {
        model: LocalEmbedder::open(&crate::support::embedding_model()).unwrap(),
        seen: Default::default(),
    };
    let sqlite = convagent::adapters::store::SqliteStore::open_in_memory().unwrap();
    let on_sqlite = recall_at_5(&sqlite, &embedder);
    let cluster = crate::support::postgres::Cluster::start();
    let postgres =
        convagent::adapters::store::PostgresStore::open(&cluster.database("recall"), 2).unwrap();
    let on_postgres = recall_at_5(&postgres, &embedder);
    for (store, r) in [("SQLite", &on_sqlite), ("Postgres", &on_postgres)] {
        eprintln!(
            "recall@5 on {store}: full text {:.2}, vectors {:.2}, hybrid {:.2}",
            r.words, r.vectors, r.hybrid
        );
    }
    assert!(on_sqlite.words >= 0.8, "SQLite BM25 {}", on_sqlite.words);
    assert!(
        on_postgres.words >= 0.7,
        "Postgres ts_rank {}",
        on_postgres.words
    );
    assert!(on_sqlite.vectors >= 0.6, "vectors {}", on_sqlite.vectors);
    assert!(
        (on_sqlite.vectors - on_postgres.vectors).abs() < 1e-9,
        "the same vectors on both stores"
    );
    assert!(
        on_sqlite.hybrid >= 0.8,
        "SQLite hybrid {}",
        on_sqlite.hybrid
    );
    assert!(
        on_postgres.hybrid >= on_postgres.words,
        "hybrid {} below full text {} on Postgres",
        on_postgres.hybrid,
        on_postgres.words
    );
}
