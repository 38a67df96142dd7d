//! The LLM path under failure (SPEC.md step 6): retries with backoff,
//! circuit breakers persisted in the store, failover, and the canned
//! fallback reply with a proper answer once a provider recovers. Time is a
//! fake clock: nothing here sleeps.

use convagent::core::ports::all::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convagent::adapters::channels::cli;
use convagent::adapters::llm::{Chain, ChainPolicy};
use convagent::adapters::store::SqliteStore;
use convagent::core::{
    AgentSettings, BreakerPolicy, BreakerState, ChatMessage, LlmError, LlmProvider, LlmRequest,
    ReplyKind, Role,
};

use crate::agent::key;
use crate::support::{FakeClock, ScriptedLlm, http_500, pairs, reset_by_peer};

const COOLDOWN_MS: i64 = 300_000;

fn policy() -> ChainPolicy {
    ChainPolicy {
        breaker: BreakerPolicy {
            failure_threshold: 3,
            cooldown_ms: COOLDOWN_MS,
        },
        backoff: vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4),
        ],
        deadline: Duration::from_secs(600),
        patience: None,
    }
}

fn request() -> LlmRequest {
    LlmRequest {
        messages: vec![ChatMessage::new(Role::User, "hi")],
        max_tokens: 8,
        tools: Vec::new(),
        exchanges: Vec::new(),
    }
}

fn chain_of(
    providers: Vec<Arc<dyn LlmProvider>>,
    store: Arc<SqliteStore>,
    clock: Arc<FakeClock>,
) -> Chain {
    Chain::new(providers, store, clock, policy())
}

#[tokio::test]
async fn the_breaker_opens_skips_half_opens_closes_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convagent.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let clock = Arc::new(FakeClock::at(1_000_000));
    let flaky = Arc::new(ScriptedLlm::new("ollama", vec![Err(http_500("ollama"))]));
    let backup = Arc::new(ScriptedLlm::new(
        "embedded",
        vec![Ok("backup answer".into())],
    ));
    let chain = chain_of(
        vec![flaky.clone(), backup.clone()],
        store.clone(),
        clock.clone(),
    );

    // Three consecutive failures open the breaker; each turn fails over.
    for _ in 0..3 {
        let out = chain.generate(&request(), &mut |_| {}).await.unwrap();
        assert_eq!(out.provider, "embedded", "failover to the next provider");
        clock.advance(1_000);
    }
    assert_eq!(flaky.calls(), 3);
    let b = store.breaker("ollama", "scripted").unwrap().unwrap();
    assert_eq!((b.state, b.failures), (BreakerState::Open, 3));
    assert!(b.last_error.as_deref().unwrap().contains("HTTP 500"));
    assert_eq!(b.next_probe_at, Some(b.opened_at.unwrap() + COOLDOWN_MS));

    // While open it is skipped at once: no call.
    let out = chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(out.provider, "embedded");
    assert_eq!(flaky.calls(), 3);

    // A restart (a new process on the same file) sees the open breaker.
    drop(chain);
    drop(store);
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let chain = chain_of(
        vec![flaky.clone(), backup.clone()],
        store.clone(),
        clock.clone(),
    );
    chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(flaky.calls(), 3, "still skipped after the restart");

    // After the cool-down one probe goes through; it fails: open again.
    clock.advance(COOLDOWN_MS);
    chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(flaky.calls(), 4);
    assert_eq!(
        store.breaker("ollama", "scripted").unwrap().unwrap().state,
        BreakerState::Open
    );
    chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(flaky.calls(), 4, "reopened: skipped again");

    // Next cool-down: the provider has recovered, the probe closes it.
    clock.advance(COOLDOWN_MS);
    flaky.set(Ok("primary is back".into()));
    let out = chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(out.provider, "ollama");
    let b = store.breaker("ollama", "scripted").unwrap().unwrap();
    assert_eq!(
        (b.state, b.failures, b.next_probe_at),
        (BreakerState::Closed, 0, None)
    );

    let seen: Vec<(String, String)> = pairs(
        &path,
        "SELECT from_state, to_state FROM breaker_transitions ORDER BY id",
    );
    let expected = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ];
    assert_eq!(seen, expected.map(|(a, b)| (a.to_string(), b.to_string())));
}

#[tokio::test]
async fn connection_errors_are_retried_with_backoff() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let clock = Arc::new(FakeClock::at(0));
    let provider = Arc::new(ScriptedLlm::new(
        "ollama",
        vec![
            Err(reset_by_peer("ollama")),
            Err(reset_by_peer("ollama")),
            Ok("third time".into()),
        ],
    ));
    let chain = chain_of(vec![provider.clone()], store.clone(), clock.clone());
    let out = chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(out.text, "third time");
    assert_eq!(provider.calls(), 3);
    assert_eq!(
        clock.slept(),
        [Duration::from_secs(1), Duration::from_secs(2)]
    );
    assert_eq!(
        store.breaker("ollama", "scripted").unwrap(),
        None,
        "a success after retries is no failure"
    );
}

