//! Mapping between SQLite rows and the core's types.

use rusqlite::{Connection, Row, params};

use crate::core::breaker::Breaker;
use crate::core::message::{Channel, Role};
use crate::core::ports::{
    ConversationSummary, PromptVersion, ReplyKind, StoreError, StoredMessage, Summary,
};

pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.role, m.text, m.created_at, \
     m.correlation_id, m.provider_message_id, m.reply_to, m.provider, m.model, \
     m.prompt_version, m.prompt_tokens, m.completion_tokens, m.latency_ms, m.kind, m.answered_by, m.attachments";

pub(super) fn message_from_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    let role: String = row.get(2)?;
    Ok(StoredMessage {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        role: parse_role(&role, 2)?,
        text: row.get(3)?,
        created_at: row.get(4)?,
        correlation_id: row.get(5)?,
        provider_message_id: row.get(6)?,
        reply_to: row.get(7)?,
        provider: row.get(8)?,
        model: row.get(9)?,
        prompt_version: row.get(10)?,
        prompt_tokens: row.get(11)?,
        completion_tokens: row.get(12)?,
        latency_ms: row.get::<_, Option<i64>>(13)?.map(|v| v.max(0) as u64),
        kind: row
            .get::<_, Option<String>>(14)?
            .map(|k| {
                ReplyKind::parse(&k).ok_or_else(|| bad_value(14, format!("unknown kind `{k}`")))
            })
            .transpose()?,
        answered_by: row.get(15)?,
        attachments: crate::core::media::stored(&row.get::<_, String>(16)?),
    })
}

pub(super) const BREAKER_COLUMNS: &str =
    "provider, model, state, failures, opened_at, next_probe_at, last_error, updated_at";

pub(super) fn breaker_from_row(row: &Row<'_>) -> rusqlite::Result<Breaker> {
    let state: String = row.get(2)?;
    Ok(Breaker {
        provider: row.get(0)?,
        model: row.get(1)?,
        state: state.parse().map_err(|e| bad_value(2, e))?,
        failures: row.get(3)?,
        opened_at: row.get(4)?,
        next_probe_at: row.get(5)?,
        last_error: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

pub(super) const PROMPT_COLUMNS: &str = "version, text, created_at, source";

pub(super) fn prompt_from_row(row: &Row<'_>) -> rusqlite::Result<PromptVersion> {
    Ok(PromptVersion {
        version: row.get(0)?,
        text: row.get(1)?,
        created_at: row.get(2)?,
        source: row.get(3)?,
    })
}

pub(super) fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<Summary> {
    Ok(Summary {
        conversation_id: row.get(0)?,
        from_message_id: row.get(1)?,
        to_message_id: row.get(2)?,
        text: row.get(3)?,
        provider: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
        model: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
        created_at: row.get(6)?,
    })
}

pub(super) fn message_by_id(conn: &Connection, id: i64) -> Result<StoredMessage, StoreError> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![id], message_from_row)?)
}

pub(super) const CONVERSATION_COLUMNS: &str = "id, channel, sender, thread, message_count, started_at, last_activity_at, closed_at, \
     display_name, mode, mode_at, mode_by";
/// How many columns [`CONVERSATION_COLUMNS`] are: a query's own columns
/// after them start here.
pub(super) const CONVERSATION_WIDTH: usize = 12;

pub(super) fn conversation_from_row(row: &Row<'_>) -> rusqlite::Result<ConversationSummary> {
    let channel: String = row.get(1)?;
    let closed_at: Option<i64> = row.get(7)?;
    Ok(ConversationSummary {
        id: row.get(0)?,
        channel: parse_channel(&channel, 1)?,
        sender: row.get(2)?,
        thread: row.get(3)?,
        message_count: row.get::<_, i64>(4)?.max(0) as u64,
        started_at: row.get(5)?,
        last_activity_at: row.get(6)?,
        closed: closed_at.is_some(),
        display_name: row.get(8)?,
        mode: crate::core::handoff::Mode::parse(&row.get::<_, String>(9)?).unwrap_or_default(),
        mode_at: row.get(10)?,
        mode_by: row.get(11)?,
    })
}

pub(super) fn parse_role(s: &str, column: usize) -> rusqlite::Result<Role> {
    Role::parse(s).ok_or_else(|| bad_value(column, format!("unknown role `{s}`")))
}

pub(super) fn parse_channel(s: &str, column: usize) -> rusqlite::Result<Channel> {
    s.parse()
        .map_err(|e: crate::core::message::UnknownChannel| bad_value(column, e.to_string()))
}

pub(super) fn bad_value(column: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, message.into())
}
