//! The ports the core drives: the store and the clock. Adapters implement
//! them; the core and the tests only ever see these traits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, Transition};
use super::limits::{Usage, UsageQuery};
use super::llm::BoxFuture;
use super::message::{Channel, ConversationKey, InboundMessage, Role, Turn};
pub use super::trace::TraceEvent;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store error: {0}")]
    Backend(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The store gave up on a write that met another process's (a
    /// deadlock, a serialization failure): running it again may succeed.
    #[error("store conflict with another process: {0}")]
    Conflict(String),
}

/// The result of durably accepting an inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: i64,
    pub conversation_id: i64,
    /// The provider message id was seen before; nothing new was stored.
    pub duplicate: bool,
}

/// What an assistant message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyKind {
    /// The LLM's answer.
    Answer,
    /// The canned reply sent when every provider failed; the message stays
    /// pending and gets its answer once a provider recovers.
    Fallback,
    /// A guardrail's polite refusal; the LLM was not called.
    Refusal,
}

impl NewReply {
    /// The prompt version to store: none for 0.
    pub fn stored_prompt_version(&self) -> Option<i64> {
        (self.prompt_version > 0).then_some(self.prompt_version)
    }
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Answer => "answer",
            ReplyKind::Fallback => "fallback",
            ReplyKind::Refusal => "refusal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "answer" => Some(ReplyKind::Answer),
            "fallback" => Some(ReplyKind::Fallback),
            "refusal" => Some(ReplyKind::Refusal),
            _ => None,
        }
    }
}

/// A reply to record against the message it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReply {
    pub kind: ReplyKind,
    pub text: String,
    pub provider: String,
    pub model: String,
    /// The system prompt it was made with; 0 for none (a message an outside
    /// agent wrote), stored as no prompt.
    pub prompt_version: i64,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub latency_ms: u64,
    pub created_at: i64,
}

/// One stored message, user's or assistant's, as `history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    pub id: i64,
    pub conversation_id: i64,
    pub role: Role,
    pub text: String,
    pub created_at: i64,
    pub correlation_id: Option<String>,
    pub provider_message_id: Option<String>,
    /// For an assistant message, the user message it answers.
    pub reply_to: Option<i64>,
    /// For an assistant message, what it is.
    pub kind: Option<ReplyKind>,
    /// For a user message answered together with later ones (a burst), the
    /// reply that covers it.
    pub answered_by: Option<i64>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt_version: Option<i64>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub latency_ms: Option<u64>,
    /// What came with a user message (voice notes, photos, places...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::core::message::Attachment>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationSummary {
    pub id: i64,
    pub channel: Channel,
    pub sender: String,
    pub thread: String,
    pub message_count: u64,
    pub started_at: i64,
    pub last_activity_at: i64,
    /// Closed by `/reset`: the sender's next message starts a new one.
    pub closed: bool,
    /// The name the provider shows for the sender, if it sends one.
    pub display_name: Option<String>,
    /// Who answers it, since when (unix ms) and by whose doing.
    pub mode: super::handoff::Mode,
    pub mode_at: Option<i64>,
    pub mode_by: Option<String>,
}

impl ConversationSummary {
    /// The sender as people read it: `Ana (111222333)`, or the bare id.
    pub fn who(&self) -> String {
        match &self.display_name {
            Some(name) if !name.is_empty() && *name != self.sender => {
                format!("{name} ({})", self.sender)
            }
            _ => self.sender.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationFilter {
    pub channel: Option<Channel>,
    pub sender: Option<String>,
    pub limit: usize,
}

/// The words of a search text as both stores match them: runs of
/// letters and digits (operators and punctuation are not words).
pub fn search_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// How search results are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchOrder {
    #[default]
    Newest,
    Relevance,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub message: StoredMessage,
    pub channel: Channel,
    pub sender: String,
    /// The matching text with the hits marked by `[` and `]`.
    pub snippet: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptVersion {
    pub version: i64,
    pub text: String,
    pub created_at: i64,
    /// Where it came from: [`PROMPT_FROM_CONFIG`], [`PROMPT_FROM_CHAT`] or
    /// [`PROMPT_DEFAULT`].
    pub source: String,
}

/// `agent.system_prompt` from the configuration, synced at start.
pub const PROMPT_FROM_CONFIG: &str = "config";
/// Set with `/prompt set` in `convagent chat`.
pub const PROMPT_FROM_CHAT: &str = "chat";
/// Seeded because the store had no prompt.
pub const PROMPT_DEFAULT: &str = "default";

/// A stored summary of a conversation's turns `from_message_id..=to_message_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub conversation_id: i64,
    pub from_message_id: i64,
    pub to_message_id: i64,
    pub text: String,
    pub provider: String,
    pub model: String,
    pub created_at: i64,
}

/// What `doctor` reports about a store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreHealth {
    pub location: String,
    pub schema_version: usize,
    pub latest_schema_version: usize,
    pub integrity: Result<(), String>,
}

/// A stored user message still without its answer: what a worker takes
/// from the work queue and hands to [`crate::core::Agent::answer`].
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub message_id: i64,
    pub conversation_id: i64,
    pub message: InboundMessage,
    /// When a person took the conversation over (its `mode_at`), while a
    /// person answers it; read with the message, so a worker knows without
    /// another read.
    pub human_since: Option<i64>,
}

