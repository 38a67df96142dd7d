//! The outbox and trace ports on SQLite.

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::rows::{bad_value, parse_channel};
use crate::core::message::ConversationKey;
use crate::core::ports::{
    OutboxEntry, OutboxItem, OutboxStats, OutboxStore, OutboxUpdate, OutboxView, StoreError,
    TraceEvent, TraceStore,
};
use crate::core::trace::{Outcome, Stage};

/// The columns `item_from_row` reads, before a query's `WHERE`.
macro_rules! item_select {
    () => {
        "SELECT o.id, o.reply_id, o.conversation_id, c.channel, c.sender, c.thread, m.text,
                o.parts_sent, o.attempts, m.correlation_id, o.next_attempt_at, o.created_at,
                (SELECT p.at FROM opt_outs p WHERE p.channel = c.channel AND p.sender = c.sender)
         FROM outbox o
         JOIN conversations c ON c.id = o.conversation_id
         JOIN messages m ON m.id = o.reply_id"
    };
}

impl OutboxStore for SqliteStore {
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.reader();
        // The head of each conversation's queue, if it is due: a later
        // reply never overtakes an earlier one that is waiting to retry.
        let mut stmt = conn.prepare_cached(concat!(
            item_select!(),
            " WHERE o.state = 'queued' AND o.next_attempt_at <= ?1
               AND o.id = (SELECT min(h.id) FROM outbox h
                           WHERE h.conversation_id = o.conversation_id AND h.state = 'queued')
             ORDER BY o.id LIMIT +?2"
        ))?;
        let rows = stmt.query_map(params![now, limit as i64], item_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn head(&self, conversation_id: i64) -> Result<Option<OutboxItem>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(concat!(
            item_select!(),
            " WHERE o.conversation_id = ?1 AND o.state = 'queued' ORDER BY o.id LIMIT 1"
        ))?;
        Ok(stmt
            .query_row(params![conversation_id], item_from_row)
            .optional()?)
    }

