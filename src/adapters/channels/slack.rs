//! Slack Events API. Inbound: JSON events signed with `X-Slack-Signature` =
//! `v0=` hex(HMAC-SHA256(signing secret, `v0:{timestamp}:{raw body}`)), the
//! timestamp within 5 minutes of now; `url_verification` is answered with
//! its challenge; bot messages (including our own: `bot_id` without any
//! subtype) are ignored. Outbound: `chat.postMessage` in the thread.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use std::sync::Arc;

use super::registry::ChannelSpec;
use super::{http_client, secure_eq, send_error};
use crate::config::Config;
use crate::core::approvals;
use crate::core::channel::{
    ChannelAdapter, Inbound, Registration, SendError, Sent, WebhookError, WebhookRequest,
};
use crate::core::llm::BoxFuture;
use crate::core::message::{
    Attachment, AttachmentKind, Channel, ConversationKey, CorrelationId, InboundMessage,
    SENDER_NAME,
};

pub const DEFAULT_API_BASE: &str = "https://slack.com/api";
/// Slack truncates messages past about 4,000 characters.
pub const MAX_TEXT: usize = 4000;
/// How far a signed timestamp may be from now.
pub const REPLAY_WINDOW_SECS: i64 = 5 * 60;

#[derive(Debug, Clone)]
pub struct SlackSettings {
    pub bot_token: String,
    pub signing_secret: String,
    pub api_base: String,
    pub max_body_bytes: usize,
}

pub const SPEC: ChannelSpec = ChannelSpec {
    channel: Channel::Slack,
    secrets: &["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"],
    present: |config: &Config| {
        let s = &config.channels.slack;
        vec![s.bot_token.is_some(), s.signing_secret.is_some()]
    },
    build: |config: &Config| Slack::from_config(config).map(|s| Arc::new(s) as _),
};

pub struct Slack {
    settings: SlackSettings,
    client: reqwest::Client,
}

// Only what we use is read, and all of it optional: an authenticated
// event we cannot use is acknowledged and ignored, never refused.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    challenge: Option<String>,
    event_id: Option<String>,
    event_time: Option<i64>,
    event: Option<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type", default)]
    kind: String,
    user: Option<String>,
    text: Option<String>,
    channel: Option<String>,
    ts: Option<String>,
    thread_ts: Option<String>,
    bot_id: Option<String>,
    subtype: Option<String>,
    channel_type: Option<String>,
    user_profile: Option<UserProfile>,
    /// Files shared with the message (read leniently: `files`).
    files: Option<serde_json::Value>,
}

/// The files of a `file_share` message as attachments, each fetched later
/// from its `url_private_download` (or `url_private`) with the bot token.
fn files(list: Option<&serde_json::Value>) -> Vec<Attachment> {
    let text = |f: &serde_json::Value, k: &str| {
        f.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let small = |f: &serde_json::Value, k: &str| {
        f.get(k)
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    list.and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let url = text(f, "url_private_download").or_else(|| text(f, "url_private"))?;
            let mime = text(f, "mimetype");
            Some(Attachment {
                url,
                file_id: text(f, "id"),
                size: f.get("size").and_then(serde_json::Value::as_u64),
                name: text(f, "name").or_else(|| text(f, "title")),
                width: small(f, "original_w"),
                height: small(f, "original_h"),
                duration_secs: small(f, "duration_ms").map(|ms| ms.div_ceil(1000)),
                ..Attachment::new(AttachmentKind::of_mime(mime.as_deref().unwrap_or_default()))
                    .with_content_type(mime)
            })
        })
        .collect()
}

/// Message events from Slack's own clients carry the author's profile.
#[derive(Deserialize)]
struct UserProfile {
    display_name: Option<String>,
    real_name: Option<String>,
    name: Option<String>,
}

impl UserProfile {
    fn best_name(&self) -> Option<String> {
        [&self.display_name, &self.real_name, &self.name]
            .into_iter()
            .flatten()
            .map(|s| s.trim())
            .find(|s| !s.is_empty())
            .map(str::to_string)
    }
}

