//! The Ollama provider against a local fake speaking `/api/chat` NDJSON as
//! documented in Ollama's API reference (docs/api.md, "Generate a chat
//! completion", streaming response).

use std::time::{Duration, Instant};

use convagent::adapters::llm::{Ollama, OllamaSettings, Timeouts};
use convagent::core::{ChatMessage, LlmError, LlmProvider, LlmRequest, Role};
use serde_json::json;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Collected, ReservedPort, stalling_server};

fn ollama(host: &str, timeouts: Timeouts) -> Ollama {
    Ollama::new(OllamaSettings {
        host: host.into(),
        model: "mistral:7b".into(),
        num_ctx: 4096,
        keep_alive: "5m".into(),
        timeouts,
        vision: None,
    })
}

fn timeouts(first_ms: u64, between_ms: u64) -> Timeouts {
    Timeouts {
        first_chunk: Duration::from_millis(first_ms),
        between_chunks: Duration::from_millis(between_ms),
    }
}

fn request() -> LlmRequest {
    LlmRequest {
        messages: vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "why is the sky blue?"),
        ],
        max_tokens: 64,
        tools: Vec::new(),
        exchanges: Vec::new(),
    }
}

fn chunk(content: &str) -> String {
    json!({
        "model": "mistral:7b",
        "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "message": { "role": "assistant", "content": content },
        "done": false
    })
    .to_string()
}

fn final_chunk() -> String {
    json!({
        "model": "mistral:7b",
        "created_at": "2023-08-04T19:22:45.499127Z",
        "message": { "role": "assistant", "content": "" },
        "done": true,
        "done_reason": "stop",
        "total_duration": 4883583458u64,
        "load_duration": 1334875,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 342546000,
        "eval_count": 282,
        "eval_duration": 4535599000u64
    })
    .to_string()
}

