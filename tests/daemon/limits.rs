//! Limits before the LLM (`[limits]`): a sender over a limit gets one
//! notice per window, and their messages are stored, recorded as
//! violations and held back from the LLM; other senders go on as before.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use convagent::core::Burst;
use convagent::core::limits::{DAY_MS, DEFAULT_NOTICE, DEFAULT_TOKENS_NOTICE, MINUTE_MS};
use serde_json::json;

use crate::support::{EchoLlm, FakeClock, pairs};
use crate::{Harness, Options, bodies, mount_success};

/// Noon UTC: a minute's wait never crosses into the next day.
const NOON: i64 = 1_763_726_400_000;

/// A text from Telegram chat `chat` (a private chat: the sender).
fn text_from(h: &Harness, chat: i64, update: i64, text: &str) -> convagent::golden::SignedRequest {
    let mut golden = h.golden("telegram/text.json");
    let json = golden.json.as_mut().unwrap();
    json["update_id"] = json!(update);
    json["message"]["message_id"] = json!(update);
    json["message"]["from"]["id"] = json!(chat);
    json["message"]["chat"]["id"] = json!(chat);
    json["message"]["text"] = json!(text);
    h.sign(&golden)
}

async fn start(
    llm: Arc<EchoLlm>,
    clock: Arc<FakeClock>,
    configure: fn(&mut convagent::config::Config),
) -> Harness {
    let mut options = Options {
        llm,
        clock: Some(clock),
        configure,
        ..Options::default()
    };
    options.settings.burst = Burst::Each;
    let h = Harness::start(options).await;
    mount_success(&h).await;
    h
}

