//! Summarisation of older turns: triggers past the threshold, is stored
//! with its range, reused, never redone for a range, and the context never
//! exceeds the budget.

use convagent::core::ports::all::*;
use std::sync::Arc;

use convagent::adapters::channels::cli;
use convagent::adapters::store::SqliteStore;
use convagent::core::context::SUMMARY_PREFIX;
use convagent::core::{AgentSettings, Limits, estimate_tokens};

use crate::agent::{agent_over, key};
use crate::support::{FakeLlm, pairs};

fn is_summary_request(r: &convagent::core::LlmRequest) -> bool {
    r.messages[0]
        .content
        .starts_with("You summarise conversations")
}

/// Answers summary requests with a numbered summary and everything else
/// with an answer, so a test can tell which text the context carries.
struct Summariser {
    inner: FakeLlm,
    made: std::sync::atomic::AtomicUsize,
}

impl convagent::core::LlmProvider for Summariser {
    fn name(&self) -> &str {
        "fake"
    }

    fn model(&self) -> &str {
        "fake-model"
    }

    fn generate<'a>(
        &'a self,
        request: &'a convagent::core::LlmRequest,
        on_event: &'a mut convagent::core::llm::OnEvent<'_>,
    ) -> convagent::core::llm::BoxFuture<
        'a,
        Result<convagent::core::LlmOutput, convagent::core::LlmError>,
    > {
        Box::pin(async move {
            let mut out = self.inner.generate(request, on_event).await?;
            if is_summary_request(request) {
                let n = self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                out.text = format!("SUMMARY #{n}: the user asked about the topic");
            }
            Ok(out)
        })
    }
}

#[tokio::test]
async fn older_turns_are_summarised_once_per_range_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convagent.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let summariser = Arc::new(Summariser {
        inner: FakeLlm::replying(&"a fairly wordy reply with many tokens in it ".repeat(3)),
        made: Default::default(),
    });
    let llm = &summariser.inner;
    let settings = AgentSettings {
        context_budget: 1024,
        reply_reserve: 128,
        summary_min_turns: 50,
        summary_threshold: 0.8,
        summary_batch: 10,
        // A long conversation typed within a second.
        limits: Limits::none(),
        ..AgentSettings::default()
    };
    let agent = agent_over(store.clone(), summariser.clone(), settings);

    let mut conversation = 0;
    let mut summaries_seen_at = Vec::new();
    for i in 0..90 {
        let text = format!("message {i}: {}", "tell me more about the topic ".repeat(3));
        let before = llm.calls();
        let reply = agent
            .handle(&cli::inbound(&key(), &text, i), &mut |_| {})
            .await
            .unwrap();
        conversation = reply.conversation_id;
        let requests = llm.requests.lock().unwrap()[before..].to_vec();
        let (summarising, answering): (Vec<_>, Vec<_>) =
            requests.iter().partition(|r| is_summary_request(r));
        assert_eq!(answering.len(), 1);
        let answer = answering[0];
        let used: usize = answer
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum();
        assert!(used <= 1024 - 128, "turn {i}: context of {used} tokens");
        assert!(
            answer
                .messages
                .last()
                .unwrap()
                .content
                .starts_with(&format!("message {i}:"))
        );
        if !summarising.is_empty() {
            // Only past the threshold: more than 50 stored turns.
            let stored_turns = store
                .conversation(conversation)
                .unwrap()
                .unwrap()
                .message_count;
            assert!(stored_turns > 50, "summarised at {stored_turns} turns");
            for s in &summarising {
                let used: usize = s.messages.iter().map(|m| estimate_tokens(&m.content)).sum();
                assert!(used <= 1024, "summary request of {used} tokens");
            }
            summaries_seen_at.push(i);
        }
        if let Some(latest) = store.latest_summary(conversation).unwrap() {
            // The newest summary the LLM wrote, as stored, is what the
            // answer's context carries: not an older one, not nothing.
            let made = summariser.made.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(
                latest.text,
                format!("SUMMARY #{made}: the user asked about the topic")
            );
            assert_eq!(
                answer.messages[1].content,
                format!("{SUMMARY_PREFIX}{}", latest.text),
                "turn {i}: the stored summary is in the context"
            );
        }
    }
    assert!(!summaries_seen_at.is_empty(), "the threshold was crossed");
    // Folded as soon as a batch (10 messages: 5 turns) is left uncovered,
    // however it is found out.
    assert!(
        summaries_seen_at.len() > 2 && summaries_seen_at.windows(2).all(|w| w[1] == w[0] + 5),
        "{summaries_seen_at:?}"
    );
    // Reused between folds: far fewer summaries than turns.
    assert!(
        summaries_seen_at.len() <= 90 * 2 / 10,
        "{summaries_seen_at:?}"
    );

    let ranges: Vec<(i64, i64)> = pairs(
        &path,
        &format!(
            "SELECT from_message_id, to_message_id FROM summaries WHERE conversation_id = {conversation} ORDER BY id"
        ),
    );
    assert_eq!(ranges.len(), summaries_seen_at.len());
    assert!(
        ranges.windows(2).all(|w| w[1].1 >= w[0].1 + 10),
        "each fold adds a batch: {ranges:?}"
    );
    assert!(
        ranges.iter().all(|r| r.0 == ranges[0].0),
        "each summary extends the first: {ranges:?}"
    );
    // The user's full history is kept.
    assert_eq!(store.messages(conversation).unwrap().len(), 180);
}

#[tokio::test]
async fn short_conversations_are_never_summarised() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let llm = Arc::new(FakeLlm::replying(&"long reply ".repeat(60)));
    let settings = AgentSettings {
        context_budget: 1024,
        reply_reserve: 128,
        limits: Limits::none(),
        ..AgentSettings::default()
    };
    let agent = agent_over(store.clone(), llm.clone(), settings);
    // 25 exchanges = 50 turns: the window overflows, but not the turn threshold.
    for i in 0..25 {
        agent
            .handle(&cli::inbound(&key(), &format!("q{i}"), i), &mut |_| {})
            .await
            .unwrap();
    }
    assert_eq!(llm.calls(), 25, "no summarisation call");
    let conversation = store.open_conversation(&key()).unwrap().unwrap();
    assert_eq!(store.latest_summary(conversation).unwrap(), None);
}