impl Slack {
    /// The adapter, if its bot token and signing secret are configured.
    pub fn from_config(config: &Config) -> Option<Self> {
        let s = &config.channels.slack;
        Some(Slack::new(SlackSettings {
            bot_token: s.bot_token.clone()?,
            signing_secret: s.signing_secret.clone()?,
            api_base: s
                .api_base
                .clone()
                .unwrap_or_else(|| DEFAULT_API_BASE.into()),
            max_body_bytes: s.max_body_bytes,
        }))
    }

    pub fn new(settings: SlackSettings) -> Self {
        Slack {
            settings,
            client: http_client(),
        }
    }

    /// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`.
    pub fn signature(signing_secret: &str, timestamp: &str, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes()).expect("any key length");
        mac.update(b"v0:");
        mac.update(timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }
}

impl ChannelAdapter for Slack {
    fn channel(&self) -> Channel {
        Channel::Slack
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        if !request.has_media_type("application/json") && !request.has_media_type(FORM) {
            return Err(WebhookError::UnsupportedMediaType(
                "Slack events are application/json, and interactions form-encoded".into(),
            ));
        }
        let unauthorized = |m: &str| WebhookError::Unauthorized(m.to_string());
        let timestamp = request
            .header("x-slack-request-timestamp")
            .ok_or_else(|| unauthorized("missing X-Slack-Request-Timestamp header"))?;
        let given = request
            .header("x-slack-signature")
            .ok_or_else(|| unauthorized("missing X-Slack-Signature header"))?;
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| unauthorized("X-Slack-Request-Timestamp is not a number"))?;
        if (request.now_ms / 1000 - ts).abs() > REPLAY_WINDOW_SECS {
            return Err(unauthorized(
                "X-Slack-Request-Timestamp is more than 5 minutes from now (replayed, or a wrong clock)",
            ));
        }
        let expected = Self::signature(&self.settings.signing_secret, timestamp, request.body);
        if secure_eq(&expected, given) {
            Ok(())
        } else {
            Err(unauthorized(
                "X-Slack-Signature does not match (check the signing secret)",
            ))
        }
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Result<Inbound, WebhookError> {
        if request.has_media_type(FORM) {
            return interaction(request.body);
        }
        let envelope: Envelope = serde_json::from_slice(request.body)
            .map_err(|e| WebhookError::BadRequest(format!("invalid Slack event: {e}")))?;
        match envelope.kind.as_str() {
            "url_verification" => {
                let challenge = envelope.challenge.ok_or_else(|| {
                    WebhookError::BadRequest("url_verification without `challenge`".into())
                })?;
                return Ok(Inbound::Respond {
                    content_type: "application/json",
                    body: json!({ "challenge": challenge }).to_string(),
                });
            }
            "event_callback" => {}
            _ => return Ok(Inbound::Ignore("event type not handled")),
        }
        let Some(event) = envelope.event else {
            return Ok(Inbound::Ignore("event_callback without an event"));
        };
        if event.bot_id.is_some() || event.subtype.as_deref() == Some("bot_message") {
            return Ok(Inbound::Ignore("bot message"));
        }
        if event.subtype.as_deref().is_some_and(|s| s != "file_share") {
            return Ok(Inbound::Ignore("message edit, deletion or other subtype"));
        }
        let direct = event.kind == "message" && event.channel_type.as_deref() == Some("im");
        if event.kind != "app_mention" && !direct {
            // A mention in a channel also arrives as `app_mention`: answer that one.
            return Ok(Inbound::Ignore("channel message not addressed to the bot"));
        }
        let Some(user) = event.user.filter(|u| !u.is_empty()) else {
            return Ok(Inbound::Ignore("event without a user"));
        };
        let Some(channel) = event.channel.filter(|c| !c.is_empty()) else {
            return Ok(Inbound::Ignore("event without a channel"));
        };
        // Redeliveries carry the same event_id. An empty one cannot tell them
        // apart: that is the sender's error, not ours to retry forever.
        let event_id = match (envelope.event_id, &event.ts) {
            (Some(id), _) if id.trim().is_empty() => {
                return Err(WebhookError::BadRequest(
                    "Slack event_callback with an empty `event_id`".into(),
                ));
            }
            (Some(id), _) => id,
            (None, Some(ts)) => format!("{channel}:{ts}"),
            // Nothing names the event: a redelivery repeats the body exactly.
            (None, None) => {
                use sha2::Digest;
                format!("body:{}", &hex::encode(Sha256::digest(request.body))[..32])
            }
        };
        let text = event.text.unwrap_or_default();
        let attachments = files(event.files.as_ref());
        if text.trim().is_empty() && attachments.is_empty() {
            return Ok(Inbound::Ignore("no text"));
        }
        // Mentions are answered in their thread; a direct message chat is
        // one conversation unless the user opened a thread.
        let thread = match (&event.thread_ts, direct) {
            (Some(t), _) => format!("{channel}:{t}"),
            (None, true) => channel.clone(),
            (None, false) => format!("{channel}:{}", event.ts.clone().unwrap_or_default()),
        };
        let mut metadata = BTreeMap::from([("event_type".to_string(), event.kind)]);
        if let Some(name) = event.user_profile.as_ref().and_then(UserProfile::best_name) {
            metadata.insert(SENDER_NAME.into(), name);
        }
        Ok(Inbound::Message(InboundMessage {
            key: ConversationKey::new(Channel::Slack, user, thread),
            text,
            provider_message_id: event_id,
            provider_ts: envelope.event_time.map(|t| t * 1000),
            received_at: request.now_ms,
            attachments,
            metadata,
            correlation_id: CorrelationId::generate(),
        }))
    }

