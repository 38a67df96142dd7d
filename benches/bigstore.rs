//! Reads on a big store: fills a SQLite store (the product's schema, its
//! triggers and full-text index) with 1,000,000 messages in 10,000
//! conversations, then times the read commands as a person runs them (the
//! release binary, a process per run) and the TUI's search in process.
//! Method and figures in benches/README.md.
//!
//!     cargo bench --bench bigstore -- [--messages 1000000] [--runs 10]

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
