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

const MIB: u64 = 1024 * 1024;

/// `[media]`: how attachments' files are fetched and kept, and what a
/// person is told when they send something convagent cannot take in,
/// instead of silence or a guess.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// For voice notes and audio.
    pub voice_notice: String,
    /// For photos, videos and stickers.
    pub image_notice: String,
    /// For documents and other files.
    pub file_notice: String,
    /// Where fetched files are kept, named by their SHA-256; empty: the
    /// data directory's `media/`.
    pub dir: String,
    /// The most fetched of a voice note or audio; a larger one is refused
    /// unread and the person gets the notice.
    pub voice_max_bytes: u64,
    /// The most fetched of a photo or sticker.
    pub image_max_bytes: u64,
    /// The most fetched of a video or video note.
    pub video_max_bytes: u64,
    /// The most fetched of a document or other file.
    pub file_max_bytes: u64,
    /// One fetch (every attempt of it) gives up after this long.
    pub fetch_timeout_secs: u64,
    /// Attempts at a fetch that failed with a 5xx or a lost connection.
    pub fetch_attempts: u32,
    /// The most characters of a document's text the model reads.
    pub document_chars: usize,
    /// The newest images of a conversation given to a model that can see
    /// (older ones it reads by their stand-in).
    pub max_images: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            voice_notice: "I can't listen to voice notes here yet. Could you type it?".into(),
            image_notice: "I can't see images here yet. Could you tell me in words what it shows?"
                .into(),
            file_notice: "I can't open files here yet. Could you paste the part that matters?"
                .into(),
            dir: String::new(),
            voice_max_bytes: 20 * MIB,
            image_max_bytes: 10 * MIB,
            video_max_bytes: 20 * MIB,
            file_max_bytes: 20 * MIB,
            fetch_timeout_secs: 60,
            fetch_attempts: 3,
            document_chars: 20_000,
            max_images: 4,
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

    /// The most fetched of a file of `kind` (none: it has no file).
    pub fn max_bytes(&self, kind: AttachmentKind) -> Option<u64> {
        Some(match kind {
            AttachmentKind::Voice | AttachmentKind::Audio => self.voice_max_bytes,
            AttachmentKind::Photo | AttachmentKind::Sticker => self.image_max_bytes,
            AttachmentKind::Video | AttachmentKind::VideoNote => self.video_max_bytes,
            AttachmentKind::Document | AttachmentKind::File => self.file_max_bytes,
            AttachmentKind::Location | AttachmentKind::Contact => return None,
        })
    }
}

/// The sense a turn needs that the agent lacks, when the turn is nothing
/// but such media: no message of it has text, and none of its attachments
/// is one the agent takes in (a place, a contact, a voice note it heard, a
/// document it read, a photo when the model `sees`). Such a turn gets the
/// sense's notice; one with any text is answered by the model, which reads
/// the stand-ins.
pub fn unmet<'a>(turn: impl IntoIterator<Item = &'a InboundMessage>, sees: bool) -> Option<Sense> {
    let mut needed = None;
    for message in turn {
        if !message.text.trim().is_empty() || message.attachments.is_empty() {
            return None;
        }
        for attachment in &message.attachments {
            if attachment.taken_in(sees) {
                return None;
            }
            if let Some(sense) = attachment.kind.sense() {
                needed.get_or_insert(sense);
            }
        }
    }
    needed
}

/// A fetched image kept under the media directory, as a turn carries it for
/// a model that can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The file's SHA-256 (hex), its name in the media directory.
    pub file: String,
    pub mime: String,
}

/// The image types the providers that see take (JPEG, PNG, WebP, GIF).
fn viewable(mime: &str) -> bool {
    matches!(
        mime,
        "image/jpeg" | "image/png" | "image/webp" | "image/gif"
    )
}

/// The fetched, viewable images among `attachments`.
pub fn images(attachments: &[Attachment]) -> Vec<ImageRef> {
    attachments.iter().filter_map(Attachment::image).collect()
}

/// The MIME type of a file by its first bytes, for the kinds the agent
/// takes in (Telegram says none for a photo).
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    Some(match bytes {
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => "image/webp",
        [b'%', b'P', b'D', b'F', ..] => "application/pdf",
        [b'O', b'g', b'g', b'S', ..] => "audio/ogg",
        _ => return None,
    })
}

/// Where fetched files are kept: content-addressed, so the same file sent
/// twice is kept once and a file's name says what it holds. Synchronous
/// (the daemon calls it off its async threads).
pub trait MediaFiles: Send + Sync {
    /// Keeps `bytes` (on disk before it returns) and gives their name, the
    /// SHA-256 in hex.
    fn put(&self, bytes: &[u8]) -> Result<String, String>;
    /// The file named `file`, if it is kept here.
    fn get(&self, file: &str) -> Option<Vec<u8>>;
    /// Removes the file named `file`; `false` if it was not here.
    fn remove(&self, file: &str) -> Result<bool, String>;
    /// Where the file named `file` is (or would be) kept, for the export.
    fn locate(&self, file: &str) -> String;

