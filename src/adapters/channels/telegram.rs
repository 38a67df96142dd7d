//! Telegram Bot API. Inbound: JSON `Update`s, authenticated by the
//! `X-Telegram-Bot-Api-Secret-Token` header set with `setWebhook`. Text,
//! captions, media (voice, photos, files, places, contacts: `media.rs`) and
//! callback queries are messages; edits are acknowledged and
//! ignored; in groups the bot answers only when addressed. Outbound:
//! `sendMessage`, whose 429 carries `parameters.retry_after`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use std::sync::Arc;

use super::registry::ChannelSpec;
use super::{http_client, secure_eq, send_error};
use crate::config::Config;
use crate::core::approvals;
use crate::core::channel::{
    ChannelAdapter, FetchError, Inbound, Registration, SendError, Sent, WebhookError,
    WebhookRequest,
};
use crate::core::llm::BoxFuture;
use crate::core::message::{Channel, ConversationKey, CorrelationId, InboundMessage, SENDER_NAME};

mod media;

pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";
/// Telegram's limit for one message's text.
pub const MAX_TEXT: usize = 4096;

#[derive(Debug, Clone)]
pub struct TelegramSettings {
    pub bot_token: String,
    pub webhook_secret: String,
    pub api_base: String,
    pub max_body_bytes: usize,
    /// `[media] image_max_bytes`: of a photo's sizes, the largest under it.
    pub image_max_bytes: u64,
}

pub const SPEC: ChannelSpec = ChannelSpec {
    channel: Channel::Telegram,
    secrets: &["TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET"],
    present: |config: &Config| {
        let t = &config.channels.telegram;
        vec![t.bot_token.is_some(), t.webhook_secret.is_some()]
    },
    build: |config: &Config| Telegram::from_config(config).map(|t| Arc::new(t) as _),
};

pub struct Telegram {
    settings: TelegramSettings,
    client: reqwest::Client,
}

// Only what we use is read; every field is optional here even where the
// current Bot API calls it required, because older and minimal updates
// (Telegram's own testing samples) leave them out, and a refused update
// holds up every update behind it.
#[derive(Deserialize)]
struct Update {
    update_id: Option<i64>,
    message: Option<Message>,
    edited_message: Option<serde_json::Value>,
    channel_post: Option<serde_json::Value>,
    callback_query: Option<CallbackQuery>,
}

#[derive(Deserialize)]
struct Message {
    message_id: Option<i64>,
    from: Option<User>,
    chat: Option<Chat>,
    date: Option<i64>,
    text: Option<String>,
    caption: Option<String>,
    #[serde(default)]
    entities: Vec<Entity>,
    reply_to_message: Option<Box<Message>>,
    // Media, read leniently from their JSON (`media.rs`). Named one by one:
    // `#[serde(flatten)]` would buffer every field of every update.
    voice: Option<serde_json::Value>,
    audio: Option<serde_json::Value>,
    video_note: Option<serde_json::Value>,
    video: Option<serde_json::Value>,
    photo: Option<serde_json::Value>,
    document: Option<serde_json::Value>,
    sticker: Option<serde_json::Value>,
    location: Option<serde_json::Value>,
    venue: Option<serde_json::Value>,
    contact: Option<serde_json::Value>,
}

impl Message {
    fn media(&self) -> media::Media<'_> {
        media::Media {
            voice: self.voice.as_ref(),
            audio: self.audio.as_ref(),
            video_note: self.video_note.as_ref(),
            video: self.video.as_ref(),
            photo: self.photo.as_ref(),
            document: self.document.as_ref(),
            sticker: self.sticker.as_ref(),
            location: self.location.as_ref(),
            venue: self.venue.as_ref(),
            contact: self.contact.as_ref(),
        }
    }
}

