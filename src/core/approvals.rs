//! Approvals: a tool call marked `approve` (`[[mcp.servers]] approve`)
//! waits, durably in the store, for an operator's yes or no. It is
//! answered in the TUI, with `convagent approvals`, or in the chat itself
//! with buttons (Telegram's inline keyboard, Slack's block actions). No
//! answer within `[mcp] approve_timeout_secs` means no. The turn that asked
//! may be cut short (a restart): asked again by the same turn, the same
//! call finds its row, its wait and its answer; an approved call is
//! claimed before it runs, so it runs once.

use serde::Serialize;

use super::message::ConversationKey;
use super::trace::{Outcome, Stage, TraceEvent};

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    /// No answer in time.
    Expired,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalState> {
        match s {
            "pending" => Some(ApprovalState::Pending),
            "approved" => Some(ApprovalState::Approved),
            "denied" => Some(ApprovalState::Denied),
            "expired" => Some(ApprovalState::Expired),
            _ => None,
        }
    }

    /// The trace outcome of reaching this state.
    pub fn outcome(self) -> Outcome {
        match self {
            ApprovalState::Pending => Outcome::Waiting,
            ApprovalState::Approved => Outcome::Approved,
            ApprovalState::Denied => Outcome::Denied,
            ApprovalState::Expired => Outcome::Expired,
        }
    }
}

/// One tool call waiting for (or given) an operator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub id: i64,
    pub conversation_id: i64,
    /// The user message whose turn asked.
    pub message_id: i64,
    pub correlation_id: String,
    pub tool: String,
    /// The arguments as JSON text, configured secrets taken out.
    pub arguments: String,
    pub asked_at: i64,
    pub deadline_at: i64,
    pub state: ApprovalState,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    /// When the approved call began to run (it runs once).
    pub ran_at: Option<i64>,
    /// What it gave back (for a turn asked again after a restart).
    pub result: Option<String>,
}

impl Approval {
    /// The approval's trace event at `at`: asked, or answered by whom.
    pub fn trace(&self, at: i64) -> TraceEvent {
        let detail = match (&self.state, &self.decided_by) {
            (ApprovalState::Pending, _) => {
                format!("{} {} (approval {})", self.tool, self.arguments, self.id)
            }
            (state, by) => format!(
                "{} (approval {}) {} by {}",
                self.tool,
                self.id,
                state.as_str(),
                by.as_deref().unwrap_or("nobody")
            ),
        };
        TraceEvent {
            correlation_id: self.correlation_id.clone(),
            stage: Stage::Approval,
            attempt: None,
            started_at: at,
            duration_us: 0,
            outcome: self.state.outcome(),
            detail: Some(detail),
        }
    }
}

/// A turn asks for an approval (`Write::Ask`): a new row, or the one the
/// same call of the same turn asked for before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub conversation_id: i64,
    pub message_id: i64,
    pub correlation_id: String,
    pub tool: String,
    pub arguments: String,
    pub at: i64,
    pub deadline_at: i64,
}

impl Ask {
    /// What makes two asks the same call.
    pub fn call_key(&self) -> String {
        format!("{}\n{}", self.tool, self.arguments)
    }
}

/// An answer to an approval (`Write::Decide`). Approve and deny take only
/// while it is pending and before its deadline; expire only after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
    Expire,
}

impl Decision {
    pub fn state(self) -> ApprovalState {
        match self {
            Decision::Approve => ApprovalState::Approved,
            Decision::Deny => ApprovalState::Denied,
            Decision::Expire => ApprovalState::Expired,
        }
    }
}

/// Who is recorded as answering an approval that ran out.
pub const TIMED_OUT: &str = "the timeout";

/// What a button in the chat carries: `approve:ID` or `deny:ID`.
pub fn choice_data(decision: Decision, id: i64) -> String {
    match decision {
        Decision::Approve => format!("approve:{id}"),
        _ => format!("deny:{id}"),
    }
}

/// Reads a button's data back; anything else is `None`.
pub fn parse_choice(data: &str) -> Option<(Decision, i64)> {
    let (what, id) = data.split_once(':')?;
    let decision = match what {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        _ => return None,
    };
    Some((decision, id.parse().ok().filter(|id| *id > 0)?))
}

/// An answer given in a chat (a button pressed), as a channel parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatDecision {
    pub approval_id: i64,
    pub decision: Decision,
    /// The chat it was pressed in: it must be the approval's conversation.
    pub key: ConversationKey,
    /// Who pressed it (the provider's user id or name).
    pub by: String,
    /// The provider's id to acknowledge the press with (Telegram's
    /// callback query id), if it wants one.
    pub ack: Option<String>,
}

/// A button under a message in the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub label: String,
    pub data: String,
}

/// The two buttons of an approval asked in the chat.
pub fn choices(id: i64) -> Vec<Choice> {
    vec![
        Choice {
            label: "Approve".into(),
            data: choice_data(Decision::Approve, id),
        },
        Choice {
            label: "Deny".into(),
            data: choice_data(Decision::Deny, id),
        },
    ]
}

/// The question asked in the chat.
pub fn question(approval: &Approval) -> String {
    format!(
        "May I run {} with {}? (approval {})",
        approval.tool, approval.arguments, approval.id
    )
}

/// Something operators should know now: a conversation waits for a
/// person, or a tool call for an approval. Told to the notify URL, and an
/// approval marked for the chat is asked there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorEvent {
    WaitingForPerson {
        conversation_id: i64,
        key: ConversationKey,
        at: i64,
    },
    ApprovalAsked {
        approval: Approval,
        key: ConversationKey,
        /// Ask in the chat itself, with buttons.
        in_chat: bool,
    },
}

/// The operators, as the agent reaches them: told [`OperatorEvent`]s
/// (best effort: the store already holds what they say), and waited for
/// when a call asks for approval.
pub trait Operators: Send + Sync {
    fn tell(&self, event: OperatorEvent) -> super::llm::BoxFuture<'_, ()>;

    /// Waits until `approval` is answered (whoever answers, in whichever
    /// process) or its deadline passes, which answers it `expired`; the
    /// row as it is then.
    fn await_answer<'a>(
        &'a self,
        approval: &'a Approval,
    ) -> super::llm::BoxFuture<'a, Result<Approval, super::ports::StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn button_data_round_trips_and_rejects_the_rest() {
        for d in [Decision::Approve, Decision::Deny] {
            assert_eq!(parse_choice(&choice_data(d, 42)), Some((d, 42)));
        }
        assert_eq!(parse_choice("expire:3"), None);
        assert_eq!(parse_choice("approve:x"), None);
        assert_eq!(parse_choice("approve:-1"), None);
        assert_eq!(parse_choice("approve"), None);
    }
}