fn ndjson(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

async fn serve(body: String, delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .and(body_partial_json(json!({
            "model": "mistral:7b",
            "stream": true,
            "keep_alive": "5m",
            "options": { "num_ctx": 4096, "num_predict": 64 },
            "messages": [
                { "role": "system", "content": "be brief" },
                { "role": "user", "content": "why is the sky blue?" }
            ]
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-ndjson")
                .set_body_string(body)
                .set_delay(delay),
        )
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn streams_the_reply_and_reads_the_token_counts() {
    let body = ndjson(&[
        chunk("The"),
        chunk(" sky"),
        chunk(" scatters."),
        final_chunk(),
    ]);
    let server = serve(body, Duration::ZERO).await;
    let mut got = Collected::default();
    let out = ollama(&server.uri(), timeouts(2000, 2000))
        .generate(&request(), &mut got.sink())
        .await
        .unwrap();
    assert_eq!(got.tokens, ["The", " sky", " scatters."]);
    assert_eq!(out.text, "The sky scatters.");
    assert_eq!(
        (out.provider.as_str(), out.model.as_str()),
        ("ollama", "mistral:7b")
    );
    assert_eq!(
        (out.prompt_tokens, out.completion_tokens),
        (Some(26), Some(282))
    );
}

#[tokio::test]
async fn a_final_chunk_without_metrics_is_fine() {
    let done = json!({"model": "mistral:7b", "message": {"role": "assistant", "content": ""}, "done": true});
    let server = serve(ndjson(&[chunk("Hi"), done.to_string()]), Duration::ZERO).await;
    let out = ollama(&server.uri(), timeouts(2000, 2000))
        .generate(&request(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(out.text, "Hi");
    assert_eq!((out.prompt_tokens, out.completion_tokens), (None, None));
}

#[tokio::test]
async fn an_error_line_mid_stream_after_http_200_is_an_error() {
    let error =
        json!({"error": "an error was encountered while running the model: unexpected EOF"});
    let server = serve(ndjson(&[chunk("The"), error.to_string()]), Duration::ZERO).await;
    let mut got = Collected::default();
    let err = ollama(&server.uri(), timeouts(2000, 2000))
        .generate(&request(), &mut got.sink())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Stream { message, .. } if message.contains("unexpected EOF")),
        "{err:?}"
    );
    assert_eq!(got.tokens, ["The"]);
}

#[tokio::test]
async fn a_stream_cut_before_done_is_an_error() {
    let server = serve(ndjson(&[chunk("The")]), Duration::ZERO).await;
    let err = ollama(&server.uri(), timeouts(2000, 2000))
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Stream { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_model_says_how_to_pull_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": "model \"mistral:7b\" not found, try pulling it first"}),
        ))
        .mount(&server)
        .await;
    let err = ollama(&server.uri(), timeouts(2000, 2000))
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    match err {
        LlmError::ModelMissing { model, hint, .. } => {
            assert_eq!(model, "mistral:7b");
            assert!(hint.contains("ollama pull mistral:7b"), "{hint}");
        }
        other => panic!("expected ModelMissing, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_error_is_reported_with_its_status() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"error": "out of memory"})))
        .mount(&server)
        .await;
    let err = ollama(&server.uri(), timeouts(2000, 2000))
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LlmError::Http {
            provider: "ollama".into(),
            status: 500,
            message: "out of memory".into()
        }
    );
}

#[tokio::test]
async fn connection_refused_fails_at_once_as_unreachable() {
    let refused = ReservedPort::new();
    let started = Instant::now();
    let err = ollama(&refused.url(), timeouts(60_000, 60_000))
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Unreachable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for any timeout"
    );
}

#[tokio::test]
async fn a_slow_first_chunk_is_waited_for_under_the_first_chunk_timeout() {
    // A cold model load: nothing for 800 ms, far beyond the 200 ms allowed
    // between chunks but within the 5 s allowed for the first one.
    let body = ndjson(&[chunk("Loaded"), final_chunk()]);
    let server = serve(body, Duration::from_millis(800)).await;
    let out = ollama(&server.uri(), timeouts(5000, 200))
        .generate(&request(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(out.text, "Loaded");
}

#[tokio::test]
async fn a_first_chunk_later_than_its_timeout_is_a_timeout() {
    let server = serve(
        ndjson(&[chunk("late"), final_chunk()]),
        Duration::from_millis(1500),
    )
    .await;
    let err = ollama(&server.uri(), timeouts(300, 5000))
        .generate(&request(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_stall_between_chunks_is_a_timeout() {
    let url = stalling_server("application/x-ndjson", vec![format!("{}\n", chunk("The"))]).await;
    let mut got = Collected::default();
    let started = Instant::now();
    let err = ollama(&url, timeouts(5000, 300))
        .generate(&request(), &mut got.sink())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Timeout { phase, .. } if phase.contains("between")),
        "{err:?}"
    );
    assert_eq!(got.tokens, ["The"]);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn lists_models_and_matches_default_tags() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/tags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "models": [
                { "name": "mistral:7b", "model": "mistral:7b", "size": 4113301824u64 },
                { "name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189u64 }
            ]
        })))
        .mount(&server)
        .await;
    let o = ollama(&server.uri(), timeouts(1000, 1000));
    let models = o.list_models().await.unwrap();
    assert_eq!(models, ["mistral:7b", "llama3.2:latest"]);
    assert!(o.has_model(&models));
    let llama = Ollama::new(OllamaSettings {
        model: "llama3.2".into(),
        ..o.settings().clone()
    });
    assert!(llama.has_model(&models));
    let other = Ollama::new(OllamaSettings {
        model: "phi3".into(),
        ..o.settings().clone()
    });
    assert!(!other.has_model(&models));
}

#[tokio::test]
async fn lines_and_characters_split_across_reads_come_out_whole() {
    let body = ndjson(&[
        chunk("Grüße, "),
        chunk("über 🌍 — "),
        chunk("naïve café"),
        final_chunk(),
    ]);
    let cuts = crate::support::awkward_cuts(&body);
    assert!(
        cuts.len() > 8,
        "the stream is cut inside characters and lines"
    );
    let server =
        crate::support::split_stream_server("application/x-ndjson", body.into_bytes(), cuts).await;
    let mut got = Collected::default();
    let out = ollama(&server, timeouts(5000, 5000))
        .generate(&request(), &mut got.sink())
        .await
        .unwrap();
    assert_eq!(out.text, "Grüße, über 🌍 — naïve café");
    assert_eq!(got.text(), out.text);
    assert_eq!(out.completion_tokens, Some(282));
}

/// Tool calling as Ollama's API documents it (streaming with tools): the
/// tools offered in the request, a `message.tool_calls` entry with the
/// arguments as an object, then `done`.
#[tokio::test]
async fn tool_calls_in_the_stream_are_returned_with_their_arguments() {
    use convagent::core::tools::ToolSpec;
    let call = json!({
        "model": "mistral:7b",
        "created_at": "2025-05-27T22:54:57.641643Z",
        "message": { "role": "assistant", "content": "", "tool_calls": [
            { "function": { "name": "get_current_weather",
                "arguments": { "format": "celsius", "location": "Toronto" } } }
        ]},
        "done": false
    });
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .and(body_partial_json(json!({
            "tools": [{ "type": "function", "function": { "name": "get_current_weather" } }]
        })))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(ndjson(&[call.to_string(), final_chunk()])),
        )
        .mount(&server)
        .await;
    let mut request = request();
    request.tools = vec![ToolSpec {
        name: "get_current_weather".into(),
        description: "Get the current weather for a location".into(),
        parameters: json!({ "type": "object", "required": ["location"] }),
    }];
    let out = ollama(&server.uri(), timeouts(2_000, 1_000))
        .generate(&request, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(out.text, "");
    assert_eq!(out.tool_calls.len(), 1);
    assert_eq!(out.tool_calls[0].name, "get_current_weather");
    assert_eq!(
        out.tool_calls[0].arguments,
        json!({ "format": "celsius", "location": "Toronto" })
    );
}