/// A turn's outcome, written in one transaction: the reply, the burst it
/// covers, and the guardrail violations that led to a refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    /// The turn's last message, which the reply answers.
    pub message_id: i64,
    /// Earlier messages of the burst the reply answers too.
    pub covers: Vec<i64>,
    /// `(message id, rule)` of each message a guardrail refused.
    pub violations: Vec<(i64, String)>,
    pub reply: NewReply,
}

/// One write of the pipeline. A writer commits many of them together
/// (group commit); each succeeds or fails on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Store an inbound message, or find it stored before.
    Accept(InboundMessage),
    /// Store a turn's reply (and queue it in the outbox).
    Turn(TurnRecord),
    /// Record what became of a send.
    Outbox {
        id: i64,
        update: OutboxUpdate,
        at: i64,
    },
    /// Append trace events.
    Traces(Vec<TraceEvent>),
    /// Persist a breaker, with the transition that changed it if any.
    Breaker {
        breaker: Breaker,
        transition: Option<Transition>,
    },
    /// Store a summary (a range summarised before keeps its first).
    Summary(Summary),
    /// Delete everything held about one sender of one channel (every
    /// conversation, message, summary, trace, outbox item and violation,
    /// the full-text index too), recording only that it happened.
    Erase { sender: SenderRef, at: i64 },
    /// Who answers a conversation now (`Written::Done`; `NotFound` for a
    /// conversation that is not there).
    Handoff(super::handoff::Handoff),
    /// A person stopped (`out`) or resumed messages on a channel (`/stop`,
    /// `/start`): `Written::Done`.
    OptOut {
        channel: Channel,
        sender: String,
        out: bool,
        at: i64,
    },
    /// One batch of retention (`Written::Erased` says what went).
    Prune(Prune),
    /// Messages held back by a limit, answered by the notice already sent
    /// in the limit's window (no new reply); `Written::Reply` is that notice.
    Hold(Held),
    /// A message an outside agent sends (MCP `send_message`); `Written::Sent`.
    Send(Outgoing),
    /// Take the oldest unanswered message no other consumer holds
    /// (MCP `wait_for_message`); `Written::Taken`.
    Take(Take),
    /// Add or remove an access token of `/mcp`.
    Token(TokenChange),
    /// What was learnt of a stored message's attachments since its accept
    /// (a voice note's transcript); the message's text stays as sent.
    Attachments {
        message_id: i64,
        attachments: Vec<crate::core::message::Attachment>,
    },
    /// A tool call asks for an operator's approval: `Written::Approval` with
    /// the row (the one asked before by the same call of the same turn, if
    /// any) and whether this write made it.
    Ask(crate::core::approvals::Ask),
    /// An answer to an approval: `Written::Approval` with the row as it is
    /// after and whether this answer took (not when it was answered
    /// already, or is past or before its deadline); `NotFound` when there
    /// is no such row.
    Decide {
        id: i64,
        decision: crate::core::approvals::Decision,
        by: String,
        at: i64,
    },
    /// Claims an approved call's one run: `Written::Claimed(true)` for the
    /// one caller that may run it.
    RunApproved { id: i64, at: i64 },
    /// What an approved call gave back (`Written::Done`).
    ApprovalResult { id: i64, result: String },
    /// Joins `b`'s person into `a`'s (every identity of both is one person
    /// after): `Written::Person`; `NotFound` for an identity not known.
    Link { a: SenderRef, b: SenderRef, at: i64 },
    /// Makes `sender` a person of its own again: `Written::Person`.
    Unlink { sender: SenderRef, at: i64 },
    /// A `/link` code for `sender`, valid until `at` +
    /// [`crate::core::people::CODE_LIFETIME_MS`]: `Written::Done`, or
    /// `Invalid` when it asked for too many this hour.
    LinkCode {
        sender: SenderRef,
        code: String,
        at: i64,
    },
    /// `/link CODE` from `sender`: joins it to the code's identity.
    /// `Written::Redeemed` with the person, or why not (a wrong code is
    /// counted against the sender, and committed).
    Redeem {
        sender: SenderRef,
        code: String,
        at: i64,
    },
    /// Deletes everything held about a person, every identity of them
    /// (`Write::Erase` for each, and the person): `Written::Erased`.
    ErasePerson { person: i64, at: i64 },
    /// A document of `[knowledge]` indexed, or removed: `Written::Done`.
    Knowledge(crate::core::knowledge::KnowledgeChange),
}

/// A message an outside agent (an MCP client) sends on a channel. It is
/// stored as an assistant message and queued in the same outbox as the
/// agent's replies: ordering, 429 waits, dead letters and dry run alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub to: Destination,
    pub text: String,
    /// Stored as the message's provider (`mcp`).
    pub provider: String,
    /// Stored as its model: who sent it (the MCP client's name).
    pub sender: String,
    /// For a message that answers nothing; an answer keeps the correlation
    /// id of the message it answers.
    pub correlation_id: String,
    /// Answer the conversation's unanswered messages with it (the agent is
    /// external: this is its reply). Otherwise it answers nothing.
    pub answers_pending: bool,
    pub at: i64,
}

impl Outgoing {
    /// How the message is stored: an answer of the outside agent.
    pub fn reply(&self) -> NewReply {
        NewReply {
            kind: ReplyKind::Answer,
            text: self.text.clone(),
            provider: self.provider.clone(),
            model: self.sender.clone(),
            prompt_version: 0,
            prompt_tokens: None,
            completion_tokens: None,
            latency_ms: 0,
            created_at: self.at,
        }
    }

