//! Mapping between Postgres rows and the core's types.

use postgres::Row;

use crate::core::breaker::Breaker;
use crate::core::message::{Channel, ConversationKey, CorrelationId, InboundMessage, Role, Turn};
use crate::core::ports::{
    ConversationSummary, OutboxEntry, OutboxItem, PromptVersion, ReplyKind, StoreError,
    StoredMessage, Summary, TraceEvent,
};
use crate::core::trace::{Outcome, Stage};

pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.role, m.text, m.created_at, \
     m.correlation_id, m.provider_message_id, m.reply_to, m.provider, m.model, \
     m.prompt_version, m.prompt_tokens, m.completion_tokens, m.latency_ms, m.kind, m.answered_by, m.attachments";

fn bad(what: String) -> StoreError {
    StoreError::Backend(format!("unexpected value in the store: {what}"))
}

fn count(v: Option<i64>) -> Option<u32> {
    v.map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX))
}

pub(super) fn role(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| bad(format!("role `{s}`")))
}

pub(super) fn channel(s: &str) -> Result<Channel, StoreError> {
    s.parse()
        .map_err(|e: crate::core::message::UnknownChannel| bad(e.to_string()))
}

pub(super) fn message(r: &Row) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        role: role(r.try_get(2)?)?,
        text: r.try_get(3)?,
        created_at: r.try_get(4)?,
        correlation_id: r.try_get(5)?,
        provider_message_id: r.try_get(6)?,
        reply_to: r.try_get(7)?,
        provider: r.try_get(8)?,
        model: r.try_get(9)?,
        prompt_version: r.try_get(10)?,
        prompt_tokens: count(r.try_get(11)?),
        completion_tokens: count(r.try_get(12)?),
        latency_ms: r.try_get::<_, Option<i64>>(13)?.map(|v| v.max(0) as u64),
        kind: r
            .try_get::<_, Option<String>>(14)?
            .map(|k| ReplyKind::parse(&k).ok_or_else(|| bad(format!("reply kind `{k}`"))))
            .transpose()?,
        answered_by: r.try_get(15)?,
        attachments: crate::core::media::stored(&r.try_get::<_, String>(16)?),
    })
}

pub(super) const CONVERSATION_COLUMNS: &str = "c.id, c.channel, c.sender, c.thread, \
     c.message_count, c.started_at, c.last_activity_at, c.closed_at, c.display_name, c.mode, \
     c.mode_at, c.mode_by";
/// How many columns [`CONVERSATION_COLUMNS`] are: a query's own columns
/// after them start here.
pub(super) const CONVERSATION_WIDTH: usize = 12;

pub(super) fn conversation(r: &Row) -> Result<ConversationSummary, StoreError> {
    Ok(ConversationSummary {
        id: r.try_get(0)?,
        channel: channel(r.try_get(1)?)?,
        sender: r.try_get(2)?,
        thread: r.try_get(3)?,
        message_count: r.try_get::<_, i64>(4)?.max(0) as u64,
        started_at: r.try_get(5)?,
        last_activity_at: r.try_get(6)?,
        closed: r.try_get::<_, Option<i64>>(7)?.is_some(),
        display_name: r.try_get(8)?,
        mode: crate::core::handoff::Mode::parse(r.try_get(9)?).unwrap_or_default(),
        mode_at: r.try_get(10)?,
        mode_by: r.try_get(11)?,
    })
}

pub(super) const BREAKER_COLUMNS: &str =
    "provider, model, state, failures, opened_at, next_probe_at, last_error, updated_at";

pub(super) fn breaker(r: &Row) -> Result<Breaker, StoreError> {
    let state: &str = r.try_get(2)?;
    Ok(Breaker {
        provider: r.try_get(0)?,
        model: r.try_get(1)?,
        state: state.parse().map_err(bad)?,
        failures: count(Some(r.try_get(3)?)).unwrap_or(0),
        opened_at: r.try_get(4)?,
        next_probe_at: r.try_get(5)?,
        last_error: r.try_get(6)?,
        updated_at: r.try_get(7)?,
    })
}

pub(super) const PROMPT_COLUMNS: &str = "version, text, created_at, source";

pub(super) fn prompt(r: &Row) -> Result<PromptVersion, StoreError> {
    Ok(PromptVersion {
        version: r.try_get(0)?,
        text: r.try_get(1)?,
        created_at: r.try_get(2)?,
        source: r.try_get(3)?,
    })
}

pub(super) const SUMMARY_COLUMNS: &str =
    "conversation_id, from_message_id, to_message_id, text, provider, model, created_at";

pub(super) fn summary(r: &Row) -> Result<Summary, StoreError> {
    Ok(Summary {
        conversation_id: r.try_get(0)?,
        from_message_id: r.try_get(1)?,
        to_message_id: r.try_get(2)?,
        text: r.try_get(3)?,
        provider: r.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
        model: r.try_get::<_, Option<String>>(5)?.unwrap_or_default(),
        created_at: r.try_get(6)?,
    })
}

