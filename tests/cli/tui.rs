//! `convagent tui` (and `chat`) driven as a person would, in tmux: the TUI
//! shows the store, follows a new message written meanwhile, opens a trace,
//! and quits leaving the terminal as it was; `chat` shows that it is
//! working while the model has not answered yet.

use convagent::core::ports::all::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use convagent::adapters::store::SqliteStore;
use convagent::core::{
    Channel, ConversationKey, CorrelationId, InboundMessage, NewReply, ReplyKind, TraceEvent,
    TraceStore,
};

use crate::Env;

fn inbound(sender: &str, id: &str, text: &str, correlation: &str) -> InboundMessage {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    InboundMessage {
        key: ConversationKey::new(Channel::Telegram, sender, sender),
        text: text.into(),
        provider_message_id: id.into(),
        provider_ts: None,
        received_at: now,
        attachments: vec![],
        metadata: BTreeMap::new(),
        correlation_id: CorrelationId(correlation.into()),
    }
}

struct Tmux(String);

impl Tmux {
    /// Runs `convagent ARGS` from `env` in a new tmux session.
    fn start(env: &Env, name: &str, args: &[&str]) -> Tmux {
        Tmux::start_with(env, name, args, &[])
    }

    /// [`Tmux::start`] with more environment variables.
    fn start_with(env: &Env, name: &str, args: &[&str], vars: &[(&str, &str)]) -> Tmux {
        let mut cmd = env.std_cmd(args);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                script.push_str(&format!(
                    "export {}='{}'\n",
                    k.to_string_lossy(),
                    v.to_string_lossy()
                ));
            }
        }
        script.push_str(&format!(
            "'{}' {}\necho CONVAGENT-EXITED\nsleep 60\n",
            cmd.get_program().to_string_lossy(),
            args.join(" ")
        ));
        let path = env.path(&format!("run-{name}.sh"));
        std::fs::write(&path, script).unwrap();
        let session = Tmux(format!("convagent-{name}-{}", std::process::id()));
        let started = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session.0,
                "-x",
                "120",
                "-y",
                "32",
                "sh",
                &path.to_string_lossy(),
            ])
            .status()
            .unwrap();
        assert!(
            started.success(),
            "tmux is needed (install.sh --deps-only installs it)"
        );
        session
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            assert!(
                Command::new("tmux")
                    .args(["send-keys", "-t", &self.0, k])
                    .status()
                    .unwrap()
                    .success()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "`{text}` never appeared on:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// On Postgres the TUI follows what daemons write (the change counter is
/// the write-ahead log's position).
#[test]
fn the_tui_follows_a_postgres_store() {
    let env = Env::new();
    let cluster = crate::support::postgres::Cluster::start();
    let url = cluster.database("tui");
    let store = convagent::adapters::store::PostgresStore::open(&url, 1).unwrap();
    store
        .accept(&inbound("111222333", "m1", "Where is my parcel?", "c1"))
        .unwrap();
    let session = Tmux::start_with(
        &env,
        "tui-pg",
        &["tui"],
        &[("CONVAGENT_DATABASE_URL", &url)],
    );
    let screen = session.wait_for("Where is my parcel?", 15);
    assert!(screen.contains("telegram  111222333"), "{screen}");
    store
        .accept(&inbound("444555666", "m2", "Brand new question", "c2"))
        .unwrap();
    session.wait_for("Brand new question", 5);
    session.keys(&["q"]);
    session.wait_for("CONVAGENT-EXITED", 5);
}

#[test]
fn the_tui_follows_the_store_opens_a_trace_and_restores_the_terminal() {
    let env = Env::new();
    let store = SqliteStore::open(&env.store()).unwrap();
    let correlation = "5f1c0ffee0000000000000000000abcd";
    let a = store
        .accept(&inbound(
            "111222333",
            "m1",
            "Where is my parcel?",
            correlation,
        ))
        .unwrap();
    let prompt = store.ensure_prompt("be nice", 1).unwrap();
    store
        .record_reply(
            a.message_id,
            &NewReply {
                kind: ReplyKind::Answer,
                text: "It ships tomorrow.".into(),
                provider: "ollama".into(),
                model: "mistral:7b".into(),
                prompt_version: prompt.version,
                prompt_tokens: Some(20),
                completion_tokens: Some(5),
                latency_ms: 640,
                created_at: a.message_id,
            },
        )
        .unwrap();
    let stages = [
        "received",
        "verified",
        "stored",
        "guarded",
        "context built",
        "llm call",
        "reply stored",
        "sent",
    ];
    let events: Vec<TraceEvent> = stages
        .iter()
        .map(|s| TraceEvent {
            correlation_id: correlation.into(),
            stage: convagent::core::Stage::parse(s).unwrap().0,
            attempt: None,
            started_at: 0,
            duration_us: if *s == "llm call" { 640_000 } else { 300 },
            outcome: convagent::core::Outcome::Ok,
            detail: None,
        })
        .collect();
    store.record_traces(&events).unwrap();

    let session = Tmux::start(&env, "tui", &["tui"]);
    let screen = session.wait_for("It ships tomorrow.", 15);
    assert!(screen.contains("convagent · health"), "{screen}");
    assert!(screen.contains("telegram  111222333"), "{screen}");

    // A message written by another process appears by itself.
    store
        .accept(&inbound("444555666", "m2", "Brand new question", "c2"))
        .unwrap();
    session.wait_for("Brand new question", 5);

    // The older conversation is second now: open it, then its first message's trace.
    session.keys(&["Down", "Enter"]);
    let screen = session.wait_for("telegram · 111222333", 5);
    assert!(
        screen.contains("Where is my parcel?") && screen.contains("ollama/mistral:7b"),
        "{screen}"
    );
    session.keys(&["Enter"]);
    let screen = session.wait_for(&format!("trace {correlation}"), 5);
    assert!(
        screen.contains("llm call") && screen.contains("640.0 ms"),
        "{screen}"
    );
    session.keys(&["y"]);
    session.wait_for("copied", 5);

    session.keys(&["?"]);
    session.wait_for("a live view of the store", 5);
    session.keys(&["Escape", "q"]);
    let screen = session.wait_for("CONVAGENT-EXITED", 5);
    assert!(
        !screen.contains("convagent · health"),
        "the alternate screen is gone:\n{screen}"
    );
    assert!(
        screen.contains(&format!("correlation id: {correlation}")),
        "{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_shows_it_is_working_until_the_first_token_arrives() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // An Ollama that takes 3 s before its first byte (a cold model load).
    let ollama = MockServer::start().await;
    let body = crate::support::ollama_answer("Warm now.");
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(body)
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&ollama)
        .await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let session = tokio::task::block_in_place(|| {
        let session = Tmux::start(&env, "chat", &["chat", "--chain", "ollama"]);
        session.wait_for("›", 15);
        session.keys(&["hello", "Enter"]);
        session
    });
    let screen = tokio::task::block_in_place(|| session.wait_for("thinking", 3));
    assert!(!screen.contains("Warm now."), "{screen}");
    let screen = tokio::task::block_in_place(|| session.wait_for("Warm now.", 15));
    assert!(
        !screen.contains("thinking"),
        "the spinner is gone: {screen}"
    );
    tokio::task::block_in_place(|| session.keys(&["/quit", "Enter"]));
    tokio::task::block_in_place(|| session.wait_for("CONVAGENT-EXITED", 10));
}

/// An operator at the TUI takes a conversation of a running `serve` over,
/// types a reply that the person receives, keeps the agent out of the next
/// three messages, and gives the conversation back; the agent answers the
/// one after. The log view shows the daemon's log of that conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_takes_over_replies_and_releases_from_the_tui() {
    use crate::serve::{Daemon, accepting_telegram, post_update, sent, telegram_update};
    let telegram = accepting_telegram().await;
    let (env, ollama) = crate::serve::echoing().await;
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let post = |n: i64, text: &str| {
        let url = daemon.url.clone();
        let update = telegram_update(77, n, text);
        tokio::task::block_in_place(move || post_update(&url, &update))
    };
    let llm_calls = || async {
        ollama
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/api/chat")
            .count()
    };
    let sent_texts = |n: usize| {
        let telegram = &telegram;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let texts = sent(telegram, "text").await;
                if texts.len() >= n || Instant::now() > deadline {
                    return texts;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(post(1, "hi"), 200);
    assert_eq!(sent_texts(1).await, ["re: hi"]);

    let session = tokio::task::block_in_place(|| {
        let session = Tmux::start(&env, "operator", &["tui", "--as", "ana"]);
        session.wait_for("re: hi", 15);
        session.keys(&["h"]);
        let screen = session.wait_for("is yours, ana", 5);
        assert!(screen.contains("⚑ana"), "{screen}");
        session
    });
    for (n, text) in [(2, "is anyone there?"), (3, "hello??"), (4, "my parcel")] {
        assert_eq!(post(n, text), 200);
    }
    let screen = tokio::task::block_in_place(|| session.wait_for("1 waiting for a person", 10));
    assert!(screen.contains("⋯3"), "{screen}");
    assert_eq!(llm_calls().await, 1, "the LLM saw none of the three");

    tokio::task::block_in_place(|| {
        session.keys(&["Enter", "r"]);
        session.wait_for("reply to T (77): ▏", 5);
        session.keys(&["Ana here, on it.", "Enter"]);
        session.wait_for("answering 3 waiting", 5);
    });
    assert_eq!(
        sent_texts(2).await,
        ["re: hi", "Ana here, on it."],
        "sent by the daemon's outbox"
    );
    let screen = tokio::task::block_in_place(|| session.wait_for("by ana", 5));
    assert!(screen.contains("taken over by ana"), "{screen}");

    // The log view, kept to this conversation.
    tokio::task::block_in_place(|| {
        session.keys(&["l"]);
        let screen = session.wait_for("log · info+ · conversation 1", 5);
        session.wait_for("stage", 5);
        assert!(!screen.contains("No line matches"), "{screen}");
        session.keys(&["Escape"]);
        session.wait_for("taken over by ana", 5);
        session.keys(&["h"]);
        session.wait_for("is the agent's again", 5);
    });
    assert_eq!(post(5, "thanks"), 200);
    assert_eq!(
        sent_texts(3).await,
        ["re: hi", "Ana here, on it.", "re: thanks"],
        "the agent answers again"
    );
    assert_eq!(llm_calls().await, 2);
    let out = tokio::task::block_in_place(|| {
        env.cmd(&["history", "show", "1", "--json"])
            .output()
            .unwrap()
    });
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by: Vec<(String, String)> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| {
            (
                m["provider"].as_str().unwrap_or("").to_string(),
                m["model"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(by[1], ("human".to_string(), "ana".to_string()), "{by:?}");
    tokio::task::block_in_place(|| {
        session.keys(&["q"]);
        session.wait_for("CONVAGENT-EXITED", 5);
    });
    drop(daemon);
}
