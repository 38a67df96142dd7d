//! A person's data on SQLite: everything held about one sender, and its
//! erasure in one transaction.

use rusqlite::{Connection, params};

use super::SqliteStore;
use super::outbox::{ENTRY_SELECT, entry_from_row};
use super::rows::summary_from_row;
use crate::core::ports::{
    ConversationReads, Erased, PeopleStore, Prune, SenderData, SenderRef, StoreError, TraceStore,
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
        data.traces = self.traces_of(&data.messages)?;
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
    let erased = erase_conversations_in(conn, &conversations_of(conn, sender)?)?;
    let counts = serde_json::to_string(&erased).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached("INSERT INTO erasures (at, channel, counts) VALUES (?1, ?2, ?3)")?
        .execute(params![at, sender.channel.as_str(), counts])?;
    Ok(erased)
}

/// Deletes conversations with everything that belongs to them: violations,
/// the traces of their messages, outbox items, summaries, messages (the
/// full-text index follows by trigger).
pub(super) fn erase_conversations_in(conn: &Connection, ids: &[i64]) -> Result<Erased, StoreError> {
    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let run = |sql: &str| -> Result<u64, StoreError> {
        Ok(conn.prepare_cached(sql)?.execute(params![ids])? as u64)
    };
    // Children first: every reference points into what is deleted next.
    // Tokens used per day are counts, not reported apart.
    run("DELETE FROM token_usage WHERE conversation_id IN (SELECT value FROM json_each(?1))")?;
    run("DELETE FROM approvals WHERE conversation_id IN (SELECT value FROM json_each(?1))")?;
    let mut files = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT attachments FROM messages
         WHERE conversation_id IN (SELECT value FROM json_each(?1)) AND attachments <> '[]'",
    )?;
    let mut rows = stmt.query(params![ids])?;
    while let Some(row) = rows.next()? {
        files.extend(crate::core::media::stored_files(&row.get::<_, String>(0)?));
    }
    let erased = Erased {
        files,
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
    Ok(erased)
}

/// One batch of retention: up to `limit` conversations idle since before
/// `messages_before` (never one with a message still unanswered or a reply
/// still queued), and trace events from before `traces_before` among the
/// `limit` oldest. With `dry_run` the batch is counted and rolled back.
pub(super) fn prune_in(conn: &Connection, prune: &Prune) -> Result<Erased, StoreError> {
    if prune.dry_run {
        conn.execute_batch("SAVEPOINT prune_dry_run")?;
    }
    let result = prune_now(conn, prune);
    if prune.dry_run {
        conn.execute_batch("ROLLBACK TO prune_dry_run; RELEASE prune_dry_run")?;
    }
    result
}

fn prune_now(conn: &Connection, prune: &Prune) -> Result<Erased, StoreError> {
    let limit = i64::try_from(prune.limit).unwrap_or(i64::MAX);
    let mut erased = Erased::default();
    if let Some(before) = prune.messages_before {
        let mut stmt = conn.prepare_cached(
            "SELECT c.id FROM conversations c
             WHERE c.last_activity_at < ?1
               AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                               AND m.role = 'user' AND m.answered_at IS NULL)
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.conversation_id = c.id
                               AND o.state = 'queued')
             ORDER BY c.last_activity_at LIMIT +?2",
        )?;
        let ids = stmt
            .query_map(params![before, limit], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        erased = erase_conversations_in(conn, &ids)?;
    }
    if let Some(before) = prune.traces_before {
        // The oldest rows only (ids follow time): a sweep never scans the
        // whole table to find that nothing is old.
        erased.traces += conn
            .prepare_cached(
                "DELETE FROM traces WHERE id IN (SELECT id FROM traces ORDER BY id LIMIT +?2)
                   AND started_at < ?1",
            )?
            .execute(params![before, limit])? as u64;
    }
    Ok(erased)
}
