//! A person can step in: `/human` (or a trigger phrase) hands the
//! conversation to a person and tells them one will answer; while a person
//! answers, the agent is silent and the messages wait; an operator's reply
//! goes out through the outbox with provider `human`; the takeover runs out
//! by itself (on the fake clock) and the agent answers again.

use std::sync::Arc;

use convagent::core::handoff::{self, Handoff, HandoffConfig, Mode};
use convagent::core::ports::all::*;
use convagent::core::ports::{Destination, Outgoing};
use convagent::core::{Burst, CorrelationId, Write};
use serde_json::json;

use crate::support::{EchoLlm, FakeClock};
use crate::{Harness, Options, bodies, mount_success};

const NOON: i64 = 1_763_726_400_000;

pub(crate) fn text_from(h: &Harness, update: i64, text: &str) -> convagent::golden::SignedRequest {
    let mut golden = h.golden("telegram/text.json");
    let json = golden.json.as_mut().unwrap();
    json["update_id"] = json!(update);
    json["message"]["message_id"] = json!(update);
    json["message"]["text"] = json!(text);
    h.sign(&golden)
}

pub(crate) async fn start(llm: Arc<EchoLlm>, clock: Arc<FakeClock>) -> Harness {
    let mut options = Options {
        llm,
        clock: Some(clock),
        ..Options::default()
    };
    options.settings.burst = Burst::Each;
    let h = Harness::start(options).await;
    mount_success(&h).await;
    h
}

/// The texts Telegram was asked to send, in order.
async fn sent(h: &Harness) -> Vec<String> {
    bodies(&h.telegram)
        .await
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_string))
        .collect()
}

/// The texts the fake Twilio was asked to send, in order.
pub(crate) async fn twilio_texts(h: &Harness) -> Vec<String> {
    h.twilio
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/Messages.json"))
        .map(|r| {
            let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&r.body).unwrap();
            form.into_iter().find(|(k, _)| k == "Body").unwrap().1
        })
        .collect()
}

