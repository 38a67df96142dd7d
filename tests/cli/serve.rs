//! `convagent serve` and `convagent replay` as a user runs them: the real
//! binary, killed with SIGKILL mid-work and restarted, stopped with
//! SIGTERM, and fed the golden payloads by `replay`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{Env, stdout_of};

const SECRET: &str = "e2e-webhook-secret";

struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    fn start(env: &Env, port: u16, telegram: &str, extra: &[(&str, &str)]) -> Daemon {
        let mut cmd = env.std_cmd(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
        cmd.env("TELEGRAM_BOT_TOKEN", "42:e2e-token")
            .env("TELEGRAM_WEBHOOK_SECRET", SECRET)
            .env("CONVAGENT_TELEGRAM_API_BASE", telegram)
            .env("CONVAGENT_LLM_CHAIN", "ollama")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(format!("{url}/health")).is_err() {
            assert!(Instant::now() < deadline, "serve did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon { child, url }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn telegram_update(chat: i64, update: i64, text: &str) -> serde_json::Value {
    json!({
        "update_id": update,
        "message": {
            "message_id": update,
            "from": { "id": chat, "is_bot": false, "first_name": "T" },
            "chat": { "id": chat, "type": "private" },
            "date": 1763712000,
            "text": text
        }
    })
}

fn post_update(url: &str, body: &serde_json::Value) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{url}/webhook/telegram"))
        .header("content-type", "application/json")
        .header("x-telegram-bot-api-secret-token", SECRET)
        .body(body.to_string())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

async fn fakes(llm_delay: Duration) -> (MockServer, MockServer) {
    let telegram = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "ok": true, "result": { "message_id": 1 } })),
        )
        .mount(&telegram)
        .await;
    let ollama = MockServer::start().await;
    let body = [
        json!({ "model": "mistral:7b", "message": { "role": "assistant", "content": "Answered." }, "done": false }),
        json!({ "model": "mistral:7b", "message": { "role": "assistant", "content": "" }, "done": true, "eval_count": 2 }),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect::<String>();
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(body)
                .set_delay(llm_delay),
        )
        .mount(&ollama)
        .await;
    (telegram, ollama)
}

async fn sent_chats(telegram: &MockServer) -> Vec<String> {
    let mut chats: Vec<String> = telegram
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        // Replies only: `sendChatAction` ("typing") also names the chat.
        .filter(|r| r.url.path().ends_with("/sendMessage"))
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["chat_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    chats.sort();
    chats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_messages_accepted_but_unanswered_answers_them_after_restart_once() {
    let (telegram, ollama) = fakes(Duration::from_secs(3)).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let port = free_port();
    let telegram_url = telegram.uri();

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, port, &telegram_url, &[]));
    for chat in 1..=3 {
        let url = daemon.url.clone();
        let status = tokio::task::block_in_place(|| {
            post_update(&url, &telegram_update(chat, chat, "are you there?"))
        });
        assert_eq!(status, 200);
    }
    // Acknowledged; the (slow) LLM has not answered yet: kill -9.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(sent_chats(&telegram).await.is_empty());

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, port, &telegram_url, &[]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent_chats(&telegram).await.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sent_chats(&telegram).await,
        ["1", "2", "3"],
        "each answered once after the restart"
    );

    // SIGTERM: a graceful stop.
    let pid = daemon.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::block_in_place(|| daemon.child.wait().unwrap());
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(daemon.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("listening on http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("convagent serve: stopped"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_posts_the_golden_payloads_and_checks_the_answers() {
    let (telegram, ollama) = fakes(Duration::ZERO).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let port = free_port();
    let telegram_url = telegram.uri();
    let mut daemon = tokio::task::block_in_place(|| {
        Daemon::start(&env, port, &telegram_url, &[("CONVAGENT_DRY_RUN", "1")])
    });
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/telegram");
    let url = daemon.url.clone();
    let out = tokio::task::block_in_place(|| {
        // The same secrets as `serve`: the adapter that signs is the one
        // that verifies.
        env.cmd(&["replay", golden, "--to", &url, "--expect"])
            .env("TELEGRAM_WEBHOOK_SECRET", SECRET)
            .env("TELEGRAM_BOT_TOKEN", "123:replay")
            .output()
            .unwrap()
    });
    let text = stdout_of(&out);
    assert!(out.status.success(), "{text}{}", crate::stderr_of(&out));
    let files = std::fs::read_dir(golden).unwrap().count();
    assert!(files >= 13, "the Telegram golden set: {files}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with('✓')).count(),
        files,
        "{text}"
    );
    assert!(
        text.contains("text.json (text message in a private chat)"),
        "{text}"
    );

    // A wrong secret: every answer is a 401, and --expect says so.
    let out = tokio::task::block_in_place(|| {
        env.cmd(&[
            "replay",
            &format!("{golden}/text.json"),
            "--to",
            &url,
            "--expect",
        ])
        .env("TELEGRAM_WEBHOOK_SECRET", "wrong")
        .env("TELEGRAM_BOT_TOKEN", "123:replay")
        .output()
        .unwrap()
    });
    assert!(!out.status.success());
    assert!(stdout_of(&out).contains("✗  401"), "{}", stdout_of(&out));

    // Load mode: distinct messages at a fixed rate, with a summary.
    let out = tokio::task::block_in_place(|| {
        env.cmd(&[
            "replay",
            &format!("{golden}/text.json"),
            "--to",
            &url,
            "--rate",
            "100",
            "--duration",
            "2",
        ])
        .env("TELEGRAM_WEBHOOK_SECRET", SECRET)
        .env("TELEGRAM_BOT_TOKEN", "123:replay")
        .output()
        .unwrap()
    });
    let text = stdout_of(&out);
    assert!(out.status.success(), "{text}{}", crate::stderr_of(&out));
    assert!(text.contains("sent 200 requests"), "{text}");
    assert!(text.contains("2xx: 200"), "{text}");
    assert!(text.contains("ack latency: p50"), "{text}");
    daemon.child.kill().unwrap();
    let _ = daemon.child.wait();
    let _ = telegram;
}