    /// The record of it answering `pending` (ids in order), if any.
    pub fn answering(&self, pending: &[i64]) -> Option<TurnRecord> {
        pending.last().map(|&last| TurnRecord {
            message_id: last,
            covers: pending.to_vec(),
            violations: Vec::new(),
            reply: self.reply(),
        })
    }
}

/// Where an [`Outgoing`] message goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    /// A stored conversation.
    Conversation(i64),
    /// A person on a channel: their open conversation, or a new one.
    Key(ConversationKey),
}

/// What [`Write::Send`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub message: StoredMessage,
    /// Its outbox item (none on the terminal channel, which has no outbox).
    pub outbox_id: Option<i64>,
    /// The unanswered messages it answered.
    pub answered: Vec<i64>,
}

/// Take the oldest unanswered user message that no consumer holds (or
/// whose holder's time ran out), for `consumer` until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub consumer: String,
    pub channel: Option<Channel>,
    pub conversation_id: Option<i64>,
    pub until: i64,
    pub now: i64,
}

/// An access token of `/mcp`; only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessToken {
    pub name: String,
    #[serde(skip)]
    pub sha256: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    /// Its client is an operator's: `send_message` takes the conversation
    /// over (`convagent mcp token create NAME --operator`).
    pub operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    /// A new token; `StoreError::Invalid` if the name is taken.
    Create {
        name: String,
        sha256: String,
        at: i64,
        operator: bool,
    },
    /// `StoreError::NotFound` if there is no token of that name.
    Revoke { name: String },
    /// The token was used (kept to the minute, not written on every call).
    Used { sha256: String, at: i64 },
}

/// The access tokens of `/mcp`.
pub trait TokenStore: Send + Sync {
    fn tokens(&self) -> Result<Vec<AccessToken>, StoreError>;
    fn token_by_hash(&self, sha256: &str) -> Result<Option<AccessToken>, StoreError>;
}

/// What a turn retrieves beyond its conversation: the documents of
/// `[knowledge]`, and the person's other conversations.
pub trait Retrieval: Send + Sync {
    fn knowledge_docs(&self) -> Result<Vec<crate::core::knowledge::KnowledgeDoc>, StoreError>;

    /// Every chunk with a vector made by `embedder`, in the order stored.
    fn knowledge_vectors(
        &self,
        embedder: &str,
    ) -> Result<Vec<crate::core::embeddings::VectorChunk>, StoreError>;

    /// The chunks best matching any of `words` (full-text ranking: BM25 on
    /// SQLite, `ts_rank` on Postgres), best first.
    fn search_knowledge(
        &self,
        words: &[String],
        limit: usize,
    ) -> Result<Vec<crate::core::knowledge::Passage>, StoreError>;

    /// The other conversations of the person `conversation_id` belongs to
    /// (every identity of theirs), with their channel.
    fn person_conversations(&self, conversation_id: i64)
    -> Result<Vec<(i64, Channel)>, StoreError>;

    /// The newest user messages of `conversations`: (conversation, when,
    /// text), newest first.
    fn user_messages_of(
        &self,
        conversations: &[i64],
        limit: usize,
    ) -> Result<Vec<(i64, i64, String)>, StoreError>;
}

/// Reading approvals (writing is `Write::Ask`, `Decide`, `RunApproved`).
pub trait ApprovalReads: Send + Sync {
    fn approval(&self, id: i64) -> Result<Option<crate::core::approvals::Approval>, StoreError>;
    /// The newest first; with `pending_only`, those still waiting.
    fn approvals(
        &self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<crate::core::approvals::Approval>, StoreError>;
}

/// Messages over a limit whose sender was told so already (see
/// [`crate::core::limits`]): marked answered by `notice`, each recorded
/// as a violation of `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub conversation_id: i64,
    pub messages: Vec<i64>,
    /// The notice: a reply of the same conversation.
    pub notice: i64,
    pub rule: String,
    pub at: i64,
}

/// What retention removes in one batch (times in unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    /// Conversations idle since before this, whole (none with a message
    /// unanswered or a reply queued).
    pub messages_before: Option<i64>,
    /// Trace events started before this.
    pub traces_before: Option<i64>,
    /// Conversations, and trace rows looked at, per batch.
    pub limit: usize,
    /// Count what would go, and keep it.
    pub dry_run: bool,
}

impl Prune {
    /// A batch of what retention (how long messages, traces are kept;
    /// `None`: for ever) lets go at `now`.
    pub fn at(
        now: i64,
        (messages, traces): (Option<Duration>, Option<Duration>),
        limit: usize,
        dry_run: bool,
    ) -> Prune {
        let before = |kept: Option<Duration>| kept.map(|d| now - d.as_millis() as i64);
        Prune {
            messages_before: before(messages),
            traces_before: before(traces),
            limit,
            dry_run,
        }
    }
}

/// One person on one channel, as an operator names them (`telegram:12345`).
/// The id matches a stored sender with or without the channel's own prefix
/// (Twilio's senders are stored as `whatsapp:+1555…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRef {
    pub channel: Channel,
    pub id: String,
}

