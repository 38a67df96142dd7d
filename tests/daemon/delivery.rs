//! From an accepted webhook to the reply on the provider's API: exactly one
//! reply per message, in order per conversation, retried or dead-lettered
//! as the provider answers, and traced stage by stage.

use convagent::core::ports::all::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convagent::core::{OutboxStore, TraceStore};
use serde_json::json;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::support::{EchoLlm, eventually};
use crate::{Harness, Options, TELEGRAM_TOKEN, bodies, mount_success};

fn telegram_text(
    h: &Harness,
    update_id: i64,
    message_id: i64,
    text: &str,
) -> convagent::golden::SignedRequest {
    let mut golden = h.golden("telegram/text.json");
    let json = golden.json.as_mut().unwrap();
    json["update_id"] = json!(update_id);
    json["message"]["message_id"] = json!(message_id);
    json["message"]["text"] = json!(text);
    h.sign(&golden)
}

#[tokio::test]
async fn one_message_gets_one_reply_with_the_right_text_and_recipient() {
    let h = Harness::start(Options::default()).await;
    mount_success(&h).await;
    let (status, _, correlation) = h.post(&telegram_text(&h, 1, 1, "Hi there")).await;
    assert_eq!(status, 200);
    let sent = wait_for(&h, &h.telegram, 1).await;
    assert_eq!(
        sent,
        vec![json!({ "chat_id": "111222333", "text": "echo: Hi there" })]
    );
    // The typing signal (sendChatAction) may have gone out first.
    let paths: Vec<String> = h
        .telegram
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_string())
        .filter(|p| !p.ends_with("/sendChatAction"))
        .collect();
    assert_eq!(paths, [format!("/bot{TELEGRAM_TOKEN}/sendMessage")]);

    // Every stage of the message is traced under its correlation id.
    let correlation = correlation.unwrap();
    let stages: Vec<String> = traced_through(&h, &correlation, convagent::core::Stage::Sent)
        .await
        .into_iter()
        .map(|t| t.label())
        .collect();
    for stage in [
        "received",
        "verified",
        "stored",
        "guarded",
        "context built",
        "llm call",
        "reply stored",
        "send attempt 1",
        "sent",
    ] {
        assert!(
            stages.iter().any(|s| s == stage),
            "no `{stage}` in {stages:?}"
        );
    }
    h.stop().await;
}

/// Every dead letter's provider code and error, by code.
fn dead_letters(h: &Harness) -> Vec<(String, String)> {
    crate::support::pairs(
        &h.dir.path().join("convagent.db"),
        "SELECT error_code, last_error FROM outbox WHERE state = 'dead' ORDER BY error_code",
    )
}

async fn wait_for(h: &Harness, server: &wiremock::MockServer, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while bodies(server).await.len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything more (an unwanted extra send) would be queued or pending.
    h.drained().await;
    bodies(server).await
}

