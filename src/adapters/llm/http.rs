//! What the HTTP providers share: sending a streaming request with a
//! generous deadline for the first chunk (cold model loads) and a short one
//! between chunks, mapping transport errors onto [`LlmError`], and reading
//! the body line by line (NDJSON and SSE are both line based).

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::time::{Instant, timeout_at};

use crate::core::llm::LlmError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From sending the request to the first byte of the body.
    pub first_chunk: Duration,
    /// Between two chunks of the body.
    pub between_chunks: Duration,
}

/// The HTTP client every provider uses: connect timeout short, no overall
/// timeout (streams are bounded by [`Timeouts`] instead).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("convagent/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

pub fn transport_error(provider: &str, url: &str, e: &reqwest::Error) -> LlmError {
    let reason = root_cause(e);
    if e.is_builder() || (e.is_connect() && is_nobody_there(e)) {
        LlmError::Unreachable {
            provider: provider.to_string(),
            url: url.to_string(),
            reason,
        }
    } else if e.is_connect() || e.is_timeout() || e.is_request() {
        LlmError::Connection {
            provider: provider.to_string(),
            url: url.to_string(),
            reason,
        }
    } else {
        LlmError::Other {
            provider: provider.to_string(),
            message: format!("request to {url} failed: {}", root_cause(e)),
        }
    }
}

/// Connection refused or an unknown host: nothing to wait for.
fn is_nobody_there(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        let text = c.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return true;
        }
        cause = c.source();
    }
    false
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Pulls the human message out of an error body: Ollama's
/// `{"error": "..."}`, OpenAI's `{"error": {"message": "..."}}`, or the text.
pub fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| match v.get("error")? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => other
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string),
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// A streaming response read line by line under [`Timeouts`].
pub struct LineStream {
    provider: String,
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: Vec<u8>,
    deadline_first: Option<Instant>,
    timeouts: Timeouts,
    done: bool,
}

impl LineStream {
    /// Sends `request` and waits for a successful status, all within the
    /// first-chunk deadline. A non-2xx status becomes [`LlmError::Http`].
    pub async fn open(
        provider: &str,
        url: &str,
        request: reqwest::RequestBuilder,
        timeouts: Timeouts,
    ) -> Result<Self, LlmError> {
        let deadline = Instant::now() + timeouts.first_chunk;
        let timeout = |phase| LlmError::Timeout {
            provider: provider.to_string(),
            phase,
            after: timeouts.first_chunk,
        };
        let response = timeout_at(deadline, request.send())
            .await
            .map_err(|_| timeout("waiting for the response"))?
            .map_err(|e| transport_error(provider, url, &e))?;
        let status = response.status();
        if !status.is_success() {
            let body = timeout_at(deadline, response.text())
                .await
                .map_err(|_| timeout("reading the error body"))?
                .unwrap_or_default();
            return Err(LlmError::Http {
                provider: provider.to_string(),
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        Ok(LineStream {
            provider: provider.to_string(),
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: Vec::new(),
            deadline_first: Some(deadline),
            timeouts,
            done: false,
        })
    }

    /// The next complete line (without its line ending), or `None` at the
    /// end of the body. A last line without a newline is still returned.
    pub async fn next_line(&mut self) -> Result<Option<String>, LlmError> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(self.utf8(line)?));
            }
            if self.done {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.buffer);
                return Ok(Some(self.utf8(rest)?));
            }
            let (deadline, phase, after) = match self.deadline_first {
                Some(d) => (d, "waiting for the first chunk", self.timeouts.first_chunk),
                None => (
                    Instant::now() + self.timeouts.between_chunks,
                    "between chunks",
                    self.timeouts.between_chunks,
                ),
            };
            let chunk =
                timeout_at(deadline, self.body.next())
                    .await
                    .map_err(|_| LlmError::Timeout {
                        provider: self.provider.clone(),
                        phase,
                        after,
                    })?;
            match chunk {
                Some(Ok(bytes)) => {
                    self.deadline_first = None;
                    self.buffer.extend_from_slice(&bytes);
                }
                Some(Err(e)) => {
                    return Err(LlmError::Stream {
                        provider: self.provider.clone(),
                        message: format!("the connection broke: {}", root_cause(&e)),
                    });
                }
                None => self.done = true,
            }
        }
    }

    fn utf8(&self, line: Vec<u8>) -> Result<String, LlmError> {
        String::from_utf8(line).map_err(|_| LlmError::Stream {
            provider: self.provider.clone(),
            message: "the stream is not valid UTF-8".into(),
        })
    }
}

/// A small JSON GET (model lists for `doctor`), bounded by `limit`.
pub async fn fetch_json<T: serde::de::DeserializeOwned>(
    provider: &str,
    url: &str,
    request: reqwest::RequestBuilder,
    limit: Duration,
) -> Result<T, LlmError> {
    let timeouts = Timeouts {
        first_chunk: limit,
        between_chunks: limit,
    };
    let mut lines = LineStream::open(provider, url, request, timeouts).await?;
    let mut body = String::new();
    while let Some(line) = lines.next_line().await? {
        body.push_str(&line);
    }
    serde_json::from_str(&body).map_err(|e| LlmError::Other {
        provider: provider.to_string(),
        message: format!("unexpected answer from {url}: {e}"),
    })
}

/// Joins a base URL and a path without doubling or dropping the slash.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_from_each_dialect() {
        assert_eq!(
            error_message(r#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(
            error_message(r#"{"error":{"message":"bad key","type":"auth"}}"#),
            "bad key"
        );
        assert_eq!(error_message(" upstream down \n"), "upstream down");
        assert!(error_message(&"x".repeat(1000)).ends_with('…'));
    }

    #[test]
    fn joins_urls() {
        assert_eq!(join("http://h:1/", "/api/chat"), "http://h:1/api/chat");
        assert_eq!(
            join("http://h:1/v1", "chat/completions"),
            "http://h:1/v1/chat/completions"
        );
    }
}
