//! What a person sends besides text — voice notes, photos, files, places,
//! contacts — is a message the agent answers, never an `Ignore`: each kind
//! from each channel's documented payload reaches the model as a stand-in
//! it can read, or (media the agent cannot take in, with no text) gets the
//! notice that says what to do, once per conversation, kind and hour; the
//! attachment is stored with the message.

use std::sync::Arc;

use convagent::core::AttachmentKind;
use convagent::core::media::MediaConfig;

use crate::support::EchoLlm;
use crate::{Harness, Options, mount_success};

/// What becomes of a message: the model reads it (as this), or it gets
/// the notice of what the agent cannot take in.
#[derive(Debug)]
enum Then {
    Model(&'static str),
    Notice(&'static str),
}

/// (golden payload, what becomes of it, the stored kind), in order: the
/// Telegram payloads share one chat, so its second image within the hour
/// (the sticker) is the model's to answer.
const CASES: &[(&str, Then, AttachmentKind)] = &[
    (
        "telegram/voice.json",
        Then::Notice("voice"),
        AttachmentKind::Voice,
    ),
    (
        "telegram/photo_no_caption.json",
        Then::Notice("image"),
        AttachmentKind::Photo,
    ),
    (
        "telegram/location.json",
        Then::Model("[location 52.520008, 13.404954]"),
        AttachmentKind::Location,
    ),
    (
        "telegram/venue.json",
        Then::Model(
            "[location 48.858093, 2.294694: Champ de Mars, 5 Av. Anatole France (Eiffel Tower)]",
        ),
        AttachmentKind::Location,
    ),
    (
        "telegram/contact.json",
        Then::Model("[contact Grace Hopper +441234567890]"),
        AttachmentKind::Contact,
    ),
    (
        "telegram/document.json",
        Then::Model("[document, invoice-1042.pdf, application/pdf, 47 KB]\nIs this invoice right?"),
        AttachmentKind::Document,
    ),
    (
        "telegram/sticker.json",
        Then::Model("[sticker 512×512, 👍, 22 KB]"),
        AttachmentKind::Sticker,
    ),
    (
        "whatsapp/voice_note.json",
        Then::Notice("voice"),
        AttachmentKind::Voice,
    ),
    (
        "whatsapp/location.json",
        Then::Model(
            "[location 37.7879277, -122.4075722: 375 Beale St, San Francisco, CA 94105 (Twilio HQ)]",
        ),
        AttachmentKind::Location,
    ),
    (
        "whatsapp/media_with_caption.json",
        Then::Model("[photo, image/jpeg]\nIs this the right charger?"),
        AttachmentKind::Photo,
    ),
    (
        "slack/file_share.json",
        Then::Notice("image"),
        AttachmentKind::Photo,
    ),
];

/// The newest reply stored: (provider, model, text).
fn newest_reply(h: &Harness) -> (String, String, String) {
    let conn = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    conn.query_row(
        "SELECT provider, model, text FROM messages WHERE role = 'assistant' ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_media_kind_is_answered_by_the_model_or_a_notice() {
    let llm = Arc::new(EchoLlm::new());
    let h = Harness::start(Options {
        llm: llm.clone(),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    let notices = MediaConfig::default();
    for (golden, then, _) in CASES {
        let before = llm.seen.lock().unwrap().len();
        let (status, body, _) = h.post(&h.sign(&h.golden(golden))).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{golden}");
        h.drained().await;
        let seen = llm.seen.lock().unwrap().clone();
        match then {
            Then::Model(reads) => {
                assert_eq!(seen.len(), before + 1, "{golden}: one turn");
                assert_eq!(
                    seen[before].last().map(String::as_str),
                    Some(*reads),
                    "{golden}"
                );
            }
            Then::Notice(sense) => {
                assert_eq!(seen.len(), before, "{golden}: the model is not asked");
                let (provider, model, text) = newest_reply(&h);
                assert_eq!(
                    (provider.as_str(), model.as_str()),
                    ("media", *sense),
                    "{golden}"
                );
                let wanted = match *sense {
                    "voice" => &notices.voice_notice,
                    _ => &notices.image_notice,
                };
                assert_eq!(&text, wanted, "{golden}");
            }
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_is_sent_once_per_conversation_kind_and_hour() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = Arc::new(crate::support::FakeClock::at(now));
    let llm = Arc::new(EchoLlm::new());
    let h = Harness::start(Options {
        llm: llm.clone(),
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    let voice = |n: i64| {
        let mut golden = h.golden("telegram/voice.json");
        let json = golden.json.as_mut().unwrap();
        json["update_id"] = serde_json::json!(910_000 + n);
        json["message"]["message_id"] = serde_json::json!(10_000 + n);
        h.sign(&golden)
    };
    let mut outcomes = Vec::new();
    for (n, wait_ms) in [(1, 0), (2, 60_000), (3, 3_600_000)] {
        h.advance(wait_ms);
        let calls = llm.seen.lock().unwrap().len();
        assert_eq!(h.post(&voice(n)).await.0, 200);
        h.drained().await;
        let asked = llm.seen.lock().unwrap().len() > calls;
        outcomes.push(if asked {
            "model".to_string()
        } else {
            newest_reply(&h).0
        });
    }
    // Told at once; a minute later the model answers from the stand-in
    // (a voice note it cannot hear); an hour on, told again.
    assert_eq!(outcomes, ["media", "model", "media"]);
    h.stop().await;
}

/// Where the fake speech-to-text server listens, for `Options::configure`
/// (a plain function) to read; `STARTING` keeps two tests from setting it
/// at once.
static STT: std::sync::Mutex<Option<(String, u64)>> = std::sync::Mutex::new(None);
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bytes the fake Telegram serves as the voice note's file.
const VOICE_FILE: &[u8] = b"OggS\x00\x02 a voice note as Telegram stores it";

/// A daemon with `[stt]` at a fake of the documented transcription API
/// (multipart in, `{"text": ...}` out), and a fake Telegram that serves the
/// voice note through `getFile` and the file path (`file` answering with
/// `status`).
async fn hearing_daemon(
    max_bytes: u64,
    status: u16,
) -> (Harness, Arc<EchoLlm>, wiremock::MockServer) {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let stt = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "text": "please call me back tomorrow" })),
        )
        .mount(&stt)
        .await;
    let starting = STARTING.lock().await;
    *STT.lock().unwrap() = Some((stt.uri(), max_bytes));
    let llm = Arc::new(EchoLlm::new());
    let h = Harness::start(Options {
        llm: llm.clone(),
        configure: |c| {
            let (url, max) = STT.lock().unwrap().clone().unwrap();
            c.stt.base_url = Some(url);
            c.stt.max_bytes = max;
        },
        ..Options::default()
    })
    .await;
    drop(starting);
    mount_success(&h).await;
    let token = crate::TELEGRAM_TOKEN;
    Mock::given(method("POST"))
        .and(path(format!("/bot{token}/getFile")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "ok": true,
            "result": { "file_id": "AwACAgIAAxkBAAIBQ2VoiceFileId", "file_unique_id": "AgADvoice01",
                        "file_size": VOICE_FILE.len(), "file_path": "voice/file_7.oga" }
        })))
        .mount(&h.telegram)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/file/bot{token}/voice/file_7.oga")))
        .respond_with(ResponseTemplate::new(status).set_body_bytes(VOICE_FILE))
        .mount(&h.telegram)
        .await;
    (h, llm, stt)
}

/// The trace of the one voice note sent: its `transcribed` stage's detail.
fn transcribed(h: &Harness) -> Option<(String, String)> {
    let conn = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    conn.query_row(
        "SELECT outcome, detail FROM traces WHERE stage = 'transcribed'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_note_is_fetched_transcribed_and_the_model_reads_the_words() {
    let (h, llm, stt) = hearing_daemon(1 << 20, 200).await;
    let (status, _, _) = h.post(&h.sign(&h.golden("telegram/voice.json"))).await;
    assert_eq!(status, 200);
    h.drained().await;
    let seen = llm.seen.lock().unwrap().clone();
    assert_eq!(
        seen.last().and_then(|t| t.last()).map(String::as_str),
        Some("[voice note, audio/ogg, 4 s, 7 KB] transcript: please call me back tomorrow")
    );
    // The transcription server got the served bytes, as its API documents.
    let requests = stt.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    let multipart = String::from_utf8_lossy(body);
    assert!(
        body.windows(VOICE_FILE.len()).any(|w| w == VOICE_FILE),
        "{multipart}"
    );
    assert!(multipart.contains("name=\"model\"") && multipart.contains("whisper-1"));
    assert!(
        requests[0].headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("multipart/form-data"),
    );
    // Stored with the attachment; the message's text stays as sent.
    let conn = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    let (text, attachments): (String, String) = conn
        .query_row(
            "SELECT text, attachments FROM messages WHERE role = 'user'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(text, "");
    assert!(attachments.contains("\"transcript\":\"please call me back tomorrow\""));
    let (outcome, detail) = transcribed(&h).expect("traced");
    assert_eq!(outcome, "ok", "{detail}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_note_that_cannot_be_fetched_is_still_answered_and_the_trace_says_why() {
    for (max_bytes, status, why) in [
        (1 << 20, 404, "HTTP 404"),
        (16, 200, "over the cap of 16 bytes"),
    ] {
        let (h, llm, stt) = hearing_daemon(max_bytes, status).await;
        let (code, _, _) = h.post(&h.sign(&h.golden("telegram/voice.json"))).await;
        assert_eq!(code, 200);
        h.drained().await;
        assert!(
            llm.seen.lock().unwrap().is_empty(),
            "{why}: the notice answers"
        );
        assert_eq!(newest_reply(&h).1, "voice", "{why}");
        assert!(stt.received_requests().await.unwrap().is_empty(), "{why}");
        let (outcome, detail) = transcribed(&h).expect("traced");
        assert_eq!(outcome, "failed");
        assert!(detail.contains(why), "{detail}");
        h.stop().await;
    }
}
