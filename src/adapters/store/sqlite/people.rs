//! A person's data on SQLite: everything held about one sender, and its
//! erasure in one transaction.

use rusqlite::{Connection, params};

use super::SqliteStore;
use super::outbox::{ENTRY_SELECT, entry_from_row};
use super::rows::summary_from_row;
use crate::core::ports::{
    ConversationReads, Erased, PeopleStore, SenderData, SenderRef, StoreError, TraceStore,
    ViolationRecord,
};

/// The sender's conversations, matched with or without the channel's
/// prefix on the stored sender (`whatsapp:+1555…`).
const CONVERSATIONS_OF: &str = "SELECT id FROM conversations
     WHERE channel = ?1 AND (sender = ?2 OR sender = ?1 || ':' || ?2) ORDER BY id";

fn conversations_of(conn: &Connection, sender: &SenderRef) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(CONVERSATIONS_OF)?;
    let rows = stmt.query_map(params![sender.channel.as_str(), sender.id], |r| r.get(0))?;
    rows.collect()
}

impl PeopleStore for SqliteStore {
    fn sender_data(&self, sender: &SenderRef) -> Result<SenderData, StoreError> {
        let ids = conversations_of(&self.reader(), sender)?;
        let mut data = SenderData::default();
        for id in ids {
            data.conversations.extend(self.conversation(id)?);
            data.messages.extend(self.messages(id)?);
            let conn = self.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT conversation_id, from_message_id, to_message_id, text, provider, model,
                        created_at
                 FROM summaries WHERE conversation_id = ?1 ORDER BY id",
            )?;
            for s in stmt.query_map(params![id], summary_from_row)? {
                data.summaries.push(s?);
            }
            let mut stmt = conn.prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE o.conversation_id = ?1 ORDER BY o.id"
            ))?;
            for e in stmt.query_map(params![id], entry_from_row)? {
                data.outbox.push(e?);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT v.message_id, v.rule, v.created_at FROM guardrail_violations v
                 JOIN messages m ON m.id = v.message_id
                 WHERE m.conversation_id = ?1 ORDER BY v.id",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                Ok(ViolationRecord {
                    message_id: r.get(0)?,
                    rule: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })?;
            for v in rows {
                data.violations.push(v?);
            }
        }
        let mut correlations: Vec<&str> = data
            .messages
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
        data.traces = traces;
        Ok(data)
    }
}

/// Deletes everything held about `sender` inside the caller's transaction
/// (the full-text index follows its rows by trigger) and records the
/// erasure: when, the channel, and how many rows — never who or what.
pub(super) fn erase_in(
    conn: &Connection,
    sender: &SenderRef,
    at: i64,
) -> Result<Erased, StoreError> {
    let ids = conversations_of(conn, sender)?;
    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let run = |sql: &str| -> Result<u64, StoreError> {
        Ok(conn.prepare_cached(sql)?.execute(params![ids])? as u64)
    };
    // Children first: every reference points into what is deleted next.
    let erased = Erased {
        violations: run("DELETE FROM guardrail_violations WHERE message_id IN
                 (SELECT id FROM messages WHERE conversation_id IN (SELECT value FROM json_each(?1)))")?,
        traces: run("DELETE FROM traces WHERE correlation_id IN
                 (SELECT correlation_id FROM messages
                  WHERE conversation_id IN (SELECT value FROM json_each(?1))
                    AND correlation_id IS NOT NULL)")?,
        outbox: run("DELETE FROM outbox WHERE conversation_id IN (SELECT value FROM json_each(?1))")?,
        summaries: run(
            "DELETE FROM summaries WHERE conversation_id IN (SELECT value FROM json_each(?1))",
        )?,
        messages: run("DELETE FROM messages WHERE conversation_id IN (SELECT value FROM json_each(?1))")?,
        conversations: run("DELETE FROM conversations WHERE id IN (SELECT value FROM json_each(?1))")?,
    };
    let counts = serde_json::to_string(&erased).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached("INSERT INTO erasures (at, channel, counts) VALUES (?1, ?2, ?3)")?
        .execute(params![at, sender.channel.as_str(), counts])?;
    Ok(erased)
}
