//! The canonical message every channel is normalised into (SPEC.md, pipeline
//! step 2), and the identity of a conversation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a message came from. The agent core treats all channels alike; the
/// channel only takes part in identity and storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Whatsapp,
    Sms,
    Telegram,
    Slack,
    Cli,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Whatsapp,
        Channel::Sms,
        Channel::Telegram,
        Channel::Slack,
        Channel::Cli,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Sms => "sms",
            Channel::Telegram => "telegram",
            Channel::Slack => "slack",
            Channel::Cli => "cli",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a channel name that is not one of [`Channel::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown channel `{0}` (expected one of: whatsapp, sms, telegram, slack, cli)")]
pub struct UnknownChannel(pub String);

impl FromStr for Channel {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownChannel(s.to_string()))
    }
}

/// Who said a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// Identifies one journey of one message through the pipeline; every log
/// event and stored trace about the message carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    /// A fresh id (UUID v7, 32 hex digits), made where a message enters.
    /// Its first digits are the time, so ids made later sort later: rows
    /// indexed by correlation id are appended at the index's end instead of
    /// landing on a random page of it (one page written per trace row).
    pub fn generate() -> Self {
        CorrelationId(uuid::Uuid::now_v7().simple().to_string())
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A conversation is one sender on one channel, optionally within a thread
/// (a Slack thread, a Telegram group). `thread` is empty when the channel has
/// no threads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConversationKey {
    pub channel: Channel,
    pub sender: String,
    pub thread: String,
}

impl ConversationKey {
    pub fn new(channel: Channel, sender: impl Into<String>, thread: impl Into<String>) -> Self {
        ConversationKey {
            channel,
            sender: sender.into(),
            thread: thread.into(),
        }
    }
}

pub use super::media::{Attachment, AttachmentKind};

/// The metadata key under which an adapter puts the name the provider
/// shows for the sender (Telegram's first name, Twilio's ProfileName, a
/// Slack profile's display name); the store keeps it with the conversation.
pub const SENDER_NAME: &str = "sender_name";

/// The canonical inbound message: what every channel adapter produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub key: ConversationKey,
    pub text: String,
    /// The provider's own id for the message; unique per channel. A message
    /// whose id was seen before is a duplicate.
    pub provider_message_id: String,
    /// The provider's timestamp, unix milliseconds, when it gives one.
    pub provider_ts: Option<i64>,
    /// When we received it, unix milliseconds.
    pub received_at: i64,
    pub attachments: Vec<Attachment>,
    pub metadata: BTreeMap<String, String>,
    pub correlation_id: CorrelationId,
}

/// One turn of a conversation as the context builder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub message_id: i64,
    pub role: Role,
    pub text: String,
    /// The fetched images that came with it, for a model that can see.
    pub images: Vec<super::media::ImageRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), c);
        }
        assert_eq!("Telegram".parse::<Channel>().unwrap(), Channel::Telegram);
        let err = "discord".parse::<Channel>().unwrap_err();
        assert!(err.to_string().contains("unknown channel `discord`"));
    }

    #[test]
    fn correlation_ids_are_fixed_width_hex() {
        let a = CorrelationId::generate();
        let b = CorrelationId::generate();
        assert_eq!(a.0.len(), 32);
        assert!(a.0.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(a.0 < b.0, "ids made later sort later: {a} then {b}");
    }
}
