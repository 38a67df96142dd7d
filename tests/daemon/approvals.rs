//! Approvals: a tool call marked `approve` waits in the store for a yes or
//! no. Asked in the chat with buttons, it is answered by Telegram's
//! `callback_query` (the golden payload, with the secret header) or Slack's
//! signed `block_actions`; the call runs once, or the model is told it was
//! refused; no answer in time (on the fake clock) means no; operators are
//! told at the notify URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use convagent::core::approvals::{ApprovalState, Decision};
use convagent::core::llm::{BoxFuture, OnEvent};
use convagent::core::ports::all::*;
use convagent::core::tools::{ApprovalRule, ToolCall, ToolSpec, Tools};
use convagent::core::{Clock, LlmError, LlmOutput, LlmProvider, LlmRequest, Write};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{FakeClock, eventually};
use crate::{Harness, Options, SLACK_SECRET, TELEGRAM_TOKEN, bodies, mount_success, now_secs};

/// A restaurant's booking tool whose calls need an approval.
struct Booking {
    calls: AtomicUsize,
    in_chat: bool,
}

impl Tools for Booking {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "book_table".into(),
            description: "Book a table".into(),
            parameters: json!({ "type": "object" }),
        }]
    }
    fn call<'a>(&'a self, call: &'a ToolCall) -> BoxFuture<'a, Result<String, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(format!("booked for {}", call.arguments["people"])) })
    }
    fn needs_approval(&self, _name: &str) -> Option<ApprovalRule> {
        Some(ApprovalRule {
            in_chat: self.in_chat,
        })
    }
}

/// A model that books a table for four, then says what the tool said.
struct BookingLlm;

impl LlmProvider for BookingLlm {
    fn name(&self) -> &str {
        "echo"
    }
    fn model(&self) -> &str {
        "booking-1"
    }
    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        _on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        let (text, tool_calls) = if !request.tools.is_empty() && request.exchanges.is_empty() {
            let call = ToolCall {
                id: None,
                name: "book_table".into(),
                arguments: json!({ "people": 4 }),
            };
            (String::new(), vec![call])
        } else {
            let said: Vec<String> = request
                .exchanges
                .iter()
                .flat_map(|e| e.results.iter().map(|r| r.text.clone()))
                .collect();
            (format!("result: {}", said.join(" | ")), Vec::new())
        };
        Box::pin(async move {
            Ok(LlmOutput {
                text,
                provider: "echo".into(),
                model: "booking-1".into(),
                prompt_tokens: Some(10),
                completion_tokens: Some(2),
                tool_calls,
            })
        })
    }
}

async fn start(in_chat: bool, clock: Option<Arc<FakeClock>>) -> (Harness, Arc<Booking>) {
    let tool = Arc::new(Booking {
        calls: AtomicUsize::new(0),
        in_chat,
    });
    let h = Harness::start(Options {
        llm: Arc::new(BookingLlm),
        tools: Some(tool.clone()),
        clock,
        configure: |c| c.mcp.approve_timeout_secs = 60,
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    Mock::given(method("POST"))
        .and(path(format!("/bot{TELEGRAM_TOKEN}/answerCallbackQuery")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "ok": true, "result": true })),
        )
        .mount(&h.telegram)
        .await;
    (h, tool)
}

/// The one pending approval, once the turn has asked for it.
async fn asked(h: &Harness) -> convagent::core::approvals::Approval {
    assert!(
        eventually(10, || h
            .store
            .approvals(true, 10)
            .is_ok_and(|a| a.len() == 1))
        .await,
        "no approval was asked"
    );
    h.store.approvals(true, 10).unwrap().remove(0)
}

/// The texts the fake Telegram was asked to send.
async fn telegram_texts(h: &Harness) -> Vec<String> {
    bodies(&h.telegram)
        .await
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_string))
        .collect()
}