    fn sign(&self, _url: &str, body: &[u8], now_secs: i64) -> Vec<(String, String)> {
        let ts = now_secs.to_string();
        vec![
            (
                "x-slack-signature".into(),
                Self::signature(&self.settings.signing_secret, &ts, body),
            ),
            ("x-slack-request-timestamp".into(), ts),
        ]
    }

    /// Slack has no API for an app's Request URL: it is pasted by hand.
    fn register<'a>(&'a self, webhook_url: &'a str) -> BoxFuture<'a, Registration> {
        Box::pin(async move {
            Registration::Manual(format!(
                "in your Slack app, Event Subscriptions → Request URL:\n             {webhook_url}"
            ))
        })
    }

    fn check_credentials(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.auth_test()
                .await
                .map(|who| format!("auth.test: {who}"))
        })
    }

    fn max_body_bytes(&self) -> usize {
        self.settings.max_body_bytes
    }

    /// A shared file's `url_private_download`, with the bot's token.
    fn fetch<'a>(
        &'a self,
        attachment: &'a Attachment,
        max_bytes: u64,
    ) -> Option<BoxFuture<'a, Result<Vec<u8>, crate::core::channel::FetchError>>> {
        if attachment.url.is_empty() {
            return None;
        }
        let request = self
            .client
            .get(&attachment.url)
            .bearer_auth(&self.settings.bot_token);
        Some(Box::pin(async move {
            super::download(request, max_bytes)
                .await
                .map_err(|e| e.context("Slack file"))
        }))
    }

    fn max_message_len(&self) -> usize {
        MAX_TEXT
    }

    fn send<'a>(
        &'a self,
        to: &'a ConversationKey,
        text: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.post_message(to, json!({ "text": text })))
    }

    fn send_choice<'a>(
        &'a self,
        to: &'a ConversationKey,
        text: &'a str,
        choices: &'a [approvals::Choice],
    ) -> Option<BoxFuture<'a, Result<Sent, SendError>>> {
        // The text, then a row of buttons; a press comes back as a signed
        // `block_actions` interaction whose action carries the button's data.
        let buttons: Vec<serde_json::Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut button = json!({
                    "type": "button",
                    "text": { "type": "plain_text", "text": c.label },
                    "action_id": c.data,
                    "value": c.data,
                });
                if i == 0 {
                    button["style"] = json!("primary");
                }
                button
            })
            .collect();
        Some(Box::pin(self.post_message(
            to,
            json!({
                "text": text,
                "blocks": [
                    { "type": "section", "text": { "type": "plain_text", "text": text } },
                    { "type": "actions", "elements": buttons },
                ],
            }),
        )))
    }
}

