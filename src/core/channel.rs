//! The channel port: how a chat provider's webhook becomes a canonical
//! message (verify, then parse) and how a reply goes back (send). Adding a
//! channel means implementing [`ChannelAdapter`] and nothing else.

use std::time::Duration;

use super::llm::BoxFuture;
use super::message::{Channel, ConversationKey, InboundMessage};

/// A webhook request as the daemon received it.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// The full URL the provider called (public base + path + query), for
    /// signatures computed over it (Twilio).
    pub url: &'a str,
    /// Header names in lower case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// Unix milliseconds when it arrived.
    pub now_ms: i64,
}

impl WebhookRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type of the body, without parameters.
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
            .map(|v| v.split(';').next().unwrap_or_default().trim())
    }

    /// Whether the body's media type is `expected` (media types compare
    /// case-insensitively: `APPLICATION/JSON; charset=UTF-8` is JSON).
    pub fn has_media_type(&self, expected: &str) -> bool {
        self.content_type()
            .is_some_and(|t| t.eq_ignore_ascii_case(expected))
    }
}

/// What a verified webhook asks of us.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A message to store and answer.
    Message(InboundMessage),
    /// Acknowledge and do nothing: bots, our own messages, status
    /// callbacks, edits that need no answer.
    Ignore(&'static str),
    /// Answer the request itself (Slack's `url_verification` challenge).
    Respond {
        content_type: &'static str,
        body: String,
    },
    /// A button of an approval asked in the chat was pressed.
    Decision(crate::core::approvals::ChatDecision),
}

/// Why a webhook was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    BadRequest(String),
}

/// A sent message's receipt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sent {
    pub provider_message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// 429: try again after the wait the provider asked for.
    #[error("rate limited; retry after {}s: {detail}", .retry_after.as_secs())]
    RateLimited {
        retry_after: Duration,
        detail: String,
    },
    /// 5xx or the network: back off and try again.
    #[error("{0}")]
    Transient(String),
    /// 4xx: it will never work; dead-letter with the provider's code.
    #[error("permanent failure {code}: {detail}")]
    Permanent { code: String, detail: String },
}

/// What pointing a provider at our webhook URL came to (`convagent tunnel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Done through the provider's API: what it now does.
    Registered(String),
    /// The provider has no API for it: what to paste where.
    Manual(String),
    /// The API refused: why, and what to do.
    Failed(String),
}

/// One chat provider: inbound verify + parse, outbound send, and what the
/// tools around the daemon need to know of it (registration, live checks,
/// signing sample payloads). Everything that differs per channel is here
/// or in its registry entry (`adapters::channels::registry`).
pub trait ChannelAdapter: Send + Sync {
    fn channel(&self) -> Channel;

    /// Checks the provider's signature or secret, in constant time.
    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError>;

    /// Turns a verified request into what it asks of us.
    fn parse(&self, request: &WebhookRequest<'_>) -> Result<Inbound, WebhookError>;

    /// The longest text one message may carry.
    fn max_message_len(&self) -> usize;

    /// The largest webhook body this channel accepts (413 past it).
    fn max_body_bytes(&self) -> usize;

    /// Shows the person that a reply is being written, on channels with
    /// such a signal (Telegram's "typing", WhatsApp's typing indicator);
    /// `None` where the channel has none. `replying_to` is the message the
    /// turn answers. The signal fades by itself after
    /// [`ChannelAdapter::typing_lasts`], so the caller repeats it.
    fn typing<'a>(
        &'a self,
        _to: &'a ConversationKey,
        _replying_to: &'a InboundMessage,
    ) -> Option<BoxFuture<'a, Result<(), SendError>>> {
        None
    }

    /// How long one typing signal shows.
    fn typing_lasts(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// Sends one piece of a reply into the conversation.
    fn send<'a>(
        &'a self,
        to: &'a ConversationKey,
        text: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>>;

    /// The headers the provider would add to a request with `body` to
    /// `url` at `now_secs` (its signature), for `replay` and golden
    /// payloads.
    fn sign(&self, url: &str, body: &[u8], now_secs: i64) -> Vec<(String, String)>;

    /// Points the provider at `webhook_url`, where it has an API for that,
    /// or says what to paste where.
    fn register<'a>(&'a self, webhook_url: &'a str) -> BoxFuture<'a, Registration>;

    /// Undoes [`ChannelAdapter::register`] where it did something
    /// (`convagent tunnel --cleanup`).
    fn unregister(&self) -> Option<BoxFuture<'_, Result<String, String>>> {
        None
    }

    /// Asks the provider whether the credentials work (`doctor --live`):
    /// who they belong to, or why not.
    fn check_credentials(&self) -> BoxFuture<'_, Result<String, String>>;

    /// Asks the provider where it delivers webhooks now, where it can tell
    /// (`doctor --live`): `Ok` when that is `webhook_url`, else what to do.
    fn check_webhook<'a>(
        &'a self,
        _webhook_url: &'a str,
    ) -> Option<BoxFuture<'a, Result<String, (String, String)>>> {
        None
    }

    /// Downloads an attachment's file with the provider's own auth, at most
    /// `max_bytes` of it (more is an error, and no more is read); `None`
    /// where this channel serves no files.
    fn fetch<'a>(
        &'a self,
        _attachment: &'a crate::core::message::Attachment,
        _max_bytes: u64,
    ) -> Option<BoxFuture<'a, Result<Vec<u8>, FetchError>>> {
        None
    }

    /// Which number or account replies go from, for `doctor`.
    fn replies_from(&self) -> Option<String> {
        None
    }

    /// Sends `text` with buttons under it (an approval asked in the chat);
    /// `None` where the channel has no buttons.
    fn send_choice<'a>(
        &'a self,
        _to: &'a ConversationKey,
        _text: &'a str,
        _choices: &'a [crate::core::approvals::Choice],
    ) -> Option<BoxFuture<'a, Result<Sent, SendError>>> {
        None
    }

    /// Tells the provider a button press was handled, with a short text
    /// the person sees (Telegram's `answerCallbackQuery`); `None` where the
    /// channel wants no such answer.
    fn acknowledge<'a>(
        &'a self,
        _ack: &'a str,
        _text: &'a str,
    ) -> Option<BoxFuture<'a, Result<(), SendError>>> {
        None
    }
}

