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

/// Posts `golden` as its provider would (accepted) and waits until the
/// daemon has done all it will with it.
async fn deliver(h: &Harness, golden: &convagent::golden::Golden) {
    assert_eq!(h.post(&h.sign(golden)).await.0, 200, "{}", golden.name);
    h.drained().await;
}

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
/// A fetch gives up after this long in these tests.
const FETCH_TIMEOUT_SECS: u64 = 3;

/// Serves `bytes` as the Telegram file `file_id`, through `getFile` and the
/// file path, as the Bot API documents; the file's answer is `file`.
async fn serve_file(h: &Harness, file_id: &str, file: wiremock::ResponseTemplate) {
    use wiremock::matchers::{body_partial_json, method, path};
    use wiremock::{Mock, ResponseTemplate};
    let token = crate::TELEGRAM_TOKEN;
    Mock::given(method("POST"))
        .and(path(format!("/bot{token}/getFile")))
        .and(body_partial_json(serde_json::json!({ "file_id": file_id })))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "ok": true,
            "result": { "file_id": file_id, "file_unique_id": "AgADunique",
                        "file_path": format!("files/{file_id}") }
        })))
        .mount(&h.telegram)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/file/bot{token}/files/{file_id}")))
        .respond_with(file)
        .mount(&h.telegram)
        .await;
}

/// A daemon with `[stt]` at a fake of the documented transcription API
/// (multipart in, `{"text": ...}` out), and a fake Telegram that serves the
/// voice note through `getFile` and the file path (`file` answering with
/// `status`).
async fn hearing_daemon(
    max_bytes: u64,
    status: u16,
) -> (Harness, Arc<EchoLlm>, wiremock::MockServer) {
    hearing_daemon_serving(max_bytes, status, VOICE_FILE).await
}

/// [`hearing_daemon`], the voice note being `voice`.
async fn hearing_daemon_serving(
    max_bytes: u64,
    status: u16,
    voice: &[u8],
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
            c.media.voice_max_bytes = max;
            c.media.fetch_timeout_secs = FETCH_TIMEOUT_SECS;
        },
        ..Options::default()
    })
    .await;
    drop(starting);
    mount_success(&h).await;
    let file = ResponseTemplate::new(status).set_body_bytes(voice);
    serve_file(&h, "AwACAgIAAxkBAAIBQ2VoiceFileId", file).await;
    (h, llm, stt)
}