impl std::str::FromStr for SenderRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (channel, id) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not CHANNEL:ID (e.g. telegram:12345)"))?;
        let channel: Channel = channel.parse().map_err(|e| format!("{e}"))?;
        if id.trim().is_empty() {
            return Err(format!("`{s}` names no sender after the channel"));
        }
        Ok(SenderRef {
            channel,
            id: id.to_string(),
        })
    }
}

/// Rows removed by a [`Write::Erase`], by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub conversations: u64,
    pub messages: u64,
    pub summaries: u64,
    pub traces: u64,
    pub outbox: u64,
    pub violations: u64,
    /// The media files (names under `[media] dir`) of the removed messages,
    /// for the caller to remove: the store holds only their names. Never
    /// recorded with the erasure.
    #[serde(skip)]
    pub files: Vec<String>,
}

impl Erased {
    /// Adds `other`'s counts and files to these.
    pub fn add(&mut self, other: Erased) {
        self.conversations += other.conversations;
        self.messages += other.messages;
        self.summaries += other.summaries;
        self.traces += other.traces;
        self.outbox += other.outbox;
        self.violations += other.violations;
        self.files.extend(other.files);
    }
}

/// A guardrail rule a stored message broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViolationRecord {
    pub message_id: i64,
    pub rule: String,
    pub created_at: i64,
}

/// Everything held about one sender, for export.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SenderData {
    pub conversations: Vec<ConversationSummary>,
    pub messages: Vec<StoredMessage>,
    pub summaries: Vec<Summary>,
    pub traces: Vec<TraceEvent>,
    pub outbox: Vec<OutboxEntry>,
    pub violations: Vec<ViolationRecord>,
}

/// A person's data (seed 000 story 29): what `history export` and
/// `history delete` need beyond the other ports.
pub trait PeopleStore: Send + Sync {
    /// Everything held about `sender`, oldest first in each kind.
    fn sender_data(&self, sender: &SenderRef) -> Result<SenderData, StoreError>;

    /// The person owning `sender`, with all their identities.
    fn person_of(
        &self,
        sender: &SenderRef,
    ) -> Result<Option<crate::core::people::Person>, StoreError>;

    fn person(&self, id: i64) -> Result<Option<crate::core::people::Person>, StoreError>;

    /// People, the most recently made first.
    fn people(&self, limit: usize) -> Result<Vec<crate::core::people::Person>, StoreError>;
}

impl Write {
    /// Accepts go first: a webhook waits for its commit, nothing else
    /// should make it wait longer.
    pub fn is_accept(&self) -> bool {
        matches!(self, Write::Accept(_))
    }
}

/// What a [`Write`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Accepted(Accepted),
    Reply(StoredMessage),
    Summary(Summary),
    Erased(Erased),
    Sent(Sent),
    Taken(Option<StoredMessage>),
    /// The row, and whether this write made or changed it.
    Approval(crate::core::approvals::Approval, bool),
    Claimed(bool),
    Person(crate::core::people::Person),
    Redeemed(Result<crate::core::people::Person, String>),
    Done,
}

impl Written {
    fn mismatch(what: &str) -> StoreError {
        StoreError::Backend(format!(
            "the writer answered a {what} write with something else"
        ))
    }

    pub fn accepted(self) -> Result<Accepted, StoreError> {
        match self {
            Written::Accepted(a) => Ok(a),
            _ => Err(Self::mismatch("accept")),
        }
    }

    pub fn reply(self) -> Result<StoredMessage, StoreError> {
        match self {
            Written::Reply(r) => Ok(r),
            _ => Err(Self::mismatch("turn")),
        }
    }

    pub fn summary(self) -> Result<Summary, StoreError> {
        match self {
            Written::Summary(s) => Ok(s),
            _ => Err(Self::mismatch("summary")),
        }
    }

    pub fn erased(self) -> Result<Erased, StoreError> {
        match self {
            Written::Erased(e) => Ok(e),
            _ => Err(Self::mismatch("erasure")),
        }
    }

    pub fn sent(self) -> Result<Sent, StoreError> {
        match self {
            Written::Sent(s) => Ok(s),
            _ => Err(Self::mismatch("send")),
        }
    }

    pub fn approval(self) -> Result<(crate::core::approvals::Approval, bool), StoreError> {
        match self {
            Written::Approval(a, changed) => Ok((a, changed)),
            _ => Err(Self::mismatch("ask or decide")),
        }
    }

    pub fn person(self) -> Result<crate::core::people::Person, StoreError> {
        match self {
            Written::Person(p) => Ok(p),
            _ => Err(Self::mismatch("link")),
        }
    }

    pub fn redeemed(self) -> Result<Result<crate::core::people::Person, String>, StoreError> {
        match self {
            Written::Redeemed(r) => Ok(r),
            _ => Err(Self::mismatch("redeem")),
        }
    }

    pub fn claimed(self) -> Result<bool, StoreError> {
        match self {
            Written::Claimed(c) => Ok(c),
            _ => Err(Self::mismatch("run")),
        }
    }

    pub fn taken(self) -> Result<Option<StoredMessage>, StoreError> {
        match self {
            Written::Taken(t) => Ok(t),
            _ => Err(Self::mismatch("take")),
        }
    }
}

