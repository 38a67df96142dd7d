//! Reads on a big store: fills a SQLite store (the product's schema, its
//! triggers and full-text index) with 1,000,000 messages in 10,000
//! conversations, then times the read commands as a person runs them (the
//! release binary, a process per run) and the TUI's search in process;
//! then adds 10,000 knowledge chunks and links pairs of senders, and times
//! a turn's retrieval (the agent's reads and ranking, uncached).
//! Method and figures in benches/README.md.
//!
//!     cargo bench --bench bigstore -- [--messages 1000000] [--runs 10] [--turns 1000]

use std::process::Command;
use std::time::{Duration, Instant};

use convagent::adapters::store::SqliteStore;
use convagent::core::{ConversationFilter, MonitorStore};
use rusqlite::params;

const CONVERSATIONS: usize = 10_000;

#[path = "support/flags.rs"]
mod flags;
use flags::flag;

fn main() {
    let messages: usize = flag("--messages", 1_000_000);
    let runs: usize = flag("--runs", 10);

    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("data/convagent/convagent.db");
    let began = Instant::now();
    fill(&path, messages);
    println!(
        "filled {messages} messages in {CONVERSATIONS} conversations in {:.1} s ({} MB)",
        began.elapsed().as_secs_f64(),
        std::fs::metadata(&path).unwrap().len() / 1_000_000
    );

    let history = |args: &[&str]| {
        let mut times = Vec::new();
        for _ in 0..runs {
            let began = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_convagent"))
                .args(args)
                .env_clear()
                .env("HOME", home.path())
                .env("XDG_DATA_HOME", home.path().join("data"))
                .env("XDG_STATE_HOME", home.path().join("state"))
                .env("XDG_CONFIG_HOME", home.path().join("config"))
                .output()
                .unwrap();
            times.push(began.elapsed());
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
        }
        report(&format!("convagent {}", args.join(" ")), times);
    };
    history(&["history", "--limit", "20"]);
    history(&["history", "show", "5000"]);
    history(&["history", "search", "alpha", "--limit", "20"]);
    history(&["history", "search", "alpha", "bravo", "--limit", "20"]);
    history(&["history", "search", "alpha", "--limit", "20", "--rank"]);

    let store = SqliteStore::open(&path).unwrap();
    let filter = ConversationFilter {
        limit: 200,
        ..ConversationFilter::default()
    };
    let mut times = Vec::new();
    for _ in 0..runs {
        let began = Instant::now();
        let found = store.overview(&filter, Some("alpha")).unwrap();
        times.push(began.elapsed());
        assert_eq!(found.len(), 200);
    }
    report("TUI `/` search (overview, 200 conversations)", times);
    retrieval(&store, flag("--turns", 1_000));
}

/// A turn's retrieval on this store, as `Agent::retrieve` does it without
/// its 30-second cache (each turn pays every read): the documents' chunks
/// by BM25, the person's other conversations through their identities,
/// their newest 500 messages, ranked in the core. 10,000 chunks in 100
/// documents, every sender linked with another.
fn retrieval(store: &SqliteStore, turns: usize) {
    use convagent::core::Channel;
    use convagent::core::knowledge::{self, KnowledgeChange};
    use convagent::core::ports::{Retrieval, SenderRef, Write, Writes};
    let began = Instant::now();
    for d in 0..100 {
        let chunks: Vec<String> = (0..100).map(|c| chunk_text(d * 100 + c)).collect();
        store
            .write_now(Write::Knowledge(KnowledgeChange::Put {
                path: format!("/kb/doc-{d}.md"),
                sha256: format!("{d}"),
                title: format!("Doc {d}"),
                chunks,
                at: 1,
                embedder: None,
                vectors: Vec::new(),
            }))
            .unwrap();
    }
    for c in 1..=CONVERSATIONS / 2 {
        let sender = |c: usize| SenderRef {
            channel: Channel::Telegram,
            id: format!("{}", 100_000 + c),
        };
        store
            .write_now(Write::Link {
                a: sender(c),
                b: sender(c + CONVERSATIONS / 2),
                at: 2,
            })
            .unwrap();
    }
    println!(
        "added 10,000 chunks and linked {} pairs of senders in {:.1} s",
        CONVERSATIONS / 2,
        began.elapsed().as_secs_f64()
    );
    let questions = [
        "What is the refund policy for shipping to my address?",
        "How do I reset my account password?",
        "Is there a discount on the yearly subscription?",
        "Where is my order? The weather is bad and alpha status unknown",
        "Can I get an invoice for the warranty repair?",
    ];
    let mut times = Vec::new();
    for t in 0..turns {
        let conversation = (t * 7919 % CONVERSATIONS + 1) as i64;
        let words = knowledge::query_words(questions[t % questions.len()]);
        let began = Instant::now();
        let passages = store.search_knowledge(&words, 4).unwrap();
        let others = store.person_conversations(conversation).unwrap();
        let ids: Vec<i64> = others.iter().map(|(id, _)| *id).collect();
        let said = store.user_messages_of(&ids, 500).unwrap();
        let texts: Vec<&str> = said.iter().map(|(_, _, t)| t.as_str()).collect();
        let scores = knowledge::rank(&words, &texts);
        times.push(began.elapsed());
        assert!(!passages.is_empty() && !others.is_empty() && !scores.is_empty());
    }
    percentiles(&format!("a turn's retrieval ({turns} turns)"), times);
    hybrid(store, &questions, turns);
}

fn percentiles(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{:<58} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms",
        what,
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
}

