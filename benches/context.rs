//! Cost of building an LLM context for a conversation with few versus very
//! many stored turns: the read must be indexed and bounded, so the cost may
//! not grow with history length. Method in benches/README.md.
//!
//!     cargo bench --bench context

use convagent::core::ports::all::*;
use std::collections::BTreeMap;
use std::time::Instant;

use convagent::adapters::store::SqliteStore;
use convagent::core::context;
use convagent::core::{
    Channel, ConversationKey, CorrelationId, InboundMessage, NewReply, ReplyKind,
};

const BUDGET: usize = 4096;
const RESERVE: usize = 512;
const ITERATIONS: usize = 2_000;

/// A conversation of `turns` stored turns (user/assistant pairs) in a file store.
fn fill(store: &SqliteStore, sender: &str, turns: usize) -> (i64, i64) {
    let key = ConversationKey::new(Channel::Telegram, sender, "");
    let mut last = (0, 0);
    for i in 0..turns / 2 {
        let message = InboundMessage {
            key: key.clone(),
            text: format!(
                "question number {i}: how does the thing work when it rains on tuesdays?"
            ),
            provider_message_id: format!("{sender}-{i}"),
            provider_ts: None,
            received_at: i as i64,
            attachments: vec![],
            metadata: BTreeMap::new(),
            correlation_id: CorrelationId::generate(),
        };
        let a = store.accept(&message).unwrap();
        let reply = NewReply {
            kind: ReplyKind::Answer,
            text: format!(
                "answer number {i}: it works the same way, only wetter, as explained before."
            ),
            provider: "bench".into(),
            model: "bench".into(),
            prompt_version: 1,
            prompt_tokens: None,
            completion_tokens: None,
            latency_ms: 1,
            created_at: i as i64,
        };
        store.record_reply(a.message_id, &reply).unwrap();
        last = (a.conversation_id, a.message_id);
    }
    last
}

fn measure(store: &SqliteStore, conversation: i64, message: i64) -> (f64, f64, usize) {
    let prompt = store.current_prompt().unwrap().unwrap();
    let mut samples = Vec::with_capacity(ITERATIONS);
    let mut kept = 0;
    for _ in 0..ITERATIONS {
        let started = Instant::now();
        let turns = context::gather(store, conversation, message, BUDGET).unwrap();
        let window = context::build(&prompt.text, None, &turns, BUDGET, RESERVE);
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        kept = window.messages.len();
    }
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        kept,
    )
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    store.set_prompt("You are a helpful assistant.", 0).unwrap();
    let started = Instant::now();
    let small = fill(&store, "small", 100);
    let medium = fill(&store, "medium", 1_000);
    let large = fill(&store, "large", 100_000);
    eprintln!(
        "filled 101,100 turns in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    println!(
        "context build (indexed read of recent turns + budget fit), {ITERATIONS} iterations each"
    );
    let mut p50s = Vec::new();
    let cases = [
        ("100 turns", small),
        ("1,000 turns", medium),
        ("100,000 turns", large),
    ];
    for (name, (conversation, message)) in cases {
        let (p50, p99, kept) = measure(&store, conversation, message);
        println!(
            "  {name:>14}: p50 {p50:8.1} µs   p99 {p99:8.1} µs   ({kept} messages in the context)"
        );
        p50s.push(p50);
    }
    println!(
        "  ratio 100,000 / 100 turns (p50):   {:.2}",
        p50s[2] / p50s[0]
    );
    println!(
        "  ratio 100,000 / 1,000 turns (p50): {:.2}",
        p50s[2] / p50s[1]
    );
}
