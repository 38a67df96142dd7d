//! Several `convagent serve` processes on one Postgres database (a
//! throwaway cluster), behind the same fake Telegram and Ollama: a message
//! and its redelivery reaching two daemons get one reply, one
//! conversation's messages posted alternately to two daemons are answered
//! once each and in order, and `kill -9` of one daemon under load loses
//! nothing; a conversation's media notice goes once an hour whichever
//! daemon takes its turns; a takeover silences every daemon; an approval
//! asked on one daemon is answered through the other.

use std::time::{Duration, Instant};

use convagent::adapters::store::PostgresStore;
use convagent::core::ports::all::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::Env;
use crate::serve::{Daemon, EchoOllama, post_update, sent, telegram_update};
use crate::support::postgres::Cluster;

/// A Telegram that accepts every send, and an Ollama that echoes after
/// `llm_delay`.
async fn fakes(llm_delay: Duration) -> (MockServer, MockServer) {
    let telegram = crate::serve::accepting_telegram().await;
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(Delayed(llm_delay))
        .mount(&ollama)
        .await;
    (telegram, ollama)
}

struct Delayed(Duration);

impl wiremock::Respond for Delayed {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        EchoOllama.respond(request).set_delay(self.0)
    }
}

/// `n` daemons on the database at `url`.
fn daemons(env: &Env, telegram: &str, url: &str, n: usize) -> Vec<Daemon> {
    (0..n)
        .map(|_| Daemon::start(env, telegram, &[("CONVAGENT_DATABASE_URL", url)]))
        .collect()
}

/// `burst`, a short lease, and no rate limit (one sender sends 20 at once).
fn configure(env: &Env, burst: &str) {
    env.write_config(&format!(
        "{}[agent]\nburst = \"{burst}\"\n[store]\nlease_secs = 3\n[limits]\nmessages_per_minute = 0\n",
        crate::BASE_CONFIG
    ));
}

/// Nothing unanswered and nothing queued, per the database.
fn drained(store: &PostgresStore) -> bool {
    store.outbox_stats().is_ok_and(|s| s.queued == 0)
        && store
            .conversations_with_pending(1)
            .is_ok_and(|p| p.is_empty())
}