    /// Removes each of `files` (erasure, retention): how many were here,
    /// and the first reason one could not be removed (the rest are tried).
    fn remove_all(&self, files: &[String]) -> (usize, Option<String>) {
        let mut removed = 0;
        let mut failed = None;
        for file in files {
            match self.remove(file) {
                Ok(was) => removed += usize::from(was),
                Err(why) => {
                    failed.get_or_insert(why);
                }
            }
        }
        (removed, failed)
    }
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
    /// The fetched file's SHA-256 (hex): its name under `[media] dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Why the file could not be fetched (it is not asked for again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_error: Option<String>,
    /// A document's text, as far as the model reads it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
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

    /// Whether the agent takes this in as it is: a place or a contact (text
    /// already), a voice note with its transcript, a document with its
    /// text, or an image it fetched when the model `sees`.
    pub fn taken_in(&self, sees: bool) -> bool {
        match self.kind.sense() {
            None => true,
            Some(_) if self.transcript.is_some() || self.text.is_some() => true,
            Some(Sense::Sight) => sees && self.image().is_some(),
            Some(_) => false,
        }
    }

    /// This attachment as an image for a model that sees: a photo or sticker
    /// fetched, of a type the providers take.
    pub fn image(&self) -> Option<ImageRef> {
        if !matches!(self.kind, AttachmentKind::Photo | AttachmentKind::Sticker) {
            return None;
        }
        let mime = self.content_type.as_deref()?.to_ascii_lowercase();
        let file = self.file.clone()?;
        viewable(&mime).then_some(ImageRef { file, mime })
    }

    /// Whether the media stage still has this one's file to fetch.
    pub fn wants_file(&self) -> bool {
        self.kind.sense().is_some()
            && self.file.is_none()
            && self.fetch_error.is_none()
            && (!self.url.is_empty() || self.file_id.is_some())
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

/// [`for_model`] and the fetched [`images`] from the stored form of the
/// attachments (a JSON array; `[]` for nearly every message, read without
/// parsing).
pub fn stored_for_model(text: String, attachments: &str) -> (String, Vec<ImageRef>) {
    let list = stored(attachments);
    if list.is_empty() {
        return (text, Vec::new());
    }
    (for_model(&text, &list), images(&list))
}

/// The names of the fetched files in the stored form of attachments.
pub fn stored_files(attachments: &str) -> impl Iterator<Item = String> {
    stored(attachments).into_iter().filter_map(|a| a.file)
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
        .map(|a| match (&a.transcript, &a.text) {
            // The person's words, marked as heard from a voice note.
            (Some(heard), _) => format!("{} transcript: {heard}", a.stand_in()),
            (None, Some(read)) => format!("{} contents:\n{read}", a.stand_in()),
            (None, None) => a.stand_in(),
        })
        .collect();
    if !text.trim().is_empty() {
        out.push(text.to_string());
    }
    out.join("\n")
}

/// A message as people read it (`history show`, the TUI): each stand-in
/// with what was heard, how much of a document was read (not the text
/// itself), or why its file could not be fetched; then what was written.
pub fn for_people(text: &str, attachments: &[Attachment]) -> String {
    if attachments.is_empty() {
        return text.to_string();
    }
    let mut out: Vec<String> = attachments
        .iter()
        .map(|a| match (&a.transcript, &a.text, &a.fetch_error) {
            (Some(heard), _, _) => format!("{} transcript: {heard}", a.stand_in()),
            (None, Some(read), _) => {
                format!(
                    "{} ({} characters read)",
                    a.stand_in(),
                    read.chars().count()
                )
            }
            (None, None, Some(why)) => format!("{} (not fetched: {why})", a.stand_in()),
            (None, None, None) => a.stand_in(),
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
    fn people_read_what_was_learnt_of_each_attachment_and_the_model_its_contents() {
        let document = Attachment {
            name: Some("notes.md".into()),
            text: Some("# Hours\n9 to 5".into()),
            ..Attachment::new(AttachmentKind::Document)
        };
        let lost = Attachment {
            fetch_error: Some("HTTP 404".into()),
            ..Attachment::new(AttachmentKind::Photo)
        };
        let both = [document, lost];
        assert_eq!(
            for_people("when?", &both),
            "[document, notes.md] (14 characters read)\n[photo] (not fetched: HTTP 404)\nwhen?"
        );
        assert_eq!(
            for_model("when?", &both),
            "[document, notes.md] contents:\n# Hours\n9 to 5\n[photo]\nwhen?"
        );
    }

    #[test]
    fn an_image_is_taken_in_only_when_fetched_viewable_and_seen() {
        let mut photo = Attachment {
            content_type: Some("image/jpeg".into()),
            ..Attachment::new(AttachmentKind::Photo)
        };
        assert!(!photo.taken_in(true), "not fetched");
        photo.file = Some("ab".repeat(32));
        assert!(photo.taken_in(true));
        assert!(!photo.taken_in(false), "no model sees");
        photo.content_type = Some("image/heic".into());
        assert!(!photo.taken_in(true), "not a type the providers take");
        let video = Attachment {
            file: Some("cd".repeat(32)),
            content_type: Some("video/mp4".into()),
            ..Attachment::new(AttachmentKind::Video)
        };
        assert!(!video.taken_in(true));
        assert_eq!(sniff(b"\x89PNG\r\n"), Some("image/png"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"hello"), None);
    }

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