/// What each chat was sent, in order.
async fn sent(h: &Harness) -> Vec<(i64, String)> {
    bodies(&h.telegram)
        .await
        .iter()
        .map(|b| {
            let chat = b["chat_id"]
                .as_str()
                .map(|s| s.parse().unwrap())
                .or_else(|| b["chat_id"].as_i64())
                .unwrap();
            (chat, b["text"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `(text, rule)` of every recorded violation, oldest first.
fn violations(h: &Harness) -> Vec<(String, String)> {
    pairs(
        &h.dir.path().join("convagent.db"),
        "SELECT m.text, v.rule FROM guardrail_violations v JOIN messages m ON m.id = v.message_id
         ORDER BY v.id",
    )
}

/// The LLM saw these user messages last in its requests.
fn asked(llm: &EchoLlm) -> Vec<String> {
    llm.seen
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.last().cloned().unwrap_or_default())
        .collect()
}

async fn metric(h: &Harness, line_start: &str) -> Option<String> {
    h.metrics()
        .await
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

#[tokio::test]
async fn a_sender_over_the_rate_gets_one_notice_and_the_llm_never_sees_the_rest() {
    let llm = Arc::new(EchoLlm::new());
    let clock = Arc::new(FakeClock::at(NOON));
    let h = start(llm.clone(), clock.clone(), |c| {
        c.limits.messages_per_minute = 3;
    })
    .await;
    for i in 1..=6 {
        assert_eq!(
            h.post(&text_from(&h, 42, i, &format!("spam {i}"))).await.0,
            200
        );
    }
    // Another sender in the same minute is not held back by the first.
    assert_eq!(h.post(&text_from(&h, 77, 50, "hello")).await.0, 200);
    h.drained().await;

    let all = sent(&h).await;
    let to_42: Vec<&str> = all
        .iter()
        .filter(|(c, _)| *c == 42)
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(
        to_42,
        [
            "echo: spam 1",
            "echo: spam 2",
            "echo: spam 3",
            DEFAULT_NOTICE
        ],
        "three answers, then one notice"
    );
    assert!(all.contains(&(77, "echo: hello".to_string())), "{all:?}");
    let mut seen = asked(&llm);
    seen.sort();
    assert_eq!(seen, ["hello", "spam 1", "spam 2", "spam 3"]);
    assert_eq!(
        violations(&h),
        (4..=6)
            .map(|i| (format!("spam {i}"), "messages_per_minute".to_string()))
            .collect::<Vec<_>>(),
        "stored and marked"
    );
    assert_eq!(
        metric(&h, "convagent_limited_total{").await.as_deref(),
        Some(r#"convagent_limited_total{channel="telegram",rule="messages_per_minute"} 3"#)
    );

    // A minute later the sender is answered again.
    h.advance(MINUTE_MS + 1);
    h.post(&text_from(&h, 42, 7, "spam 7")).await;
    h.drained().await;
    assert_eq!(
        sent(&h).await.last().unwrap(),
        &(42, "echo: spam 7".to_string())
    );
    h.stop().await;
}

#[tokio::test]
async fn token_caps_hold_senders_back_until_the_next_day() {
    let llm = Arc::new(EchoLlm::new());
    let clock = Arc::new(FakeClock::at(NOON));
    // Each echo reply reports 2 tokens.
    let h = start(llm.clone(), clock.clone(), |c| {
        c.limits.sender_tokens_per_day = Some(4);
        c.limits.tokens_per_day = Some(6);
    })
    .await;
    for (i, text) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        h.post(&text_from(&h, 42, i as i64 + 1, text)).await;
    }
    h.drained().await;
    // Chat 77 has used nothing, but everyone together reaches 6 with its
    // first reply.
    for (i, text) in ["b1", "b2", "b3"].iter().enumerate() {
        h.post(&text_from(&h, 77, i as i64 + 10, text)).await;
    }
    h.drained().await;
    let all = sent(&h).await;
    let to = |chat: i64| -> Vec<&str> {
        all.iter()
            .filter(|(c, _)| *c == chat)
            .map(|(_, t)| t.as_str())
            .collect()
    };
    assert_eq!(to(42), ["echo: a1", "echo: a2", DEFAULT_TOKENS_NOTICE]);
    assert_eq!(to(77), ["echo: b1", DEFAULT_TOKENS_NOTICE]);
    assert_eq!(llm.calls.load(Ordering::SeqCst), 3);
    let rules: Vec<(String, String)> = violations(&h);
    assert_eq!(
        rules,
        [
            ("a3", "sender_tokens_per_day"),
            ("a4", "sender_tokens_per_day"),
            ("b2", "tokens_per_day"),
            ("b3", "tokens_per_day"),
        ]
        .map(|(t, r)| (t.to_string(), r.to_string()))
    );

    // The next UTC day starts from nothing.
    h.advance(DAY_MS);
    h.post(&text_from(&h, 42, 20, "a5")).await;
    h.drained().await;
    assert_eq!(
        sent(&h).await.last().unwrap(),
        &(42, "echo: a5".to_string())
    );
    h.stop().await;
}

/// With `burst = "collect"` (the default) a burst that crosses the limit is
/// answered up to it, in one turn, and the rest is held by one notice.
#[tokio::test]
async fn a_collected_burst_is_answered_up_to_the_limit() {
    let llm = Arc::new(EchoLlm::new());
    let clock = Arc::new(FakeClock::at(NOON));
    let h = Harness::start(Options {
        llm: llm.clone(),
        clock: Some(clock),
        configure: |c| c.limits.messages_per_minute = 2,
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    for i in 1..=5 {
        h.post(&text_from(&h, 42, i, &format!("m{i}"))).await;
    }
    h.drained().await;
    let texts: Vec<String> = sent(&h).await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts.last().map(String::as_str), Some(DEFAULT_NOTICE));
    assert_eq!(texts.iter().filter(|t| *t == DEFAULT_NOTICE).count(), 1);
    // The LLM saw m1 and m2 (together or apart) and nothing after them.
    let seen: Vec<String> = llm.seen.lock().unwrap().concat();
    assert!(seen.iter().all(|m| m == "m1" || m == "m2"), "{seen:?}");
    assert!(seen.contains(&"m2".to_string()), "{seen:?}");
    assert_eq!(
        violations(&h)
            .into_iter()
            .map(|(t, _)| t)
            .collect::<Vec<_>>(),
        ["m3", "m4", "m5"]
    );
    h.stop().await;
}