fn the_conversation(h: &Harness) -> convagent::core::ConversationSummary {
    h.store.conversations(&Default::default()).unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_asked_for_answers_while_the_agent_is_silent_until_it_runs_out() {
    let clock = Arc::new(FakeClock::at(NOON));
    let llm = Arc::new(EchoLlm::new());
    let h = start(llm.clone(), clock.clone()).await;
    let notice = HandoffConfig::default().notice;

    assert_eq!(h.post(&text_from(&h, 1, "/human")).await.0, 200);
    h.drained().await;
    assert!(
        llm.seen.lock().unwrap().is_empty(),
        "the agent is not asked"
    );
    let conversation = the_conversation(&h);
    assert_eq!(conversation.mode, Mode::Human);
    assert_eq!(
        conversation.mode_by.as_deref(),
        Some(handoff::ASKED_BY_PERSON)
    );

    // Three more messages: stored, waiting, the agent silent.
    for (n, text) in [(2, "hello?"), (3, "anyone there?"), (4, "my order is late")] {
        h.advance(60_000);
        assert_eq!(h.post(&text_from(&h, n, text)).await.0, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        llm.seen.lock().unwrap().is_empty(),
        "the agent stays silent"
    );
    let waiting = h.store.pending(conversation.id, 10).unwrap();
    assert_eq!(waiting.len(), 3, "the messages wait for a person");
    // Operators see it: the gauges the alert reads.
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("\nconvagent_waiting_for_human 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nconvagent_waiting_for_human_oldest_seconds 120\n"),
        "{metrics}"
    );

    // The operator answers (as `convagent reply` does): through the outbox.
    let at = convagent::core::Clock::now_ms(clock.as_ref());
    h.store
        .write_now(Write::Handoff(Handoff {
            conversation_id: conversation.id,
            mode: Mode::Human,
            by: "ana".into(),
            at,
        }))
        .unwrap();
    let reply = h
        .store
        .write_now(Write::Send(Outgoing {
            to: Destination::Conversation(conversation.id),
            text: "Hi, Ana here: your order ships today.".into(),
            provider: "human".into(),
            sender: "ana".into(),
            correlation_id: CorrelationId::generate().0,
            answers_pending: true,
            at,
        }))
        .unwrap()
        .sent()
        .unwrap();
    assert_eq!(reply.answered.len(), 3);
    h.daemon.wake_outbox();
    assert!(
        crate::support::eventually(10, || h.store.outbox_stats().is_ok_and(|s| s.queued == 0))
            .await
    );
    assert_eq!(
        sent(&h).await,
        [notice.as_str(), "Hi, Ana here: your order ships today."]
    );

    // Still taken over a minute later: silent.
    h.advance(60_000);
    assert_eq!(h.post(&text_from(&h, 5, "thanks!")).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(llm.seen.lock().unwrap().is_empty());

    // Half an hour after the operator's last reply the takeover runs out:
    // the next message wakes the agent, which answers what waits.
    h.advance(30 * 60_000);
    assert_eq!(h.post(&text_from(&h, 6, "bye")).await.0, 200);
    h.drained().await;
    assert_eq!(
        llm.seen.lock().unwrap().len(),
        2,
        "both waiting messages, one turn each"
    );
    let conversation = the_conversation(&h);
    assert_eq!(conversation.mode, Mode::Agent);
    assert_eq!(conversation.mode_by.as_deref(), Some(handoff::AUTO_RESUME));
    let traced: Vec<(String, String)> = crate::support::pairs(
        &h.dir.path().join("convagent.db"),
        "SELECT outcome, detail FROM traces WHERE stage = 'handoff' ORDER BY id",
    );
    let details: Vec<&str> = traced.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(
        details[0].starts_with("human, asked by the person"),
        "{details:?}"
    );
    assert!(
        details[1].starts_with("agent, by auto-resume"),
        "{details:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_phrase_on_whatsapp_asks_for_a_person() {
    let clock = Arc::new(FakeClock::at(NOON));
    let llm = Arc::new(EchoLlm::new());
    let h = start(llm.clone(), clock).await;
    let mut golden = h.golden("whatsapp/text.json");
    *golden.form.as_mut().unwrap().get_mut("Body").unwrap() =
        "Please, I want to talk to a REAL person".into();
    assert_eq!(h.post(&h.sign(&golden)).await.0, 200);
    h.drained().await;
    assert!(llm.seen.lock().unwrap().is_empty());
    assert_eq!(the_conversation(&h).mode, Mode::Human);
    assert_eq!(twilio_texts(&h).await, [HandoffConfig::default().notice]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_withholds_everything_until_start_and_reset_and_help_answer() {
    let clock = Arc::new(FakeClock::at(NOON));
    let llm = Arc::new(EchoLlm::new());
    let h = start(llm.clone(), clock).await;
    let config = HandoffConfig::default();
    let mut n = 0;
    let mut say = async |text: &str| {
        n += 1;
        h.advance(1_000);
        assert_eq!(h.post(&text_from(&h, n, text)).await.0, 200);
        h.drained().await;
    };
    // Telegram sends /start when someone first opens the chat: what they
    // can ask, not a welcome back.
    say("/start").await;
    say("/help").await;
    say("/stop").await;
    say("are you still there?").await;
    assert_eq!(llm.seen.lock().unwrap().len(), 1, "answered, but withheld");
    say("/start").await;
    say("hello again").await;
    assert!(
        crate::support::eventually(10, || h.store.outbox_stats().is_ok_and(|s| s.queued == 0))
            .await
    );
    assert_eq!(
        sent(&h).await,
        [
            config.help.clone(),
            config.help.clone(),
            config.stop_notice.clone(),
            config.start_notice.clone(),
            "echo: hello again".to_string(),
        ]
    );
    let withheld: Vec<(String, String)> = crate::support::pairs(
        &h.dir.path().join("convagent.db"),
        "SELECT outcome, detail FROM traces WHERE stage = 'dead'",
    );
    assert_eq!(withheld.len(), 1, "{withheld:?}");
    assert!(withheld[0].1.starts_with("opted_out"), "{withheld:?}");
    assert_eq!(h.store.outbox_stats().unwrap().dead, 0, "not a dead letter");

    // /reset: answered in the old conversation, the next message opens a
    // new one.
    say("/reset").await;
    say("who am I?").await;
    let conversations = h.store.conversations(&Default::default()).unwrap();
    assert_eq!(conversations.len(), 2);
    assert!(conversations.iter().any(|c| c.closed));
    h.stop().await;
}

/// Twilio answers its own opt-out keywords: a WhatsApp "Stop" is recorded
/// as an opt-out and gets nothing from us (our answer is withheld), so the
/// agent's later messages are withheld too; "START" opts back in; "yes"
/// from someone not opted out is just a word for the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_stop_keywords_are_recorded_as_opt_outs() {
    let clock = Arc::new(FakeClock::at(NOON));
    let llm = Arc::new(EchoLlm::new());
    let h = start(llm.clone(), clock).await;
    let mut n = 0;
    let mut say = async |text: &str| {
        n += 1;
        h.advance(1_000);
        let mut golden = h.golden("whatsapp/text.json");
        let form = golden.form.as_mut().unwrap();
        *form.get_mut("Body").unwrap() = text.into();
        *form.get_mut("MessageSid").unwrap() = format!("SM{n:032}");
        assert_eq!(h.post(&h.sign(&golden)).await.0, 200);
        h.drained().await;
    };
    say("yes").await;
    say("Stop").await;
    let summary = the_conversation(&h);
    assert!(
        h.store
            .opted_out(summary.channel, &summary.sender)
            .unwrap()
            .is_some(),
        "recorded"
    );
    // What the agent or an operator sends now is withheld.
    h.store
        .write_now(Write::Send(Outgoing {
            to: Destination::Conversation(summary.id),
            text: "a later message".into(),
            provider: "human".into(),
            sender: "ana".into(),
            correlation_id: CorrelationId::generate().0,
            answers_pending: false,
            at: NOON + 2_500,
        }))
        .unwrap();
    h.advance(1_000);
    let drained =
        crate::support::eventually(10, || h.store.outbox_stats().is_ok_and(|s| s.queued == 0))
            .await;
    let rows: Vec<(String, String)> = crate::support::pairs(
        &h.dir.path().join("convagent.db"),
        "SELECT stage, coalesce(detail,'') FROM traces",
    );
    assert!(drained, "{rows:#?} {:?}", h.store.outbox_stats());
    say("START").await;
    say("hello again").await;
    assert!(
        crate::support::eventually(10, || h.store.outbox_stats().is_ok_and(|s| s.queued == 0))
            .await
    );
    let config = HandoffConfig::default();
    assert_eq!(
        twilio_texts(&h).await,
        [
            "echo: yes".to_string(),
            config.start_notice.clone(),
            "echo: hello again".to_string(),
        ],
        "nothing of ours answers Stop, nor reaches them while opted out"
    );
    assert_eq!(llm.seen.lock().unwrap().len(), 2, "yes and hello again");
    h.stop().await;
}

/// External mode: a message no MCP consumer takes within a minute gets the
/// voicemail, once while the person waits, and stays for the consumer; a
/// message a consumer took gets none. On the fake clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mode_leaves_a_voicemail_once_when_nobody_takes_the_message() {
    use convagent::core::ports::Take;
    let clock = Arc::new(FakeClock::at(NOON));
    let mut options = Options {
        clock: Some(clock.clone()),
        ..Options::default()
    };
    options.settings.external = true;
    options.settings.voicemail = Some((
        std::time::Duration::from_secs(60),
        "Nobody is here yet; we will answer soon.".into(),
    ));
    let h = Harness::start(options).await;
    mount_success(&h).await;
    // Each look of the daemon is at most half a second apart.
    let looks = || tokio::time::sleep(std::time::Duration::from_millis(1_200));
    assert_eq!(h.post(&text_from(&h, 1, "hello?")).await.0, 200);
    h.advance(30_000);
    looks().await;
    assert!(sent(&h).await.is_empty(), "not before the minute");
    h.advance(31_000);
    assert!(
        crate::support::eventually(5, || h.store.outbox_stats().is_ok_and(|s| s.queued == 0)).await
    );
    looks().await;
    assert_eq!(sent(&h).await, ["Nobody is here yet; we will answer soon."]);

    // Another message while they wait, a minute more: no second voicemail.
    assert_eq!(h.post(&text_from(&h, 2, "anyone?")).await.0, 200);
    h.advance(61_000);
    looks().await;
    assert_eq!(sent(&h).await.len(), 1, "once while they wait");
    let conversation = the_conversation(&h).id;
    assert_eq!(
        h.store.pending(conversation, 10).unwrap().len(),
        2,
        "both stay for the consumer"
    );

    // A consumer answers; the next message is taken in time: no voicemail.
    h.store
        .write_now(Write::Send(Outgoing {
            to: Destination::Conversation(conversation),
            text: "Ana from support: here now.".into(),
            provider: "mcp".into(),
            sender: "inbox".into(),
            correlation_id: CorrelationId::generate().0,
            answers_pending: true,
            at: h.now_ms(),
        }))
        .unwrap();
    h.advance(1_000);
    assert_eq!(
        h.post(&text_from(&h, 3, "thanks! one more thing")).await.0,
        200
    );
    let taken = h
        .store
        .write_now(Write::Take(Take {
            consumer: "inbox".into(),
            channel: None,
            conversation_id: Some(conversation),
            until: h.now_ms() + 600_000,
            now: h.now_ms(),
        }))
        .unwrap()
        .taken()
        .unwrap();
    assert!(taken.is_some());
    h.advance(61_000);
    looks().await;
    assert_eq!(
        sent(&h).await,
        [
            "Nobody is here yet; we will answer soon.",
            "Ana from support: here now."
        ],
        "a taken message gets no voicemail"
    );
    h.stop().await;
}

/// `[handoff] notify_url` hears when someone starts waiting for a person:
/// the conversation, the channel and when; never what they said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_url_hears_of_a_person_asking_for_a_person() {
    use wiremock::matchers::{method, path};
    let notify = wiremock::MockServer::start().await;
    wiremock::Mock::given(method("POST"))
        .and(path("/hooks/convagent"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&notify)
        .await;
    let h = Harness::start(Options {
        clock: Some(Arc::new(FakeClock::at(NOON))),
        notify_url: Some(format!("{}/hooks/convagent", notify.uri())),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    assert_eq!(
        h.post(&text_from(&h, 1, "/human my card was charged twice"))
            .await
            .0,
        200
    );
    h.drained().await;
    // Posted in the background: wait for it.
    let mut told: Vec<serde_json::Value> = Vec::new();
    for _ in 0..100 {
        told = notify
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        if !told.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        told,
        [json!({
            "event": "waiting_for_person",
            "conversation_id": the_conversation(&h).id,
            "channel": "telegram",
            "at": NOON,
        })]
    );
    h.stop().await;
}
