//! Telegram's media fields of a `Message` as canonical attachments: `voice`,
//! `audio`, `video_note`, `video`, `photo` (the largest size under the cap), `document`,
//! `sticker`, `location`, `venue` and `contact`. Read leniently, each from
//! its JSON value: a field of an unexpected shape is left out, never a
//! reason to refuse the update.

use serde_json::Value;

use crate::core::message::{Attachment, AttachmentKind};

/// The media fields of a message, as sent.
pub(super) struct Media<'a> {
    pub voice: Option<&'a Value>,
    pub audio: Option<&'a Value>,
    pub video_note: Option<&'a Value>,
    pub video: Option<&'a Value>,
    pub photo: Option<&'a Value>,
    pub document: Option<&'a Value>,
    pub sticker: Option<&'a Value>,
    pub location: Option<&'a Value>,
    pub venue: Option<&'a Value>,
    pub contact: Option<&'a Value>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn number(v: &Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

fn small(v: &Value, key: &str) -> Option<u32> {
    number(v, key).and_then(|n| u32::try_from(n).ok())
}

/// A file Telegram serves by id (`getFile`), with what it says of it.
fn file(kind: AttachmentKind, v: &Value, caption: Option<&String>) -> Option<Attachment> {
    let file_id = text(v, "file_id")?;
    Some(Attachment {
        file_id: Some(file_id),
        content_type: text(v, "mime_type"),
        size: number(v, "file_size"),
        duration_secs: small(v, "duration"),
        width: small(v, "width").or(small(v, "length")),
        height: small(v, "height").or(small(v, "length")),
        name: text(v, "file_name")
            .or_else(|| text(v, "title"))
            .or_else(|| text(v, "emoji")),
        caption: caption.cloned(),
        ..Attachment::new(kind)
    })
}

/// A place: a `location`, or a `venue` (its location, title and address).
fn place(v: &Value) -> Option<Attachment> {
    let at = v.get("location").unwrap_or(v);
    let latitude = at.get("latitude")?.as_f64()?;
    let longitude = at.get("longitude")?.as_f64()?;
    Some(Attachment {
        latitude: Some(latitude),
        longitude: Some(longitude),
        name: text(v, "title"),
        address: text(v, "address"),
        ..Attachment::new(AttachmentKind::Location)
    })
}

fn contact(v: &Value) -> Option<Attachment> {
    let name = [text(v, "first_name"), text(v, "last_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let phone = text(v, "phone_number");
    if name.is_empty() && phone.is_none() {
        return None;
    }
    Some(Attachment {
        name: (!name.is_empty()).then_some(name),
        phone,
        ..Attachment::new(AttachmentKind::Contact)
    })
}

impl Media<'_> {
    /// The attachments, in a fixed order; `caption` is the message's.
    /// What came with the message; of a photo's sizes, the largest of at
    /// most `image_max_bytes` (the largest of all if none is: the media
    /// stage then refuses it and the person is told).
    pub(super) fn attachments(
        &self,
        caption: Option<&String>,
        image_max_bytes: u64,
    ) -> Vec<Attachment> {
        let mut out = Vec::new();
        let files = [
            (AttachmentKind::Voice, &self.voice),
            (AttachmentKind::Audio, &self.audio),
            (AttachmentKind::VideoNote, &self.video_note),
            (AttachmentKind::Video, &self.video),
            (AttachmentKind::Document, &self.document),
            (AttachmentKind::Sticker, &self.sticker),
        ];
        for (kind, field) in files {
            out.extend(field.and_then(|v| file(kind, v, caption)));
        }
        // Photos come in several sizes: the largest under the cap (by area,
        // whatever order Telegram gives them in; a size that does not say
        // its bytes is taken to fit).
        if let Some(sizes) = self.photo.and_then(Value::as_array) {
            let area =
                |s: &&Value| number(s, "width").unwrap_or(0) * number(s, "height").unwrap_or(0);
            let fits = |s: &&Value| {
                s.get("file_size")
                    .and_then(Value::as_u64)
                    .is_none_or(|bytes| bytes <= image_max_bytes)
            };
            let chosen = sizes
                .iter()
                .filter(fits)
                .max_by_key(area)
                .or_else(|| sizes.iter().max_by_key(area));
            out.extend(chosen.and_then(|s| file(AttachmentKind::Photo, s, caption)));
        }
        // A venue carries its location too: one place, not two.
        match (self.venue, self.location) {
            (Some(venue), _) => out.extend(place(venue)),
            (None, Some(location)) => out.extend(place(location)),
            (None, None) => {}
        }
        out.extend(self.contact.and_then(contact));
        out
    }
}