/// The pipeline's writes, asynchronous so that an adapter can batch them
/// behind one writer (many commits' cost shared) without blocking the
/// caller's thread.
pub trait Writes: Send + Sync {
    /// Several writes in one transaction, one result each, in order;
    /// synchronous, on the caller's thread.
    fn write_batch(&self, writes: &[Write]) -> Vec<Result<Written, StoreError>>;

    /// Resolves once `write` is committed (with whatever else was waiting).
    fn write(&self, write: Write) -> BoxFuture<'_, Result<Written, StoreError>>;

    /// Queues `write` without waiting for it (traces): it is committed with
    /// the next batch, and [`Writes::flush`] waits for it.
    fn append(&self, write: Write);

    /// Resolves once everything written or appended before is committed.
    fn flush(&self) -> BoxFuture<'_, ()>;

    /// One write, committed before it returns (a batch of one).
    fn write_now(&self, write: Write) -> Result<Written, StoreError> {
        self.write_batch(std::slice::from_ref(&write))
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("the batch had no result".into())))
    }
}

/// What waits for an answer: the daemon's work queue. Another process
/// may take the same work (issue 11): replies are unique per message, so
/// the store, not this process, decides which answer counts.
pub trait WorkQueue: Send + Sync {
    /// Up to `limit` user messages of a conversation still without an
    /// answer, oldest first (indexed).
    fn pending(&self, conversation_id: i64, limit: usize) -> Result<Vec<Pending>, StoreError>;

    /// The answer (or refusal) to a user message, if it has one. Fallback
    /// replies do not count.
    fn reply_to(&self, message_id: i64) -> Result<Option<StoredMessage>, StoreError>;

    /// The newest assistant message of a conversation, if any: a fallback
    /// there means the conversation already has one since its last answer.
    fn latest_reply(&self, conversation_id: i64) -> Result<Option<StoredMessage>, StoreError>;

    /// When a conversation last got a reply from `provider` with `model`
    /// (a notice: `media` and its sense), if it ever did.
    fn last_reply_by(
        &self,
        conversation_id: i64,
        provider: &str,
        model: &str,
    ) -> Result<Option<i64>, StoreError>;

    /// Whether other processes may work from this store at the same time
    /// (then a daemon claims what it works on, and sweeps for work nobody
    /// holds). A store only one process opens for writing says no, and
    /// every claim below is its own.
    fn shared(&self) -> bool {
        false
    }

    /// Takes, or renews, `kind` of `key` (a conversation) for `owner` for
    /// `lease_ms` by the store's clock, unless another owner holds it and
    /// its lease is not over. Whether `owner` holds it now.
    fn claim(
        &self,
        _kind: ClaimKind,
        _key: i64,
        _owner: &str,
        _lease_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives up a claim `owner` holds; another owner's stays.
    fn release(&self, _kind: ClaimKind, _key: i64, _owner: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Conversations with unanswered messages whose turns nobody holds a
    /// live claim on (their daemon died, or missed a message another one
    /// accepted).
    fn unclaimed_pending(&self, limit: usize) -> Result<Vec<i64>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }
}

/// What a claim covers: a conversation's turns, or its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    Turns,
    Outbox,
}

/// Writes one at a time, committed before they return: for commands and
/// tests. The daemon's pipeline writes through [`Writes`] instead; these
/// are the same writes as batches of one.
pub trait Ingest: Writes + Send + Sync {
    /// Stores an inbound user message (opening its conversation if needed),
    /// or reports it as a duplicate of one with the same channel and
    /// provider message id.
    fn accept(&self, message: &InboundMessage) -> Result<Accepted, StoreError> {
        self.write_now(Write::Accept(message.clone()))?.accepted()
    }

    /// Records an assistant message for `message_id` and returns it. An
    /// answer or refusal marks the message answered, and a second one keeps
    /// the first; fallbacks leave the message pending.
    fn record_reply(&self, message_id: i64, reply: &NewReply) -> Result<StoredMessage, StoreError> {
        self.record_turn_reply(message_id, &[], reply)
    }

    /// Like [`Store::record_reply`] for a turn that answered a burst:
    /// `message_id` is its last message, and an answer or refusal also
    /// marks each of `covers` (earlier messages of the same conversation
    /// still unanswered) answered by it, in the same transaction.
    fn record_turn_reply(
        &self,
        message_id: i64,
        covers: &[i64],
        reply: &NewReply,
    ) -> Result<StoredMessage, StoreError> {
        self.write_now(Write::Turn(TurnRecord {
            message_id,
            covers: covers.to_vec(),
            violations: Vec::new(),
            reply: reply.clone(),
        }))?
        .reply()
    }

    /// Records that `message_id` broke guardrail `rule`.
    fn record_violation(&self, message_id: i64, rule: &str, at: i64) -> Result<(), StoreError>;

    /// Stores a summary; a range summarised before keeps its first summary,
    /// which is returned.
    fn save_summary(&self, summary: &Summary) -> Result<Summary, StoreError> {
        self.write_now(Write::Summary(summary.clone()))?.summary()
    }

    /// Closes the open conversation for `key`, if any; the next message from
    /// that sender starts a new conversation. Returns whether one was closed.
    fn close_conversation(&self, key: &ConversationKey, at: i64) -> Result<bool, StoreError>;

    /// Since when (unix ms) `sender` on `channel` wants nothing sent to
    /// them (`/stop`), if they do.
    fn opted_out(&self, channel: Channel, sender: &str) -> Result<Option<i64>, StoreError>;
}