/// The first JSON body a fake received with `field` in it, waiting up to
/// ten seconds for one.
async fn first_sent(server: &MockServer, field: &str) -> Option<serde_json::Value> {
    for _ in 0..200 {
        let found = server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .find(|b| b.get(field).is_some());
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

fn stages(h: &Harness) -> Vec<(String, String)> {
    crate::support::pairs(
        &h.dir.path().join("convagent.db"),
        "SELECT outcome, coalesce(detail, '') FROM traces WHERE stage = 'approval' ORDER BY rowid",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_button_approves_and_the_call_runs_once() {
    let (h, tool) = start(true, None).await;
    assert_eq!(
        h.post(&h.sign(&h.golden("telegram/text.json"))).await.0,
        200
    );
    let approval = asked(&h).await;
    assert_eq!(
        (approval.tool.as_str(), approval.arguments.as_str()),
        ("book_table", r#"{"people":4}"#)
    );
    // Asked in the chat with Telegram's inline keyboard.
    let asked_in_chat = first_sent(&h.telegram, "reply_markup")
        .await
        .expect("asked in Telegram with buttons");
    let id = approval.id;
    assert_eq!(
        asked_in_chat["reply_markup"]["inline_keyboard"][0],
        json!([
            { "text": "Approve", "callback_data": format!("approve:{id}") },
            { "text": "Deny", "callback_data": format!("deny:{id}") },
        ])
    );
    assert_eq!(
        tool.calls.load(Ordering::SeqCst),
        0,
        "not before the answer"
    );

    let mut press = h.golden("telegram/callback_approve.json");
    press.json.as_mut().unwrap()["callback_query"]["data"] = json!(format!("approve:{id}"));
    let (status, body, _) = h.post(&h.sign(&press)).await;
    assert_eq!((status, body.as_str()), (200, "Approved.\n"));
    h.drained().await;
    assert_eq!(tool.calls.load(Ordering::SeqCst), 1);
    let texts = telegram_texts(&h).await;
    assert_eq!(texts.last().unwrap(), "result: booked for 4", "{texts:?}");
    let acks: Vec<serde_json::Value> = h
        .telegram
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/answerCallbackQuery"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(acks[0]["callback_query_id"], "4382bfdwdsb323b2e0");
    assert_eq!(acks[0]["text"], "Approved.");

    let done = h.store.approval(id).unwrap().unwrap();
    assert_eq!(done.state, ApprovalState::Approved);
    assert_eq!(done.decided_by.as_deref(), Some("telegram @ada_l"));
    assert!(done.ran_at.is_some());
    assert_eq!(done.result.as_deref(), Some("booked for 4"));
    let traced = stages(&h);
    assert_eq!(traced.len(), 2, "{traced:?}");
    assert_eq!(traced[0].0, "waiting");
    assert_eq!(
        traced[1],
        (
            "approved".to_string(),
            format!("book_table (approval {id}) approved by telegram @ada_l")
        )
    );

    // Pressed again: the answer stands, nothing runs twice.
    let (status, body, _) = h.post(&h.sign(&press)).await;
    assert_eq!(status, 200);
    assert!(body.contains("approved already"), "{body}");
    // A press from another chat changes nothing.
    let mut elsewhere = press.clone();
    elsewhere.json.as_mut().unwrap()["callback_query"]["message"]["chat"]["id"] = json!(999);
    elsewhere.json.as_mut().unwrap()["callback_query"]["id"] = json!("other-press");
    let (_, body, _) = h.post(&h.sign(&elsewhere)).await;
    assert_eq!(body, "This approval was not asked here.\n");
    h.drained().await;
    assert_eq!(tool.calls.load(Ordering::SeqCst), 1);
    h.stop().await;
}

/// Slack's interaction payload: form-encoded `payload`, signed as events
/// are, with the test's own signing code.
fn block_actions(h: &Harness, value: &str, secret: &str) -> convagent::golden::SignedRequest {
    let mut golden = h.golden("slack/block_actions.json");
    let form = golden.form.as_mut().unwrap();
    let payload = form.get_mut("payload").unwrap();
    let mut p: serde_json::Value = serde_json::from_str(payload).unwrap();
    p["actions"][0]["value"] = json!(value);
    p["actions"][0]["action_id"] = json!(value);
    *payload = p.to_string();
    let mut request = h.sign(&golden);
    let ts = now_secs().to_string();
    request.headers.retain(|(k, _)| !k.starts_with("x-slack-"));
    request.headers.push((
        "x-slack-signature".into(),
        crate::support::signing::slack(secret, &ts, &request.body),
    ));
    request
        .headers
        .push(("x-slack-request-timestamp".into(), ts));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_button_denies_and_the_model_answers_without_the_call() {
    let (h, tool) = start(true, None).await;
    assert_eq!(
        h.post(&h.sign(&h.golden("slack/message_im.json"))).await.0,
        200
    );
    let approval = asked(&h).await;
    let id = approval.id;
    let question = first_sent(&h.slack, "blocks")
        .await
        .expect("asked in Slack with buttons");
    assert_eq!(question["channel"], "D024BE91L");
    let buttons = &question["blocks"][1]["elements"];
    assert_eq!(buttons[0]["value"], format!("approve:{id}"));
    assert_eq!(buttons[1]["value"], format!("deny:{id}"));

    // Signed with another secret: refused, and nothing is decided.
    let forged = block_actions(&h, &format!("approve:{id}"), "not-the-secret");
    assert_eq!(h.post(&forged).await.0, 401);
    assert_eq!(
        h.store.approval(id).unwrap().unwrap().state,
        ApprovalState::Pending
    );

    let (status, body, _) = h
        .post(&block_actions(&h, &format!("deny:{id}"), SLACK_SECRET))
        .await;
    assert_eq!((status, body.as_str()), (200, "Denied.\n"));
    h.drained().await;
    assert_eq!(tool.calls.load(Ordering::SeqCst), 0, "never ran");
    let last = bodies(&h.slack).await.last().unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        last,
        "result: The call was not approved: slack ada said no. Answer without it."
    );
    let done = h.store.approval(id).unwrap().unwrap();
    assert_eq!(
        (done.state, done.decided_by.as_deref()),
        (ApprovalState::Denied, Some("slack ada"))
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_in_time_means_no_and_operators_are_told() {
    let clock = Arc::new(FakeClock::at(1_763_726_400_000));
    let notify = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/convagent"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&notify)
        .await;
    let tool = Arc::new(Booking {
        calls: AtomicUsize::new(0),
        in_chat: false,
    });
    let h = Harness::start(Options {
        llm: Arc::new(BookingLlm),
        tools: Some(tool.clone()),
        clock: Some(clock.clone()),
        configure: |c| c.mcp.approve_timeout_secs = 60,
        notify_url: Some(format!("{}/hooks/convagent", notify.uri())),
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    assert_eq!(
        h.post(&h.sign(&h.golden("telegram/text.json"))).await.0,
        200
    );
    let approval = asked(&h).await;
    assert!(
        bodies(&h.telegram)
            .await
            .iter()
            .all(|b| b.get("reply_markup").is_none()),
        "not asked in the chat"
    );
    // The notify URL hears of it: ids, channel and tool, not the arguments.
    let told = first_sent(&notify, "event").await.expect("told");
    assert_eq!(told["event"], "approval_asked");
    assert_eq!(told["approval_id"], approval.id);
    assert_eq!(told["tool"], "book_table");
    assert!(!told.to_string().contains("people"), "{told}");

    // A minute on, nobody answered: no.
    clock.advance(61_000);
    h.drained().await;
    assert_eq!(tool.calls.load(Ordering::SeqCst), 0);
    let texts = telegram_texts(&h).await;
    assert_eq!(
        texts.last().unwrap(),
        "result: The call was not approved: nobody answered in time. Answer without it."
    );
    let done = h.store.approval(approval.id).unwrap().unwrap();
    assert_eq!(
        (done.state, done.decided_by.as_deref()),
        (ApprovalState::Expired, Some("the timeout"))
    );
    // An answer after the deadline does not take.
    let after = h
        .store
        .write_now(Write::Decide {
            id: approval.id,
            decision: Decision::Approve,
            by: "ana".into(),
            at: clock.now_ms(),
        })
        .unwrap()
        .approval()
        .unwrap()
        .0;
    assert_eq!(after.state, ApprovalState::Expired);
    h.stop().await;
}
