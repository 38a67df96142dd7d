//! What comes with a message besides its text: voice notes, photos, files,
//! places and contacts, in one canonical form whatever the channel. The
//! model sees each as a short text stand-in (`[voice note, 4 s]`), so a
//! message that is nothing but a photo is still a message the agent
//! answers, and failover to a provider that cannot see or hear still works.

use serde::{Deserialize, Serialize};

use super::message::InboundMessage;

/// The provider recorded with a media notice (its model is the sense).
pub const NOTICE_PROVIDER: &str = "media";
/// A conversation gets one notice per sense in this long at most.
pub const NOTICE_EVERY_MS: i64 = 3_600_000;

/// What the agent would need to take an attachment in, and does not have
/// yet: places and contacts are text already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sense {
    /// Voice notes and audio: speech to text.
    Hearing,
    /// Photos, videos, stickers: a model that sees.
    Sight,
    /// Documents and other files: reading their contents.
    Reading,
}

impl Sense {
    pub fn as_str(self) -> &'static str {
        match self {
            Sense::Hearing => "voice",
            Sense::Sight => "image",
            Sense::Reading => "file",
        }
    }
}

/// `[media]`: what a person is told when they send something convagent
/// cannot take in, instead of silence or a guess.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// For voice notes and audio.
    pub voice_notice: String,
    /// For photos, videos and stickers.
    pub image_notice: String,
    /// For documents and other files.
    pub file_notice: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            voice_notice: "I can't listen to voice notes here yet. Could you type it?".into(),
            image_notice: "I can't see images here yet. Could you tell me in words what it shows?"
                .into(),
            file_notice: "I can't open files here yet. Could you paste the part that matters?"
                .into(),
        }
    }
}

impl MediaConfig {
    pub fn notice(&self, sense: Sense) -> &str {
        match sense {
            Sense::Hearing => &self.voice_notice,
            Sense::Sight => &self.image_notice,
            Sense::Reading => &self.file_notice,
        }
    }
}

/// The sense a turn needs that the agent lacks, when the turn is nothing
/// but such media: no message of it has text, and none of its attachments
/// is one the agent takes in (a place, a contact). Such a turn gets the
/// sense's notice; one with any text is answered by the model, which
/// reads the stand-ins.
pub fn unmet<'a>(turn: impl IntoIterator<Item = &'a InboundMessage>) -> Option<Sense> {
    let mut needed = None;
    for message in turn {
        if !message.text.trim().is_empty() || message.attachments.is_empty() {
            return None;
        }
        for attachment in &message.attachments {
            if attachment.transcript.is_some() {
                return None;
            }
            let sense = attachment.kind.sense()?;
            needed.get_or_insert(sense);
        }
    }
    needed
}

/// What an attachment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    /// A recorded voice message (Telegram `voice`, a WhatsApp voice note).
    Voice,
    /// A music or audio file.
    Audio,
    /// Telegram's round video message.
    VideoNote,
    Video,
    Photo,
    /// A file sent as a file.
    Document,
    Sticker,
    /// A place: coordinates, with a name and address for a venue.
    Location,
    /// A shared contact card.
    Contact,
    /// Media whose kind the provider did not say (rows stored before kinds).
    #[default]
    File,
}

impl AttachmentKind {
    /// The kind of media of a MIME type (Twilio and Slack say only that).
    pub fn of_mime(mime: &str) -> AttachmentKind {
        let mime = mime.to_ascii_lowercase();
        match mime.split('/').next().unwrap_or_default() {
            "image" if mime == "image/webp" => AttachmentKind::Sticker,
            "image" => AttachmentKind::Photo,
            "audio" if mime.contains("ogg") || mime.contains("opus") || mime.contains("amr") => {
                AttachmentKind::Voice
            }
            "audio" => AttachmentKind::Audio,
            "video" => AttachmentKind::Video,
            "text" if mime.contains("vcard") => AttachmentKind::Contact,
            "" => AttachmentKind::File,
            _ => AttachmentKind::Document,
        }
    }

    /// What the agent needs to take this kind in (none: it is text).
    pub fn sense(self) -> Option<Sense> {
        match self {
            AttachmentKind::Voice | AttachmentKind::Audio => Some(Sense::Hearing),
            AttachmentKind::VideoNote
            | AttachmentKind::Video
            | AttachmentKind::Photo
            | AttachmentKind::Sticker => Some(Sense::Sight),
            AttachmentKind::Document | AttachmentKind::File => Some(Sense::Reading),
            AttachmentKind::Location | AttachmentKind::Contact => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentKind::Voice => "voice note",
            AttachmentKind::Audio => "audio",
            AttachmentKind::VideoNote => "video note",
            AttachmentKind::Video => "video",
            AttachmentKind::Photo => "photo",
            AttachmentKind::Document => "document",
            AttachmentKind::Sticker => "sticker",
            AttachmentKind::Location => "location",
            AttachmentKind::Contact => "contact",
            AttachmentKind::File => "file",
        }
    }
}

/// One attachment, as the provider described it. Only what the provider
/// said is set; the file itself is fetched later (by `url`, or by
/// `file_id` where the provider serves files by id).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Attachment {
    pub kind: AttachmentKind,
    /// Where the provider serves the file (Twilio, Slack); empty where it
    /// is fetched by `file_id` (Telegram) or there is no file.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Bytes, as the provider reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
    /// The provider's id of the file (Telegram `file_id`, Slack file id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// A file's name, a venue's title, a contact's name, a sticker's emoji.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// What a voice note or audio said, as speech-to-text heard it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
}

impl Attachment {
    pub fn new(kind: AttachmentKind) -> Self {
        Attachment {
            kind,
            ..Attachment::default()
        }
    }