/// The one trace event of `stage` (the voice note's): outcome and detail.
fn stage(h: &Harness, stage: &str) -> Option<(String, String)> {
    let conn = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    conn.query_row(
        "SELECT outcome, detail FROM traces WHERE stage = ?1",
        [stage],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

/// The attachments stored with the newest user message.
fn stored_attachments(h: &Harness) -> Vec<convagent::core::Attachment> {
    let conn = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    let json: String = conn
        .query_row(
            "SELECT attachments FROM messages WHERE role = 'user' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

/// How many times the fake Telegram was asked for the file `file_id`.
async fn file_requests(h: &Harness, file_id: &str) -> usize {
    h.telegram
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with(&format!("/files/{file_id}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_note_is_fetched_transcribed_and_the_model_reads_the_words() {
    let (h, llm, stt) = hearing_daemon(1 << 20, 200).await;
    deliver(&h, &h.golden("telegram/voice.json")).await;
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
    let text: String = conn
        .query_row("SELECT text FROM messages WHERE role = 'user'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(text, "");
    let voice = &stored_attachments(&h)[0];
    assert_eq!(
        voice.transcript.as_deref(),
        Some("please call me back tomorrow")
    );
    // The file is kept under the data directory, named by its SHA-256.
    let file = voice.file.clone().expect("kept");
    use sha2::Digest as _;
    assert_eq!(file, hex::encode(sha2::Sha256::digest(VOICE_FILE)));
    let kept = h.dir.path().join("data/media").join(&file[..2]).join(&file);
    assert_eq!(std::fs::read(&kept).unwrap(), VOICE_FILE);
    assert_eq!(stage(&h, "fetched").unwrap().0, "ok");
    let (outcome, detail) = stage(&h, "transcribed").expect("traced");
    assert_eq!(outcome, "ok");
    assert!(
        detail.starts_with("5 words, sent as it came ("),
        "not a real recording, so not decoded: {detail}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_note_that_cannot_be_fetched_is_still_answered_and_the_trace_says_why() {
    use wiremock::ResponseTemplate;
    let voice = "AwACAgIAAxkBAAIBQ2VoiceFileId";
    // (cap, the file's answer ahead of the served one, how many times it
    // answers so, the file requests made, what the trace says)
    let slow = ResponseTemplate::new(200)
        .set_body_bytes(VOICE_FILE)
        .set_delay(std::time::Duration::from_secs(FETCH_TIMEOUT_SECS * 3));
    let cases = [
        (
            1 << 20,
            Some(ResponseTemplate::new(404)),
            None,
            1,
            "Telegram file: HTTP 404".to_string(),
        ),
        (
            1 << 20,
            Some(ResponseTemplate::new(500)),
            None,
            3,
            "Telegram file: HTTP 500 (after 3 attempts)".into(),
        ),
        (
            1 << 20,
            Some(slow),
            None,
            1,
            format!("timed out after {FETCH_TIMEOUT_SECS} s"),
        ),
        // Over the cap the provider said: not asked for at all.
        (16, None, None, 0, "over the cap of 16 bytes".into()),
    ];
    for (max_bytes, ahead, times, requests, why) in cases {
        let (h, llm, stt) = hearing_daemon(max_bytes, 200).await;
        if let Some(ahead) = ahead {
            let mock =
                wiremock::Mock::given(wiremock::matchers::path_regex(format!("/files/{voice}$")))
                    .respond_with(ahead)
                    .with_priority(1);
            match times {
                Some(n) => mock.up_to_n_times(n).mount(&h.telegram).await,
                None => mock.mount(&h.telegram).await,
            }
        }
        deliver(&h, &h.golden("telegram/voice.json")).await;
        assert!(
            llm.seen.lock().unwrap().is_empty(),
            "{why}: the notice answers"
        );
        assert_eq!(newest_reply(&h).1, "voice", "{why}");
        assert!(stt.received_requests().await.unwrap().is_empty(), "{why}");
        let (outcome, detail) = stage(&h, "fetched").expect("traced");
        assert_eq!(
            (outcome.as_str(), detail.as_str()),
            ("failed", why.as_str())
        );
        assert_eq!(file_requests(&h, voice).await, requests, "{why}");
        // Recorded, so a later turn does not fetch it again.
        assert_eq!(
            stored_attachments(&h)[0].fetch_error.as_deref(),
            Some(why.as_str())
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_tried_again_and_a_file_over_the_cap_is_refused_by_its_length() {
    use wiremock::ResponseTemplate;
    let voice = "AwACAgIAAxkBAAIBQ2VoiceFileId";
    // Telegram answers 502 once; the second attempt gets the file.
    let (h, llm, _stt) = hearing_daemon(1 << 20, 200).await;
    wiremock::Mock::given(wiremock::matchers::path_regex(format!("/files/{voice}$")))
        .respond_with(ResponseTemplate::new(502))
        .with_priority(1)
        .up_to_n_times(1)
        .mount(&h.telegram)
        .await;
    deliver(&h, &h.golden("telegram/voice.json")).await;
    assert_eq!(file_requests(&h, voice).await, 2);
    assert_eq!(stage(&h, "transcribed").unwrap().0, "ok");
    assert_eq!(
        llm.seen.lock().unwrap().len(),
        1,
        "the model read the words"
    );
    h.stop().await;

    // A provider that does not say the size: the file's Content-Length is
    // over the cap, so none of it is read, and the person gets the notice.
    let (h, llm, stt) = hearing_daemon(16, 200).await;
    let mut golden = h.golden("telegram/voice.json");
    golden.json.as_mut().unwrap()["message"]["voice"]
        .as_object_mut()
        .unwrap()
        .remove("file_size");
    deliver(&h, &golden).await;
    let (outcome, detail) = stage(&h, "fetched").unwrap();
    assert_eq!(
        (outcome.as_str(), detail.as_str()),
        ("failed", "Telegram file: over the cap of 16 bytes")
    );
    assert!(llm.seen.lock().unwrap().is_empty());
    assert!(stt.received_requests().await.unwrap().is_empty());
    assert_eq!(newest_reply(&h).1, "voice");
    h.stop().await;
}

/// What the fake Telegram serves as the large photo: a JPEG's first bytes.
const PHOTO: &[u8] = b"\xFF\xD8\xFF\xE0\x00\x10JFIF a photo of a dog";
const PHOTO_ID: &str = "AgACAgIAAxkBAAIBphotoLarge";

/// The provider the vision tests give the daemon, built once its fake
/// listens (`Options::configure` is a plain function, the provider is not).
async fn photo_daemon(llm: Arc<dyn convagent::core::LlmProvider>) -> Harness {
    let h = Harness::start(Options {
        llm,
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    serve_file(
        &h,
        PHOTO_ID,
        wiremock::ResponseTemplate::new(200).set_body_bytes(PHOTO),
    )
    .await;
    h
}

/// A fake Ollama whose `/api/show` lists `capabilities`, answering chats.
async fn ollama_with(
    capabilities: &[&str],
) -> (wiremock::MockServer, Arc<dyn convagent::core::LlmProvider>) {
    use convagent::adapters::llm::http::Timeouts;
    use convagent::adapters::llm::ollama::{Ollama, OllamaSettings};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/show"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "modelfile": "", "details": { "family": "gemma3" }, "capabilities": capabilities
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(crate::support::ollama_answer("A dog.")),
        )
        .mount(&server)
        .await;
    let ollama = Ollama::new(OllamaSettings {
        host: server.uri(),
        model: "gemma3:4b".into(),
        num_ctx: 4096,
        keep_alive: "5m".into(),
        timeouts: Timeouts {
            first_chunk: std::time::Duration::from_secs(10),
            between_chunks: std::time::Duration::from_secs(10),
        },
        vision: None,
    });
    (server, Arc::new(ollama))
}

/// The messages of the last `/api/chat` (or chat completions) request.
async fn last_chat(server: &wiremock::MockServer, suffix: &str) -> Vec<serde_json::Value> {
    let requests = server.received_requests().await.unwrap();
    let chat = requests
        .iter()
        .rev()
        .find(|r| r.url.path().ends_with(suffix))
        .expect("the model was asked");
    let body: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
    body["messages"].as_array().unwrap().clone()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_reaches_an_ollama_model_that_sees_as_its_images() {
    let (ollama, llm) = ollama_with(&["completion", "vision"]).await;
    let h = photo_daemon(llm).await;
    deliver(&h, &h.golden("telegram/photo_no_caption.json")).await;
    // Not the notice: the model saw it, with exactly the served bytes.
    assert_eq!(newest_reply(&h).2, "A dog.");
    let messages = last_chat(&ollama, "/api/chat").await;
    let user = messages.last().unwrap();
    assert_eq!(user["images"], serde_json::json!([base64(PHOTO)]));
    assert_eq!(user["content"], "[photo 1280×960, image/jpeg, 146 KB]");
    // Ollama was asked what the model can do, as its API documents.
    let show = ollama.received_requests().await.unwrap();
    let show = show.iter().find(|r| r.url.path() == "/api/show").unwrap();
    let asked: serde_json::Value = serde_json::from_slice(&show.body).unwrap();
    assert_eq!(asked, serde_json::json!({ "model": "gemma3:4b" }));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_see_reads_the_stand_in_and_a_bare_photo_gets_the_notice() {
    let (ollama, llm) = ollama_with(&["completion", "tools"]).await;
    let h = photo_daemon(llm).await;
    let caption = "AgACAgQAAxkBAAIBZ2Sn";
    serve_file(
        &h,
        caption,
        wiremock::ResponseTemplate::new(200).set_body_bytes(PHOTO),
    )
    .await;
    deliver(&h, &h.golden("telegram/photo_with_caption.json")).await;
    let messages = last_chat(&ollama, "/api/chat").await;
    let user = messages.last().unwrap();
    assert!(user.get("images").is_none(), "{user}");
    let content = user["content"].as_str().unwrap();
    assert!(content.starts_with("[photo "), "{content}");
    assert!(content.ends_with("What breed is this dog?"), "{content}");
    // Fetched all the same (kept for a model that sees later).
    assert!(stored_attachments(&h)[0].file.is_some());
    // Nothing but a photo, and no model that sees: the notice.
    deliver(&h, &h.golden("telegram/photo_no_caption.json")).await;
    let (provider, model, _) = newest_reply(&h);
    assert_eq!((provider.as_str(), model.as_str()), ("media", "image"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_reaches_an_openai_model_that_sees_as_a_content_part() {
    use convagent::adapters::llm::http::Timeouts;
    use convagent::adapters::llm::openai::{OpenAi, OpenAiSettings};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let sse = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"A dog.\"}}]}\n\n",
        "data: [DONE]\n\n"
    );
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(sse),
        )
        .mount(&server)
        .await;
    let openai = OpenAi::new(OpenAiSettings {
        base_url: format!("{}/v1", server.uri()),
        api_key: Some("sk-test".into()),
        model: "gpt-4o-mini".into(),
        timeouts: Timeouts {
            first_chunk: std::time::Duration::from_secs(10),
            between_chunks: std::time::Duration::from_secs(10),
        },
        vision: true,
    });
    let h = photo_daemon(Arc::new(openai)).await;
    deliver(&h, &h.golden("telegram/photo_no_caption.json")).await;
    assert_eq!(newest_reply(&h).2, "A dog.");
    let messages = last_chat(&server, "/chat/completions").await;
    assert_eq!(
        messages.last().unwrap()["content"],
        serde_json::json!([
            { "type": "text", "text": "[photo 1280×960, image/jpeg, 146 KB]" },
            { "type": "image_url", "image_url": { "url": format!("data:image/jpeg;base64,{}", base64(PHOTO)) } }
        ])
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_is_read_and_the_model_gets_its_text() {
    let llm = Arc::new(EchoLlm::new());
    let h = Harness::start(Options {
        llm: llm.clone(),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    let pdf = crate::support::pdf_with_text("Invoice 1042: total due 99.50 EUR");
    serve_file(
        &h,
        "BQACAgIAAxkBAAIBdocumentId",
        wiremock::ResponseTemplate::new(200).set_body_bytes(pdf),
    )
    .await;
    deliver(&h, &h.golden("telegram/document.json")).await;
    let seen = llm.seen.lock().unwrap().clone();
    let read = seen.last().and_then(|t| t.last()).unwrap();
    assert!(
        read.starts_with("[document, invoice-1042.pdf, application/pdf, 47 KB] contents:\n"),
        "{read}"
    );
    assert!(read.contains("Invoice 1042: total due 99.50 EUR"), "{read}");
    assert!(read.ends_with("\nIs this invoice right?"), "{read}");
    let (outcome, detail) = stage(&h, "fetched").unwrap();
    assert_eq!(outcome, "ok");
    assert!(detail.contains("characters read"), "{detail}");
    h.stop().await;
}

/// Runs `program` with `args`, which must succeed (installed by install.sh).
fn run(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (install.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_ogg_opus_voice_note_reaches_the_transcriber_as_16k_wav_of_its_length() {
    // A sentence spoken by espeak-ng and encoded by libopus's opusenc, as
    // Telegram and WhatsApp send voice notes (Ogg, Opus, mono, 48 kHz).
    let dir = tempfile::tempdir().unwrap();
    let (spoken, note) = (dir.path().join("spoken.wav"), dir.path().join("note.ogg"));
    let sentence = "please remind me to call my sister tomorrow morning";
    run(
        "espeak-ng",
        &["-s", "150", "-w", spoken.to_str().unwrap(), sentence],
    );
    run(
        "opusenc",
        &[
            "--quiet",
            "--bitrate",
            "24",
            spoken.to_str().unwrap(),
            note.to_str().unwrap(),
        ],
    );
    let ogg = std::fs::read(&note).unwrap();
    assert!(ogg.starts_with(b"OggS"));
    // How long espeak-ng spoke: its WAV's data over its byte rate.
    let said = std::fs::read(&spoken).unwrap();
    let rate = u32::from_le_bytes(said[28..32].try_into().unwrap());
    let data_at = said.windows(4).position(|w| w == b"data").unwrap();
    let spoken_secs = (said.len() - data_at - 8) as f64 / f64::from(rate);

    let (h, llm, stt) = hearing_daemon_serving(1 << 20, 200, &ogg).await;
    let mut golden = h.golden("telegram/voice.json");
    golden.json.as_mut().unwrap()["message"]["voice"]["file_size"] = ogg.len().into();
    deliver(&h, &golden).await;

    let requests = stt.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("filename=\"voice.wav\""), "{text:.300}");
    assert!(text.contains("audio/wav"), "{text:.300}");
    let riff = body
        .windows(4)
        .position(|w| w == b"RIFF")
        .expect("a WAV file");
    let wav = &body[riff..];
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
    let data = u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize;
    let secs = data as f64 / 32_000.0;
    assert!(
        (secs - spoken_secs).abs() < 0.1,
        "decoded {secs} s of {spoken_secs} s spoken"
    );
    // Speech, not silence: the loudest 20 ms windows are well above zero.
    let samples: Vec<i16> = wav[44..44 + data]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let loud = samples
        .chunks(320)
        .filter(|w| {
            (w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / w.len() as f64).sqrt() > 1_000.0
        })
        .count();
    assert!(loud > 20, "{loud} loud windows");
    // The model read the transcript; the trace says what was sent.
    let seen = llm.seen.lock().unwrap().clone();
    assert!(
        seen.last()
            .unwrap()
            .last()
            .unwrap()
            .ends_with("transcript: please call me back tomorrow")
    );
    let (outcome, detail) = stage(&h, "transcribed").unwrap();
    assert_eq!(outcome, "ok");
    assert!(detail.contains("decoded to 16 kHz WAV"), "{detail}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_media_is_fetched_with_basic_auth_through_its_redirect_and_slack_files_with_the_bot_token()
 {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let h = Harness::start(Options::default()).await;
    mount_success(&h).await;
    // Twilio answers a media URL with a redirect to where the file is kept
    // (another host, which must not get the account's credentials).
    let cdn = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/media/charger.jpg"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(PHOTO))
        .mount(&cdn)
        .await;
    let media = "/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages/MM0000000000000000000000000000002/Media/ME0000000000000000000000000000002";
    Mock::given(method("GET"))
        .and(path(media))
        .and(header("authorization", crate::twilio_basic_auth().as_str()))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/media/charger.jpg", cdn.uri())),
        )
        .mount(&h.twilio)
        .await;
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n a whiteboard";
    Mock::given(method("GET"))
        .and(path("/files-pri/T0001-F0S43PZDF/download/whiteboard.png"))
        .and(header("authorization", "Bearer xoxb-test"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(PNG))
        .mount(&h.slack)
        .await;

    for (golden, bytes) in [
        ("whatsapp/media_with_caption.json", PHOTO),
        ("slack/file_share.json", PNG),
    ] {
        deliver(&h, &h.golden(golden)).await;
        let attachment = &stored_attachments(&h)[0];
        let file = attachment
            .file
            .as_deref()
            .unwrap_or_else(|| panic!("{golden}: {attachment:?}"));
        let kept = h.dir.path().join("data/media").join(&file[..2]).join(file);
        assert_eq!(std::fs::read(kept).unwrap(), bytes, "{golden}");
    }
    let fetched = cdn.received_requests().await.unwrap();
    assert_eq!(fetched.len(), 1);
    assert!(
        !fetched[0].headers.contains_key("authorization"),
        "the credentials stay with Twilio"
    );
    h.stop().await;
}
