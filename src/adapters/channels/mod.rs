//! Channel adapters: each turns its provider's wire format into the
//! canonical [`InboundMessage`](crate::core::InboundMessage) and sends replies
//! back. WhatsApp, Telegram and Slack arrive with `convagent serve`.

pub mod cli;
