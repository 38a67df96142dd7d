//! `convagent serve` and `convagent replay` as a user runs them: the real
//! binary, killed with SIGKILL mid-work and restarted, stopped with
//! SIGTERM, and fed the golden payloads by `replay`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{Env, stdout_of};

pub(crate) const SECRET: &str = "e2e-webhook-secret";

pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) url: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// `serve --listen 127.0.0.1:0`: the kernel picks the port, and the
    /// test reads the address back from what serve prints when it is ready.
    pub(crate) fn start(env: &Env, telegram: &str, extra: &[(&str, &str)]) -> Daemon {
        let mut cmd = env.std_cmd(&["serve", "--listen", "127.0.0.1:0"]);
        cmd.env("TELEGRAM_BOT_TOKEN", "42:e2e-token")
            .env("TELEGRAM_WEBHOOK_SECRET", SECRET)
            .env("CONVAGENT_TELEGRAM_API_BASE", telegram)
            .env("CONVAGENT_LLM_CHAIN", "ollama");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Daemon::spawn(cmd)
    }

    /// Runs `cmd` (a `serve`) until it says where it listens.
    fn spawn(mut cmd: Command) -> Daemon {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (found, address) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let seen = stderr.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = found.send(url.to_string());
                }
                seen.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let url = address
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("serve did not come up: {}", stderr.lock().unwrap()));
        Daemon { child, url, stderr }
    }

    /// What serve printed on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// A daemon a test forgot to stop (or that failed half way) does not
/// outlive it.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn telegram_update(chat: i64, update: i64, text: &str) -> serde_json::Value {
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

pub(crate) fn post_update(url: &str, body: &serde_json::Value) -> u16 {
    post_signed(url, body, SECRET)
}

/// An update as Telegram sends it with the secret token `secret`.
fn post_signed(url: &str, body: &serde_json::Value, secret: &str) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{url}/webhook/telegram"))
        .header("content-type", "application/json")
        .header("x-telegram-bot-api-secret-token", secret)
        .body(body.to_string())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// A Telegram Bot API that accepts every reply and typing signal.
pub(crate) async fn accepting_telegram() -> MockServer {
    let telegram = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/(sendMessage|sendChatAction)$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "ok": true, "result": { "message_id": 1 } })),
        )
        .mount(&telegram)
        .await;
    telegram
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
    let body = crate::support::ollama_answer("Answered.");
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

