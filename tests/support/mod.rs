//! Helpers shared by the integration tests: fake LLM providers, the real
//! model's location, and temp environments for the binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Mutex;

#[path = "ports.rs"]
mod ports;
#[path = "postgres.rs"]
pub mod postgres;
#[path = "powercut.rs"]
pub mod powercut;

pub use ports::ReservedPort;

use convagent::config::Dirs;
use convagent::core::llm::{BoxFuture, OnEvent};
use convagent::core::{LlmError, LlmOutput, LlmProvider, LlmRequest, StreamEvent};

/// A scripted LLM: streams `reply` in word-sized pieces (or fails with
/// `error`), and records every request it gets.
pub struct FakeLlm {
    pub name: String,
    pub reply: String,
    pub error: Option<LlmError>,
    pub requests: Mutex<Vec<LlmRequest>>,
}

impl FakeLlm {
    pub fn replying(reply: &str) -> Self {
        FakeLlm {
            name: "fake".into(),
            reply: reply.into(),
            error: None,
            requests: Mutex::new(Vec::new()),
        }
    }

    pub fn failing(error: LlmError) -> Self {
        FakeLlm {
            error: Some(error),
            ..FakeLlm::replying("")
        }
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last_request(&self) -> LlmRequest {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request")
    }
}

impl LlmProvider for FakeLlm {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> &str {
        "fake-model"
    }

    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(request.clone());
            if let Some(e) = &self.error {
                return Err(e.clone());
            }
            for piece in self.reply.split_inclusive(' ') {
                on_event(StreamEvent::Token(piece));
            }
            Ok(LlmOutput {
                text: self.reply.clone(),
                provider: self.name.clone(),
                model: "fake-model".into(),
                prompt_tokens: Some(10),
                completion_tokens: Some(self.reply.split(' ').count() as u32),
                tool_calls: Vec::new(),
            })
        })
    }
}

/// The real default model, as `install.sh` placed it (or
/// `CONVAGENT_MODEL_PATH`). Tests that generate need it: fail loudly.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("CONVAGENT_MODEL_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| Dirs::from_env().unwrap().default_model_path());
    assert!(
        path.is_file(),
        "the embedded model is missing at {}: run ./install.sh --deps-only first",
        path.display()
    );
    path
}

/// The local embedding model (all-MiniLM-L6-v2), as `install.sh` placed
/// it. Tests that embed need it: fail loudly.
pub fn embedding_model() -> PathBuf {
    let dir = Dirs::from_env().unwrap().default_embedding_model();
    assert!(
        dir.join("model.safetensors").is_file(),
        "the embedding model is missing at {}: run ./install.sh --deps-only first",
        dir.display()
    );
    dir
}

/// The official MCP conformance suite (npm) and the Node it runs on, as
/// `install.sh --deps-only` installs them: (node, the suite's entry point).
pub fn mcp_conformance() -> (PathBuf, PathBuf) {
    let dir = Dirs::from_env()
        .unwrap()
        .data
        .join("mcp-conformance/node_modules");
    let node = dir.join(".bin/node");
    let suite = dir.join("@modelcontextprotocol/conformance/dist/index.js");
    assert!(
        node.is_file() && suite.is_file(),
        "the MCP conformance suite is missing at {}: run ./install.sh --deps-only first",
        dir.display()
    );
    (node, suite)
}

/// The Python with the MCP test tools (`mcp`, `mcp-server-time` from PyPI)
/// that `install.sh --deps-only` sets up in a virtualenv of its own (or
/// `CONVAGENT_TEST_PYTHON`).
pub fn mcp_python() -> PathBuf {
    let path = std::env::var_os("CONVAGENT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Dirs::from_env().unwrap().data.join("mcp-venv/bin/python"));
    assert!(
        path.is_file(),
        "the MCP test tools are missing at {}: run ./install.sh --deps-only first",
        path.display()
    );
    path
}

/// The official MCP client the tests drive servers with (Python SDK).
pub fn mcp_client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/mcp_client.py")
}