async fn wait_drained(store: &PostgresStore, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !tokio::task::block_in_place(|| drained(store)) {
        assert!(Instant::now() < deadline, "not drained in {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(daemons: Vec<Daemon>) {
    for mut d in daemons {
        crate::send_signal(d.child.id(), "-TERM");
        let status = d.child.wait().unwrap();
        assert!(status.success(), "{status:?}: {}", d.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conversation_across_two_daemons_is_answered_once_per_message_in_order() {
    let cluster = Cluster::start();
    let url = cluster.database("each");
    let (telegram, ollama) = fakes(Duration::from_millis(20)).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    configure(&env, "each");
    let running = tokio::task::block_in_place(|| daemons(&env, &telegram.uri(), &url, 2));

    // A webhook delivered to daemon A and redelivered to daemon B.
    for d in &running {
        let url = d.url.clone();
        let status =
            tokio::task::block_in_place(|| post_update(&url, &telegram_update(5, 500, "once")));
        assert_eq!(status, 200);
    }
    // One conversation's 20 messages, posted alternately.
    for i in 1..=20 {
        let url = running[i % 2].url.clone();
        let status = tokio::task::block_in_place(|| {
            post_update(&url, &telegram_update(7, 700 + i as i64, &format!("m{i}")))
        });
        assert_eq!(status, 200);
    }
    let store = tokio::task::block_in_place(|| PostgresStore::connect(&url, 1).unwrap());
    wait_drained(&store, 60).await;
    let texts = sent(&telegram, "text").await;
    let to_seven: Vec<&str> = texts
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "re: once")
        .collect();
    let expected: Vec<String> = (1..=20).map(|i| format!("re: m{i}")).collect();
    assert_eq!(to_seven, expected, "each once, in order");
    assert_eq!(
        texts.iter().filter(|t| *t == "re: once").count(),
        1,
        "the redelivery is one message"
    );
    tokio::task::block_in_place(|| stop(running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collected_conversation_across_two_daemons_skips_nothing() {
    let cluster = Cluster::start();
    let url = cluster.database("collect");
    let (telegram, ollama) = fakes(Duration::from_millis(50)).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    configure(&env, "collect");
    let running = tokio::task::block_in_place(|| daemons(&env, &telegram.uri(), &url, 2));
    for i in 1..=20 {
        let url = running[i % 2].url.clone();
        let status = tokio::task::block_in_place(|| {
            post_update(&url, &telegram_update(9, 900 + i as i64, &format!("m{i}")))
        });
        assert_eq!(status, 200);
    }
    let store = tokio::task::block_in_place(|| PostgresStore::connect(&url, 1).unwrap());
    wait_drained(&store, 60).await;
    let conversation = store.conversations(&Default::default()).unwrap()[0].id;
    let messages = store.messages(conversation).unwrap();
    let replies: Vec<_> = messages
        .iter()
        .filter(|m| m.kind == Some(convagent::core::ReplyKind::Answer))
        .collect();
    // Every message is answered: by a reply to it, or one that covers it.
    for m in messages
        .iter()
        .filter(|m| m.reply_to.is_none() && m.kind.is_none())
    {
        assert!(
            m.answered_by.is_some() || replies.iter().any(|r| r.reply_to == Some(m.id)),
            "message {} was skipped",
            m.text
        );
    }
    // Grouped turns, sent in the order they were stored, each once; each
    // answers the last message of its group, and the groups follow the
    // messages' order.
    let stored: Vec<String> = replies.iter().map(|r| r.text.clone()).collect();
    assert_eq!(sent(&telegram, "text").await, stored);
    assert!(stored.len() <= 20);
    let numbers: Vec<u32> = stored
        .iter()
        .map(|t| t.trim_start_matches("re: m").parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(numbers.last(), Some(&20));
    tokio::task::block_in_place(|| stop(running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_daemon_under_load_loses_nothing() {
    let cluster = Cluster::start();
    let url = cluster.database("kill");
    // Turns take a while: the killed daemon holds claims on conversations
    // whose answers it never stored.
    let (telegram, ollama) = fakes(Duration::from_millis(1500)).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    configure(&env, "each");
    let mut running = tokio::task::block_in_place(|| daemons(&env, &telegram.uri(), &url, 2));
    let chats = 12;
    for chat in 0..chats {
        let url = running[(chat % 2) as usize].url.clone();
        let status = tokio::task::block_in_place(|| {
            post_update(
                &url,
                &telegram_update(100 + chat, 1000 + chat, &format!("c{chat}")),
            )
        });
        assert_eq!(status, 200);
    }
    // kill -9 of daemon A with its turns under way.
    let mut killed = running.remove(0);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let store = tokio::task::block_in_place(|| PostgresStore::connect(&url, 1).unwrap());
    // B takes A's conversations once A's leases (3 s) are over.
    wait_drained(&store, 60).await;
    let chats_sent = {
        let mut c = sent(&telegram, "chat_id").await;
        c.sort();
        c
    };
    let mut expected: Vec<String> = (0..chats).map(|c| (100 + c).to_string()).collect();
    expected.sort();
    let mut once = chats_sent.clone();
    once.dedup();
    assert_eq!(once, expected, "every conversation answered");
    // One answer per message in the store; a send is repeated only if A
    // died between sending it and recording it (the documented
    // at-least-once duplicate), at most once per crash.
    let answers: usize = store
        .conversations(&Default::default())
        .unwrap()
        .iter()
        .map(|c| {
            store
                .messages(c.id)
                .unwrap()
                .iter()
                .filter(|m| m.kind == Some(convagent::core::ReplyKind::Answer))
                .count()
        })
        .sum();
    assert_eq!(answers, chats as usize);
    assert!(chats_sent.len() <= chats as usize + 1, "{chats_sent:?}");
    tokio::task::block_in_place(|| stop(running));
}

/// A voice note from `chat` as Telegram sends it (no speech-to-text is
/// configured, so nothing hears it).
fn voice_update(chat: i64, update: i64) -> serde_json::Value {
    serde_json::json!({
        "update_id": update,
        "message": {
            "message_id": update,
            "from": { "id": chat, "is_bot": false, "first_name": "V" },
            "chat": { "id": chat, "type": "private" },
            "date": 1763712000,
            "voice": { "file_id": format!("voice-{update}"), "file_unique_id": format!("u{update}"),
                       "duration": 3, "mime_type": "audio/ogg", "file_size": 4000 }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_send_a_conversations_media_notice_once_an_hour() {
    let cluster = Cluster::start();
    let url = cluster.database("notice");
    let (telegram, ollama) = fakes(Duration::from_millis(20)).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    configure(&env, "each");
    let running = tokio::task::block_in_place(|| daemons(&env, &telegram.uri(), &url, 2));
    // Voice notes of one conversation, posted alternately to each daemon.
    for i in 1..=6 {
        let url = running[i % 2].url.clone();
        let status =
            tokio::task::block_in_place(|| post_update(&url, &voice_update(11, 1_100 + i as i64)));
        assert_eq!(status, 200);
    }
    let store = tokio::task::block_in_place(|| PostgresStore::connect(&url, 1).unwrap());
    wait_drained(&store, 60).await;
    let texts = sent(&telegram, "text").await;
    let notice = convagent::core::media::MediaConfig::default().voice_notice;
    assert_eq!(texts.len(), 6, "each answered: {texts:?}");
    assert_eq!(texts[0], notice, "told first");
    assert_eq!(
        texts.iter().filter(|t| **t == notice).count(),
        1,
        "told once across both daemons: {texts:?}"
    );
    // The others the model answered from the stand-in.
    assert!(
        texts[1..].iter().all(|t| t.starts_with("re: [voice note")),
        "{texts:?}"
    );
    tokio::task::block_in_place(|| stop(running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_through_the_store_silences_the_agent_on_every_daemon() {
    let cluster = Cluster::start();
    let url = cluster.database("takeover");
    let (telegram, ollama) = fakes(Duration::from_millis(20)).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    configure(&env, "each");
    let running = tokio::task::block_in_place(|| daemons(&env, &telegram.uri(), &url, 2));
    let post = |d: usize, n: i64, text: &str| {
        let at = running[d].url.clone();
        let update = telegram_update(21, n, text);
        tokio::task::block_in_place(move || post_update(&at, &update))
    };
    assert_eq!(post(0, 1, "first"), 200);
    let store = tokio::task::block_in_place(|| PostgresStore::connect(&url, 1).unwrap());
    wait_drained(&store, 30).await;
    let id = store.conversations(&Default::default()).unwrap()[0]
        .id
        .to_string();
    let out = tokio::task::block_in_place(|| {
        env.cmd(&["takeover", &id, "--as", "ana"])
            .env("CONVAGENT_DATABASE_URL", &url)
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", crate::stderr_of(&out));
    for (n, d) in [(2, 0), (3, 1), (4, 0), (5, 1)] {
        assert_eq!(post(d, n, &format!("m{n}")), 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sent(&telegram, "text").await,
        ["re: first"],
        "neither daemon answers"
    );
    let waiting = store.conversations_with_pending(10).unwrap();
    assert_eq!(waiting.len(), 1, "the messages wait for a person");
    tokio::task::block_in_place(|| stop(running));
}

/// An approval asked by a turn on one daemon is answered with the Telegram
/// button through the other daemon's webhook: the waiting turn sees the
/// answer in the database, and the tool (a real MCP server) runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_asked_on_one_daemon_is_answered_through_the_other() {
    let cluster = Cluster::start();
    let url = cluster.database("approvals");
    let telegram = crate::serve::accepting_telegram().await;
    let ollama = crate::tools::ollama("book_table", serde_json::json!({ "people": 4 })).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let script = env!("CARGO_MANIFEST_DIR").to_string() + "/tests/support/mcp_probe_server.py";
    env.write_config(&format!(
        "{}approve = true\napprove_in_chat = true\n",
        crate::tools::server("probe", &[&script], &["book_table"], 15)
    ));
    let running = tokio::task::block_in_place(|| daemons(&env, &telegram.uri(), &url, 2));
    let update = telegram_update(33, 1, "a table for four, please");
    let at = running[0].url.clone();
    assert_eq!(
        tokio::task::block_in_place(|| post_update(&at, &update)),
        200
    );

    // The question arrives in the chat with its buttons.
    let deadline = Instant::now() + Duration::from_secs(20);
    let data = loop {
        let found = telegram
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .find_map(|b| {
                b["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
                    .as_str()
                    .map(str::to_string)
            });
        if let Some(data) = found {
            break data;
        }
        assert!(Instant::now() < deadline, "{}", running[0].stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(data.starts_with("approve:"), "{data}");
    let press = serde_json::json!({
        "update_id": 2,
        "callback_query": {
            "id": "cbq-33",
            "from": { "id": 33, "is_bot": false, "first_name": "T", "username": "t33" },
            "chat_instance": "-1",
            "data": data,
            "message": { "message_id": 5, "chat": { "id": 33, "type": "private" }, "date": 1,
                         "text": "May I run book_table?" }
        }
    });
    let other = running[1].url.clone();
    assert_eq!(
        tokio::task::block_in_place(|| post_update(&other, &press)),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let texts = sent(&telegram, "text").await;
        if texts.iter().any(|t| t.starts_with("Tool said:")) {
            assert!(
                texts.contains(&"Tool said: booked for 4 (booking #1)".to_string()),
                "{texts:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{texts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bookings = std::fs::read_to_string(
        env.home
            .path()
            .join("state/convagent/tools/probe/bookings.txt"),
    )
    .unwrap();
    assert_eq!(bookings, "4\n", "the tool ran once, on one daemon");
    tokio::task::block_in_place(|| stop(running));
}