/// A turn from `id, role, text, attachments` at column `at`: the text as
/// the model reads it.
pub(super) fn turn(r: &Row, at: usize) -> Result<Turn, StoreError> {
    let attachments: String = r.try_get(at + 3)?;
    let (text, images) = crate::core::media::stored_for_model(r.try_get(at + 2)?, &attachments);
    Ok(Turn {
        message_id: r.try_get(at)?,
        role: role(r.try_get(at + 1)?)?,
        text,
        images,
    })
}

/// A pending user message, as `WorkQueue::pending` selects it.
pub(super) fn inbound(r: &Row) -> Result<(i64, InboundMessage), StoreError> {
    let attachments: String = r.try_get(4)?;
    let metadata: String = r.try_get(5)?;
    let message = InboundMessage {
        key: ConversationKey::new(
            channel(r.try_get(7)?)?,
            r.try_get::<_, String>(8)?,
            r.try_get::<_, String>(9)?,
        ),
        text: r.try_get(0)?,
        provider_message_id: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
        provider_ts: r.try_get(2)?,
        received_at: r.try_get(3)?,
        attachments: serde_json::from_str(&attachments).map_err(|e| bad(e.to_string()))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| bad(e.to_string()))?,
        correlation_id: CorrelationId(r.try_get::<_, Option<String>>(6)?.unwrap_or_default()),
    };
    Ok((r.try_get(10)?, message))
}

/// The columns [`item`] reads, before a query's `WHERE`.
pub(super) const ITEM_SELECT: &str =
    "SELECT o.id, o.reply_id, o.conversation_id, c.channel, c.sender, c.thread, m.text,
            o.parts_sent, o.attempts, m.correlation_id, o.next_attempt_at, o.created_at,
            (SELECT p.at FROM opt_outs p WHERE p.channel = c.channel AND p.sender = c.sender)
     FROM outbox o
     JOIN conversations c ON c.id = o.conversation_id
     JOIN messages m ON m.id = o.reply_id";

pub(super) fn item(r: &Row) -> Result<OutboxItem, StoreError> {
    Ok(OutboxItem {
        id: r.try_get(0)?,
        reply_id: r.try_get(1)?,
        conversation_id: r.try_get(2)?,
        key: ConversationKey::new(
            channel(r.try_get(3)?)?,
            r.try_get::<_, String>(4)?,
            r.try_get::<_, String>(5)?,
        ),
        text: r.try_get(6)?,
        parts_sent: count(Some(r.try_get(7)?)).unwrap_or(0),
        attempts: count(Some(r.try_get(8)?)).unwrap_or(0),
        correlation_id: r.try_get(9)?,
        next_attempt_at: r.try_get(10)?,
        created_at: r.try_get(11)?,
        opted_out_since: r.try_get(12)?,
    })
}

/// The columns [`entry`] reads, before a query's `WHERE`.
pub(super) const ENTRY_SELECT: &str = "SELECT o.id, o.conversation_id, c.channel, c.sender,
        c.thread, CASE WHEN o.discarded_at IS NOT NULL THEN 'discarded' ELSE o.state END,
        o.attempts, o.created_at, o.updated_at, o.next_attempt_at, o.error_code,
        o.last_error, m.text, m.correlation_id
     FROM outbox o
     JOIN conversations c ON c.id = o.conversation_id
     JOIN messages m ON m.id = o.reply_id";

pub(super) fn entry(r: &Row) -> Result<OutboxEntry, StoreError> {
    Ok(OutboxEntry {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        channel: channel(r.try_get(2)?)?,
        recipient: r.try_get(3)?,
        thread: r.try_get(4)?,
        state: r.try_get(5)?,
        attempts: count(Some(r.try_get(6)?)).unwrap_or(0),
        created_at: r.try_get(7)?,
        updated_at: r.try_get(8)?,
        next_attempt_at: r.try_get(9)?,
        error_code: r.try_get(10)?,
        last_error: r.try_get(11)?,
        text: r.try_get(12)?,
        correlation_id: r.try_get(13)?,
    })
}

pub(super) const TRACE_COLUMNS: &str =
    "correlation_id, stage, started_at, duration_us, outcome, detail, attempt";

pub(super) fn trace(r: &Row) -> Result<TraceEvent, StoreError> {
    let stage: &str = r.try_get(1)?;
    let (stage, old_attempt) =
        Stage::parse(stage).ok_or_else(|| bad(format!("trace stage {stage:?}")))?;
    Ok(TraceEvent {
        correlation_id: r.try_get(0)?,
        stage,
        attempt: count(r.try_get(6)?).or(old_attempt),
        started_at: r.try_get(2)?,
        duration_us: r.try_get::<_, i64>(3)?.max(0) as u64,
        outcome: Outcome::parse(r.try_get(4)?),
        detail: r.try_get(5)?,
    })
}

/// Every row through `f`.
pub(super) fn all<T>(
    rows: Vec<Row>,
    f: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}
