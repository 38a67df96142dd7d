//! Channel adapters: each turns its provider's webhooks into canonical
//! messages (verify, parse) and sends replies back, behind the core's
//! [`ChannelAdapter`](crate::core::channel::ChannelAdapter) port.

pub mod cli;
pub mod slack;
pub mod telegram;
pub mod whatsapp;

use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::core::channel::{ChannelAdapter, SendError};

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

/// The Twilio WhatsApp adapter, if its secrets are configured.
pub fn whatsapp(config: &Config) -> Option<whatsapp::WhatsApp> {
    let t = &config.channels.twilio;
    Some(whatsapp::WhatsApp::new(whatsapp::TwilioSettings {
        account_sid: t.account_sid.clone()?,
        auth_token: t.auth_token.clone()?,
        whatsapp_from: t.whatsapp_from.clone(),
        api_base: t
            .api_base
            .clone()
            .unwrap_or_else(|| whatsapp::DEFAULT_API_BASE.into()),
        max_body_bytes: t.max_body_bytes,
    }))
}

/// The Telegram adapter, if its bot token and webhook secret are configured.
pub fn telegram(config: &Config) -> Option<telegram::Telegram> {
    let t = &config.channels.telegram;
    Some(telegram::Telegram::new(telegram::TelegramSettings {
        bot_token: t.bot_token.clone()?,
        webhook_secret: t.webhook_secret.clone()?,
        api_base: t
            .api_base
            .clone()
            .unwrap_or_else(|| telegram::DEFAULT_API_BASE.into()),
        max_body_bytes: t.max_body_bytes,
    }))
}

/// The Slack adapter, if its bot token and signing secret are configured.
pub fn slack(config: &Config) -> Option<slack::Slack> {
    let s = &config.channels.slack;
    Some(slack::Slack::new(slack::SlackSettings {
        bot_token: s.bot_token.clone()?,
        signing_secret: s.signing_secret.clone()?,
        api_base: s
            .api_base
            .clone()
            .unwrap_or_else(|| slack::DEFAULT_API_BASE.into()),
        max_body_bytes: s.max_body_bytes,
    }))
}

/// The channels whose secrets are configured, as adapters.
pub fn enabled(config: &Config) -> Vec<Arc<dyn ChannelAdapter>> {
    let mut out: Vec<Arc<dyn ChannelAdapter>> = Vec::new();
    if let Some(a) = whatsapp(config) {
        out.push(Arc::new(a));
    }
    if let Some(a) = telegram(config) {
        out.push(Arc::new(a));
    }
    if let Some(a) = slack(config) {
        out.push(Arc::new(a));
    }
    out
}

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