/// `field` of every reply Telegram was asked to send, in order; typing
/// signals (`sendChatAction`, which also name the chat) left out.
pub(crate) async fn sent(telegram: &MockServer, field: &str) -> Vec<String> {
    telegram
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/sendMessage"))
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()[field]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

async fn sent_chats(telegram: &MockServer) -> Vec<String> {
    let mut chats = sent(telegram, "chat_id").await;
    chats.sort();
    chats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_messages_accepted_but_unanswered_answers_them_after_restart_once() {
    let (telegram, ollama) = fakes(Duration::from_secs(3)).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let telegram_url = telegram.uri();

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram_url, &[]));
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

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram_url, &[]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent_chats(&telegram).await.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Drained (nothing pending, nothing queued): no extra send can come.
    assert!(crate::support::eventually(15, || drained(&env)).await);
    assert_eq!(
        sent_chats(&telegram).await,
        ["1", "2", "3"],
        "each answered once after the restart"
    );

    // SIGTERM: a graceful stop.
    crate::send_signal(daemon.child.id(), "-TERM");
    let status = tokio::task::block_in_place(|| daemon.child.wait().unwrap());
    assert!(status.success(), "{status:?}");
    // The reader thread has seen everything once the pipe closed.
    assert!(crate::support::eventually_blocking(5, || daemon
        .stderr()
        .contains("convagent serve: stopped")));
    let stderr = daemon.stderr();
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
    let telegram_url = telegram.uri();
    let mut daemon = tokio::task::block_in_place(|| {
        Daemon::start(&env, &telegram_url, &[("CONVAGENT_DRY_RUN", "1")])
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

/// Nothing waits for an answer and nothing waits to be sent, per the store.
fn drained(env: &Env) -> bool {
    use convagent::adapters::store::{OpenMode, SqliteStore};
    use convagent::core::OutboxStore;
    let Ok(store) = SqliteStore::open_with(&env.store(), OpenMode::ReadOnly) else {
        return false;
    };
    store.outbox_stats().is_ok_and(|s| s.queued == 0)
        && store
            .conversations_with_pending(1)
            .is_ok_and(|p| p.is_empty())
}

/// An Ollama that answers at once with "re: " and the last user message,
/// in its NDJSON stream format.
/// A fresh environment whose Ollama is a fake that echoes (`re: TEXT`);
/// the fake lives as long as the returned server.
pub(crate) async fn echoing() -> (Env, MockServer) {
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(EchoOllama)
        .mount(&ollama)
        .await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    (env, ollama)
}

pub(crate) struct EchoOllama;

impl wiremock::Respond for EchoOllama {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let asked: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let last = asked["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        ResponseTemplate::new(200)
            .set_body_string(crate::support::ollama_answer(&format!("re: {last}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_replies_queued_behind_a_slow_send_sends_the_rest_once_in_order() {
    // Telegram takes 3 s to answer a send: the first reply is on the wire
    // when the daemon dies, the other two wait behind it in the outbox.
    let telegram = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "ok": true, "result": { "message_id": 1 } }))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&telegram)
        .await;
    let (env, _ollama) = echoing().await;
    env.write_config(&format!(
        "{}[agent]\nburst = \"each\"\n",
        crate::BASE_CONFIG
    ));
    let telegram_url = telegram.uri();
    let sent_texts = || sent(&telegram, "text");

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram_url, &[]));
    for i in 1..=3 {
        let url = daemon.url.clone();
        let status = tokio::task::block_in_place(|| {
            post_update(&url, &telegram_update(7, 70 + i, &format!("part {i}")))
        });
        assert_eq!(status, 200);
    }
    // All three answered and queued; the first send is on the wire.
    let store = env.store();
    let queued = || {
        convagent::adapters::store::SqliteStore::open_with(
            &store,
            convagent::adapters::store::OpenMode::ReadOnly,
        )
        .ok()
        .and_then(|s| convagent::core::OutboxStore::outbox_stats(&s).ok())
        .map_or(0, |s| s.queued)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while (queued() < 3 || sent_texts().await.is_empty()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queued(), 3);
    assert_eq!(sent_texts().await, ["re: part 1"]);
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram_url, &[]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while queued() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued(), 0, "everything sent after the restart");
    assert_eq!(
        sent_texts().await,
        ["re: part 1", "re: part 1", "re: part 2", "re: part 3"],
        "the reply on the wire at the crash is sent again (at least once); \
         the queued ones once each, in order"
    );
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
}

/// `kill -HUP`: the config and the environment file are read again. A new
/// prompt becomes the next reply's version, a rotated secret is accepted
/// beside the new one (the log says which matched, never the values), and
/// a broken config is refused while the daemon goes on as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_prompt_and_rotates_the_secret() {
    let (telegram, ollama) = fakes(Duration::ZERO).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let config = |prompt: &str| {
        format!(
            "{}[agent]\nsystem_prompt = \"{prompt}\"\n",
            crate::BASE_CONFIG
        )
    };
    env.write_config(&config("You are version one."));
    let secrets = env.home.path().join("convagent.env");
    std::fs::write(
        &secrets,
        "TELEGRAM_BOT_TOKEN=42:e2e-token\nTELEGRAM_WEBHOOK_SECRET=first-secret-value\n",
    )
    .unwrap();
    let mut cmd = env.std_cmd(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.env("CONVAGENT_ENV_FILE", &secrets)
        .env("CONVAGENT_TELEGRAM_API_BASE", telegram.uri())
        .env("CONVAGENT_LLM_CHAIN", "ollama");
    let mut daemon = Daemon::spawn(cmd);
    let url = daemon.url.clone();
    let post = |update: i64, secret: &str| {
        let url = url.clone();
        let secret = secret.to_string();
        tokio::task::block_in_place(move || {
            post_signed(&url, &telegram_update(7, update, "hello"), &secret)
        })
    };
    assert_eq!(post(1, "first-secret-value"), 200);
    assert!(crate::support::eventually(15, || drained(&env)).await);

    env.write_config(&config("You are version two."));
    std::fs::write(
        &secrets,
        "TELEGRAM_BOT_TOKEN=42:e2e-token\nTELEGRAM_WEBHOOK_SECRET=second-secret-value\n\
         TELEGRAM_WEBHOOK_SECRET_PREVIOUS=first-secret-value\n",
    )
    .unwrap();
    crate::send_signal(daemon.child.id(), "-HUP");
    assert!(
        crate::support::eventually_blocking(10, || daemon
            .stderr()
            .contains("configuration reloaded")),
        "{}",
        daemon.stderr()
    );
    assert_eq!(post(2, "second-secret-value"), 200);
    assert_eq!(
        post(3, "first-secret-value"),
        200,
        "the previous one, in its grace period"
    );
    assert_eq!(post(4, "not-the-secret-at-all"), 401);
    assert!(crate::support::eventually(15, || drained(&env)).await);

    // Every reply records the prompt version it was given.
    let versions: Vec<(String, i64)> = crate::support::pairs(
        &env.store(),
        "SELECT m.text, r.prompt_version FROM messages r JOIN messages m ON m.id = r.reply_to
         ORDER BY r.id",
    );
    assert_eq!(
        versions.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [1, 2, 2]
    );
    let asked: Vec<String> = ollama
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(asked[0].contains("You are version one."));
    assert!(asked.last().unwrap().contains("You are version two."));

    // A config that does not load is refused; the daemon goes on.
    env.write_config("[agent]\nno_such_key = 1\n");
    crate::send_signal(daemon.child.id(), "-HUP");
    assert!(
        crate::support::eventually_blocking(10, || daemon.stderr().contains("reload failed")),
        "{}",
        daemon.stderr()
    );
    assert_eq!(post(5, "second-secret-value"), 200);

    // Stopped gracefully, the log is flushed.
    crate::send_signal(daemon.child.id(), "-TERM");
    tokio::task::block_in_place(|| daemon.child.wait().unwrap());
    let logs = std::fs::read_dir(env.home.path().join("state/convagent/logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(
        logs.contains(r#""matched":"previous""#),
        "the log says which matched: {}",
        logs.lines()
            .filter(|l| l.contains("verified"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(logs.contains(r#""matched":"current""#));
    for value in ["first-secret-value", "second-secret-value"] {
        assert!(!logs.contains(value), "a secret reached the log");
        assert!(!daemon.stderr().contains(value), "a secret reached stderr");
    }
}
