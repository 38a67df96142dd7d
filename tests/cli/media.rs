//! Media through the real binary: a photo whose fetch a `kill -9`
//! interrupts is fetched and answered once after the restart; its file is
//! kept under the data directory, listed by `history export`, and removed
//! by `history delete` and by retention.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{body_partial_json, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::serve::{Daemon, post_update, sent};
use crate::{Env, stdout_of};

const TOKEN: &str = "42:e2e-token";

/// A photo from `chat`, Telegram's file `file_id`, as the Bot API sends it.
fn photo_update(chat: i64, file_id: &str) -> serde_json::Value {
    json!({
        "update_id": 5_000 + chat,
        "message": {
            "message_id": chat,
            "from": { "id": chat, "is_bot": false, "first_name": "P" },
            "chat": { "id": chat, "type": "private" },
            "date": 1763712000,
            "photo": [{ "file_id": file_id, "file_unique_id": format!("u{chat}"),
                        "width": 640, "height": 480, "file_size": 64 }]
        }
    })
}

/// A Telegram that takes replies and serves each of `files` through
/// `getFile` (answered after `delay`) and the file path.
async fn telegram_serving(telegram: &MockServer, files: &[(&str, &[u8])], delay: Duration) {
    telegram.reset().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/(sendMessage|sendChatAction)$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "ok": true, "result": { "message_id": 1 } })),
        )
        .mount(telegram)
        .await;
    for (file_id, bytes) in files {
        Mock::given(method("POST"))
            .and(path(format!("/bot{TOKEN}/getFile")))
            .and(body_partial_json(json!({ "file_id": file_id })))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({ "ok": true, "result": {
                        "file_id": file_id, "file_unique_id": "u", "file_path": format!("photos/{file_id}.jpg")
                    }}))
                    .set_delay(delay),
            )
            .mount(telegram)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/file/bot{TOKEN}/photos/{file_id}.jpg")))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(bytes.to_vec()))
            .mount(telegram)
            .await;
    }
}

/// An Ollama whose model sees (its `/api/show` says so) and answers.
async fn seeing_ollama() -> MockServer {
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/show"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "capabilities": ["completion", "vision"] })),
        )
        .mount(&ollama)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(crate::support::ollama_answer("Nice photo.")),
        )
        .mount(&ollama)
        .await;
    ollama
}

fn kept(env: &Env, bytes: &[u8]) -> std::path::PathBuf {
    use sha2::Digest as _;
    let file = hex::encode(sha2::Sha256::digest(bytes));
    env.path("data/convagent/media").join(&file[..2]).join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_whose_fetch_was_killed_is_answered_once_after_restart_and_its_file_erased() {
    const FIRST: &[u8] = b"\xFF\xD8\xFF\xE0 the first photo";
    const SECOND: &[u8] = b"\xFF\xD8\xFF\xE0 the second photo";
    let files: &[(&str, &[u8])] = &[("P1", FIRST), ("P2", SECOND)];
    let telegram = MockServer::start().await;
    // The first daemon's getFile never comes back in time.
    telegram_serving(&telegram, files, Duration::from_secs(60)).await;
    let ollama = seeing_ollama().await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    env.write_config(&format!(
        "{}[retention]\nmessages = \"1s\"\n",
        crate::BASE_CONFIG
    ));
    let telegram_url = telegram.uri();

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram_url, &[]));
    let url = daemon.url.clone();
    assert_eq!(
        tokio::task::block_in_place(|| post_update(&url, &photo_update(1, "P1"))),
        200
    );
    // Accepted, and the fetch under way: kill -9.
    let asked = || async {
        let requests = telegram.received_requests().await.unwrap_or_default();
        requests.iter().any(|r| r.url.path().ends_with("/getFile"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !asked().await && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(asked().await, "the media stage asked for the file");
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(sent(&telegram, "text").await.is_empty());
    assert!(!kept(&env, FIRST).exists());

    telegram_serving(&telegram, files, Duration::ZERO).await;
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram_url, &[]));
    let url = daemon.url.clone();
    assert_eq!(
        tokio::task::block_in_place(|| post_update(&url, &photo_update(2, "P2"))),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sent(&telegram, "text").await.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sent(&telegram, "text").await,
        ["Nice photo.", "Nice photo."],
        "once each"
    );
    // Each photo reached the model that sees, as the bytes served.
    let chats: Vec<serde_json::Value> = ollama
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/api/chat")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(chats.len(), 2);
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let images: Vec<serde_json::Value> = chats
        .iter()
        .map(|c| c["messages"].as_array().unwrap().last().unwrap()["images"].clone())
        .collect();
    assert!(images.contains(&json!([b64(FIRST)])), "{images:?}");
    assert!(images.contains(&json!([b64(SECOND)])), "{images:?}");
    drop(daemon);
    assert_eq!(std::fs::read(kept(&env, FIRST)).unwrap(), FIRST);

    // The export lists the file and where it is.
    let out = env
        .cmd(&["history", "export", "--sender", "telegram:1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::stderr_of(&out));
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = &export["files"];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["path"], kept(&env, FIRST).display().to_string());
    assert_eq!(listed[0]["present"], true);
    assert_eq!(
        listed[0]["content_type"], "image/jpeg",
        "sniffed: Telegram says none"
    );

    // Erasure removes the person's file, and only theirs.
    let out = env
        .cmd(&["history", "delete", "--sender", "telegram:1", "--yes"])
        .output()
        .unwrap();
    assert!(
        stdout_of(&out).contains(", 1 media files."),
        "{}",
        stdout_of(&out)
    );
    assert!(!kept(&env, FIRST).exists());
    assert!(kept(&env, SECOND).exists());

    // Retention prunes the rest, files too.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let out = env.cmd(&["history", "prune"]).output().unwrap();
    assert!(out.status.success(), "{}", crate::stderr_of(&out));
    assert!(
        stdout_of(&out).contains("1 media files"),
        "{}",
        stdout_of(&out)
    );
    assert!(!kept(&env, SECOND).exists());
}
