//! The monitor port on SQLite: cheap reads for a live view beside a
//! running daemon.

use rusqlite::{OptionalExtension, params};

use super::rows::{CONVERSATION_COLUMNS, CONVERSATION_WIDTH, conversation_from_row};
use super::{SqliteStore, fts_phrase_query};
use crate::core::message::Channel;
use crate::core::ports::{
    ActivityBucket, ConversationFilter, ConversationOverview, MonitorStore, ProviderActivity,
    RuleCount, StoreError,
};

/// Matches read per step of the TUI's search.
const SEARCH_PAGE: i64 = 500;

impl MonitorStore for SqliteStore {
    fn violations_since(&self, since: i64) -> Result<Vec<RuleCount>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT v.rule, count(*), count(DISTINCT c.channel || ':' || c.sender)
             FROM guardrail_violations v
             JOIN messages m ON m.id = v.message_id
             JOIN conversations c ON c.id = m.conversation_id
             WHERE v.created_at >= ?1
             GROUP BY v.rule ORDER BY v.rule",
        )?;
        let rows = stmt.query_map(params![since], |r| {
            Ok(RuleCount {
                rule: r.get(0)?,
                messages: r.get::<_, i64>(1)?.max(0) as u64,
                senders: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn waiting_for_person(&self) -> Result<(u64, Option<i64>), StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(WAITING_FOR_PERSON)?;
        Ok(stmt.query_row([], |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get(1)?)))?)
    }

    fn change_counter(&self) -> Result<i64, StoreError> {
        // `data_version` changes when another connection commits; our own
        // commits show in `total_changes`. Together: any change.
        let conn = self.conn();
        let version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(version
            .wrapping_mul(1_000_003)
            .wrapping_add(conn.total_changes() as i64))
    }

    fn overview(
        &self,
        filter: &ConversationFilter,
        search: Option<&str>,
    ) -> Result<Vec<ConversationOverview>, StoreError> {
        let conn = self.reader();
        // The conversations with the newest matches, found by walking the
        // index newest first and stopping at the limit: a word found in
        // half of a million messages costs what the shown rows cost.
        let matching: Option<String> = match search.map(fts_phrase_query) {
            Some(None) => return Ok(Vec::new()),
            Some(Some(q)) => {
                // Page by page (each an ordered walk of the index with a
                // LIMIT, which the planner keeps in index order).
                let mut stmt = conn.prepare_cached(
                    "SELECT messages_fts.rowid, m.conversation_id FROM messages_fts
                     JOIN messages m ON m.id = messages_fts.rowid
                     JOIN conversations c ON c.id = m.conversation_id
                     WHERE messages_fts MATCH ?1 AND messages_fts.rowid < ?4
                       AND (?2 IS NULL OR c.channel = ?2) AND (?3 IS NULL OR c.sender = ?3)
                     ORDER BY messages_fts.rowid DESC LIMIT +?5",
                )?;
                let mut ids = std::collections::BTreeSet::new();
                let mut before = i64::MAX;
                'pages: loop {
                    let mut rows = stmt.query(params![
                        q,
                        filter.channel.map(Channel::as_str),
                        filter.sender,
                        before,
                        SEARCH_PAGE
                    ])?;
                    let mut read = 0;
                    while let Some(row) = rows.next()? {
                        read += 1;
                        before = row.get(0)?;
                        ids.insert(row.get::<_, i64>(1)?);
                        if filter.limit > 0 && ids.len() >= filter.limit {
                            break 'pages;
                        }
                    }
                    if read < SEARCH_PAGE {
                        break;
                    }
                }
                Some(serde_json::to_string(&ids).unwrap_or_default())
            }
            None => None,
        };
        let columns = CONVERSATION_COLUMNS
            .split(", ")
            .map(|c| format!("c.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {columns},
                (SELECT text FROM messages m WHERE m.conversation_id = c.id ORDER BY m.id DESC LIMIT 1),
                (SELECT count(*) FROM messages m
                 WHERE m.conversation_id = c.id AND m.role = 'user' AND m.answered_at IS NULL),
                (SELECT count(*) FROM outbox o WHERE o.conversation_id = c.id AND o.state = 'dead'
                    AND o.discarded_at IS NULL)
             FROM conversations c
             WHERE (?1 IS NULL OR c.channel = ?1) AND (?2 IS NULL OR c.sender = ?2)
               AND (?3 IS NULL OR c.id IN (SELECT value FROM json_each(?3)))
             ORDER BY c.last_activity_at DESC, c.id DESC LIMIT +?4"
        );
        let limit = if filter.limit == 0 {
            -1
        } else {
            filter.limit as i64
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![
                filter.channel.map(Channel::as_str),
                filter.sender,
                matching,
                limit
            ],
            |r| {
                Ok(ConversationOverview {
                    summary: conversation_from_row(r)?,
                    last_text: r
                        .get::<_, Option<String>>(CONVERSATION_WIDTH)?
                        .unwrap_or_default(),
                    pending: r.get::<_, i64>(CONVERSATION_WIDTH + 1)?.max(0) as u64,
                    failed: r.get::<_, i64>(CONVERSATION_WIDTH + 2)?.max(0) as u64,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn last_answer(&self, provider: &str) -> Result<Option<ProviderActivity>, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT provider, model, created_at, latency_ms FROM messages
                 WHERE provider = ?1 AND kind = 'answer'
                 ORDER BY created_at DESC LIMIT 1",
            )?
            .query_row(params![provider], |r| {
                Ok(ProviderActivity {
                    provider: r.get(0)?,
                    model: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    at: r.get(2)?,
                    latency_ms: r.get::<_, Option<i64>>(3)?.map(|l| l.max(0) as u64),
                })
            })
            .optional()?)
    }

    fn activity(
        &self,
        now: i64,
        bucket_ms: i64,
        buckets: usize,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let bucket_ms = bucket_ms.max(1);
        let since = now - bucket_ms * buckets as i64;
        let conn = self.conn();
        // An index range: the cost follows recent traffic, not history.
        let mut stmt = conn.prepare_cached(
            "SELECT created_at, role = 'user', latency_ms FROM messages WHERE created_at >= ?1",
        )?;
        let rows = stmt
            .query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::core::ports::activity_buckets(
            since, bucket_ms, buckets, rows,
        ))
    }
}

/// Conversations in `human` mode with unanswered messages, and the oldest
/// of those (the partial index finds the few in that mode).
pub(super) const WAITING_FOR_PERSON: &str = "SELECT count(DISTINCT c.id), min(m.created_at)
     FROM conversations c
     JOIN messages m ON m.conversation_id = c.id AND m.role = 'user' AND m.answered_at IS NULL
     WHERE c.mode = 'human'";
