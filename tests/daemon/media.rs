//! What a person sends besides text — voice notes, photos, files, places,
//! contacts — is a message the agent answers, never an `Ignore`: each kind
//! from each channel's documented payload reaches the model as a stand-in
//! it can read, and the attachment is stored with the message.

use std::sync::Arc;

use convagent::core::AttachmentKind;

use crate::support::EchoLlm;
use crate::{Harness, Options, mount_success};

/// (golden payload, what the model reads for it, the stored kind)
const CASES: &[(&str, &str, AttachmentKind)] = &[
    (
        "telegram/voice.json",
        "[voice note, audio/ogg, 4 s, 7 KB]",
        AttachmentKind::Voice,
    ),
    (
        "telegram/photo_no_caption.json",
        "[photo 1280×960, 146 KB]",
        AttachmentKind::Photo,
    ),
    (
        "telegram/location.json",
        "[location 52.520008, 13.404954]",
        AttachmentKind::Location,
    ),
    (
        "telegram/venue.json",
        "[location 48.858093, 2.294694: Champ de Mars, 5 Av. Anatole France (Eiffel Tower)]",
        AttachmentKind::Location,
    ),
    (
        "telegram/contact.json",
        "[contact Grace Hopper +441234567890]",
        AttachmentKind::Contact,
    ),
    (
        "telegram/document.json",
        "[document, invoice-1042.pdf, application/pdf, 47 KB]\nIs this invoice right?",
        AttachmentKind::Document,
    ),
    (
        "telegram/sticker.json",
        "[sticker 512×512, 👍, 22 KB]",
        AttachmentKind::Sticker,
    ),
    (
        "whatsapp/voice_note.json",
        "[voice note, audio/ogg]",
        AttachmentKind::Voice,
    ),
    (
        "whatsapp/location.json",
        "[location 37.7879277, -122.4075722: 375 Beale St, San Francisco, CA 94105 (Twilio HQ)]",
        AttachmentKind::Location,
    ),
    (
        "whatsapp/media_with_caption.json",
        "[photo, image/jpeg]\nIs this the right charger?",
        AttachmentKind::Photo,
    ),
    (
        "slack/file_share.json",
        "[photo 1600×1200, whiteboard.png, image/png, 200 KB]",
        AttachmentKind::Photo,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_media_kind_is_answered_and_reaches_the_model_as_a_stand_in() {
    let llm = Arc::new(EchoLlm::new());
    let h = Harness::start(Options {
        llm: llm.clone(),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    for (golden, model_reads, _) in CASES {
        let before = llm.seen.lock().unwrap().len();
        let (status, body, _) = h.post(&h.sign(&h.golden(golden))).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{golden}");
        h.drained().await;
        let seen = llm.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), before + 1, "{golden}: one turn");
        assert_eq!(
            seen[before].last().map(String::as_str),
            Some(*model_reads),
            "{golden}"
        );
    }
    // Each stored with its message, its kind and what the provider said.
    let conn = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT attachments FROM messages WHERE role = 'user' AND answered_at IS NOT NULL ORDER BY id")
        .unwrap();
    let stored: Vec<Vec<convagent::core::Attachment>> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|json| serde_json::from_str(&json.unwrap()).unwrap())
        .collect();
    assert_eq!(stored.len(), CASES.len());
    for ((golden, _, kind), attachments) in CASES.iter().zip(&stored) {
        assert_eq!(attachments.len(), 1, "{golden}: {attachments:?}");
        assert_eq!(attachments[0].kind, *kind, "{golden}");
    }
    let voice = &stored[0][0];
    assert_eq!(
        voice.file_id.as_deref(),
        Some("AwACAgIAAxkBAAIBQ2VoiceFileId")
    );
    let photo = &stored[1][0];
    assert_eq!(
        photo.file_id.as_deref(),
        Some("AgACAgIAAxkBAAIBphotoLarge"),
        "the largest size"
    );
    let slack = &stored[10][0];
    assert!(slack.url.contains("/download/whiteboard.png"), "{slack:?}");
    h.stop().await;
}
