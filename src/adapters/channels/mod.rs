//! Channel adapters: each turns its provider's webhooks into canonical
//! messages (verify, parse) and sends replies back, behind the core's
//! [`ChannelAdapter`](crate::core::channel::ChannelAdapter) port.

pub mod cli;
pub mod registry;
pub mod slack;
pub mod sms;
pub mod telegram;
pub mod twilio;
pub mod whatsapp;

use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::core::channel::{FetchError, SendError};

/// Compares secrets without leaking, through timing, how much matched.
pub fn secure_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("convagent/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// A request that did not get an answer, said with its causes ("error
/// sending request: client error (Connect): tcp connect error: Connection
/// refused") and without its URL (Telegram's holds the bot token).
pub fn unanswered(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut said = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        said.push_str(": ");
        said.push_str(&c.to_string());
        cause = c.source();
    }
    said
}

/// The body of `request`, at most `max_bytes` of it: a file over the cap is
/// refused by its `Content-Length` before a byte is read, or as soon as the
/// bytes read pass the cap (a server may not say how long it is). A 5xx or
/// a connection that failed is worth another try; a 4xx or the cap is not.
async fn download(request: reqwest::RequestBuilder, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    use futures_util::StreamExt;
    let response = request
        .send()
        .await
        .map_err(|e| FetchError::transient(unanswered(e)))?;
    let status = response.status();
    if !status.is_success() {
        let why = format!("HTTP {}", status.as_u16());
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            FetchError::transient(why)
        } else {
            FetchError::permanent(why)
        });
    }
    let over = || FetchError::permanent(format!("over the cap of {max_bytes} bytes"));
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(over());
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FetchError::transient(unanswered(e)))?;
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After: <seconds>` of a response, if any.
fn retry_after_header(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Maps a provider's failure onto what the outbox does with it.
fn send_error(
    status: u16,
    retry_after: Option<Duration>,
    code: String,
    detail: String,
) -> SendError {
    match status {
        429 => SendError::RateLimited {
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            detail,
        },
        500..=599 => SendError::Transient(format!("HTTP {status}: {detail}")),
        _ => SendError::Permanent { code, detail },
    }
}

pub use registry::enabled;

#[cfg(test)]
pub(crate) mod leniency {
    //! Ingress leniency: an authenticated payload in the provider's format
    //! is never refused for a missing field. These build every variant of a
    //! documented payload with one field (at any depth) removed.

    use crate::core::channel::WebhookRequest;

    /// `value` with each object key, at every depth, removed in turn.
    pub fn without_each_field(value: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        walk(value, &mut Vec::new(), value, &mut out);
        out
    }

    fn walk(
        root: &serde_json::Value,
        path: &mut Vec<String>,
        node: &serde_json::Value,
        out: &mut Vec<(String, serde_json::Value)>,
    ) {
        let Some(map) = node.as_object() else { return };
        for (key, child) in map {
            path.push(key.clone());
            let mut copy = root.clone();
            let mut target = &mut copy;
            for p in &path[..path.len() - 1] {
                target = &mut target[p.as_str()];
            }
            if let Some(obj) = target.as_object_mut() {
                obj.remove(key);
            }
            out.push((path.join("."), copy));
            walk(root, path, child, out);
            path.pop();
        }
    }

    pub fn request<'a>(content_type: &'a [(String, String)], body: &'a [u8]) -> WebhookRequest<'a> {
        WebhookRequest {
            url: "https://bot.example/webhook/x",
            headers: content_type,
            body,
            now_ms: 1_763_712_000_000,
        }
    }

    pub fn json_headers() -> Vec<(String, String)> {
        vec![(
            "content-type".into(),
            "APPLICATION/JSON; charset=UTF-8".into(),
        )]
    }
}