/// A raw HTTP/1.1 server on loopback that answers one request with a
/// chunked 200, sends `chunks`, then holds the connection open without
/// sending more: a provider that stalls mid-stream.
pub async fn stalling_server(content_type: &'static str, chunks: Vec<String>) -> String {
    let pieces = chunks.into_iter().map(String::into_bytes).collect();
    chunked_server(content_type, pieces, std::time::Duration::ZERO, false).await
}

/// Serves every request with a chunked 200 of `content_type`: each of
/// `pieces` its own chunk, flushed, `gap` apart; then the end of the body,
/// or (`end` false) nothing more while the connection stays open.
async fn chunked_server(
    content_type: &'static str,
    pieces: Vec<Vec<u8>>,
    gap: std::time::Duration,
    end: bool,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                for piece in pieces {
                    let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
                    frame.extend_from_slice(&piece);
                    frame.extend_from_slice(b"\r\n");
                    socket.write_all(&frame).await.unwrap();
                    socket.flush().await.unwrap();
                    tokio::time::sleep(gap).await;
                }
                if end {
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                    let _ = socket.flush().await;
                } else {
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Collects streamed tokens and restarts.
#[derive(Default, Debug)]
pub struct Collected {
    pub tokens: Vec<String>,
    pub restarts: Vec<String>,
}

impl Collected {
    pub fn sink(&mut self) -> impl FnMut(StreamEvent<'_>) + Send + '_ {
        move |e| match e {
            StreamEvent::Token(t) => self.tokens.push(t.to_string()),
            StreamEvent::Restart { provider, .. } => self.restarts.push(provider.to_string()),
        }
    }

    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}

/// A clock the test moves by hand; `sleep` returns at once and moves it.
pub struct FakeClock {
    now: std::sync::atomic::AtomicI64,
    pub slept: Mutex<Vec<std::time::Duration>>,
}

impl FakeClock {
    pub fn at(ms: i64) -> Self {
        FakeClock {
            now: std::sync::atomic::AtomicI64::new(ms),
            slept: Mutex::new(Vec::new()),
        }
    }

    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn slept(&self) -> Vec<std::time::Duration> {
        self.slept.lock().unwrap().clone()
    }
}

impl convagent::core::Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<'_, ()> {
        self.slept.lock().unwrap().push(duration);
        self.advance(duration.as_millis() as i64);
        Box::pin(async {})
    }
}

/// An LLM whose behaviour the test scripts call by call: each call takes
/// the next outcome (the last one repeats).
pub struct ScriptedLlm {
    pub name: String,
    pub outcomes: Mutex<Vec<Result<String, LlmError>>>,
    pub calls: std::sync::atomic::AtomicUsize,
    pub last_failure: Mutex<Option<std::time::Instant>>,
}

impl ScriptedLlm {
    pub fn new(name: &str, outcomes: Vec<Result<String, LlmError>>) -> Self {
        ScriptedLlm {
            name: name.into(),
            outcomes: Mutex::new(outcomes),
            calls: Default::default(),
            last_failure: Mutex::new(None),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, every call has this outcome.
    pub fn set(&self, outcome: Result<String, LlmError>) {
        *self.outcomes.lock().unwrap() = vec![outcome];
    }
}

impl LlmProvider for ScriptedLlm {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> &str {
        "scripted"
    }

    fn generate<'a>(
        &'a self,
        _request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let outcome = {
                let mut outcomes = self.outcomes.lock().unwrap();
                if outcomes.len() > 1 {
                    outcomes.remove(0)
                } else {
                    outcomes[0].clone()
                }
            };
            match outcome {
                Ok(text) => {
                    on_event(StreamEvent::Token(&text));
                    Ok(LlmOutput {
                        text,
                        provider: self.name.clone(),
                        model: "scripted".into(),
                        prompt_tokens: None,
                        completion_tokens: None,
                        tool_calls: Vec::new(),
                    })
                }
                Err(e) => {
                    *self.last_failure.lock().unwrap() = Some(std::time::Instant::now());
                    Err(e)
                }
            }
        })
    }
}