    fn next_due_after(&self, now: i64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .reader()
            // Heads of queues only: a reply queued behind one that waits to
            // retry is not due before it, however old it is.
            .prepare_cached(
                "SELECT min(o.next_attempt_at) FROM outbox o
                 WHERE o.state = 'queued' AND o.next_attempt_at > ?1
                   AND o.id = (SELECT min(h.id) FROM outbox h
                               WHERE h.conversation_id = o.conversation_id AND h.state = 'queued')",
            )?
            .query_row([now], |r| r.get(0))?)
    }

    fn update_outbox(&self, id: i64, update: &OutboxUpdate, at: i64) -> Result<(), StoreError> {
        update_in(&self.conn(), id, update, at)
    }

    fn outbox_entries(
        &self,
        view: OutboxView,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let only = match view {
            OutboxView::Open => "o.state IN ('queued', 'dead') AND o.discarded_at IS NULL",
            OutboxView::Queued => "o.state = 'queued' AND o.discarded_at IS NULL",
            OutboxView::Dead => "o.state = 'dead' AND o.discarded_at IS NULL",
            OutboxView::All => "1",
        };
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{ENTRY_SELECT} WHERE {only} ORDER BY o.id LIMIT +?1"
        ))?;
        let rows = stmt.query_map(params![limit as i64], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn outbox_entry(&self, id: i64) -> Result<Option<OutboxEntry>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{ENTRY_SELECT} WHERE o.id = ?1"))?;
        Ok(stmt.query_row(params![id], entry_from_row).optional()?)
    }

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        Ok(self
            .reader()
            .prepare_cached(
                "SELECT count(*) FILTER (WHERE state = 'queued'),
                 count(*) FILTER (WHERE state = 'dead' AND discarded_at IS NULL)
             FROM outbox",
            )?
            .query_row([], |r| {
                Ok(OutboxStats {
                    queued: r.get::<_, i64>(0)? as u64,
                    dead: r.get::<_, i64>(1)? as u64,
                })
            })?)
    }

    fn conversations_with_pending(&self, limit: usize) -> Result<Vec<i64>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT conversation_id FROM messages
             WHERE role = 'user' AND answered_at IS NULL
             ORDER BY conversation_id LIMIT +?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn untaken_waiting(
        &self,
        received_before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT m.conversation_id, min(m.created_at) FROM messages m
             JOIN conversations c ON c.id = m.conversation_id AND c.mode = 'agent'
             LEFT JOIN takes t ON t.message_id = m.id
             WHERE m.role = 'user' AND m.answered_at IS NULL AND m.channel <> 'cli'
               AND t.message_id IS NULL AND m.created_at <= ?1
             GROUP BY m.conversation_id ORDER BY m.conversation_id LIMIT +?2",
        )?;
        let rows = stmt.query_map(params![received_before, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Records what became of a send, inside the caller's transaction.
pub(super) fn update_in(
    conn: &Connection,
    id: i64,
    update: &OutboxUpdate,
    at: i64,
) -> Result<(), StoreError> {
    let push_id = |provider_id: &Option<String>| -> Result<(), StoreError> {
        if let Some(pid) = provider_id {
            conn.prepare_cached("UPDATE outbox SET provider_message_ids = json_insert(provider_message_ids, '$[#]', ?2)
                     WHERE id = ?1")?.execute(
                    params![id, pid],
                )?;
        }
        Ok(())
    };
    let n = match update {
        OutboxUpdate::Progress {
            parts_sent,
            provider_message_id,
        } => {
            push_id(provider_message_id)?;
            conn.prepare_cached(
                "UPDATE outbox SET parts_sent = ?2, attempts = 0, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, parts_sent, at])?
        }
        OutboxUpdate::Sent {
            provider_message_id,
            dry_run,
        } => {
            push_id(provider_message_id)?;
            conn.prepare_cached(
                "UPDATE outbox SET state = 'sent', dry_run = ?2, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, dry_run, at])?
        }
        OutboxUpdate::Retry {
            next_attempt_at,
            attempts,
            error,
        } => conn
            .prepare_cached(
                "UPDATE outbox SET attempts = ?5, next_attempt_at = ?2, last_error = ?3,
                     updated_at = ?4
                 WHERE id = ?1",
            )?
            .execute(params![id, next_attempt_at, error, at, attempts])?,
        OutboxUpdate::Dead { code, error } => conn
            .prepare_cached(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, error_code = ?2,
                     last_error = ?3, updated_at = ?4
                 WHERE id = ?1",
            )?
            .execute(params![id, code, error, at])?,
        OutboxUpdate::Requeue => conn
            .prepare_cached(
                "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = ?2,
                     updated_at = ?2
                 WHERE id = ?1 AND state = 'dead' AND discarded_at IS NULL",
            )?
            .execute(params![id, at])?,
        OutboxUpdate::Discard => conn
            .prepare_cached(
                "UPDATE outbox SET state = 'dead', discarded_at = ?2, updated_at = ?2,
                     error_code = CASE state WHEN 'queued' THEN 'discarded' ELSE error_code END
                 WHERE id = ?1 AND state IN ('queued', 'dead') AND discarded_at IS NULL",
            )?
            .execute(params![id, at])?,
    };
    if n == 0 {
        return Err(update.not_applied(id));
    }
    Ok(())
}

pub(super) fn traces_in(conn: &Connection, events: &[TraceEvent]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO traces (correlation_id, stage, attempt, started_at, duration_us, outcome,
             detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in events {
        stmt.execute(params![
            e.correlation_id,
            e.stage.as_str(),
            e.attempt,
            e.started_at,
            i64::try_from(e.duration_us).unwrap_or(i64::MAX),
            e.outcome.as_str(),
            e.detail
        ])?;
    }
    Ok(())
}

impl TraceStore for SqliteStore {
    fn trace(&self, correlation_id: &str) -> Result<Vec<TraceEvent>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT correlation_id, stage, started_at, duration_us, outcome, detail, attempt
             FROM traces WHERE correlation_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![correlation_id], |r| {
            let stage: String = r.get(1)?;
            let (stage, old_attempt) = Stage::parse(&stage)
                .ok_or_else(|| bad_value(1, format!("unknown trace stage {stage:?}")))?;
            Ok(TraceEvent {
                correlation_id: r.get(0)?,
                stage,
                attempt: r.get::<_, Option<u32>>(6)?.or(old_attempt),
                started_at: r.get(2)?,
                duration_us: r.get::<_, i64>(3)?.max(0) as u64,
                outcome: Outcome::parse(&r.get::<_, String>(4)?),
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxItem> {
    let channel: String = r.get(3)?;
    Ok(OutboxItem {
        id: r.get(0)?,
        reply_id: r.get(1)?,
        conversation_id: r.get(2)?,
        key: ConversationKey::new(
            parse_channel(&channel, 3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
        ),
        text: r.get(6)?,
        parts_sent: r.get(7)?,
        attempts: r.get(8)?,
        correlation_id: r.get(9)?,
        next_attempt_at: r.get(10)?,
        created_at: r.get(11)?,
        opted_out_since: r.get(12)?,
    })
}

pub(super) const ENTRY_SELECT: &str =
    "SELECT o.id, o.conversation_id, c.channel, c.sender, c.thread,
        CASE WHEN o.discarded_at IS NOT NULL THEN 'discarded' ELSE o.state END,
        o.attempts, o.created_at, o.updated_at, o.next_attempt_at, o.error_code,
        o.last_error, m.text, m.correlation_id
     FROM outbox o
     JOIN conversations c ON c.id = o.conversation_id
     JOIN messages m ON m.id = o.reply_id";

pub(super) fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let channel: String = r.get(2)?;
    Ok(OutboxEntry {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        channel: parse_channel(&channel, 2)?,
        recipient: r.get(3)?,
        thread: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        next_attempt_at: r.get(9)?,
        error_code: r.get(10)?,
        last_error: r.get(11)?,
        text: r.get(12)?,
        correlation_id: r.get(13)?,
    })
}