/// Why a file could not be fetched, and whether asking again may help (a
/// 5xx, a connection that failed) or not (a 404, a file over the cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub why: String,
    pub retry: bool,
}

impl FetchError {
    /// Worth another try.
    pub fn transient(why: impl Into<String>) -> Self {
        FetchError {
            why: why.into(),
            retry: true,
        }
    }

    /// Asking again gets the same answer.
    pub fn permanent(why: impl Into<String>) -> Self {
        FetchError {
            why: why.into(),
            retry: false,
        }
    }

    /// The same error, said with `prefix` ("Telegram file: HTTP 404").
    pub fn context(self, prefix: &str) -> Self {
        FetchError {
            why: format!("{prefix}: {}", self.why),
            ..self
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Splits a reply into pieces of at most `limit` characters, preferring
/// paragraph, then line, then sentence, then word boundaries.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(1);
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while rest.chars().count() > limit {
        let window_end = rest
            .char_indices()
            .nth(limit)
            .map_or(rest.len(), |(i, _)| i);
        let window = &rest[..window_end];
        let cut = ["\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " "]
            .iter()
            .find_map(|sep| {
                window
                    .rfind(sep)
                    .filter(|&i| i > 0)
                    .map(|i| i + sep.trim_end().len())
            })
            .unwrap_or(window_end);
        parts.push(rest[..cut].trim_end().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest.to_string());
    }
    parts
}

/// The channel an adapter list serves.
pub fn find(
    adapters: &[std::sync::Arc<dyn ChannelAdapter>],
    channel: Channel,
) -> Option<&std::sync::Arc<dyn ChannelAdapter>> {
    adapters.iter().find(|a| a.channel() == channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_message("hello", 10), ["hello"]);
        assert_eq!(split_message("", 10), [""]);
    }

    #[test]
    fn long_text_splits_on_sentences_then_words() {
        let text = "First sentence here. Second one is longer than the rest. Third.";
        let parts = split_message(text, 30);
        assert_eq!(
            parts,
            [
                "First sentence here.",
                "Second one is longer than the",
                "rest. Third."
            ]
        );
        assert!(parts.iter().all(|p| p.chars().count() <= 30));
    }

    #[test]
    fn lines_win_over_sentences_and_nothing_is_lost() {
        let text = format!("{}\n{}", "a".repeat(8), "b. c d e f g h");
        let parts = split_message(&text, 12);
        assert_eq!(parts[0], "aaaaaaaa");
        let joined: String = parts.concat();
        assert_eq!(
            joined.replace([' ', '\n'], ""),
            text.replace([' ', '\n'], "")
        );
    }

    #[test]
    fn unbroken_text_is_cut_at_the_limit_on_char_boundaries() {
        let text = "é".repeat(25);
        let parts = split_message(&text, 10);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.chars().count() <= 10));
        assert_eq!(parts.concat(), text);
    }
}