pub fn http_500(provider: &str) -> LlmError {
    LlmError::Http {
        provider: provider.into(),
        status: 500,
        message: "internal error".into(),
    }
}

pub fn reset_by_peer(provider: &str) -> LlmError {
    LlmError::Connection {
        provider: provider.into(),
        url: "http://127.0.0.1:9".into(),
        reason: "connection reset by peer".into(),
    }
}

/// Rows of a raw query on a store file, for checking what the port does
/// not expose (transitions, violations, summary ranges).
pub fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    path: &std::path::Path,
    sql: &str,
) -> Vec<(A, B)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// An LLM that answers "echo: <the last user message>", so tests can tell
/// which reply answers which message.
pub struct EchoLlm {
    pub calls: std::sync::atomic::AtomicUsize,
    /// Repeats the answer this many times (long replies).
    pub repeat: usize,
    pub delay: std::time::Duration,
    /// Every request's user messages, in call order.
    pub seen: Mutex<Vec<Vec<String>>>,
    /// Every request's system messages (the prompt, a summary, what was
    /// retrieved), in call order.
    pub systems: Mutex<Vec<Vec<String>>>,
}

impl EchoLlm {
    pub fn new() -> Self {
        EchoLlm {
            calls: Default::default(),
            repeat: 1,
            delay: std::time::Duration::ZERO,
            seen: Mutex::new(Vec::new()),
            systems: Mutex::new(Vec::new()),
        }
    }
}

impl Default for EchoLlm {
    fn default() -> Self {
        Self::new()
    }
}

impl LlmProvider for EchoLlm {
    fn name(&self) -> &str {
        "echo"
    }

    fn model(&self) -> &str {
        "echo-1"
    }

    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.seen.lock().unwrap().push(
                request
                    .messages
                    .iter()
                    .filter(|m| m.role == convagent::core::Role::User)
                    .map(|m| m.content.clone())
                    .collect(),
            );
            self.systems.lock().unwrap().push(
                request
                    .messages
                    .iter()
                    .filter(|m| m.role == convagent::core::Role::System)
                    .map(|m| m.content.clone())
                    .collect(),
            );
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let last = request
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let text = vec![format!("echo: {last}"); self.repeat].join(" ");
            on_event(StreamEvent::Token(&text));
            Ok(LlmOutput {
                text,
                provider: "echo".into(),
                model: "echo-1".into(),
                prompt_tokens: Some(1),
                completion_tokens: Some(1),
                tool_calls: Vec::new(),
            })
        })
    }
}

/// Polls `check` every 20 ms until it holds or `secs` pass.
pub async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check()
}

/// The providers' documented signing algorithms, written here from their
/// documentation and never taken from the adapters, so that a test signed
/// with these fails when an adapter verifies differently.
pub mod signing {
    use base64::Engine;
    use hmac::{Hmac, Mac};

