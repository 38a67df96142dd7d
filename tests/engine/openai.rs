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
        vision: false,
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

/// Native tool calling as the API reference documents it: the tools offered
/// as `{"type": "function", "function": …}`, a call streamed in pieces under
/// one `index` (its arguments a JSON string cut anywhere), `finish_reason`
/// `tool_calls`; the next request carries the call and a `tool` message
/// with its `tool_call_id`.
#[tokio::test]
async fn a_tool_call_streamed_in_pieces_is_put_together() {
    use convagent::core::tools::{ToolCall, ToolExchange, ToolResult, ToolSpec};
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({
            "id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1694268190,
            "model": "qwen2.5-0.5b",
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
        })
        .to_string()
    };
    let body = sse(&[
        chunk(
            json!({ "role": "assistant", "content": null, "tool_calls": [{ "index": 0,
                "id": "call_abc", "type": "function",
                "function": { "name": "get_current_time", "arguments": "" } }] }),
            json!(null),
        ),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"timez" } }] }),
            json!(null),
        ),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "one\": \"UTC\"}" } }] }),
            json!(null),
        ),
        chunk(json!({}), json!("tool_calls")),
        "[DONE]".into(),
    ]);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({
            "tools": [{ "type": "function", "function": {
                "name": "get_current_time", "description": "The time now",
                "parameters": { "type": "object" } } }]
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(body),
        )
        .mount(&server)
        .await;
    let mut request = request();
    request.tools = vec![ToolSpec {
        name: "get_current_time".into(),
        description: "The time now".into(),
        parameters: json!({ "type": "object" }),
    }];
    let out = provider(&server.uri())
        .generate(&request, &mut |_| {})
        .await
        .unwrap();
    let call = ToolCall {
        id: Some("call_abc".into()),
        name: "get_current_time".into(),
        arguments: json!({ "timezone": "UTC" }),
    };
    assert_eq!(out.tool_calls, std::slice::from_ref(&call));
    assert_eq!(out.text, "");

    // The next request: the call and its result, after the conversation.
    request.exchanges.push(ToolExchange {
        text: String::new(),
        calls: vec![call],
        results: vec![ToolResult {
            text: "12:00".into(),
            failed: false,
        }],
    });
    let _ = provider(&server.uri())
        .generate(&request, &mut |_| {})
        .await;
    let sent: serde_json::Value =
        serde_json::from_slice(&server.received_requests().await.unwrap()[1].body).unwrap();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_abc");
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["arguments"],
        "{\"timezone\":\"UTC\"}"
    );
    assert_eq!(
        messages[2],
        json!({ "role": "tool", "tool_call_id": "call_abc", "content": "12:00" })
    );
}