#[derive(Deserialize)]
struct User {
    id: Option<i64>,
    #[serde(default)]
    is_bot: bool,
    username: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

impl User {
    /// How the person calls themselves: first (and last) name, else @username.
    fn display_name(&self) -> Option<String> {
        let full = [&self.first_name, &self.last_name]
            .into_iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if !full.is_empty() {
            Some(full)
        } else {
            self.username.as_ref().map(|u| format!("@{u}"))
        }
    }
}

#[derive(Deserialize)]
struct Chat {
    id: Option<i64>,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct Entity {
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct CallbackQuery {
    id: Option<String>,
    from: Option<User>,
    message: Option<Message>,
    data: Option<String>,
}

impl Telegram {
    /// The adapter, if its bot token and webhook secret are configured.
    pub fn from_config(config: &Config) -> Option<Self> {
        let t = &config.channels.telegram;
        Some(Telegram::new(TelegramSettings {
            bot_token: t.bot_token.clone()?,
            webhook_secret: t.webhook_secret.clone()?,
            api_base: t
                .api_base
                .clone()
                .unwrap_or_else(|| DEFAULT_API_BASE.into()),
            max_body_bytes: t.max_body_bytes,
            image_max_bytes: config.media.image_max_bytes,
        }))
    }

    pub fn new(settings: TelegramSettings) -> Self {
        Telegram {
            settings,
            client: http_client(),
        }
    }

    fn message(&self, update_id: Option<i64>, m: Message, now: i64) -> Inbound {
        let Some((from, sender)) = m.from.as_ref().and_then(|f| Some((f, f.id?))) else {
            return Inbound::Ignore("message without a sender");
        };
        if from.is_bot {
            return Inbound::Ignore("message from a bot");
        }
        let Some((chat, chat_id)) = m.chat.as_ref().and_then(|c| Some((c, c.id?))) else {
            return Inbound::Ignore("message without a chat");
        };
        // A redelivered update and the same message in another update are
        // one message; without a message id the update id identifies it.
        let provider_message_id = match (m.message_id, update_id) {
            (Some(id), _) => format!("{chat_id}:{id}"),
            (None, Some(update)) => format!("update:{update}"),
            (None, None) => return Inbound::Ignore("message without an id"),
        };
        let text = m.text.clone().or(m.caption.clone()).unwrap_or_default();
        let attachments = m
            .media()
            .attachments(m.caption.as_ref(), self.settings.image_max_bytes);
        if text.trim().is_empty() && attachments.is_empty() {
            return Inbound::Ignore("no text");
        }
        let group = matches!(chat.kind.as_str(), "group" | "supergroup");
        if group && !addressed(&m, &text) {
            return Inbound::Ignore("group message not addressed to the bot");
        }
        let mut metadata = BTreeMap::new();
        if let Some(update_id) = update_id {
            metadata.insert("update_id".to_string(), update_id.to_string());
        }
        if !chat.kind.is_empty() {
            metadata.insert("chat_type".to_string(), chat.kind.clone());
        }
        if let Some(u) = &from.username {
            metadata.insert("username".into(), u.clone());
        }
        if let Some(name) = from.display_name() {
            metadata.insert(SENDER_NAME.into(), name);
        }
        Inbound::Message(InboundMessage {
            key: ConversationKey::new(Channel::Telegram, sender.to_string(), chat_id.to_string()),
            text,
            provider_message_id,
            provider_ts: m.date.map(|d| d * 1000),
            received_at: now,
            attachments,
            metadata,
            correlation_id: CorrelationId::generate(),
        })
    }
}

/// The chat a conversation's replies go to.
fn chat_id(to: &ConversationKey) -> &str {
    if to.thread.is_empty() {
        &to.sender
    } else {
        &to.thread
    }
}

/// In a group the bot answers commands, mentions and replies to itself.
fn addressed(m: &Message, text: &str) -> bool {
    text.starts_with('/')
        || m.entities
            .iter()
            .any(|e| e.kind == "mention" || e.kind == "bot_command")
        || m.reply_to_message
            .as_ref()
            .and_then(|r| r.from.as_ref())
            .is_some_and(|u| u.is_bot)
}

impl ChannelAdapter for Telegram {
    fn channel(&self) -> Channel {
        Channel::Telegram
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        if !request.has_media_type("application/json") {
            return Err(WebhookError::UnsupportedMediaType(
                "Telegram updates are application/json".into(),
            ));
        }
        let given = request
            .header("x-telegram-bot-api-secret-token")
            .ok_or_else(|| {
                WebhookError::Unauthorized("missing X-Telegram-Bot-Api-Secret-Token header".into())
            })?;
        if secure_eq(given, &self.settings.webhook_secret) {
            Ok(())
        } else {
            Err(WebhookError::Unauthorized(
                "X-Telegram-Bot-Api-Secret-Token does not match the configured secret".into(),
            ))
        }
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Result<Inbound, WebhookError> {
        let update: Update = serde_json::from_slice(request.body)
            .map_err(|e| WebhookError::BadRequest(format!("invalid Telegram update: {e}")))?;
        if let Some(m) = update.message {
            return Ok(self.message(update.update_id, m, request.now_ms));
        }
        if let Some(q) = update.callback_query {
            let Some(chat) = q
                .message
                .as_ref()
                .and_then(|m| m.chat.as_ref())
                .and_then(|c| c.id)
            else {
                return Ok(Inbound::Ignore("callback query without its message"));
            };
            let Some(data) = q.data.filter(|d| !d.trim().is_empty()) else {
                return Ok(Inbound::Ignore("callback query without data"));
            };
            let Some((from, sender)) = q.from.as_ref().and_then(|f| Some((f, f.id?))) else {
                return Ok(Inbound::Ignore("callback query without a sender"));
            };
            if from.is_bot {
                return Ok(Inbound::Ignore("callback query from a bot"));
            }
            let Some(id) = q.id.filter(|id| !id.is_empty()) else {
                return Ok(Inbound::Ignore("callback query without an id"));
            };
            let key = ConversationKey::new(Channel::Telegram, sender.to_string(), chat.to_string());
            // A button of an approval asked here: an answer, not a message.
            if let Some((decision, approval_id)) = approvals::parse_choice(&data) {
                let by = from
                    .username
                    .clone()
                    .map(|u| format!("@{u}"))
                    .unwrap_or_else(|| sender.to_string());
                return Ok(Inbound::Decision(approvals::ChatDecision {
                    approval_id,
                    decision,
                    key,
                    by: format!("telegram {by}"),
                    ack: Some(id),
                }));
            }
            let mut metadata = BTreeMap::from([("kind".to_string(), "callback_query".to_string())]);
            if let Some(update_id) = update.update_id {
                metadata.insert("update_id".to_string(), update_id.to_string());
            }
            if let Some(name) = from.display_name() {
                metadata.insert(SENDER_NAME.into(), name);
            }
            return Ok(Inbound::Message(InboundMessage {
                key,
                text: data,
                provider_message_id: format!("callback:{id}"),
                provider_ts: None,
                received_at: request.now_ms,
                attachments: Vec::new(),
                metadata,
                correlation_id: CorrelationId::generate(),
            }));
        }
        if update.edited_message.is_some() {
            return Ok(Inbound::Ignore("edited message"));
        }
        if update.channel_post.is_some() {
            return Ok(Inbound::Ignore("channel post"));
        }
        Ok(Inbound::Ignore("update kind not handled"))
    }

    fn sign(&self, _url: &str, _body: &[u8], _now_secs: i64) -> Vec<(String, String)> {
        vec![(
            "x-telegram-bot-api-secret-token".into(),
            self.settings.webhook_secret.clone(),
        )]
    }

    /// `setWebhook` with our secret, then `getWebhookInfo` to confirm.
    fn register<'a>(&'a self, webhook_url: &'a str) -> BoxFuture<'a, Registration> {
        Box::pin(async move {
            if let Err(e) = self.set_webhook(webhook_url).await {
                return Registration::Failed(format!(
                    "{e}\n             fix: check TELEGRAM_BOT_TOKEN (`convagent doctor --live`)"
                ));
            }
            match self.webhook_info().await {
                Ok(info) if info.url == webhook_url => {
                    let mut done = format!(
                        "webhook set to {webhook_url} (getWebhookInfo confirms; {} pending)",
                        info.pending_update_count
                    );
                    if let Some(e) = info.last_error_message {
                        done.push_str(&format!(
                            "\n             Telegram's last delivery error: {e}"
                        ));
                    }
                    Registration::Registered(done)
                }
                Ok(info) => Registration::Failed(format!(
                    "setWebhook succeeded but getWebhookInfo says `{}`",
                    info.url
                )),
                Err(e) => Registration::Failed(e),
            }
        })
    }

    fn unregister(&self) -> Option<BoxFuture<'_, Result<String, String>>> {
        Some(Box::pin(async move {
            self.delete_webhook()
                .await
                .map(|()| "webhook removed".into())
        }))
    }

    fn check_credentials(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.get_me().await.map(|u| format!("getMe: @{u}")) })
    }

