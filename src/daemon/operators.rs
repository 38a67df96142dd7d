//! The operators as the agent reaches them ([`core::approvals::Operators`]):
//! an approval asked is told to the notify URL and, where its server says
//! so, asked in the chat with buttons; a person asking for a person is told
//! to the notify URL; and a turn waits for an approval's answer by looking
//! at the store, so an answer given through any daemon, the CLI or the TUI
//! counts. The deadline is the clock's (a test's fake clock holds it).
//!
//! [`core::approvals::Operators`]: crate::core::approvals::Operators

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::core::approvals::{
    self, Approval, ApprovalState, Decision, OperatorEvent, Operators, TIMED_OUT,
};
use crate::core::channel::ChannelAdapter;
use crate::core::llm::BoxFuture;
use crate::core::ports::{Clock, StageSink, Store, StoreError, Write, Written};

/// How often a waiting turn looks at its approval.
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// The longest a notify URL may take to answer.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon's operators' desk.
pub struct Desk {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    channels: Vec<Arc<dyn ChannelAdapter>>,
    /// `[handoff] notify_url`: receives a JSON POST per event.
    notify_url: Option<String>,
    http: reqwest::Client,
    stages: Option<Arc<dyn StageSink>>,
}

impl Desk {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        channels: Vec<Arc<dyn ChannelAdapter>>,
        notify_url: Option<String>,
    ) -> Self {
        Desk {
            store,
            clock,
            channels,
            notify_url: notify_url.filter(|u| !u.trim().is_empty()),
            http: reqwest::Client::builder()
                .timeout(NOTIFY_TIMEOUT)
                .build()
                .unwrap_or_default(),
            stages: None,
        }
    }

    /// Traces what the desk decides (an approval that ran out).
    pub fn with_stages(mut self, stages: Arc<dyn StageSink>) -> Self {
        self.stages = Some(stages);
        self
    }

    /// The notify URL's JSON for `event`: ids, the channel and the tool,
    /// never what anyone said nor a call's arguments.
    fn notice(event: &OperatorEvent) -> serde_json::Value {
        match event {
            OperatorEvent::WaitingForPerson {
                conversation_id,
                key,
                at,
            } => json!({
                "event": "waiting_for_person",
                "conversation_id": conversation_id,
                "channel": key.channel.as_str(),
                "at": at,
            }),
            OperatorEvent::ApprovalAsked { approval, key, .. } => json!({
                "event": "approval_asked",
                "approval_id": approval.id,
                "conversation_id": approval.conversation_id,
                "channel": key.channel.as_str(),
                "tool": approval.tool,
                "at": approval.asked_at,
                "deadline_at": approval.deadline_at,
            }),
        }
    }
}

impl Operators for Desk {
    fn tell(&self, event: OperatorEvent) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(url) = &self.notify_url {
                let body = Desk::notice(&event);
                match self.http.post(url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(
                            status = r.status().as_u16(),
                            "the notify URL refused an operator event"
                        )
                    }
                    // reqwest's error names the URL, which may hold a token.
                    Err(e) => tracing::warn!(
                        error = %crate::adapters::channels::unanswered(e),
                        "the notify URL did not take an operator event"
                    ),
                }
            }
            if let OperatorEvent::ApprovalAsked {
                approval,
                key,
                in_chat: true,
            } = &event
            {
                let choices = approvals::choices(approval.id);
                let question = approvals::question(approval);
                match crate::core::channel::find(&self.channels, key.channel) {
                    Some(adapter) => match adapter.send_choice(key, &question, &choices) {
                        Some(send) => {
                            if let Err(e) = send.await {
                                tracing::warn!(error = %e, approval = approval.id, "cannot ask for the approval in the chat");
                            }
                        }
                        None => tracing::info!(
                            channel = %key.channel,
                            "this channel has no buttons: the approval is asked of operators only"
                        ),
                    },
                    None => {
                        tracing::info!(channel = %key.channel, "the approval's channel is not enabled here")
                    }
                }
            }
        })
    }

    fn await_answer<'a>(
        &'a self,
        approval: &'a Approval,
    ) -> BoxFuture<'a, Result<Approval, StoreError>> {
        Box::pin(async move {
            loop {
                let now = self.clock.now_ms();
                let read = {
                    let store = self.store.clone();
                    let id = approval.id;
                    tokio::task::spawn_blocking(move || store.approval(id))
                        .await
                        .map_err(|e| StoreError::Backend(e.to_string()))??
                };
                let Some(current) = read else {
                    return Err(StoreError::NotFound(format!("approval {}", approval.id)));
                };
                if current.state != ApprovalState::Pending {
                    return Ok(current);
                }
                if now > current.deadline_at {
                    let (after, took) = self
                        .store
                        .write(Write::Decide {
                            id: current.id,
                            decision: Decision::Expire,
                            by: TIMED_OUT.into(),
                            at: now,
                        })
                        .await
                        .and_then(Written::approval)?;
                    if took && let Some(stages) = &self.stages {
                        stages.record(after.trace(now));
                    }
                    return Ok(after);
                }
                tokio::time::sleep(LOOK_EVERY).await;
            }
        })
    }
}

/// Why an answer given at `at` did not take (`took`, as `Write::Decide`
/// said), from the row as it is after; `None` when it took.
pub fn not_taken(after: &Approval, took: bool, at: i64) -> Option<String> {
    if took {
        return None;
    }
    Some(match after.state {
        ApprovalState::Pending if at > after.deadline_at => {
            format!("approval {} ran out of time: that means no", after.id)
        }
        ApprovalState::Pending => format!("approval {} is still waiting", after.id),
        state => format!(
            "approval {} was {} already, by {}",
            after.id,
            state.as_str(),
            after.decided_by.as_deref().unwrap_or("nobody")
        ),
    })
}
