//! The outbox and trace ports on Postgres: reads (writes are in
//! `work.rs`).

use super::PostgresStore;
use super::rows::{self, ENTRY_SELECT, ITEM_SELECT, TRACE_COLUMNS};
use crate::core::ports::{
    OutboxEntry, OutboxItem, OutboxStats, OutboxStore, OutboxUpdate, OutboxView, StoreError,
    TraceEvent, TraceStore, Write, Writes,
};

/// The head of each conversation's queue: a later reply never overtakes
/// an earlier one that waits to retry.
const IS_HEAD: &str = "o.id = (SELECT min(h.id) FROM outbox h
                               WHERE h.conversation_id = o.conversation_id
                                 AND h.state = 'queued')";

impl OutboxStore for PostgresStore {
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let limit = limit as i64;
        self.read(move |c| {
            let found = c.query(
                &format!(
                    "{ITEM_SELECT} WHERE o.state = 'queued' AND o.next_attempt_at <= $1
                       AND {IS_HEAD}
                     ORDER BY o.id LIMIT $2"
                ),
                &[&now, &limit],
            )?;
            rows::all(found, rows::item)
        })
    }

    fn head(&self, conversation_id: i64) -> Result<Option<OutboxItem>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                &format!(
                    "{ITEM_SELECT} WHERE o.conversation_id = $1 AND o.state = 'queued'
                     ORDER BY o.id LIMIT 1"
                ),
                &[&conversation_id],
            )?
            .as_ref()
            .map(rows::item)
            .transpose()
        })
    }

    fn next_due_after(&self, now: i64) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            Ok(c.query_one(
                &format!(
                    "SELECT min(o.next_attempt_at) FROM outbox o
                     WHERE o.state = 'queued' AND o.next_attempt_at > $1 AND {IS_HEAD}"
                ),
                &[&now],
            )?
            .get(0))
        })
    }

    fn update_outbox(&self, id: i64, update: &OutboxUpdate, at: i64) -> Result<(), StoreError> {
        self.write_now(Write::Outbox {
            id,
            update: update.clone(),
            at,
        })
        .map(drop)
    }

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.read(|c| {
            let r = c.query_one(
                "SELECT count(*) FILTER (WHERE state = 'queued'),
                        count(*) FILTER (WHERE state = 'dead' AND discarded_at IS NULL)
                 FROM outbox",
                &[],
            )?;
            Ok(OutboxStats {
                queued: r.get::<_, i64>(0).max(0) as u64,
                dead: r.get::<_, i64>(1).max(0) as u64,
            })
        })
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
            OutboxView::All => "true",
        };
        let limit = limit as i64;
        self.read(move |c| {
            let found = c.query(
                &format!("{ENTRY_SELECT} WHERE {only} ORDER BY o.id LIMIT $1"),
                &[&limit],
            )?;
            rows::all(found, rows::entry)
        })
    }

    fn outbox_entry(&self, id: i64) -> Result<Option<OutboxEntry>, StoreError> {
        self.read(move |c| {
            c.query_opt(&format!("{ENTRY_SELECT} WHERE o.id = $1"), &[&id])?
                .as_ref()
                .map(rows::entry)
                .transpose()
        })
    }

    fn conversations_with_pending(&self, limit: usize) -> Result<Vec<i64>, StoreError> {
        let limit = limit as i64;
        self.read(move |c| {
            Ok(c.query(
                "SELECT DISTINCT conversation_id FROM messages
                 WHERE role = 'user' AND answered_at IS NULL
                 ORDER BY conversation_id LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn untaken_waiting(
        &self,
        received_before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let limit = limit as i64;
        self.read(move |c| {
            Ok(c.query(
                "SELECT m.conversation_id, min(m.created_at) FROM messages m
                 JOIN conversations c ON c.id = m.conversation_id AND c.mode = 'agent'
                 LEFT JOIN takes t ON t.message_id = m.id
                 WHERE m.role = 'user' AND m.answered_at IS NULL AND m.channel <> 'cli'
                   AND t.message_id IS NULL AND m.created_at <= $1
                 GROUP BY m.conversation_id ORDER BY m.conversation_id LIMIT $2",
                &[&received_before, &limit],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
    }
}

impl TraceStore for PostgresStore {
    fn trace(&self, correlation_id: &str) -> Result<Vec<TraceEvent>, StoreError> {
        let correlation_id = correlation_id.to_string();
        self.read(move |c| {
            let found = c.query(
                &format!(
                    "SELECT {TRACE_COLUMNS} FROM traces WHERE correlation_id = $1 ORDER BY id"
                ),
                &[&correlation_id],
            )?;
            rows::all(found, rows::trace)
        })
    }
}