/// What [`ConversationReads::turns_after`] read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TurnsAfter {
    /// Oldest first.
    pub turns: Vec<Turn>,
    /// Every message of the conversation, at the same moment.
    pub message_count: i64,
}

/// Reading conversations: the context of a turn, `history`, search.
pub trait ConversationReads: Send + Sync {
    /// The newest summary of a conversation, if any.
    fn latest_summary(&self, conversation_id: i64) -> Result<Option<Summary>, StoreError>;

    /// Up to `limit` most recent turns of a conversation up to and including
    /// `up_to_message_id`, oldest first. Must be an indexed, bounded read:
    /// its cost may not grow with the conversation's length.
    fn recent_turns(
        &self,
        conversation_id: i64,
        up_to_message_id: i64,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError>;

    /// Up to `limit` turns of a conversation stored after `after_message_id`,
    /// oldest first, and how many messages the conversation holds, read in
    /// one snapshot: what a turn's cached context needs to catch up, and to
    /// notice that it no longer matches the store (a message deleted, or one
    /// that appeared behind one already read).
    ///
    /// Adapters make one conversation's message ids visible in increasing
    /// order: whoever has read id N sees every earlier id of the same
    /// conversation (SQLite: one writer at a time; a database with several
    /// writers locks the conversation's row before inserting its messages).
    fn turns_after(
        &self,
        conversation_id: i64,
        after_message_id: i64,
        limit: usize,
    ) -> Result<TurnsAfter, StoreError>;

    /// The open conversation for `key`, if any.
    fn open_conversation(&self, key: &ConversationKey) -> Result<Option<i64>, StoreError>;

    /// Conversations, most recent activity first.
    fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationSummary>, StoreError>;

    fn conversation(&self, id: i64) -> Result<Option<ConversationSummary>, StoreError>;

    /// All messages of a conversation, oldest first.
    fn messages(&self, conversation_id: i64) -> Result<Vec<StoredMessage>, StoreError>;

    /// What the limits of `query` need counted (see
    /// [`crate::core::limits`]): bounded reads, whatever the sender's
    /// history.
    fn usage(&self, query: &UsageQuery) -> Result<Usage, StoreError>;

    /// Full-text search over message text: the newest matches first, read
    /// in index order so that the cost follows `limit`, not how many
    /// messages match; or, with [`SearchOrder::Relevance`], the best
    /// matches first (every match is ranked: slower on a big store).
    fn search(
        &self,
        query: &str,
        channel: Option<Channel>,
        limit: usize,
        order: SearchOrder,
    ) -> Result<Vec<SearchHit>, StoreError>;
}

/// Versioned system prompts.
pub trait PromptStore: Send + Sync {
    /// The current system prompt, if one was ever set.
    fn current_prompt(&self) -> Result<Option<PromptVersion>, StoreError>;

    /// Stores `text` as a new system prompt version from `source` and
    /// returns it.
    fn add_prompt(&self, text: &str, source: &str, at: i64) -> Result<PromptVersion, StoreError>;

    /// The newest prompt version from `source`, if any.
    fn latest_prompt_from(&self, source: &str) -> Result<Option<PromptVersion>, StoreError>;

    /// Stores `text` as a new system prompt version set by a person in
    /// `convagent chat`.
    fn set_prompt(&self, text: &str, at: i64) -> Result<PromptVersion, StoreError> {
        self.add_prompt(text, PROMPT_FROM_CHAT, at)
    }

    /// Returns the current prompt, first storing `default_text` as version 1
    /// when none exists yet.
    fn ensure_prompt(&self, default_text: &str, at: i64) -> Result<PromptVersion, StoreError> {
        match self.current_prompt()? {
            Some(p) => Ok(p),
            None => self.add_prompt(default_text, PROMPT_DEFAULT, at),
        }
    }

    /// Whether `text` (the configured prompt) differs from what the store
    /// last took from the configuration and from the current prompt: the
    /// next [`Store::sync_configured_prompt`] would store it as a new version.
    fn configured_prompt_changed(&self, text: &str) -> Result<bool, StoreError> {
        let Some(current) = self.current_prompt()? else {
            return Ok(true);
        };
        let taken = match self.latest_prompt_from(PROMPT_FROM_CONFIG)? {
            Some(taken) => Some(taken),
            // Stores from before prompt sources: the seeded version is the
            // configuration's as it was then.
            None => self.latest_prompt_from(PROMPT_DEFAULT)?,
        };
        let unchanged = taken.is_some_and(|t| t.text == text) || current.text == text;
        Ok(!unchanged)
    }

    /// Makes the configured prompt current when it changed since it was
    /// last taken from the configuration: a new version then. An unchanged
    /// configuration keeps whatever is current (a `/prompt set` stays).
    fn sync_configured_prompt(&self, text: &str, at: i64) -> Result<PromptVersion, StoreError> {
        match self.current_prompt()? {
            Some(current) if !self.configured_prompt_changed(text)? => Ok(current),
            _ => self.add_prompt(text, PROMPT_FROM_CONFIG, at),
        }
    }
}

/// Circuit breakers of the LLM providers.
pub trait BreakerStore: Writes + Send + Sync {
    /// The circuit breaker of a provider+model, if it was ever used.
    fn breaker(&self, provider: &str, model: &str) -> Result<Option<Breaker>, StoreError>;

