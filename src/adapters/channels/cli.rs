//! The `cli` channel: the terminal conversation of `convagent chat`. Each
//! line typed is one inbound message with a fresh provider message id.

use std::collections::BTreeMap;

use crate::core::message::{Channel, ConversationKey, CorrelationId, InboundMessage};

/// The conversation key of the local user in `convagent chat`.
pub fn conversation_key(user: &str) -> ConversationKey {
    ConversationKey::new(Channel::Cli, user, "")
}

/// The local user's name for the cli channel: `$USER`, or `local`.
pub fn local_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "local".to_string())
}

/// A typed line as a canonical inbound message.
pub fn inbound(key: &ConversationKey, text: &str, now_ms: i64) -> InboundMessage {
    let correlation_id = CorrelationId::generate();
    InboundMessage {
        key: key.clone(),
        text: text.to_string(),
        // A terminal line has no provider id; the correlation id is unique.
        provider_message_id: format!("cli-{correlation_id}"),
        provider_ts: Some(now_ms),
        received_at: now_ms,
        attachments: Vec::new(),
        metadata: BTreeMap::new(),
        correlation_id,
    }
}