#[tokio::test]
async fn the_same_payload_ten_times_at_once_gets_exactly_one_reply() {
    let llm = Arc::new(EchoLlm::new());
    let h = Harness::start(Options {
        llm: llm.clone(),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    let request = telegram_text(&h, 7, 70, "only once please");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (status, body, _) = crate::post(&request).await;
            (status, body)
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(
        answers.iter().filter(|(_, b)| b == "ok\n").count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|(_, b)| b == "duplicate\n").count(),
        9
    );
    let sent = wait_for(&h, &h.telegram, 1).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(llm.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test]
async fn five_messages_from_one_sender_are_answered_in_order_one_each() {
    let llm = Arc::new(EchoLlm {
        delay: Duration::from_millis(30),
        ..EchoLlm::new()
    });
    let mut options = Options {
        llm,
        ..Options::default()
    };
    options.settings.burst = convagent::core::Burst::Each;
    let h = Harness::start(options).await;
    mount_success(&h).await;
    let requests: Vec<_> = (1..=5)
        .map(|i| telegram_text(&h, 100 + i, 200 + i, &format!("message {i}")))
        .collect();
    // Sent in order, without waiting for replies (as Telegram delivers).
    for r in &requests {
        assert_eq!(h.post(r).await.0, 200);
    }
    let sent = wait_for(&h, &h.telegram, 5).await;
    let texts: Vec<&str> = sent.iter().map(|b| b["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "echo: message 1",
            "echo: message 2",
            "echo: message 3",
            "echo: message 4",
            "echo: message 5"
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_permanent_400_is_a_dead_letter_with_the_providers_code() {
    let h = Harness::start(Options::default()).await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "ok": false, "error_code": 400, "description": "Bad Request: chat not found"
        })))
        .mount(&h.telegram)
        .await;
    h.post(&telegram_text(&h, 11, 110, "hello?")).await;
    assert!(eventually(10, || h.store.outbox_stats().unwrap().dead == 1).await);
    assert_eq!(bodies(&h.telegram).await.len(), 1, "not retried");
    let dead = dead_letters(&h);
    assert_eq!(dead[0].0, "400");
    assert!(dead[0].1.contains("chat not found"), "{dead:?}");
    let text = h.metrics().await;
    assert!(text.contains("convagent_dead_letters 1"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn slack_replies_in_the_thread_and_twilio_from_the_configured_number() {
    // A turn that takes a moment, so the typing indicator has time to show.
    let h = Harness::start(Options {
        llm: Arc::new(EchoLlm {
            delay: Duration::from_millis(300),
            ..EchoLlm::new()
        }),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    h.post(&h.sign(&h.golden("slack/app_mention.json"))).await;
    h.post(&h.sign(&h.golden("whatsapp/text.json"))).await;
    let slack = wait_for(&h, &h.slack, 1).await;
    assert_eq!(slack[0]["channel"], "C123ABC456");
    assert_eq!(slack[0]["thread_ts"], "1515449522.000016");
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("echo: <@U0LAN0Z89> is it everything")
    );
    let auth = h.slack.received_requests().await.unwrap()[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(auth, "Bearer xoxb-test");

    let twilio = wait_for(&h, &h.twilio, 1).await;
    assert_eq!(twilio[0]["To"], "whatsapp:+14155550123");
    assert_eq!(twilio[0]["From"], "whatsapp:+14155238886");
    assert_eq!(twilio[0]["Body"], "echo: Hi! Are you open on Sunday?");
    let requests = h.twilio.received_requests().await.unwrap();
    let request = requests.iter().find(|r| !crate::is_typing(r)).unwrap();
    assert_eq!(
        request.url.path(),
        "/2010-04-01/Accounts/ACtest/Messages.json"
    );
    // WhatsApp's typing indicator named the message being answered.
    let typing = crate::typing_signals(&h.twilio).await;
    assert_eq!(typing[0]["messageId"], "SM0000000000000000000000000000001");
    assert_eq!(typing[0]["channel"], "whatsapp");
    assert_eq!(
        request
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap(),
        crate::twilio_basic_auth(),
        "basic auth with the account SID and auth token"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_long_reply_is_split_at_the_channel_limit() {
    let llm = Arc::new(EchoLlm {
        repeat: 300,
        ..EchoLlm::new()
    });
    let h = Harness::start(Options {
        llm,
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    h.post(&telegram_text(&h, 13, 130, "Tell me a very long story."))
        .await;
    let sent = wait_for(&h, &h.telegram, 3).await;
    assert!(sent.len() >= 2, "{} parts", sent.len());
    for part in &sent {
        assert!(part["text"].as_str().unwrap().chars().count() <= 4096);
    }
    let whole: String = sent
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        whole.matches("echo: Tell me a very long story.").count(),
        300
    );
    h.stop().await;
}

#[tokio::test]
async fn dry_run_records_replies_without_sending() {
    let mut options = Options::default();
    options.settings.dry_run = true;
    let h = Harness::start(options).await;
    mount_success(&h).await;
    h.post(&telegram_text(&h, 14, 140, "just pretend")).await;
    let db = h.dir.path().join("convagent.db");
    assert!(
        eventually(10, || !crate::support::pairs::<String, i64>(
            &db,
            "SELECT state, dry_run FROM outbox WHERE state = 'sent'"
        )
        .is_empty())
        .await
    );
    assert_eq!(
        crate::support::pairs::<String, i64>(&db, "SELECT state, dry_run FROM outbox"),
        [("sent".to_string(), 1)]
    );
    assert!(bodies(&h.telegram).await.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_conversations_at_once_get_exactly_one_reply_each() {
    let h = Harness::start(Options::default()).await;
    mount_success(&h).await;
    let n = 60;
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let mut golden = h.golden("telegram/text.json");
            let json = golden.json.as_mut().unwrap();
            json["update_id"] = json!(5000 + i);
            json["message"]["message_id"] = json!(1);
            json["message"]["chat"]["id"] = json!(7000 + i);
            json["message"]["from"]["id"] = json!(7000 + i);
            h.sign(&golden)
        })
        .collect();
    let mut tasks = Vec::new();
    for r in requests {
        tasks.push(tokio::spawn(async move { crate::post(&r).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Drained: no extra send can still come.
    let sent = wait_for(&h, &h.telegram, n as usize).await;
    let mut chats: Vec<String> = bodies(&h.telegram)
        .await
        .iter()
        .map(|b| b["chat_id"].as_str().unwrap().to_string())
        .collect();
    chats.sort();
    let before = chats.len();
    chats.dedup();
    assert_eq!(
        before,
        n as usize,
        "{} sends for {n} messages (first wait saw {})",
        before,
        sent.len()
    );
    assert_eq!(chats.len(), n as usize);
    h.stop().await;
}

#[tokio::test]
async fn a_burst_sent_while_a_turn_runs_gets_one_answer_that_sees_all_of_it() {
    let llm = Arc::new(EchoLlm {
        delay: Duration::from_millis(800),
        ..EchoLlm::new()
    });
    let h = Harness::start(Options {
        llm: llm.clone(),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    assert_eq!(h.post(&telegram_text(&h, 301, 401, "hi")).await.0, 200);
    // The first turn is running (the LLM takes 800 ms) when the rest arrive.
    assert!(
        eventually(5, || llm.calls.load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    for (i, text) in ["I need help", "with my order"].iter().enumerate() {
        let i = i as i64;
        assert_eq!(
            h.post(&telegram_text(&h, 302 + i, 402 + i, text)).await.0,
            200
        );
    }
    let sent = wait_for(&h, &h.telegram, 2).await;
    let texts: Vec<&str> = sent.iter().map(|b| b["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["echo: hi", "echo: with my order"],
        "two answers, not three"
    );
    assert_eq!(llm.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    let seen = llm.seen.lock().unwrap().clone();
    assert_eq!(
        seen[1][seen[1].len() - 2..],
        ["I need help".to_string(), "with my order".to_string()],
        "the second turn's context holds both messages of the burst"
    );

    // Stored as one reply to the last message that covers the one before.
    let conversation = h.store.conversations(&Default::default()).unwrap()[0].id;
    let messages = h.store.messages(conversation).unwrap();
    let reply = messages
        .iter()
        .find(|m| m.text == "echo: with my order")
        .unwrap();
    let help = messages.iter().find(|m| m.text == "I need help").unwrap();
    let order = messages.iter().find(|m| m.text == "with my order").unwrap();
    assert_eq!(reply.reply_to, Some(order.id));
    assert_eq!(help.answered_by, Some(reply.id));
    assert!(h.store.pending(conversation, 10).unwrap().is_empty());

    // While the turns ran, the person saw "typing".
    let typing = crate::typing_signals(&h.telegram).await;
    assert!(!typing.is_empty(), "no sendChatAction");
    assert!(
        typing
            .iter()
            .all(|t| t["action"] == "typing" && t["chat_id"] == "111222333"),
        "{typing:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn in_an_outage_a_conversation_gets_one_fallback_until_it_is_answered_again() {
    use crate::support::{ScriptedLlm, http_500};
    let llm = Arc::new(ScriptedLlm::new("down", vec![Err(http_500("down"))]));
    let mut options = Options {
        llm: llm.clone(),
        ..Options::default()
    };
    options.settings.fallback_retry = Duration::from_millis(300);
    let h = Harness::start(options).await;
    mount_success(&h).await;
    for i in 0..3 {
        assert_eq!(
            h.post(&telegram_text(&h, 501 + i, 601 + i, "still there?"))
                .await
                .0,
            200
        );
        assert!(eventually(5, || llm.calls() as i64 > i).await);
    }
    // Retries keep failing meanwhile: still one fallback, stored and sent.
    assert!(eventually(10, || llm.calls() >= 5).await);
    let conversation = h.store.conversations(&Default::default()).unwrap()[0].id;
    let fallbacks = || {
        h.store
            .messages(conversation)
            .unwrap()
            .iter()
            .filter(|m| m.kind == Some(convagent::core::ReplyKind::Fallback))
            .count()
    };
    assert_eq!(fallbacks(), 1);
    assert!(eventually(10, || h.store.outbox_stats().unwrap().queued == 0).await);
    let sent = bodies(&h.telegram).await;
    assert_eq!(sent.len(), 1, "one fallback for the conversation: {sent:?}");
    assert!(
        sent[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Sorry, I can't answer right now")
    );

    // The provider recovers: one answer for all three, then a new outage
    // may send a fallback again.
    llm.set(Ok("back now".into()));
    let sent = wait_for(&h, &h.telegram, 2).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1]["text"], "back now");
    assert!(h.store.pending(conversation, 10).unwrap().is_empty());
    llm.set(Err(http_500("down")));
    assert_eq!(
        h.post(&telegram_text(&h, 510, 610, "and now?")).await.0,
        200
    );
    assert!(
        eventually(10, || fallbacks() == 2).await,
        "a new outage, a new fallback"
    );
    assert!(eventually(10, || h.store.outbox_stats().unwrap().queued == 0).await);
    assert_eq!(bodies(&h.telegram).await.len(), 3);
    h.stop().await;
}

#[tokio::test]
async fn sms_replies_go_from_the_number_written_to_without_a_whatsapp_prefix() {
    let h = Harness::start(Options::default()).await;
    mount_success(&h).await;
    let (status, body, _) = h.post(&h.sign(&h.golden("sms/text.json"))).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let sent = wait_for(&h, &h.twilio, 1).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    // TWILIO_SMS_FROM is unset: the reply goes from the number written to.
    assert_eq!(sent[0]["To"], "+14155550100");
    assert_eq!(sent[0]["From"], "+15017122661");
    assert_eq!(sent[0]["Body"], "echo: Is my order ready?");
    assert!(
        crate::typing_signals(&h.twilio).await.is_empty(),
        "SMS has no typing indicator"
    );
    let c = &h.store.conversations(&Default::default()).unwrap()[0];
    assert_eq!(c.channel, convagent::core::Channel::Sms);
    h.stop().await;
}

#[tokio::test]
async fn whatsapp_without_a_configured_number_replies_from_the_one_written_to() {
    let h = Harness::start(Options {
        configure: |c| c.channels.twilio.whatsapp_from = None,
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    h.post(&h.sign(&h.golden("whatsapp/text.json"))).await;
    let sent = wait_for(&h, &h.twilio, 1).await;
    assert_eq!(sent[0]["From"], "whatsapp:+14155238886");
    assert_eq!(h.store.outbox_stats().unwrap().dead, 0);
    h.stop().await;
}

/// A daemon on a fake clock set to now, so that waits are decided by the
/// test moving the clock, never by how long anything takes.
async fn on_a_fake_clock(settings: impl FnOnce(&mut convagent::daemon::DaemonSettings)) -> Harness {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut options = Options {
        clock: Some(Arc::new(crate::support::FakeClock::at(now))),
        ..Options::default()
    };
    settings(&mut options.settings);
    Harness::start(options).await
}

/// Sends a fake received (typing signals left out).
async fn sends(server: &wiremock::MockServer) -> usize {
    bodies(server).await.len()
}

/// The trace of `correlation` once it has reached `stage` (traces are
/// stored with the writer's next batch, a moment after the stage).
async fn traced_through(
    h: &Harness,
    correlation: &str,
    stage: convagent::core::Stage,
) -> Vec<convagent::core::TraceEvent> {
    let reached = || {
        h.store
            .trace(correlation)
            .unwrap()
            .iter()
            .any(|t| t.stage == stage)
    };
    assert!(
        eventually(10, reached).await,
        "{correlation} never reached {stage:?}"
    );
    h.store.trace(correlation).unwrap()
}

/// The moment the outbox will next try, relative to the fake clock.
fn next_try_in(h: &Harness) -> Option<i64> {
    let now = convagent::core::Clock::now_ms(h.clock.as_deref().unwrap());
    // Any head of a queue, due already or not.
    h.store.next_due_after(i64::MIN).unwrap().map(|at| at - now)
}

/// Telegram's "Too Many Requests" with a wait no default could produce
/// (the adapters default to 1 s).
fn telegram_429_after_7s() -> ResponseTemplate {
    ResponseTemplate::new(429).set_body_json(json!({
        "ok": false, "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": { "retry_after": 7 }
    }))
}

#[tokio::test]
async fn each_channel_waits_out_exactly_the_429_wait_it_is_given() {
    let h = on_a_fake_clock(|_| {}).await;
    // Waits no default could produce (the adapters default to 1 s).
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(telegram_429_after_7s())
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.telegram)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/chat\.postMessage$"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "11")
                .set_body_json(json!({ "ok": false, "error": "ratelimited" })),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.slack)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/[^/]+/Messages\.json$"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "13")
                .set_body_json(json!({
                    "code": 20429, "message": "Too Many Requests",
                    "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429
                })),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.twilio)
        .await;
    mount_success(&h).await;

    let cases: [(&str, &wiremock::MockServer, i64); 3] = [
        ("telegram/text.json", &h.telegram, 7_000),
        ("slack/message_im.json", &h.slack, 11_000),
        ("whatsapp/text.json", &h.twilio, 13_000),
    ];
    for (golden, api, wait) in cases {
        h.post(&h.sign(&h.golden(golden))).await;
        assert!(
            eventually(10, || next_try_in(&h) == Some(wait)).await,
            "{golden}: {:?}",
            next_try_in(&h)
        );
        assert_eq!(sends(api).await, 1, "{golden}");
        h.advance(wait - 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sends(api).await, 1, "{golden}: not before the wait is over");
        h.advance(1);
        assert!(
            eventually(10, || h.store.outbox_stats().unwrap().queued == 0).await,
            "{golden}"
        );
        assert_eq!(sends(api).await, 2, "{golden}: delivered after the wait");
    }
    assert_eq!(h.store.outbox_stats().unwrap().dead, 0);
    h.stop().await;
}

/// A channel that answers 429 forever holds a reply back only so long:
/// past `rate_limited_max_wait` in all, it is a dead letter to act on.
#[tokio::test]
async fn a_429_storm_dead_letters_the_reply_once_the_total_wait_is_over() {
    let h = on_a_fake_clock(|s| s.rate_limited_max_wait = Duration::from_secs(20)).await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(telegram_429_after_7s())
        .mount(&h.telegram)
        .await;
    h.post(&telegram_text(&h, 13, 130, "still there?")).await;
    // Waits of 7 s from 0 s and from 7 s end within 20 s of queueing; the
    // one asked at 14 s would end at 21 s.
    for attempt in 1..=2 {
        assert!(
            eventually(10, || next_try_in(&h) == Some(7_000)).await,
            "after attempt {attempt}: {:?}",
            next_try_in(&h)
        );
        assert_eq!(sends(&h.telegram).await, attempt);
        h.advance(7_000);
    }
    assert!(eventually(10, || h.store.outbox_stats().unwrap().dead == 1).await);
    assert_eq!(sends(&h.telegram).await, 3);
    let dead = dead_letters(&h);
    assert_eq!(dead[0].0, "rate_limited");
    assert!(
        dead[0].1.contains("still rate limited after 14 s"),
        "{dead:?}"
    );
    assert!(dead[0].1.contains("retry after 7"), "{dead:?}");
    h.stop().await;
}

#[tokio::test]
async fn server_errors_back_off_1_2_4_8_16_seconds_then_dead_letter() {
    let h = on_a_fake_clock(|s| {
        s.send_backoff = convagent::daemon::DaemonSettings::default().send_backoff
    })
    .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(ResponseTemplate::new(502).set_body_string("Bad Gateway"))
        .mount(&h.telegram)
        .await;
    h.post(&telegram_text(&h, 12, 120, "anyone?")).await;
    // The first try and five retries, then a dead letter naming the 502.
    backs_off_then_dead_letters(&h, Some(&h.telegram), 1, "502").await;
    // Six attempts, one label: the attempt is in the trace row, never in
    // a metric's name or labels (their set stays fixed).
    let metrics = h.metrics().await;
    assert!(metrics.contains(r#"stage="send""#), "{metrics}");
    assert!(!metrics.contains(r#"stage="send attempt"#), "{metrics}");
    let correlation = h
        .store
        .messages(h.store.conversations(&Default::default()).unwrap()[0].id)
        .unwrap()[0]
        .correlation_id
        .clone()
        .unwrap();
    let attempts: Vec<Option<u32>> = h
        .store
        .trace(&correlation)
        .unwrap()
        .iter()
        .filter(|t| t.stage == convagent::core::Stage::Send)
        .map(|t| t.attempt)
        .collect();
    assert_eq!(attempts, (1..=6).map(Some).collect::<Vec<_>>());
    h.stop().await;
}

/// Walks one reply through the whole backoff: a try, then retries 1, 2,
/// 4, 8 and 16 s apart, then a dead letter whose error names `error`.
async fn backs_off_then_dead_letters(
    h: &Harness,
    api: Option<&wiremock::MockServer>,
    dead: usize,
    error: &str,
) {
    let tries = |n: usize| async move {
        if let Some(api) = api {
            assert_eq!(sends(api).await, n, "{error}: tries so far");
        }
    };
    for (attempt, wait) in [1_000, 2_000, 4_000, 8_000, 16_000].into_iter().enumerate() {
        assert!(
            eventually(10, || next_try_in(h) == Some(wait)).await,
            "{error}: after attempt {}: {:?}",
            attempt + 1,
            next_try_in(h)
        );
        tries(attempt + 1).await;
        h.advance(wait);
    }
    assert!(
        eventually(10, || h.store.outbox_stats().unwrap().dead == dead as u64).await,
        "{error}: no dead letter"
    );
    tries(6).await;
    let letters = dead_letters(h);
    assert!(
        letters
            .iter()
            .any(|(code, why)| code == "retries_exhausted" && why.contains(error)),
        "{error}: {letters:?}"
    );
}

#[tokio::test]
async fn slack_and_twilio_server_errors_back_off_like_telegram_s() {
    let h = on_a_fake_clock(|s| {
        s.send_backoff = convagent::daemon::DaemonSettings::default().send_backoff
    })
    .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/chat\.postMessage$"))
        .respond_with(ResponseTemplate::new(500).set_body_string("Internal Server Error"))
        .mount(&h.slack)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/[^/]+/Messages\.json$"))
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({
            "code": 20503, "message": "Service Unavailable",
            "more_info": "https://www.twilio.com/docs/errors/20503", "status": 503
        })))
        .mount(&h.twilio)
        .await;
    h.post(&h.sign(&h.golden("slack/message_im.json"))).await;
    backs_off_then_dead_letters(&h, Some(&h.slack), 1, "500").await;
    h.post(&h.sign(&h.golden("whatsapp/text.json"))).await;
    backs_off_then_dead_letters(&h, Some(&h.twilio), 2, "503").await;
    h.stop().await;
}

/// Where Telegram's API refuses connections: held bound, never listening.
static REFUSED: std::sync::OnceLock<crate::support::ReservedPort> = std::sync::OnceLock::new();

#[tokio::test]
async fn a_refused_connection_backs_off_like_a_server_error() {
    let refused = REFUSED.get_or_init(crate::support::ReservedPort::new);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut options = Options {
        clock: Some(Arc::new(crate::support::FakeClock::at(now))),
        configure: |c| {
            c.channels.telegram.api_base = REFUSED.get().map(|p| p.url());
        },
        ..Options::default()
    };
    options.settings.send_backoff = convagent::daemon::DaemonSettings::default().send_backoff;
    let h = Harness::start(options).await;
    assert!(refused.port > 0);
    h.post(&telegram_text(&h, 14, 140, "hello?")).await;
    backs_off_then_dead_letters(&h, None, 1, "Connection refused").await;
    h.stop().await;
}

#[tokio::test]
async fn a_later_reply_never_overtakes_one_waiting_to_retry() {
    let h = on_a_fake_clock(|s| {
        s.burst = convagent::core::Burst::Each;
        s.send_backoff = convagent::daemon::DaemonSettings::default().send_backoff;
    })
    .await;
    // The first send fails; every later one succeeds.
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({
            "ok": false, "error_code": 500, "description": "Internal Server Error"
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.telegram)
        .await;
    mount_success(&h).await;
    for i in 1..=3 {
        h.post(&telegram_text(&h, 700 + i, 800 + i, &format!("part {i}")))
            .await;
    }
    // Every reply is stored and queued, the first one waiting to retry.
    let conversation = || h.store.conversations(&Default::default()).unwrap()[0].id;
    assert!(eventually(10, || h.store.messages(conversation()).unwrap().len() == 6).await);
    assert!(eventually(10, || next_try_in(&h) == Some(1_000)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sends(&h.telegram).await,
        1,
        "replies 2 and 3 wait behind the first"
    );
    assert_eq!(h.store.outbox_stats().unwrap().queued, 3);

    h.advance(1_000);
    assert!(eventually(10, || h.store.outbox_stats().unwrap().queued == 0).await);
    let texts: Vec<String> = bodies(&h.telegram)
        .await
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        texts,
        [
            "echo: part 1",
            "echo: part 1",
            "echo: part 2",
            "echo: part 3"
        ],
        "the failed one again, then the rest in order"
    );
    h.stop().await;
}

#[tokio::test]
async fn providers_refusals_become_dead_letters_with_their_own_codes() {
    let h = Harness::start(Options::default()).await;
    // Slack answers most failures with HTTP 200 and `ok: false`.
    Mock::given(method("POST"))
        .and(path_regex(r"^/chat\.postMessage$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": false, "error": "channel_not_found"
        })))
        .mount(&h.slack)
        .await;
    // Twilio's error body: code, message, more_info, status.
    Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/[^/]+/Messages\.json$"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211,
            "message": "The 'To' number whatsapp:+14155550123 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400
        })))
        .mount(&h.twilio)
        .await;
    h.post(&h.sign(&h.golden("slack/message_im.json"))).await;
    h.post(&h.sign(&h.golden("whatsapp/text.json"))).await;
    assert!(eventually(10, || h.store.outbox_stats().unwrap().dead == 2).await);
    let dead = dead_letters(&h);
    assert_eq!(dead[0].0, "21211");
    assert!(
        dead[0].1.contains("is not a valid phone number"),
        "{dead:?}"
    );
    assert_eq!(dead[1].0, "channel_not_found");
    // Not retried: a refusal is final.
    assert_eq!(sends(&h.slack).await, 1);
    assert_eq!(sends(&h.twilio).await, 1);
    h.stop().await;
}

#[tokio::test]
async fn slacks_transient_ok_false_is_retried() {
    let h = Harness::start(Options::default()).await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/chat\.postMessage$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": false, "error": "internal_error"
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.slack)
        .await;
    mount_success(&h).await;
    h.post(&h.sign(&h.golden("slack/message_im.json"))).await;
    let sent = wait_for(&h, &h.slack, 2).await;
    assert_eq!(sent.len(), 2, "retried once, then delivered");
    assert_eq!(h.store.outbox_stats().unwrap().dead, 0);
    h.stop().await;
}

/// A Telegram `sendMessage` that fails its `fail_on`-th call (1-based) with
/// a 500 and succeeds otherwise.
struct FailsOnce {
    calls: std::sync::atomic::AtomicUsize,
    fail_on: usize,
}

impl wiremock::Respond for FailsOnce {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.fail_on {
            ResponseTemplate::new(500).set_body_json(json!({
                "ok": false, "error_code": 500, "description": "Internal Server Error"
            }))
        } else {
            ResponseTemplate::new(200).set_body_json(json!({
                "ok": true, "result": { "message_id": 1000 + n, "chat": { "id": 111222333 } }
            }))
        }
    }
}

#[tokio::test]
async fn parts_of_a_long_reply_already_delivered_are_not_sent_again() {
    let llm = Arc::new(EchoLlm {
        repeat: 300,
        ..EchoLlm::new()
    });
    let h = Harness::start(Options {
        llm,
        ..Options::default()
    })
    .await;
    // The first part goes through, the second fails once, then all is well.
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(FailsOnce {
            calls: Default::default(),
            fail_on: 2,
        })
        .mount(&h.telegram)
        .await;
    h.post(&telegram_text(&h, 14, 140, "Tell me a very long story."))
        .await;
    // Answered, and every part out (an empty outbox alone is also what it
    // looks like before the reply is stored).
    h.drained().await;
    let sent: Vec<String> = bodies(&h.telegram)
        .await
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    let parts = convagent::core::channel::split_message(
        &vec!["echo: Tell me a very long story."; 300].join(" "),
        4096,
    );
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let mut expected = vec![parts[0].clone(), parts[1].clone()];
    expected.extend(parts[1..].iter().cloned());
    assert_eq!(
        sent, expected,
        "part 1 once; part 2 again after its failure; then the rest"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_message_whose_sender_hangs_up_before_the_200_is_still_answered() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Options::default()).await;
    mount_success(&h).await;
    // Each from its own chat: no later message of the same conversation
    // may wake a worker that the first one should have woken.
    let chats = 40;
    for chat in 0..chats {
        let mut golden = h.golden("telegram/text.json");
        let json = golden.json.as_mut().unwrap();
        json["update_id"] = json!(700 + chat);
        json["message"]["message_id"] = json!(700 + chat);
        json["message"]["chat"]["id"] = json!(9_000_000 + chat);
        let request = h.sign(&golden);
        let url = reqwest::Url::parse(&request.url).unwrap();
        let mut head = format!(
            "POST {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-length: {}\r\n",
            url.path(),
            url.host_str().unwrap(),
            url.port().unwrap(),
            request.body.len()
        );
        for (k, v) in &request.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream =
            tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
                .await
                .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&request.body).await.unwrap();
        // Hang up without reading the answer, as a provider that timed out.
        drop(stream);
    }
    // Whatever was stored is answered and sent; nothing waits forever.
    h.drained().await;
    let stored: usize = h
        .store
        .conversations(&Default::default())
        .unwrap()
        .iter()
        .map(|c| h.store.messages(c.id).unwrap().len())
        .sum();
    assert!(stored > 0, "the webhooks reached the store");
    assert_eq!(
        sends(&h.telegram).await * 2,
        stored,
        "one reply per stored message"
    );
    h.stop().await;
}

#[tokio::test]
async fn while_every_provider_is_down_new_messages_wait_without_a_turn_each() {
    use convagent::adapters::llm::chain::{Chain, ChainPolicy};
    use convagent::core::{BreakerPolicy, Stage};

    use crate::support::{FakeClock, ScriptedLlm, http_500};
    let clock = Arc::new(FakeClock::at(1_800_000_000_000));
    let provider = Arc::new(ScriptedLlm::new("down", vec![Err(http_500("down"))]));
    // The chain keeps its breakers in a store of its own here; the daemon's
    // store is made by the harness.
    let chain = Chain::new(
        vec![provider.clone()],
        Arc::new(convagent::adapters::store::SqliteStore::open_in_memory().unwrap()),
        clock.clone(),
        ChainPolicy {
            breaker: BreakerPolicy {
                failure_threshold: 1,
                cooldown_ms: 60_000,
            },
            backoff: Vec::new(),
            ..ChainPolicy::default()
        },
    );
    let mut options = Options {
        llm: Arc::new(chain),
        clock: Some(clock.clone()),
        ..Options::default()
    };
    options.settings.fallback_retry = Duration::from_secs(3600);
    let h = Harness::start(options).await;
    mount_success(&h).await;

    // The first message opens the breaker and gets the fallback.
    h.post(&telegram_text(&h, 901, 901, "hello?")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sends(&h.telegram).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.daemon.idle().await;
    assert_eq!(bodies(&h.telegram).await.len(), 1, "the fallback");
    // More while the provider is known to be down: stored, no turn each.
    let mut later = Vec::new();
    for i in 0..4 {
        let (status, _, correlation) = h
            .post(&telegram_text(&h, 902 + i, 902 + i, "anyone?"))
            .await;
        assert_eq!(status, 200);
        later.push(correlation.unwrap());
    }
    // A turn would have started before the 200: wait for any to end.
    h.daemon.idle().await;
    convagent::core::Writes::flush(h.store.as_ref()).await;
    for correlation in &later {
        let stages: Vec<Stage> = h
            .store
            .trace(correlation)
            .unwrap()
            .iter()
            .map(|t| t.stage)
            .collect();
        assert_eq!(
            stages,
            [Stage::Received, Stage::Verified, Stage::Stored],
            "{correlation}"
        );
    }
    assert_eq!(provider.calls(), 1);

    // Once the breaker is due for a probe, the next message runs a turn
    // that answers all of them at once.
    provider.set(Ok("here now".into()));
    clock.advance(60_000);
    h.post(&telegram_text(&h, 910, 910, "still?")).await;
    let sent = wait_for(&h, &h.telegram, 2).await;
    assert_eq!(sent[1]["text"], "here now");
    assert_eq!(provider.calls(), 2);
    h.stop().await;
}

#[tokio::test]
async fn idle_waits_for_the_turn_a_webhook_started() {
    let llm = Arc::new(EchoLlm {
        delay: Duration::from_millis(300),
        ..EchoLlm::new()
    });
    let h = Harness::start(Options {
        llm,
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    assert_eq!(
        h.post(&telegram_text(&h, 990, 990, "slow one")).await.0,
        200
    );
    // The turn started before the 200; idle returns once its reply is stored.
    h.daemon.idle().await;
    let conversation = h.store.conversations(&Default::default()).unwrap()[0].id;
    let kinds: Vec<_> = h
        .store
        .messages(conversation)
        .unwrap()
        .iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(kinds, [None, Some(convagent::core::ReplyKind::Answer)]);
    h.stop().await;
}

/// `serve` applies retention by itself, in the background: an old, settled
/// conversation goes; an old one still waiting for its answer stays.
#[tokio::test]
async fn the_daemon_prunes_by_itself_and_never_what_is_still_owed() {
    let day = Duration::from_secs(86_400);
    let h = Harness::start(Options {
        settings: convagent::daemon::DaemonSettings {
            retention: (Some(30 * day), None),
            prune_every: Duration::from_millis(100),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let now = convagent::core::Clock::now_ms(&convagent::adapters::clock::SystemClock);
    let old = now - 60 * 86_400_000;
    let key =
        |who: &str| convagent::core::ConversationKey::new(convagent::core::Channel::Slack, who, "");
    let slack = convagent::core::Channel::Slack;
    let message =
        |who: &str| crate::support::inbound(slack, who, &format!("{who}-1"), "long ago", old);
    let settled = h.store.accept(&message("settled")).unwrap();
    let prompt = h.store.ensure_prompt("be brief", old).unwrap();
    let reply = crate::support::answer("answered long ago", prompt.version, old);
    h.store.record_reply(settled.message_id, &reply).unwrap();
    let queued = h.store.head(settled.conversation_id).unwrap().unwrap();
    h.store
        .write_now(convagent::core::Write::Outbox {
            id: queued.id,
            update: convagent::core::OutboxUpdate::Sent {
                provider_message_id: None,
                dry_run: true,
            },
            at: old,
        })
        .unwrap();
    h.store.close_conversation(&key("settled"), old).unwrap();
    // Still owed an answer (the daemon would answer it; it is closed here so
    // that only retention looks at it).
    let owed = h.store.accept(&message("owed")).unwrap();
    h.store.close_conversation(&key("owed"), old).unwrap();
    assert!(
        eventually(10, || h
            .store
            .conversation(settled.conversation_id)
            .unwrap()
            .is_none())
        .await,
        "the settled conversation was pruned"
    );
    let _ = h
        .store
        .record_violation(settled.message_id, "x", old)
        .is_err();
    assert!(
        h.store
            .conversation(owed.conversation_id)
            .unwrap()
            .is_some()
    );
    h.stop().await;
}

/// A provider's error body that quotes a configured secret and something
/// shaped like a credential: neither reaches the stored trace.
#[tokio::test]
async fn stored_traces_and_dead_letters_never_hold_a_secret() {
    let h = Harness::start(Options::default()).await;
    let leaked = format!(
        "Bad Request: chat not found (secret {}, key sk-live-ABCDEFGHIJKLMNOPQRSTUVWX)",
        crate::TELEGRAM_SECRET
    );
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendMessage$"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "ok": false, "error_code": 400, "description": leaked
        })))
        .mount(&h.telegram)
        .await;
    h.post(&telegram_text(&h, 15, 150, "hi")).await;
    assert!(eventually(10, || h.store.outbox_stats().unwrap().dead == 1).await);
    h.drained().await;
    let conversation = h.store.conversations(&Default::default()).unwrap()[0].id;
    let correlation = h.store.messages(conversation).unwrap()[0]
        .correlation_id
        .clone()
        .unwrap();
    let details: Vec<String> = traced_through(&h, &correlation, convagent::core::Stage::Send)
        .await
        .into_iter()
        .filter_map(|t| t.detail)
        .collect();
    let send = details
        .iter()
        .find(|d| d.contains("chat not found"))
        .unwrap_or_else(|| panic!("the send's failure is traced: {details:?}"));
    assert!(send.contains(convagent::telemetry::MASK), "{send}");
    for d in &details {
        assert!(!d.contains(crate::TELEGRAM_SECRET), "{d}");
        assert!(!d.contains("ABCDEFGHIJKLMNOPQRSTUVWX"), "{d}");
    }
    // Nor the dead letter's error, which `convagent outbox` and the TUI show.
    let dead = dead_letters(&h);
    assert!(dead[0].1.contains("chat not found"), "{dead:?}");
    assert!(!dead[0].1.contains(crate::TELEGRAM_SECRET), "{dead:?}");
    assert!(!dead[0].1.contains("ABCDEFGHIJKLMNOPQRSTUVWX"), "{dead:?}");
    h.stop().await;
}