#[tokio::test]
async fn retries_stop_at_the_turns_deadline_and_other_errors_are_not_retried() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let clock = Arc::new(FakeClock::at(0));
    let down = Arc::new(ScriptedLlm::new(
        "ollama",
        vec![Err(reset_by_peer("ollama"))],
    ));
    let chain = Chain::new(
        vec![down.clone()],
        store.clone(),
        clock.clone(),
        ChainPolicy {
            deadline: Duration::from_millis(3_500),
            ..policy()
        },
    );
    chain.generate(&request(), &mut |_| {}).await.unwrap_err();
    // 1 s and 2 s fit in 3.5 s; the 4 s wait would end past the deadline.
    assert_eq!(
        clock.slept(),
        [Duration::from_secs(1), Duration::from_secs(2)]
    );
    assert_eq!(down.calls(), 3);

    let clock = Arc::new(FakeClock::at(0));
    let erroring = Arc::new(ScriptedLlm::new("openai", vec![Err(http_500("openai"))]));
    let refused = Arc::new(ScriptedLlm::new(
        "ollama",
        vec![Err(LlmError::Unreachable {
            provider: "ollama".into(),
            url: "u".into(),
            reason: "refused".into(),
        })],
    ));
    let chain = chain_of(
        vec![refused.clone(), erroring.clone()],
        store,
        clock.clone(),
    );
    chain.generate(&request(), &mut |_| {}).await.unwrap_err();
    assert_eq!((refused.calls(), erroring.calls()), (1, 1));
    assert!(
        clock.slept().is_empty(),
        "refused and 5xx fall through at once"
    );
}

#[tokio::test]
async fn when_every_provider_fails_the_fallback_is_sent_and_the_message_answered_after_recovery() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let clock = Arc::new(FakeClock::at(0));
    let a = Arc::new(ScriptedLlm::new("ollama", vec![Err(http_500("ollama"))]));
    let b = Arc::new(ScriptedLlm::new(
        "embedded",
        vec![Err(http_500("embedded"))],
    ));
    let chain = Arc::new(chain_of(
        vec![a.clone(), b.clone()],
        store.clone(),
        clock.clone(),
    ));
    let settings = AgentSettings {
        fallback_reply: "Back soon!".into(),
        ..AgentSettings::default()
    };
    // The agent and the chain share one fake clock: a wait either asks for
    // moves it, so "within 2 s" below is measured in the time the code
    // asked for, not only in how fast a test machine runs.
    let agent = convagent::core::Agent::new(
        store.clone(),
        chain,
        clock.clone(),
        convagent::core::Guardrails::new(&[]).unwrap(),
        settings,
    );

    let message = cli::inbound(&key(), "hello?", 1);
    let mut shown = String::new();
    let reply = agent
        .handle(&message, &mut |e| {
            if let convagent::core::StreamEvent::Token(t) = e {
                shown.push_str(t)
            }
        })
        .await
        .unwrap();
    let since_last_failure = b.last_failure.lock().unwrap().unwrap().elapsed();
    assert!(
        since_last_failure < Duration::from_secs(2),
        "fallback within 2 s: {since_last_failure:?}"
    );
    assert!(
        reply.reply.created_at <= 2_000,
        "no wait before the fallback on the clock either: stored at {} ms, waits {:?}",
        reply.reply.created_at,
        clock.slept()
    );
    assert_eq!(reply.kind(), ReplyKind::Fallback);
    assert_eq!(reply.reply.text, "Back soon!");
    assert_eq!(shown, "Back soon!");
    assert!(reply.llm_error.as_deref().unwrap().contains("HTTP 500"));
    assert_eq!(
        store.reply_to(reply.message_id).unwrap(),
        None,
        "a fallback is not the answer"
    );
    let conversation = reply.conversation_id;
    assert_eq!(
        store.pending(conversation, 10).unwrap().len(),
        1,
        "marked for a proper answer"
    );

    // Redelivered while still down: the same fallback, not a second one.
    let again = agent.handle(&message, &mut |_| {}).await.unwrap();
    assert_eq!(
        (again.kind(), again.from_store, again.reply.id),
        (ReplyKind::Fallback, true, reply.reply.id)
    );

    // A provider recovers: the pending message gets its real answer.
    b.set(Ok("Hello! Sorry for the wait.".into()));
    let started = Instant::now();
    let pending = store.pending(conversation, 10).unwrap();
    assert_eq!(
        pending[0].message.provider_message_id,
        message.provider_message_id
    );
    let answered = agent.answer(&pending[..1], &mut |_| {}).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(answered.kind(), ReplyKind::Answer);
    assert_eq!(answered.reply.text, "Hello! Sorry for the wait.");
    assert_eq!(answered.reply.provider.as_deref(), Some("embedded"));
    assert!(store.pending(conversation, 10).unwrap().is_empty());
    let kinds: Vec<_> = store
        .messages(conversation)
        .unwrap()
        .iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(
        kinds,
        [None, Some(ReplyKind::Fallback), Some(ReplyKind::Answer)]
    );
    // And from now on it is answered from the store.
    let calls = b.calls();
    assert!(
        agent
            .handle(&message, &mut |_| {})
            .await
            .unwrap()
            .from_store
    );
    assert_eq!(b.calls(), calls);
}