    fn check_webhook<'a>(
        &'a self,
        webhook_url: &'a str,
    ) -> Option<BoxFuture<'a, Result<String, (String, String)>>> {
        Some(Box::pin(async move {
            match self.webhook_info().await {
                Ok(info) if info.url == webhook_url => Ok(format!(
                    "Telegram delivers to {webhook_url} ({} pending)",
                    info.pending_update_count
                )),
                Ok(info) if info.url.is_empty() => Err((
                    "Telegram has no webhook set".into(),
                    "run `convagent tunnel`".into(),
                )),
                Ok(info) => Err((
                    format!("Telegram delivers to {}, not {webhook_url}", info.url),
                    "run `convagent tunnel` to register the current URL".into(),
                )),
                Err(e) => Err((e, "check TELEGRAM_BOT_TOKEN".into())),
            }
        }))
    }

    /// `sendChatAction` "typing": shown for 5 seconds or until a message
    /// arrives.
    fn typing<'a>(
        &'a self,
        to: &'a ConversationKey,
        _replying_to: &'a InboundMessage,
    ) -> Option<BoxFuture<'a, Result<(), SendError>>> {
        Some(Box::pin(async move {
            self.call(
                "sendChatAction",
                json!({ "chat_id": chat_id(to), "action": "typing" }),
            )
            .await
            .map(drop)
            .map_err(SendError::Transient)
        }))
    }

    fn max_body_bytes(&self) -> usize {
        self.settings.max_body_bytes
    }

    /// `getFile` for the file's path, then the file from
    /// `/file/bot<token>/<path>`.
    fn fetch<'a>(
        &'a self,
        attachment: &'a crate::core::message::Attachment,
        max_bytes: u64,
    ) -> Option<BoxFuture<'a, Result<Vec<u8>, FetchError>>> {
        let file_id = attachment.file_id.clone()?;
        Some(Box::pin(async move {
            let file = self
                .call_classified("getFile", json!({ "file_id": file_id }))
                .await?;
            let path = file["file_path"].as_str().ok_or_else(|| {
                FetchError::permanent("Telegram getFile: no file_path (the file may be over 20 MB)")
            })?;
            let url = format!(
                "{}/file/bot{}/{path}",
                self.settings.api_base.trim_end_matches('/'),
                self.settings.bot_token
            );
            super::download(self.client.get(url), max_bytes)
                .await
                .map_err(|e| e.context("Telegram file"))
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
        Box::pin(self.send_message(json!({ "chat_id": chat_id(to), "text": text })))
    }

    fn send_choice<'a>(
        &'a self,
        to: &'a ConversationKey,
        text: &'a str,
        choices: &'a [approvals::Choice],
    ) -> Option<BoxFuture<'a, Result<Sent, SendError>>> {
        // One row of inline buttons; a press comes back as a callback query
        // carrying the button's data.
        let row: Vec<serde_json::Value> = choices
            .iter()
            .map(|c| json!({ "text": c.label, "callback_data": c.data }))
            .collect();
        Some(Box::pin(self.send_message(json!({
            "chat_id": chat_id(to),
            "text": text,
            "reply_markup": { "inline_keyboard": [row] },
        }))))
    }

    fn acknowledge<'a>(
        &'a self,
        ack: &'a str,
        text: &'a str,
    ) -> Option<BoxFuture<'a, Result<(), SendError>>> {
        Some(Box::pin(async move {
            self.call_classified(
                "answerCallbackQuery",
                json!({ "callback_query_id": ack, "text": text }),
            )
            .await
            .map(|_| ())
            .map_err(|e| SendError::Transient(format!("Telegram: {}", e.why)))
        }))
    }
}