    /// Persists a breaker, with the transition that changed it if any.
    fn save_breaker(
        &self,
        breaker: &Breaker,
        transition: Option<&Transition>,
    ) -> Result<(), StoreError> {
        self.write_now(Write::Breaker {
            breaker: breaker.clone(),
            transition: transition.cloned(),
        })
        .map(drop)
    }

    /// Every breaker, for `doctor`, the TUI and `/metrics`.
    fn breakers(&self) -> Result<Vec<Breaker>, StoreError>;
}

/// Durable storage of conversations, messages, replies and prompts.
///
/// Implementations must make `accept` and `record_reply` atomic: either the
/// whole record is stored or nothing is.
pub trait Store:
    Writes
    + Ingest
    + WorkQueue
    + ConversationReads
    + PromptStore
    + BreakerStore
    + ApprovalReads
    + Retrieval
    + Send
    + Sync
{
    fn health(&self) -> Result<StoreHealth, StoreError>;
}

/// Time, injectable so tests can fix it (and skip the waiting).
pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
    /// Waits `duration` (a fake clock just moves on).
    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()>;
}

/// A reply waiting in the outbox: the head of its conversation's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub reply_id: i64,
    pub conversation_id: i64,
    pub key: ConversationKey,
    pub text: String,
    /// Parts of a split reply already delivered.
    pub parts_sent: u32,
    pub attempts: u32,
    pub correlation_id: Option<String>,
    /// When it may be sent (a retry waits until then).
    pub next_attempt_at: i64,
    /// When it was queued: a 429 storm may hold it back only so long.
    pub created_at: i64,
    /// Since when the person wants nothing sent (`/stop`), read with the
    /// item so a send costs no extra read.
    pub opted_out_since: Option<i64>,
}

/// One item of the outbox as an operator sees it (`convagent outbox`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub conversation_id: i64,
    pub channel: Channel,
    pub recipient: String,
    pub thread: String,
    /// `queued`, `sent`, `dead` or `discarded`.
    pub state: String,
    pub attempts: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub next_attempt_at: i64,
    /// The provider's error code of the last failure (`rate_limited`,
    /// `retries_exhausted`, a provider's own code).
    pub error_code: Option<String>,
    pub last_error: Option<String>,
    pub text: String,
    pub correlation_id: Option<String>,
}

/// Which outbox items to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxView {
    /// Queued and dead (what an operator may act on).
    Open,
    Queued,
    Dead,
    /// Every item, sent and discarded ones too.
    All,
}

/// What became of a send attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxUpdate {
    /// One more part delivered (more to go).
    Progress {
        parts_sent: u32,
        provider_message_id: Option<String>,
    },
    /// Every part delivered (or recorded, in dry-run mode).
    Sent {
        provider_message_id: Option<String>,
        dry_run: bool,
    },
    /// Try again at `next_attempt_at`; `attempts` counts the failures
    /// that lead to a dead letter (a 429 does not).
    Retry {
        next_attempt_at: i64,
        attempts: u32,
        error: String,
    },
    /// Given up: a dead letter with the provider's code.
    Dead { code: String, error: String },
    /// A dead letter queued again by an operator: tried at once, with its
    /// failures forgotten. Only a dead item that was not discarded.
    Requeue,
    /// Given up for good by an operator: a queued or dead item is kept as
    /// the record of what was not sent, and is neither sent nor retried.
    Discard,
}

