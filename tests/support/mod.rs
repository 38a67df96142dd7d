//! Helpers shared by the integration tests: fake LLM providers, the real
//! model's location, and temp environments for the binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Mutex;

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

/// An address on loopback where nothing listens (connection refused).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A raw HTTP/1.1 server on loopback that answers one request with a
/// chunked 200, sends `chunks`, then holds the connection open without
/// sending more: a provider that stalls mid-stream.
pub async fn stalling_server(content_type: &'static str, chunks: Vec<String>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                for c in chunks {
                    let frame = format!("{:x}\r\n{c}\r\n", c.len());
                    socket.write_all(frame.as_bytes()).await.unwrap();
                }
                socket.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
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
}

impl EchoLlm {
    pub fn new() -> Self {
        EchoLlm {
            calls: Default::default(),
            repeat: 1,
            delay: std::time::Duration::ZERO,
            seen: Mutex::new(Vec::new()),
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