impl Telegram {
    /// The Bot API's URL of `method` (it holds the bot token: never log it).
    fn method_url(&self, method: &str) -> String {
        let s = &self.settings;
        format!(
            "{}/bot{}/{method}",
            s.api_base.trim_end_matches('/'),
            s.bot_token
        )
    }

    /// `sendMessage` with `body`: the sent message's id, or the error as
    /// the outbox classifies it (429 with its wait, 5xx, 4xx).
    async fn send_message(&self, body: serde_json::Value) -> Result<Sent, SendError> {
        let response = self
            .client
            .post(self.method_url("sendMessage"))
            .json(&body)
            .send()
            .await
            // The URL holds the bot token: never let it into an error.
            .map_err(|e| SendError::Transient(format!("Telegram: {}", super::unanswered(e))))?;
        let status = response.status().as_u16();
        let retry_after_header = super::retry_after_header(&response);
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if body["ok"].as_bool() == Some(true) {
            return Ok(Sent {
                provider_message_id: body["result"]["message_id"]
                    .as_i64()
                    .map(|id| id.to_string()),
            });
        }
        let code = body["error_code"].as_i64().map_or(status, |c| c as u16);
        let retry_after = body["parameters"]["retry_after"]
            .as_u64()
            .map(std::time::Duration::from_secs)
            .or(retry_after_header);
        let detail = body["description"].as_str().unwrap_or("no description");
        Err(send_error(
            code,
            retry_after,
            code.to_string(),
            format!("Telegram: {detail}"),
        ))
    }
}