    /// Twilio ("Webhooks security"): the full URL Twilio called, then each
    /// POST parameter's name and value with the parameters sorted by name
    /// (a repeated parameter's values in sorted order, as Twilio's own SDK
    /// validators take them); HMAC-SHA1 keyed with the auth token; base64.
    pub fn twilio(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
        let mut sorted: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(b.1)));
        let mut data = url.to_string();
        for (k, v) in sorted {
            data.push_str(k);
            data.push_str(v);
        }
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).unwrap();
        mac.update(data.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// Slack ("Verifying requests from Slack"): `v0:{timestamp}:{body}`,
    /// HMAC-SHA256 keyed with the signing secret, hex, prefixed `v0=`.
    pub fn slack(signing_secret: &str, timestamp: &str, body: &[u8]) -> String {
        let mut base = format!("v0:{timestamp}:").into_bytes();
        base.extend_from_slice(body);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(signing_secret.as_bytes()).unwrap();
        mac.update(&base);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn twilio_matches_its_documented_example() {
        // Twilio's documentation: token 12345, this URL and these
        // parameters, listed here unsorted.
        let params: Vec<(String, String)> = [
            ("Digits", "1234"),
            ("To", "+18005551212"),
            ("From", "+12349013030"),
            ("Caller", "+12349013030"),
            ("CallSid", "CA1234567890ABCDE"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            twilio(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn slack_matches_its_documented_example() {
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            slack("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }
}

/// [`eventually`] for tests that are not async.
pub fn eventually_blocking(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check()
}

/// A streaming HTTP/1.1 server on loopback that sends `body` (answering
/// every request the same) cut into pieces at `cuts` (byte offsets), each
/// piece its own chunk, written and flushed 30 ms apart so each arrives in
/// a read of its own: lines, events and UTF-8 characters split across
/// reads, as real networks deliver them.
pub async fn split_stream_server(
    content_type: &'static str,
    body: Vec<u8>,
    cuts: Vec<usize>,
) -> String {
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < body.len()));
    bounds.push(body.len());
    let pieces = bounds
        .windows(2)
        .map(|w| body[w[0]..w[1]].to_vec())
        .collect();
    chunked_server(
        content_type,
        pieces,
        std::time::Duration::from_millis(30),
        true,
    )
    .await
}

/// Byte offsets inside `text`: in the middle of every multi-byte character
/// and of every line, so a stream cut there splits both.
pub fn awkward_cuts(text: &str) -> Vec<usize> {
    let mut cuts: Vec<usize> = text
        .char_indices()
        .filter(|(_, c)| c.len_utf8() > 1)
        .map(|(i, _)| i + 1)
        .collect();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        cuts.push(start + line.len() / 2);
        start += line.len();
    }
    cuts.sort();
    cuts.dedup();
    cuts
}

/// Ollama's streamed `/api/chat` answer (NDJSON) saying `text`: one content
/// chunk, then the final chunk with its token count.
pub fn ollama_answer(text: &str) -> String {
    [
        serde_json::json!({ "model": "mistral:7b", "message": { "role": "assistant", "content": text }, "done": false }),
        serde_json::json!({ "model": "mistral:7b", "message": { "role": "assistant", "content": "" }, "done": true, "eval_count": 2 }),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect()
}

/// A text message as a channel adapter hands it over (no attachments, no
/// metadata), for filling stores.
pub fn inbound(
    channel: convagent::core::Channel,
    sender: &str,
    id: &str,
    text: &str,
    at: i64,
) -> convagent::core::InboundMessage {
    convagent::core::InboundMessage {
        key: convagent::core::ConversationKey::new(channel, sender, ""),
        text: text.into(),
        provider_message_id: id.into(),
        provider_ts: None,
        received_at: at,
        attachments: vec![],
        metadata: Default::default(),
        correlation_id: convagent::core::CorrelationId::generate(),
    }
}

/// A provider's answer, for filling stores.
pub fn answer(text: &str, prompt_version: i64, at: i64) -> convagent::core::NewReply {
    convagent::core::NewReply {
        kind: convagent::core::ReplyKind::Answer,
        text: text.into(),
        provider: "ollama".into(),
        model: "mistral:7b".into(),
        prompt_version,
        prompt_tokens: None,
        completion_tokens: None,
        latency_ms: 10,
        created_at: at,
    }
}

/// A one-page PDF showing `text` in Helvetica, written by hand after the
/// PDF 1.4 reference (objects, a cross-reference table with each object's
/// byte offset, the trailer), for tests that need a real document.
pub fn pdf_with_text(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
         /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
            .to_string(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_string(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{object}\nendobj\n", i + 1).bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).bytes());
    for offset in offsets {
        out.extend(format!("{offset:010} 00000 n \n").bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .bytes(),
    );
    out
}