    pub fn with_content_type(mut self, content_type: Option<String>) -> Self {
        self.content_type = content_type;
        self
    }

    /// What the model reads in its place: the kind and what the provider
    /// said of it (`[photo 1280×960, image/jpeg]`, `[voice note, 4 s]`,
    /// `[location 52.52, 13.405: Unter den Linden 1 (Office)]`). A caption
    /// is not repeated: it is the message's text.
    pub fn stand_in(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut head = self.kind.as_str().to_string();
        match self.kind {
            AttachmentKind::Location => {
                if let (Some(lat), Some(lon)) = (self.latitude, self.longitude) {
                    head.push_str(&format!(" {lat}, {lon}"));
                }
                let mut place = self.address.clone().unwrap_or_default();
                if let Some(name) = &self.name {
                    place = if place.is_empty() {
                        name.clone()
                    } else {
                        format!("{place} ({name})")
                    };
                }
                if !place.is_empty() {
                    head.push_str(&format!(": {place}"));
                }
                return format!("[{head}]");
            }
            AttachmentKind::Contact => {
                for part in [&self.name, &self.phone].into_iter().flatten() {
                    head.push(' ');
                    head.push_str(part);
                }
                return format!("[{head}]");
            }
            _ => {}
        }
        if let (Some(w), Some(h)) = (self.width, self.height) {
            head.push_str(&format!(" {w}×{h}"));
        }
        parts.push(head);
        if let Some(name) = &self.name {
            parts.push(name.clone());
        }
        if let Some(mime) = &self.content_type {
            parts.push(mime.clone());
        }
        if let Some(secs) = self.duration_secs {
            parts.push(format!("{secs} s"));
        }
        if let Some(size) = self.size {
            parts.push(human_size(size));
        }
        format!("[{}]", parts.join(", "))
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// The stored form of the attachments (a JSON array) read back; `[]`, for
/// nearly every message, without parsing. A row that does not parse reads
/// as none: what a message said is never lost for its attachments.
pub fn stored(attachments: &str) -> Vec<Attachment> {
    if attachments.len() <= 2 {
        return Vec::new();
    }
    serde_json::from_str(attachments).unwrap_or_default()
}

/// [`for_model`] from the stored form of the attachments (a JSON array;
/// `[]` for nearly every message, read without parsing).
pub fn stored_for_model(text: String, attachments: &str) -> String {
    let list = stored(attachments);
    if list.is_empty() {
        return text;
    }
    for_model(&text, &list)
}

/// The stored form of attachments, which [`stored`] reads back. Nothing in
/// an attachment can fail to serialise (serde_json writes a non-finite
/// coordinate as `null`).
pub fn to_stored(attachments: &[Attachment]) -> String {
    serde_json::to_string(attachments).unwrap_or_else(|_| "[]".into())
}

/// A user message's text as the model reads it: the stand-ins of what came
/// with it, then what the person wrote.
pub fn for_model(text: &str, attachments: &[Attachment]) -> String {
    if attachments.is_empty() {
        return text.to_string();
    }
    let mut out: Vec<String> = attachments
        .iter()
        .map(|a| match &a.transcript {
            // The person's words, marked as heard from a voice note.
            Some(heard) => format!("{} transcript: {heard}", a.stand_in()),
            None => a.stand_in(),
        })
        .collect();
    if !text.trim().is_empty() {
        out.push(text.to_string());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_a_stand_in_the_model_can_use() {
        let voice = Attachment {
            duration_secs: Some(4),
            content_type: Some("audio/ogg".into()),
            ..Attachment::new(AttachmentKind::Voice)
        };
        assert_eq!(voice.stand_in(), "[voice note, audio/ogg, 4 s]");
        let photo = Attachment {
            width: Some(1280),
            height: Some(960),
            size: Some(150_000),
            ..Attachment::new(AttachmentKind::Photo)
        };
        assert_eq!(photo.stand_in(), "[photo 1280×960, 146 KB]");
        let place = Attachment {
            latitude: Some(52.52),
            longitude: Some(13.405),
            address: Some("Unter den Linden 1".into()),
            name: Some("Office".into()),
            ..Attachment::new(AttachmentKind::Location)
        };
        assert_eq!(
            place.stand_in(),
            "[location 52.52, 13.405: Unter den Linden 1 (Office)]"
        );
        let card = Attachment {
            name: Some("Ada Lovelace".into()),
            phone: Some("+441234567".into()),
            ..Attachment::new(AttachmentKind::Contact)
        };
        assert_eq!(card.stand_in(), "[contact Ada Lovelace +441234567]");
        assert_eq!(
            for_model("look at this", std::slice::from_ref(&photo)),
            "[photo 1280×960, 146 KB]\nlook at this"
        );
        assert_eq!(for_model("", &[voice]), "[voice note, audio/ogg, 4 s]");
        assert_eq!(for_model("plain", &[]), "plain");
    }

    #[test]
    fn rows_stored_before_kinds_still_read() {
        let old: Vec<Attachment> =
            serde_json::from_str(r#"[{"url":"https://x/y.jpg","content_type":"image/jpeg"}]"#)
                .unwrap();
        assert_eq!(old[0].kind, AttachmentKind::File);
        assert_eq!(old[0].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(AttachmentKind::of_mime("audio/ogg"), AttachmentKind::Voice);
        assert_eq!(AttachmentKind::of_mime("image/jpeg"), AttachmentKind::Photo);
        assert_eq!(
            AttachmentKind::of_mime("application/pdf"),
            AttachmentKind::Document
        );
        assert_eq!(
            AttachmentKind::of_mime("text/vcard"),
            AttachmentKind::Contact
        );
    }
}