/// What `getWebhookInfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WebhookInfo {
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub pending_update_count: u64,
    #[serde(default)]
    pub last_error_message: Option<String>,
    #[serde(default)]
    pub allowed_updates: Option<Vec<String>>,
}

/// The updates convagent handles; `setWebhook` asks for these only.
pub const ALLOWED_UPDATES: [&str; 3] = ["message", "edited_message", "callback_query"];

impl Telegram {
    async fn call(
        &self,
        method: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.call_classified(method, body).await.map_err(|e| e.why)
    }

    /// [`Self::call`], saying whether asking again may help: a connection
    /// that failed, or Telegram's `error_code` of 5xx or 429.
    async fn call_classified(
        &self,
        method: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, FetchError> {
        let response = self
            .client
            .post(self.method_url(method))
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                FetchError::transient(format!("Telegram {method}: {}", super::unanswered(e)))
            })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| {
            let why = format!("Telegram {method}: unreadable answer: {}", e.without_url());
            match status.is_server_error() {
                true => FetchError::transient(why),
                false => FetchError::permanent(why),
            }
        })?;
        if body["ok"].as_bool() == Some(true) {
            return Ok(body["result"].clone());
        }
        let why = format!(
            "Telegram {method}: {}",
            body["description"]
                .as_str()
                .unwrap_or("failed without a description")
        );
        let code = body["error_code"]
            .as_u64()
            .unwrap_or(u64::from(status.as_u16()));
        Err(match code {
            429 | 500..=599 => FetchError::transient(why),
            _ => FetchError::permanent(why),
        })
    }

    /// `setWebhook` with our secret token and the updates we handle.
    pub async fn set_webhook(&self, url: &str) -> Result<(), String> {
        self.call(
            "setWebhook",
            json!({
                "url": url,
                "secret_token": self.settings.webhook_secret,
                "allowed_updates": ALLOWED_UPDATES,
            }),
        )
        .await
        .map(drop)
    }

    pub async fn webhook_info(&self) -> Result<WebhookInfo, String> {
        let result = self.call("getWebhookInfo", json!({})).await?;
        serde_json::from_value(result).map_err(|e| format!("Telegram getWebhookInfo: {e}"))
    }

    pub async fn delete_webhook(&self) -> Result<(), String> {
        self.call("deleteWebhook", json!({})).await.map(drop)
    }

    /// `getMe`: the bot's username, proving the token works.
    pub async fn get_me(&self) -> Result<String, String> {
        let me = self.call("getMe", json!({})).await?;
        Ok(me["username"].as_str().unwrap_or("?").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::channels::leniency::{json_headers, request, without_each_field};

    fn telegram() -> Telegram {
        Telegram::new(TelegramSettings {
            bot_token: "1:x".into(),
            webhook_secret: "s".into(),
            api_base: DEFAULT_API_BASE.into(),
            max_body_bytes: 1 << 20,
            image_max_bytes: 100_000,
        })
    }

    fn full_update() -> serde_json::Value {
        json!({
            "update_id": 900000001,
            "message": {
                "message_id": 101,
                "from": { "id": 111, "is_bot": false, "first_name": "Ada", "last_name": "L",
                          "username": "ada_l", "language_code": "en" },
                "chat": { "id": 111, "first_name": "Ada", "username": "ada_l", "type": "private" },
                "date": 1763712000,
                "text": "hello",
                "entities": [{ "type": "bot_command", "offset": 0, "length": 1 }]
            }
        })
    }

    #[test]
    fn an_update_missing_any_one_field_is_never_refused() {
        let headers = json_headers();
        let t = telegram();
        for (dropped, update) in without_each_field(&full_update()) {
            let body = update.to_string();
            let parsed = t.parse(&request(&headers, body.as_bytes()));
            assert!(parsed.is_ok(), "without `{dropped}`: {parsed:?}");
        }
        let callback = json!({ "update_id": 5, "callback_query": {
            "id": "cb1", "from": { "id": 111, "is_bot": false, "first_name": "Ada" },
            "message": { "message_id": 9, "chat": { "id": 111, "type": "private" } },
            "data": "yes" } });
        for (dropped, update) in without_each_field(&callback) {
            let body = update.to_string();
            let parsed = t.parse(&request(&headers, body.as_bytes()));
            assert!(parsed.is_ok(), "without `{dropped}`: {parsed:?}");
        }
    }

    #[test]
    fn of_a_photos_sizes_the_largest_under_the_cap_is_taken() {
        let headers = json_headers();
        let chosen = |sizes: serde_json::Value| {
            let body = json!({ "update_id": 8, "message": {
                "message_id": 4, "chat": { "id": 42 }, "from": { "id": 42 }, "photo": sizes } })
            .to_string();
            let Ok(Inbound::Message(m)) = telegram().parse(&request(&headers, body.as_bytes()))
            else {
                panic!("a photo is a message");
            };
            m.attachments[0].file_id.clone().unwrap()
        };
        let size = |id: &str, side: u64, bytes: u64| json!({ "file_id": id, "file_unique_id": id, "width": side, "height": side, "file_size": bytes });
        // The cap is 100,000 bytes: the 150 KB size is passed over.
        let sizes = json!([
            size("s", 90, 1_320),
            size("l", 1280, 150_112),
            size("m", 320, 15_844)
        ]);
        assert_eq!(chosen(sizes), "m");
        // None fits: the largest, which the media stage then refuses.
        let sizes = json!([size("l", 1280, 250_000), size("m", 320, 150_000)]);
        assert_eq!(chosen(sizes), "l");
    }

    #[test]
    fn what_is_kept_of_a_minimal_update() {
        let headers = json_headers();
        let body = json!({ "update_id": 7, "message": {
            "message_id": 3, "chat": { "id": 42 }, "from": { "id": 42, "first_name": "Test" },
            "text": "hi" } })
        .to_string();
        let Ok(Inbound::Message(m)) = telegram().parse(&request(&headers, body.as_bytes())) else {
            panic!("a minimal update is a message");
        };
        assert_eq!(m.provider_message_id, "42:3");
        assert_eq!(m.key, ConversationKey::new(Channel::Telegram, "42", "42"));
        assert_eq!(m.metadata[SENDER_NAME], "Test");
        // Without a message id, the update id still tells redeliveries apart.
        let body = json!({ "update_id": 7, "message": {
            "chat": { "id": 42 }, "from": { "id": 42 }, "text": "hi" } })
        .to_string();
        let Ok(Inbound::Message(m)) = telegram().parse(&request(&headers, body.as_bytes())) else {
            panic!("still a message");
        };
        assert_eq!(m.provider_message_id, "update:7");
    }

    #[test]
    fn media_types_compare_case_insensitively_and_bodies_must_be_json() {
        let t = telegram();
        let headers = vec![
            (
                "content-type".to_string(),
                "Application/JSON; charset=UTF-8".to_string(),
            ),
            (
                "x-telegram-bot-api-secret-token".to_string(),
                "s".to_string(),
            ),
        ];
        assert_eq!(t.verify(&request(&headers, b"{}")), Ok(()));
        // Not the provider's format at all: 400, with the reason.
        let err = t.parse(&request(&headers, b"[1,2]")).unwrap_err();
        assert!(
            matches!(err, WebhookError::BadRequest(ref m) if m.starts_with("invalid Telegram update")),
            "{err:?}"
        );
    }
}
