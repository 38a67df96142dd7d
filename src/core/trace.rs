//! What a message's journey is made of (SPEC.md step 9): a fixed set of
//! stages and outcomes. Their `as_str` names are what the store keeps and
//! what `/metrics` labels carry, so the label set is bounded; the attempt
//! number of a send is a field of the event, never part of a name.

use serde::Serialize;

macro_rules! names {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            fn exact(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

names! {
    /// A stage of one message's journey.
    Stage {
        /// The webhook arrived.
        Received = "received",
        /// Its signature checked out.
        Verified = "verified",
        /// Authenticated but unusable (`200 ignored: …`).
        Ignored = "ignored",
        /// A redelivery of a stored message.
        Duplicate = "duplicate",
        /// Committed (the 200 follows).
        Stored = "stored",
        /// Answered together with a later message of its burst.
        Grouped = "grouped",
        /// An attachment's file fetched from the provider with its auth and
        /// kept (the detail says its size and what was read of it, or why
        /// not).
        Fetched = "fetched",
        /// Who answers the conversation changed: taken over, released, asked
        /// for by the person, or run out (the detail says which and who).
        Handoff = "handoff",
        /// A voice note turned into text (the detail says how long it was,
        /// or why not).
        Transcribed = "transcribed",
        Guarded = "guarded",
        ContextBuilt = "context built",
        /// What the turn took from `[knowledge]` and the person's other
        /// conversations: each passage's source and score (the detail).
        Retrieve = "retrieve",
        LlmCall = "llm call",
        /// One tool call of the turn (`[[mcp.servers]]`): name, arguments
        /// and result are the detail.
        ToolCall = "tool call",
        /// A tool call marked `approve` asked an operator (outcome
        /// `waiting`), or their answer: `approved`, `denied`, `expired`
        /// (the detail says the tool, the approval's id and who).
        Approval = "approval",
        ReplyStored = "reply stored",
        /// One attempt at sending a reply (the attempt number is the event's).
        Send = "send",
        /// The whole reply is delivered.
        Sent = "sent",
        /// The reply was given up on.
        Dead = "dead",
    }
}

names! {
    /// How a stage ended.
    Outcome {
        Ok = "ok",
        Ignored = "ignored",
        /// No guardrail objected.
        Pass = "pass",
        /// A guardrail refused (the rule is the detail).
        Refused = "refused",
        Limited = "limited",
        Failed = "failed",
        Answer = "answer",
        Refusal = "refusal",
        Held = "held",
        Fallback = "fallback",
        /// The conversation already has a fallback since its last answer.
        FallbackAlreadySent = "fallback already sent",
        /// One part of a split reply went out; more to go.
        PartSent = "part sent",
        Retry = "retry",
        /// A dead letter (the provider's code is the detail).
        Dead = "dead",
        /// Waits for an operator's answer.
        Waiting = "waiting",
        Approved = "approved",
        Denied = "denied",
        /// No answer in time: no.
        Expired = "expired",
    }
}

impl Stage {
    /// Reads a stored stage name. Rows written before stages were a fixed
    /// set named the attempt in the stage (`send attempt 2`); they read as
    /// [`Stage::Send`] with that attempt.
    pub fn parse(s: &str) -> Option<(Stage, Option<u32>)> {
        if let Some(n) = s.strip_prefix("send attempt ") {
            return Some((Stage::Send, n.parse().ok()));
        }
        Stage::exact(s).map(|stage| (stage, None))
    }
}

impl Outcome {
    /// Reads a stored outcome; older rows wrote `refused: RULE` for a
    /// refusal and the provider's code for a dead letter.
    pub fn parse(s: &str) -> Outcome {
        if s.starts_with("refused") {
            return Outcome::Refused;
        }
        Outcome::exact(s).unwrap_or(Outcome::Dead)
    }
}

/// One stage of one message's journey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    pub correlation_id: String,
    pub stage: Stage,
    /// For [`Stage::Send`]: which attempt (1 for the first).
    pub attempt: Option<u32>,
    pub started_at: i64,
    pub duration_us: u64,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

impl TraceEvent {
    /// The stage as people read it: `send attempt 2`.
    pub fn label(&self) -> String {
        match self.attempt {
            Some(n) => format!("{} attempt {n}", self.stage),
            None => self.stage.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_itself() {
        for &stage in Stage::ALL {
            assert_eq!(Stage::parse(stage.as_str()), Some((stage, None)));
        }
        for &outcome in Outcome::ALL {
            assert_eq!(Outcome::parse(outcome.as_str()), outcome);
        }
    }

    #[test]
    fn rows_from_before_the_fixed_names_read_back() {
        assert_eq!(Stage::parse("send attempt 3"), Some((Stage::Send, Some(3))));
        assert_eq!(Stage::parse("nonsense"), None);
        assert_eq!(Outcome::parse("refused: credential"), Outcome::Refused);
        assert_eq!(Outcome::parse("retries_exhausted"), Outcome::Dead);
    }

    #[test]
    fn a_send_is_labelled_with_its_attempt() {
        let event = TraceEvent {
            correlation_id: "c".into(),
            stage: Stage::Send,
            attempt: Some(2),
            started_at: 0,
            duration_us: 0,
            outcome: Outcome::Retry,
            detail: None,
        };
        assert_eq!(event.label(), "send attempt 2");
    }
}
