//! The domain: canonical message types, the ports (traits) the outside world
//! implements, and the use cases built on them. This module never names a
//! concrete database, HTTP stack or UI crate (a test checks that).

pub mod agent;
pub mod approvals;
pub mod breaker;
pub mod channel;
pub mod context;
pub mod embeddings;
pub mod guardrails;
pub mod handoff;
pub mod knowledge;
pub mod limits;
pub mod llm;
pub mod media;
pub mod message;
pub mod people;
pub mod ports;
pub mod stt;
pub mod tools;
pub mod trace;

pub use agent::{Agent, AgentError, AgentSettings, Burst, Reply};
pub use breaker::{Admission, Breaker, BreakerPolicy, BreakerState, Transition};
pub use context::{ContextWindow, estimate_tokens};
pub use guardrails::{Guardrails, SecretFilter, Violation};
pub use limits::Limits;
pub use llm::{ChatMessage, LlmError, LlmOutput, LlmProvider, LlmRequest, StreamEvent};
pub use message::{
    Attachment, AttachmentKind, Channel, ConversationKey, CorrelationId, InboundMessage, Role, Turn,
};
pub use ports::{
    Accepted, ActivityBucket, ClaimKind, Clock, ConversationFilter, ConversationOverview,
    ConversationSummary, Erased, Held, MonitorStore, NewReply, OutboxEntry, OutboxItem,
    OutboxStats, OutboxStore, OutboxUpdate, OutboxView, Pending, PeopleStore, PromptVersion,
    ProviderActivity, Prune, ReplyKind, RuleCount, SearchHit, SearchOrder, SenderData, SenderRef,
    StageSink, Store, StoreError, StoreHealth, StoredMessage, Summary, TraceEvent, TraceStore,
    TurnRecord, ViolationRecord, Write, Writes, Written,
};
pub use trace::{Outcome, Stage};