/// A provider whose first call is a cold model load: nothing for `load`,
/// then the answer; later calls answer at once.
struct ColdLlm {
    load: Duration,
    calls: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicUsize,
    /// `finish_when_abandoned` answers the opposite (embedded-like).
    quits: bool,
    /// Calls whose future was dropped before they finished.
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a call's future dropped before it finished.
struct DropGuard(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl LlmProvider for ColdLlm {
    fn name(&self) -> &str {
        "cold"
    }

    fn model(&self) -> &str {
        "big-model"
    }

    fn finish_when_abandoned(&self) -> bool {
        !self.quits
    }

    fn generate<'a>(
        &'a self,
        _request: &'a LlmRequest,
        on_event: &'a mut convagent::core::llm::OnEvent<'_>,
    ) -> convagent::core::llm::BoxFuture<'a, Result<convagent::core::LlmOutput, LlmError>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let mut guard = DropGuard(Some(self.dropped.clone()));
            if self.calls.fetch_add(1, SeqCst) == 0 {
                tokio::time::sleep(self.load).await;
            }
            guard.0 = None;
            on_event(convagent::core::StreamEvent::Token("warm "));
            on_event(convagent::core::StreamEvent::Token("answer"));
            self.finished.fetch_add(1, SeqCst);
            Ok(convagent::core::LlmOutput {
                text: "warm answer".into(),
                provider: "cold".into(),
                model: "big-model".into(),
                prompt_tokens: None,
                completion_tokens: Some(2),
                tool_calls: Vec::new(),
            })
        })
    }
}

#[tokio::test]
async fn past_its_patience_a_turn_moves_on_and_the_slow_provider_warms_up_unharmed() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
    let clock = Arc::new(FakeClock::at(1_000_000));
    let cold = Arc::new(ColdLlm {
        load: Duration::from_millis(1_500),
        calls: Default::default(),
        finished: Default::default(),
        quits: false,
        dropped: Default::default(),
    });
    let backup = Arc::new(ScriptedLlm::new("embedded", vec![Ok("backup".into())]));
    let chain = Chain::new(
        vec![cold.clone(), backup.clone()],
        store.clone(),
        clock,
        ChainPolicy {
            patience: Some(Duration::from_millis(200)),
            ..policy()
        },
    );

    let out = chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(
        out.provider, "embedded",
        "the turn did not wait for the cold load"
    );
    assert_eq!(
        cold.finished.load(SeqCst),
        0,
        "answered before the load ended"
    );
    let breaker = store.breaker("cold", "big-model").unwrap();
    assert!(
        breaker.as_ref().is_none_or(|b| b.failures == 0),
        "slow is not a failure: {breaker:?}"
    );

    // The load goes on in the background; the next turn finds it warm.
    assert!(crate::support::eventually(10, || cold.finished.load(SeqCst) == 1).await);
    let mut streamed = String::new();
    let out = chain
        .generate(&request(), &mut |e| {
            if let convagent::core::StreamEvent::Token(t) = e {
                streamed.push_str(t);
            }
        })
        .await
        .unwrap();
    assert_eq!(
        (out.provider.as_str(), streamed.as_str()),
        ("cold", "warm answer")
    );
    assert_eq!(backup.calls(), 1);
}

/// A provider that says an abandoned call should stop (the embedded model)
/// has it dropped at its patience, not finished in the background.
#[tokio::test]
async fn past_its_patience_a_call_that_should_stop_is_dropped() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
    let cold = Arc::new(ColdLlm {
        load: Duration::from_secs(3_600),
        calls: Default::default(),
        finished: Default::default(),
        quits: true,
        dropped: Default::default(),
    });
    let backup = Arc::new(ScriptedLlm::new("embedded", vec![Ok("backup".into())]));
    let chain = Chain::new(
        vec![cold.clone(), backup.clone()],
        store,
        Arc::new(FakeClock::at(1_000_000)),
        ChainPolicy {
            patience: Some(Duration::from_millis(100)),
            ..policy()
        },
    );
    let out = chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(out.provider, "embedded");
    assert!(crate::support::eventually(10, || cold.dropped.load(SeqCst) == 1).await);
    assert_eq!(cold.finished.load(SeqCst), 0);
}