/// The text of knowledge chunk `n` of the bench's 10,000.
fn chunk_text(n: usize) -> String {
    let topics = [
        "shipping",
        "returns",
        "refund",
        "warranty",
        "invoice",
        "delivery",
        "password",
        "account",
        "subscription",
        "discount",
    ];
    format!(
        "Section {n}. How {} works for orders of type {}: the {} rules, the {} \
         steps and the {} exceptions, with the weather of day {}.",
        topics[n % 10],
        n % 37,
        topics[(n / 10) % 10],
        topics[(n / 7) % 10],
        topics[(n / 3) % 10],
        n % 365
    )
}

/// What `[knowledge.embeddings]` adds to a turn's documents: the question
/// embedded by the real local model, the full-text candidates, the exact
/// scan of 10,000 vectors of 384 numbers and the fusion. The chunks'
/// vectors are made up (embedding 10,000 chunks takes the model most of an
/// hour here; a scan costs the same whatever the numbers), stored through
/// the port and read once, as the agent reads them once per state of the
/// documents.
fn hybrid(store: &SqliteStore, questions: &[&str], turns: usize) {
    use convagent::core::embeddings::{self, CANDIDATES, Embedder};
    use convagent::core::knowledge::{self, KnowledgeChange};
    use convagent::core::ports::{Retrieval, Write, Writes};
    let dir = convagent::config::Dirs::from_env()
        .unwrap()
        .default_embedding_model();
    let Ok(model) = convagent::adapters::embeddings::LocalEmbedder::open(&dir) else {
        println!(
            "hybrid retrieval: no local embedding model at {} (install.sh)",
            dir.display()
        );
        return;
    };
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    for d in 0..100 {
        let doc = format!("/kb/doc-{d}.md");
        let chunks: Vec<String> = (0..100).map(|c| chunk_text(d * 100 + c)).collect();
        let vectors = (0..100)
            .map(|_| (0..384).map(|_| random()).collect())
            .collect();
        store
            .write_now(Write::Knowledge(KnowledgeChange::Put {
                path: doc,
                sha256: format!("v{d}"),
                title: format!("Doc {d}"),
                chunks,
                at: 3,
                embedder: Some("bench:random".into()),
                vectors,
            }))
            .unwrap();
    }
    let began = Instant::now();
    let vectors = store.knowledge_vectors("bench:random").unwrap();
    assert_eq!(vectors.len(), 10_000);
    println!(
        "read 10,000 vectors once (as each change of the documents) in {:.1} ms",
        began.elapsed().as_secs_f64() * 1000.0
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut times = Vec::new();
    let mut embedding = Vec::new();
    for t in 0..turns {
        let question = questions[t % questions.len()].to_string();
        let words = knowledge::query_words(&question);
        let began = Instant::now();
        let asked = Instant::now();
        let query = runtime
            .block_on(model.embed(std::slice::from_ref(&question)))
            .unwrap()
            .remove(0);
        embedding.push(asked.elapsed());
        let by_words = store.search_knowledge(&words, 4 * CANDIDATES).unwrap();
        let fused = embeddings::hybrid(by_words, &query, &vectors, 4);
        times.push(began.elapsed());
        assert_eq!(fused.len(), 4);
    }
    percentiles("  of which the question's vector (local model)", embedding);
    percentiles(
        &format!("a turn's documents, hybrid ({turns} turns)"),
        times,
    );
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what:<58} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms",
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
}

/// Conversations take turns, as traffic from many people does: message `i`
/// belongs to conversation `i % 10,000`. "alpha" is in every other message,
/// "bravo" in every third.
fn fill(path: &std::path::Path, messages: usize) {
    drop(SqliteStore::open(path).unwrap()); // the schema, by the product's migrations
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut conversation = tx
            .prepare(
                "INSERT INTO conversations (id, channel, sender, thread, started_at,
                     last_activity_at, message_count)
                 VALUES (?1, 'telegram', ?2, '', ?3, ?4, ?5)",
            )
            .unwrap();
        let per = messages / CONVERSATIONS;
        for c in 1..=CONVERSATIONS {
            conversation
                .execute(params![
                    c as i64,
                    format!("{}", 100_000 + c),
                    c as i64,
                    (messages + c) as i64,
                    per as i64
                ])
                .unwrap();
        }
        let mut message = tx
            .prepare(
                "INSERT INTO messages (conversation_id, role, channel, text, created_at,
                     provider_message_id, answered_at, kind)
                 VALUES (?1, ?2, 'telegram', ?3, ?4, ?5, ?6, ?7)",
            )
            .unwrap();
        for i in 0..messages {
            let user = (i / CONVERSATIONS).is_multiple_of(2);
            let mut text = format!("message {i} about the weather and the order status");
            if i.is_multiple_of(2) {
                text.push_str(" alpha");
            }
            if i.is_multiple_of(3) {
                text.push_str(" bravo");
            }
            message
                .execute(params![
                    (i % CONVERSATIONS + 1) as i64,
                    if user { "user" } else { "assistant" },
                    text,
                    1_700_000_000_000i64 + i as i64,
                    user.then(|| format!("m{i}")),
                    user.then_some(1_700_000_000_000i64 + i as i64),
                    (!user).then_some("answer"),
                ])
                .unwrap();
        }
    }
    // As the product's writer does: the full-text index once, at the end.
    tx.execute(
        "INSERT INTO messages_fts (rowid, text) SELECT id, text FROM messages",
        [],
    )
    .unwrap();
    tx.commit().unwrap();
}
