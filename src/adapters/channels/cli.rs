//! The `cli` channel: the terminal conversation of `convagent chat`. Each
//! line typed is one inbound message with a fresh provider message id.

use std::collections::BTreeMap;

use std::path::Path;

use crate::core::message::{
    Attachment, AttachmentKind, Channel, ConversationKey, CorrelationId, InboundMessage,
};

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

/// A local file as the attachment a channel would deliver (`/attach` in
/// `chat`): its kind and MIME type from its extension, its size, its name,
/// and a `file://` URL.
pub fn attachment_of(path: &Path) -> Result<Attachment, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let absolute = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mime = match extension.as_str() {
        "ogg" | "oga" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "wav" => "audio/wav",
        "amr" => "audio/amr",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "json" => "application/json",
        "vcf" => "text/vcard",
        _ => "application/octet-stream",
    };
    Ok(Attachment {
        url: format!("file://{}", absolute.display()),
        size: Some(meta.len()),
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
        ..Attachment::new(AttachmentKind::of_mime(mime)).with_content_type(Some(mime.into()))
    })
}