impl OutboxUpdate {
    /// Why this update changed no row of item `id`.
    pub fn not_applied(&self, id: i64) -> StoreError {
        match self {
            OutboxUpdate::Requeue => {
                StoreError::Invalid(format!("outbox item {id} is not a dead letter"))
            }
            OutboxUpdate::Discard => {
                StoreError::Invalid(format!("outbox item {id} is neither queued nor dead"))
            }
            _ => StoreError::NotFound(format!("outbox item {id}")),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    pub queued: u64,
    pub dead: u64,
}

/// The durable outbox of replies to channels (SPEC.md step 8). Replies are
/// queued by the store itself when they are recorded.
pub trait OutboxStore: Send + Sync {
    /// Items due at `now`, at most one per conversation (the oldest not yet
    /// sent), oldest first.
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;

    /// The oldest reply of a conversation still to be sent, due or not.
    fn head(&self, conversation_id: i64) -> Result<Option<OutboxItem>, StoreError>;

    /// The earliest time after `now` that the head of a conversation's
    /// queue becomes due (a retry waiting), if any.
    fn next_due_after(&self, now: i64) -> Result<Option<i64>, StoreError>;

    fn update_outbox(&self, id: i64, update: &OutboxUpdate, at: i64) -> Result<(), StoreError>;

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Items for an operator, oldest first.
    fn outbox_entries(
        &self,
        view: OutboxView,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    fn outbox_entry(&self, id: i64) -> Result<Option<OutboxEntry>, StoreError>;

    /// Conversations holding messages not yet answered (for a restart).
    fn conversations_with_pending(&self, limit: usize) -> Result<Vec<i64>, StoreError>;

    /// Conversations the agent answers (not taken over) with a user message
    /// unanswered and never taken by an MCP consumer since before
    /// `received_before`, with when their oldest such message came
    /// (`agent.mode = "external"`: who gets the voicemail).
    fn untaken_waiting(
        &self,
        received_before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>, StoreError>;
}

pub trait TraceStore: Writes + Send + Sync {
    fn record_traces(&self, events: &[TraceEvent]) -> Result<(), StoreError> {
        self.write_now(Write::Traces(events.to_vec())).map(drop)
    }
    /// Every stage recorded for a correlation id, in order.
    fn trace(&self, correlation_id: &str) -> Result<Vec<TraceEvent>, StoreError>;

    /// The traces of `messages` (each correlation id once), by start time.
    fn traces_of(&self, messages: &[StoredMessage]) -> Result<Vec<TraceEvent>, StoreError> {
        let mut correlations: Vec<&str> = messages
            .iter()
            .filter_map(|m| m.correlation_id.as_deref())
            .collect();
        correlations.sort_unstable();
        correlations.dedup();
        let mut traces = Vec::new();
        for c in correlations {
            traces.extend(self.trace(c)?);
        }
        traces.sort_by_key(|t| t.started_at);
        Ok(traces)
    }
}

/// Where the agent reports the stages it runs (guarded, context built, LLM
/// call, reply stored); the daemon's tracer stores and logs them.
pub trait StageSink: Send + Sync {
    fn record(&self, event: TraceEvent);
}

/// A conversation as a monitor lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationOverview {
    pub summary: ConversationSummary,
    /// The newest message's text.
    pub last_text: String,
    /// User messages still without an answer (being processed, or waiting
    /// for an LLM to recover).
    pub pending: u64,
    /// Replies given up on (dead letters).
    pub failed: u64,
}

/// Traffic in one time bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ActivityBucket {
    pub start: i64,
    pub messages: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
}

/// Traffic per bucket from `(created_at, is a user message, latency_ms)`
/// of every message since `since`: what [`MonitorStore::activity`] returns.
pub fn activity_buckets(
    since: i64,
    bucket_ms: i64,
    buckets: usize,
    messages: impl IntoIterator<Item = (i64, bool, Option<i64>)>,
) -> Vec<ActivityBucket> {
    let bucket_ms = bucket_ms.max(1);
    let mut out: Vec<ActivityBucket> = (0..buckets)
        .map(|i| ActivityBucket {
            start: since + bucket_ms * i as i64,
            ..Default::default()
        })
        .collect();
    if buckets == 0 {
        return out;
    }
    let index = |at: i64| ((at - since) / bucket_ms).clamp(0, buckets as i64 - 1) as usize;
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); buckets];
    for (at, user, latency) in messages {
        let i = index(at);
        if user {
            out[i].messages += 1;
        } else if let Some(l) = latency {
            latencies[i].push(l.max(0) as u64);
        }
    }
    for (bucket, mut l) in out.iter_mut().zip(latencies) {
        if l.is_empty() {
            continue;
        }
        l.sort_unstable();
        bucket.p50_ms = l[l.len() / 2];
        bucket.p95_ms = l[(l.len() * 95 / 100).min(l.len() - 1)];
    }
    out
}

/// The last answer an LLM provider gave, as monitors show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderActivity {
    pub provider: String,
    pub model: String,
    pub at: i64,
    pub latency_ms: Option<u64>,
}

/// What a live monitor (the TUI) reads; never writes.
pub trait MonitorStore: Send + Sync {
    /// The newest answer `provider` gave, if it ever answered (indexed).
    fn last_answer(&self, provider: &str) -> Result<Option<ProviderActivity>, StoreError>;

    /// A number that changes whenever any process commits to the store.
    fn change_counter(&self) -> Result<i64, StoreError>;

    fn overview(
        &self,
        filter: &ConversationFilter,
        search: Option<&str>,
    ) -> Result<Vec<ConversationOverview>, StoreError>;

    /// Inbound messages per bucket and reply latency percentiles, for the
    /// `buckets` buckets of `bucket_ms` ending at `now`, oldest first.
    fn activity(
        &self,
        now: i64,
        bucket_ms: i64,
        buckets: usize,
    ) -> Result<Vec<ActivityBucket>, StoreError>;

    /// Violations recorded since `since`, per rule: guardrails' and limits'
    /// (`doctor`, as the alerting rules see them).
    fn violations_since(&self, since: i64) -> Result<Vec<RuleCount>, StoreError>;

    /// Conversations a person answers with messages waiting for them, and
    /// when the oldest of those arrived (unix ms): `/metrics` and its alert.
    fn waiting_for_person(&self) -> Result<(u64, Option<i64>), StoreError>;
}

/// Messages that broke one rule, and from how many senders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCount {
    pub rule: String,
    pub messages: u64,
    pub senders: u64,
}

/// Every store port together: what commands open, on either adapter.
pub trait AnyStore:
    Store + OutboxStore + TraceStore + MonitorStore + PeopleStore + TokenStore + Send + Sync
{
}
impl<T: Store + OutboxStore + TraceStore + MonitorStore + PeopleStore + TokenStore> AnyStore for T {}

/// Every store port, in scope without names: `use convagent::core::ports::all::*;`
/// for code that calls them on a concrete store (a `dyn Store` needs none).
pub mod all {
    pub use super::{
        AnyStore as _, ApprovalReads as _, BreakerStore as _, ConversationReads as _, Ingest as _,
        MonitorStore as _, OutboxStore as _, PeopleStore as _, PromptStore as _, Retrieval as _,
        Store as _, TokenStore as _, TraceStore as _, WorkQueue as _, Writes as _,
    };
}