impl Slack {
    /// `chat.postMessage` of `body` into `to`'s channel and thread.
    async fn post_message(
        &self,
        to: &ConversationKey,
        mut body: serde_json::Value,
    ) -> Result<Sent, SendError> {
        {
            let s = &self.settings;
            let (channel, thread_ts) = match to.thread.split_once(':') {
                Some((c, t)) => (c, Some(t)),
                None => (to.thread.as_str(), None),
            };
            body["channel"] = json!(channel);
            if let Some(t) = thread_ts {
                body["thread_ts"] = json!(t);
            }
            let response = self
                .client
                .post(format!(
                    "{}/chat.postMessage",
                    s.api_base.trim_end_matches('/')
                ))
                .bearer_auth(&s.bot_token)
                .json(&body)
                .send()
                .await
                .map_err(|e| SendError::Transient(format!("Slack: {}", super::unanswered(e))))?;
            let status = response.status().as_u16();
            let retry_after = super::retry_after_header(&response);
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if status == 200 && body["ok"].as_bool() == Some(true) {
                return Ok(Sent {
                    provider_message_id: body["ts"].as_str().map(str::to_string),
                });
            }
            let code = body["error"]
                .as_str()
                .unwrap_or("unknown_error")
                .to_string();
            // Slack reports most failures as HTTP 200 with `ok: false`.
            let status = match (status, code.as_str()) {
                (_, "ratelimited") => 429,
                (
                    200,
                    "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout",
                ) => 503,
                (200, _) => 400,
                (s, _) => s,
            };
            Err(send_error(
                status,
                retry_after,
                code.clone(),
                format!("Slack: {code}"),
            ))
        }
    }
}

/// The media type of Slack's interaction requests (`payload=<json>`).
const FORM: &str = "application/x-www-form-urlencoded";

