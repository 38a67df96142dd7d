//! The OpenAI-compatible provider against a local fake speaking the
//! documented `/v1/chat/completions` server-sent events (OpenAI API
//! reference, "The chat completion chunk object"; `stream_options.include_usage`).

use std::time::Duration;

use convagent::adapters::llm::{OpenAi, OpenAiSettings, Timeouts};
use convagent::core::{ChatMessage, LlmError, LlmProvider, LlmRequest, Role};
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Collected, stalling_server};

fn provider(base: &str) -> OpenAi {
    OpenAi::new(OpenAiSettings {
        base_url: format!("{base}/v1"),
        api_key: Some("sk-test-123".into()),
        model: "qwen2.5-0.5b".into(),
        timeouts: Timeouts {
            first_chunk: Duration::from_secs(2),
            between_chunks: Duration::from_millis(300),
        },
    })
}

fn request() -> LlmRequest {
    LlmRequest {
        messages: vec![ChatMessage::new(Role::User, "Say hi")],
        max_tokens: 32,
        tools: Vec::new(),
        exchanges: Vec::new(),
    }
}

fn delta(content: &str) -> String {
    json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "qwen2.5-0.5b", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{ "index": 0, "delta": { "content": content }, "logprobs": null, "finish_reason": null }]
    })
    .to_string()
}

fn sse(events: &[String]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

async fn serve(body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test-123"))
        .and(body_partial_json(json!({
            "model": "qwen2.5-0.5b", "stream": true, "max_tokens": 32,
            "messages": [{ "role": "user", "content": "Say hi" }]
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(body),
        )
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn streams_deltas_and_reads_usage() {
    let first = json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "qwen2.5-0.5b",
        "choices": [{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]
    });
    let stop = json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "qwen2.5-0.5b", "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }]
    });
    let usage = json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "qwen2.5-0.5b", "choices": [],
        "usage": { "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11 }
    });
    let mut body = String::from(": keep-alive comment\n\n");
    body.push_str(&sse(&[
        first.to_string(),
        delta("Hi"),
        delta(" there!"),
        stop.to_string(),
        usage.to_string(),
        "[DONE]".into(),
    ]));
    let server = serve(body).await;
    let mut got = Collected::default();
    let out = provider(&server.uri())
        .generate(&request(), &mut got.sink())
        .await
        .unwrap();
    assert_eq!(got.tokens, ["Hi", " there!"]);
    assert_eq!(out.text, "Hi there!");
    assert_eq!(
        (out.provider.as_str(), out.model.as_str()),
        ("openai", "qwen2.5-0.5b")
    );
    assert_eq!(
        (out.prompt_tokens, out.completion_tokens),
        (Some(9), Some(2))
    );
}

#[tokio::test]
async fn an_error_event_mid_stream_is_an_error() {
    let error = json!({"error": {"message": "The server had an error processing your request.", "type": "server_error"}});
    let server = serve(sse(&[delta("Hi"), error.to_string()])).await;
    let err = provider(&server.uri())
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Stream { message, .. } if message.contains("error processing")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stream_without_done_is_an_error() {
    let server = serve(sse(&[delta("Hi")])).await;
    let err = provider(&server.uri())
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Stream { .. }), "{err:?}");
}

#[tokio::test]
async fn a_rejected_key_is_an_http_error_with_the_providers_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": { "message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key" }
        })))
        .mount(&server)
        .await;
    let err = provider(&server.uri())
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LlmError::Http {
            provider: "openai".into(),
            status: 401,
            message: "Incorrect API key provided.".into()
        }
    );
    assert!(!err.to_string().contains("sk-test-123"));
}

#[tokio::test]
async fn a_stall_between_events_is_a_timeout() {
    let url = stalling_server(
        "text/event-stream",
        vec![format!("data: {}\n\n", delta("Hi"))],
    )
    .await;
    let err = provider(&url)
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn lists_models() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", "Bearer sk-test-123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "list",
            "data": [{ "id": "qwen2.5-0.5b", "object": "model", "created": 1686935002, "owned_by": "local" }]
        })))
        .mount(&server)
        .await;
    assert_eq!(
        provider(&server.uri()).list_models().await.unwrap(),
        ["qwen2.5-0.5b"]
    );
}

#[tokio::test]
async fn events_and_characters_split_across_reads_come_out_whole() {
    let mut body = sse(&[delta("Grüße, "), delta("über 🌍 — "), delta("naïve café")]);
    body.push_str("data: [DONE]\n\n");
    let cuts = crate::support::awkward_cuts(&body);
    assert!(
        cuts.len() > 8,
        "the stream is cut inside characters and events"
    );
    let server =
        crate::support::split_stream_server("text/event-stream", body.into_bytes(), cuts).await;
    let mut got = Collected::default();
    let out = provider(&server)
        .generate(&request(), &mut got.sink())
        .await
        .unwrap();
    assert_eq!(out.text, "Grüße, über 🌍 — naïve café");
    assert_eq!(got.text(), out.text);
}
