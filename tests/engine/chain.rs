//! The provider chain: falls through on failure, names who answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use convagent::adapters::clock::SystemClock;
use convagent::adapters::llm::{Chain, ChainPolicy, Ollama, OllamaSettings, Timeouts};
use convagent::adapters::store::SqliteStore;
use convagent::core::{ChatMessage, LlmError, LlmProvider, LlmRequest, Role};

use crate::support::{Collected, FakeLlm, ReservedPort};

fn chain(providers: Vec<Arc<dyn LlmProvider>>) -> Chain {
    Chain::new(
        providers,
        Arc::new(SqliteStore::open_in_memory().unwrap()),
        Arc::new(SystemClock),
        ChainPolicy::default(),
    )
}

fn request() -> LlmRequest {
    LlmRequest {
        messages: vec![ChatMessage::new(Role::User, "hi")],
        max_tokens: 16,
        tools: Vec::new(),
        exchanges: Vec::new(),
    }
}

#[tokio::test]
async fn an_unreachable_ollama_falls_through_at_once() {
    let refused = ReservedPort::new();
    let ollama = Arc::new(Ollama::new(OllamaSettings {
        host: refused.url(),
        model: "mistral:7b".into(),
        num_ctx: 4096,
        keep_alive: "5m".into(),
        timeouts: Timeouts {
            first_chunk: Duration::from_secs(300),
            between_chunks: Duration::from_secs(30),
        },
        vision: None,
    }));
    let backup = Arc::new(FakeLlm {
        name: "embedded".into(),
        ..FakeLlm::replying("from the backup")
    });
    let chain = chain(vec![ollama, backup.clone()]);
    let started = Instant::now();
    let out = chain.generate(&request(), &mut |_| {}).await.unwrap();
    assert_eq!(out.text, "from the backup");
    assert_eq!(out.provider, "embedded");
    assert_eq!(backup.calls(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_failure_after_streaming_tells_the_caller_to_start_over() {
    struct HalfThenFail;
    impl LlmProvider for HalfThenFail {
        fn name(&self) -> &str {
            "flaky"
        }
        fn model(&self) -> &str {
            "m"
        }
        fn generate<'a>(
            &'a self,
            _: &'a LlmRequest,
            on_event: &'a mut convagent::core::llm::OnEvent<'_>,
        ) -> convagent::core::llm::BoxFuture<'a, Result<convagent::core::LlmOutput, LlmError>>
        {
            Box::pin(async move {
                on_event(convagent::core::StreamEvent::Token("partial "));
                Err(LlmError::Stream {
                    provider: "flaky".into(),
                    message: "boom".into(),
                })
            })
        }
    }
    let chain = chain(vec![
        Arc::new(HalfThenFail),
        Arc::new(FakeLlm::replying("whole answer")),
    ]);
    let mut got = Collected::default();
    let out = chain.generate(&request(), &mut got.sink()).await.unwrap();
    assert_eq!(got.restarts, ["flaky"]);
    assert_eq!(got.tokens, ["partial ", "whole ", "answer"]);
    assert_eq!(out.text, "whole answer");
}

#[tokio::test]
async fn when_every_provider_fails_all_errors_are_reported() {
    let a = Arc::new(FakeLlm::failing(LlmError::Other {
        provider: "a".into(),
        message: "down".into(),
    }));
    let b = Arc::new(FakeLlm::failing(LlmError::Other {
        provider: "b".into(),
        message: "also down".into(),
    }));
    let err = chain(vec![a, b])
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("a: down") && text.contains("b: also down"),
        "{text}"
    );
    let empty = chain(vec![])
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(empty, LlmError::NoProvider);
}