/// An interaction (a button pressed): an approval's answer when the button
/// is one of ours; anything else is acknowledged and ignored.
fn interaction(body: &[u8]) -> Result<Inbound, WebhookError> {
    let bad = |why: String| WebhookError::BadRequest(format!("invalid Slack interaction: {why}"));
    let form: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| bad(e.to_string()))?;
    let payload = form
        .iter()
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v)
        .ok_or_else(|| bad("no `payload` field".into()))?;
    let p: serde_json::Value = serde_json::from_str(payload).map_err(|e| bad(e.to_string()))?;
    if p["type"] != "block_actions" {
        return Ok(Inbound::Ignore("interaction type not handled"));
    }
    let Some((decision, approval_id)) = p["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|a| a["value"].as_str().and_then(approvals::parse_choice))
    else {
        return Ok(Inbound::Ignore("an action that is not an approval's"));
    };
    let (Some(user), Some(channel)) = (
        p["user"]["id"].as_str().filter(|u| !u.is_empty()),
        p["channel"]["id"]
            .as_str()
            .or(p["container"]["channel_id"].as_str())
            .filter(|c| !c.is_empty()),
    ) else {
        return Ok(Inbound::Ignore("an action without its user or channel"));
    };
    // The thread the question was asked in, as conversations key threads.
    let thread = match p["message"]["thread_ts"]
        .as_str()
        .or(p["container"]["thread_ts"].as_str())
    {
        Some(ts) => format!("{channel}:{ts}"),
        None => channel.to_string(),
    };
    let by = p["user"]["username"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(user);
    Ok(Inbound::Decision(approvals::ChatDecision {
        approval_id,
        decision,
        key: ConversationKey::new(Channel::Slack, user, thread),
        by: format!("slack {by}"),
        ack: None,
    }))
}

impl Slack {
    /// `auth.test`: the team and bot user the token belongs to.
    pub async fn auth_test(&self) -> Result<String, String> {
        let s = &self.settings;
        let body: serde_json::Value = self
            .client
            .post(format!("{}/auth.test", s.api_base.trim_end_matches('/')))
            .bearer_auth(&s.bot_token)
            .send()
            .await
            .map_err(|e| format!("Slack auth.test: {}", super::unanswered(e)))?
            .json()
            .await
            .map_err(|e| format!("Slack auth.test: unreadable answer: {}", e.without_url()))?;
        if body["ok"].as_bool() == Some(true) {
            Ok(format!(
                "{} in {}",
                body["user"].as_str().unwrap_or("?"),
                body["team"].as_str().unwrap_or("?")
            ))
        } else {
            Err(format!(
                "Slack auth.test: {}",
                body["error"].as_str().unwrap_or("failed")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::channels::leniency::{json_headers, request, without_each_field};

    fn slack() -> Slack {
        Slack::new(SlackSettings {
            bot_token: "xoxb-x".into(),
            signing_secret: "s".into(),
            api_base: DEFAULT_API_BASE.into(),
            max_body_bytes: 1 << 20,
        })
    }

    #[test]
    fn an_event_missing_any_one_field_is_never_refused() {
        let event = json!({
            "token": "XXYYZZ", "team_id": "T0001", "api_app_id": "A0001",
            "type": "event_callback", "event_id": "Ev1", "event_time": 1763712000,
            "event": { "type": "message", "channel": "D024BE91L", "user": "U1",
                       "text": "hello", "ts": "1355517523.000005", "channel_type": "im",
                       "user_profile": { "display_name": "ada", "real_name": "Ada" } }
        });
        let headers = json_headers();
        for (dropped, event) in without_each_field(&event) {
            let body = event.to_string();
            let parsed = slack().parse(&request(&headers, body.as_bytes()));
            assert!(parsed.is_ok(), "without `{dropped}`: {parsed:?}");
        }
        // Without event_id, the channel and ts identify the message.
        let mut no_id = event.clone();
        no_id.as_object_mut().unwrap().remove("event_id");
        let body = no_id.to_string();
        let Ok(Inbound::Message(m)) = slack().parse(&request(&headers, body.as_bytes())) else {
            panic!("a message");
        };
        assert_eq!(m.provider_message_id, "D024BE91L:1355517523.000005");
        assert_eq!(m.metadata[SENDER_NAME], "ada");
    }

    #[test]
    fn the_replay_window_is_five_minutes_either_way_to_the_second() {
        let body = b"{}";
        let now_ms = 1_763_712_000_000;
        let verify_at = |skew: i64| {
            let ts = (now_ms / 1000 + skew).to_string();
            let headers = vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-slack-request-timestamp".to_string(), ts.clone()),
                (
                    "x-slack-signature".to_string(),
                    Slack::signature("s", &ts, body),
                ),
            ];
            slack().verify(&WebhookRequest {
                url: "https://bot.example/webhook/slack",
                headers: &headers,
                body,
                now_ms,
            })
        };
        for skew in [-300, 0, 300] {
            assert_eq!(verify_at(skew), Ok(()), "{skew}");
        }
        for skew in [-301, 301] {
            assert!(
                matches!(verify_at(skew), Err(WebhookError::Unauthorized(_))),
                "{skew}"
            );
        }
    }

    #[test]
    fn an_empty_event_id_is_the_senders_error() {
        let body = json!({ "type": "event_callback", "event_id": " ",
            "event": { "type": "message", "channel": "D1", "user": "U1", "text": "x",
                       "ts": "1.2", "channel_type": "im" } })
        .to_string();
        let headers = json_headers();
        let err = slack()
            .parse(&request(&headers, body.as_bytes()))
            .unwrap_err();
        assert_eq!(
            err,
            WebhookError::BadRequest("Slack event_callback with an empty `event_id`".into())
        );
    }

    #[test]
    fn signature_matches_slacks_documented_example() {
        // From Slack's "Verifying requests from Slack" documentation.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            Slack::signature("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }
}
