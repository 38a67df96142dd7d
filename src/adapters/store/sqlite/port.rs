//! The [`Store`] port on SQLite: every read and write the core asks for.

use rusqlite::{OptionalExtension, params};
use rusqlite_migration::{Migrations, SchemaVersion};

use super::rows::*;
use super::{MIGRATIONS, RECENT_TURNS_SQL, SqliteStore, fts_phrase_query};
use crate::core::breaker::{Breaker, Transition};
use crate::core::limits::{Usage, UsageQuery};
use crate::core::media;
use crate::core::message::{
    Channel, ConversationKey, CorrelationId, InboundMessage, SENDER_NAME, Turn,
};
use crate::core::ports::{
    Accepted, BreakerStore, ConversationFilter, ConversationReads, ConversationSummary, Ingest,
    Pending, PromptStore, PromptVersion, ReplyKind, SearchHit, SearchOrder, Store, StoreError,
    StoreHealth, StoredMessage, Summary, TurnRecord, TurnsAfter, WorkQueue,
};

fn validate(message: &InboundMessage) -> Result<(), StoreError> {
    if message.provider_message_id.is_empty() {
        return Err(StoreError::Invalid("provider message id is empty".into()));
    }
    Ok(())
}

/// Stores one inbound message inside the caller's transaction, or finds
/// it stored before.
pub(super) fn accept_in(
    conn: &rusqlite::Connection,
    message: &InboundMessage,
) -> Result<Accepted, StoreError> {
    validate(message)?;
    let key = &message.key;
    let channel = key.channel.as_str();
    let seen: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT id, conversation_id FROM messages
             WHERE channel = ?1 AND provider_message_id = ?2",
        )?
        .query_row(params![channel, message.provider_message_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((message_id, conversation_id)) = seen {
        return Ok(Accepted {
            message_id,
            conversation_id,
            duplicate: true,
        });
    }
    let at = message.received_at;
    let conversation_id: i64 = conn
        .prepare_cached(
            "INSERT INTO conversations (channel, sender, thread, started_at, last_activity_at,
                 message_count)
             VALUES (?1, ?2, ?3, ?4, ?4, 1)
             ON CONFLICT (channel, sender, thread) WHERE closed_at IS NULL
             DO UPDATE SET last_activity_at = max(last_activity_at, excluded.last_activity_at),
                           message_count = message_count + 1
             RETURNING id",
        )?
        .query_row(params![channel, key.sender, key.thread, at], |r| r.get(0))?;
    if let Some(name) = message.metadata.get(SENDER_NAME).filter(|n| !n.is_empty()) {
        conn.prepare_cached(
            "UPDATE conversations SET display_name = ?2
             WHERE id = ?1 AND display_name IS NOT ?2",
        )?
        .execute(params![conversation_id, name])?;
    }
    let attachments = crate::core::media::to_stored(&message.attachments);
    let metadata =
        serde_json::to_string(&message.metadata).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO messages (conversation_id, role, channel, text, created_at,
             provider_message_id, provider_ts, correlation_id, attachments, metadata)
         VALUES (?1, 'user', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        conversation_id,
        channel,
        message.text,
        at,
        message.provider_message_id,
        message.provider_ts,
        message.correlation_id.0,
        attachments,
        metadata,
    ])?;
    let message_id = conn.last_insert_rowid();
    Ok(Accepted {
        message_id,
        conversation_id,
        duplicate: false,
    })
}

/// Stores a turn's outcome inside the caller's transaction: violations,
/// the reply (one answer per message: a second writer keeps the first),
/// the burst it covers, and (by trigger) its outbox row.
pub(super) fn turn_in(
    tx: &rusqlite::Connection,
    turn: &TurnRecord,
) -> Result<StoredMessage, StoreError> {
    let (message_id, covers, reply) = (turn.message_id, &turn.covers, &turn.reply);
    for (violating, rule) in &turn.violations {
        tx.prepare_cached(
            "INSERT INTO guardrail_violations (message_id, rule, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![violating, rule, reply.created_at])?;
    }
    let (conversation_id, channel, correlation_id): (i64, String, Option<String>) = tx
        .prepare_cached(
            "SELECT conversation_id, channel, correlation_id FROM messages
                 WHERE id = ?1 AND role = 'user'",
        )?
        .query_row(params![message_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("user message {message_id}")))?;
    // Exactly one answer per message: a second writer keeps the first.
    // Fallbacks are outside that index and never conflict.
    let inserted: Option<i64> = tx
        .prepare_cached(
            "INSERT INTO messages (conversation_id, role, channel, text, created_at,
                     correlation_id, reply_to, kind, provider, model, prompt_version,
                     prompt_tokens, completion_tokens, latency_ms)
                 VALUES (?1, 'assistant', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (reply_to) WHERE reply_to IS NOT NULL AND kind <> 'fallback'
                 DO NOTHING
                 RETURNING id",
        )?
        .query_row(
            params![
                conversation_id,
                channel,
                reply.text,
                reply.created_at,
                correlation_id,
                message_id,
                reply.kind.as_str(),
                reply.provider,
                reply.model,
                reply.stored_prompt_version(),
                reply.prompt_tokens,
                reply.completion_tokens,
                i64::try_from(reply.latency_ms).unwrap_or(i64::MAX),
            ],
            |r| r.get(0),
        )
        .optional()?;
    let id = match inserted {
        Some(id) => {
            tx.prepare_cached(
                "UPDATE conversations
                     SET message_count = message_count + 1,
                         last_activity_at = max(last_activity_at, ?2)
                     WHERE id = ?1",
            )?
            .execute(params![conversation_id, reply.created_at])?;
            if reply.kind != ReplyKind::Fallback {
                tx.prepare_cached("UPDATE messages SET answered_at = ?2 WHERE id = ?1")?
                    .execute(params![message_id, reply.created_at])?;
                // The burst this turn answered: only unanswered user
                // messages of the same conversation, so a stray id
                // cannot mark anything else.
                let mut cover = tx.prepare_cached(
                    "UPDATE messages SET answered_at = ?3, answered_by = ?2
                         WHERE id = ?1 AND conversation_id = ?4 AND role = 'user'
                           AND answered_at IS NULL",
                )?;
                for covered in covers.iter().filter(|&&c| c != message_id) {
                    cover.execute(params![covered, id, reply.created_at, conversation_id])?;
                }
            }
            id
        }
        None => tx
            .prepare_cached("SELECT id FROM messages WHERE reply_to = ?1 AND kind <> 'fallback'")?
            .query_row(params![message_id], |r| r.get(0))?,
    };
    message_by_id(tx, id)
}

pub(super) fn summary_in(
    conn: &rusqlite::Connection,
    summary: &Summary,
) -> Result<Summary, StoreError> {
    conn.prepare_cached(
        "INSERT INTO summaries (conversation_id, from_message_id, to_message_id, text,
             provider, model, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (conversation_id, from_message_id, to_message_id) DO NOTHING",
    )?
    .execute(params![
        summary.conversation_id,
        summary.from_message_id,
        summary.to_message_id,
        summary.text,
        summary.provider,
        summary.model,
        summary.created_at,
    ])?;
    Ok(conn
        .prepare_cached(
            "SELECT conversation_id, from_message_id, to_message_id, text, provider, model,
                created_at
             FROM summaries
             WHERE conversation_id = ?1 AND from_message_id = ?2 AND to_message_id = ?3",
        )?
        .query_row(
            params![
                summary.conversation_id,
                summary.from_message_id,
                summary.to_message_id
            ],
            summary_from_row,
        )?)
}

pub(super) fn breaker_in(
    conn: &rusqlite::Connection,
    breaker: &Breaker,
    transition: Option<&Transition>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO breakers (provider, model, state, failures, opened_at, next_probe_at,
             last_error, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (provider, model) DO UPDATE SET
             state = excluded.state, failures = excluded.failures,
             opened_at = excluded.opened_at, next_probe_at = excluded.next_probe_at,
             last_error = excluded.last_error, updated_at = excluded.updated_at",
    )?
    .execute(params![
        breaker.provider,
        breaker.model,
        breaker.state.as_str(),
        breaker.failures,
        breaker.opened_at,
        breaker.next_probe_at,
        breaker.last_error,
        breaker.updated_at,
    ])?;
    if let Some(t) = transition {
        conn.prepare_cached(
            "INSERT INTO breaker_transitions (provider, model, from_state, to_state, reason, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            breaker.provider,
            breaker.model,
            t.from.as_str(),
            t.to.as_str(),
            t.reason,
            t.at
        ])?;
    }
    Ok(())
}

impl WorkQueue for SqliteStore {
    fn pending(&self, conversation_id: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT m.text, m.provider_message_id, m.provider_ts, m.created_at,
                    m.attachments, m.metadata, m.correlation_id,
                    c.channel, c.sender, c.thread, m.id,
                    CASE c.mode WHEN 'human' THEN coalesce(c.mode_at, 0) END
             FROM messages m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = ?1 AND m.role = 'user' AND m.answered_at IS NULL
             ORDER BY m.id LIMIT +?2",
        )?;
        let rows = stmt.query_map(params![conversation_id, limit as i64], |r| {
            let attachments: String = r.get(4)?;
            let metadata: String = r.get(5)?;
            let channel: String = r.get(7)?;
            let message = InboundMessage {
                key: ConversationKey::new(
                    parse_channel(&channel, 7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                ),
                text: r.get(0)?,
                provider_message_id: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                provider_ts: r.get(2)?,
                received_at: r.get(3)?,
                attachments: serde_json::from_str(&attachments)
                    .map_err(|e| bad_value(4, e.to_string()))?,
                metadata: serde_json::from_str(&metadata)
                    .map_err(|e| bad_value(5, e.to_string()))?,
                correlation_id: CorrelationId(r.get::<_, Option<String>>(6)?.unwrap_or_default()),
            };
            Ok(Pending {
                message_id: r.get(10)?,
                conversation_id,
                message,
                human_since: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn reply_to(&self, message_id: i64) -> Result<Option<StoredMessage>, StoreError> {
        let conn = self.reader();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m
             WHERE m.reply_to = ?1 AND m.kind <> 'fallback'"
        );
        Ok(conn
            .query_row(&sql, params![message_id], message_from_row)
            .optional()?)
    }

    fn last_reply_by(
        &self,
        conversation_id: i64,
        provider: &str,
        model: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .reader()
            .prepare_cached(
                "SELECT max(created_at) FROM messages
                 WHERE conversation_id = ?1 AND role = 'assistant'
                   AND provider = ?2 AND model = ?3",
            )?
            .query_row(params![conversation_id, provider, model], |r| r.get(0))?)
    }

    fn latest_reply(&self, conversation_id: i64) -> Result<Option<StoredMessage>, StoreError> {
        let conn = self.reader();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m
             WHERE m.conversation_id = ?1 AND m.role = 'assistant'
             ORDER BY m.id DESC LIMIT 1"
        );
        Ok(conn
            .prepare_cached(&sql)?
            .query_row(params![conversation_id], message_from_row)
            .optional()?)
    }
}

impl Ingest for SqliteStore {
    fn record_violation(&self, message_id: i64, rule: &str, at: i64) -> Result<(), StoreError> {
        self.conn().prepare_cached("INSERT INTO guardrail_violations (message_id, rule, created_at) VALUES (?1, ?2, ?3)")?.execute(
            params![message_id, rule, at],
        )?;
        Ok(())
    }

    fn close_conversation(&self, key: &ConversationKey, at: i64) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached(
                "UPDATE conversations SET closed_at = ?4
             WHERE channel = ?1 AND sender = ?2 AND thread = ?3 AND closed_at IS NULL",
            )?
            .execute(params![key.channel.as_str(), key.sender, key.thread, at])?;
        Ok(n > 0)
    }

    fn opted_out(&self, channel: Channel, sender: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .reader()
            .prepare_cached("SELECT at FROM opt_outs WHERE channel = ?1 AND sender = ?2")?
            .query_row(params![channel.as_str(), sender], |r| r.get(0))
            .optional()?)
    }
}

impl ConversationReads for SqliteStore {
    fn latest_summary(&self, conversation_id: i64) -> Result<Option<Summary>, StoreError> {
        Ok(self
            .reader()
            .prepare_cached(
                "SELECT conversation_id, from_message_id, to_message_id, text, provider, model,
                        created_at
                 FROM summaries WHERE conversation_id = ?1
                 ORDER BY to_message_id DESC, id DESC LIMIT 1",
            )?
            .query_row(params![conversation_id], summary_from_row)
            .optional()?)
    }

    fn recent_turns(
        &self,
        conversation_id: i64,
        up_to_message_id: i64,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(RECENT_TURNS_SQL)?;
        let mut turns = stmt
            .query_map(
                params![conversation_id, up_to_message_id, limit as i64],
                |r| {
                    let role: String = r.get(1)?;
                    let attachments: String = r.get(3)?;
                    let (text, images) = media::stored_for_model(r.get(2)?, &attachments);
                    Ok(Turn {
                        message_id: r.get(0)?,
                        role: parse_role(&role, 1)?,
                        text,
                        images,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        turns.reverse();
        Ok(turns)
    }

    fn turns_after(
        &self,
        conversation_id: i64,
        after_message_id: i64,
        limit: usize,
    ) -> Result<TurnsAfter, StoreError> {
        let conn = self.reader();
        // One statement, one snapshot. The outer join keeps the count when
        // nothing came after.
        let mut stmt = conn.prepare_cached(
            "SELECT c.message_count, m.id, m.role, m.text, m.attachments
             FROM conversations c
             LEFT JOIN messages m ON m.conversation_id = c.id AND m.id > ?2
             WHERE c.id = ?1
             ORDER BY m.id LIMIT +?3",
        )?;
        let mut after = TurnsAfter::default();
        let mut rows = stmt.query(params![conversation_id, after_message_id, limit as i64])?;
        while let Some(r) = rows.next()? {
            after.message_count = r.get(0)?;
            if let Some(message_id) = r.get::<_, Option<i64>>(1)? {
                let role: String = r.get(2)?;
                let attachments: String = r.get(4)?;
                let (text, images) = media::stored_for_model(r.get(3)?, &attachments);
                after.turns.push(Turn {
                    message_id,
                    role: parse_role(&role, 2)?,
                    text,
                    images,
                });
            }
        }
        Ok(after)
    }

    fn usage(&self, query: &UsageQuery) -> Result<Usage, StoreError> {
        super::limits::usage(&self.reader(), query)
    }

    fn open_conversation(&self, key: &ConversationKey) -> Result<Option<i64>, StoreError> {
        let conn = self.reader();
        Ok(conn
            .query_row(
                "SELECT id FROM conversations
                 WHERE channel = ?1 AND sender = ?2 AND thread = ?3 AND closed_at IS NULL",
                params![key.channel.as_str(), key.sender, key.thread],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let conn = self.reader();
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations
             WHERE (?1 IS NULL OR channel = ?1) AND (?2 IS NULL OR sender = ?2)
             ORDER BY last_activity_at DESC, id DESC LIMIT +?3"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let limit = if filter.limit == 0 {
            -1
        } else {
            filter.limit as i64
        };
        let rows = stmt.query_map(
            params![filter.channel.map(Channel::as_str), filter.sender, limit],
            conversation_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn conversation(&self, id: i64) -> Result<Option<ConversationSummary>, StoreError> {
        let conn = self.reader();
        let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1");
        Ok(conn
            .query_row(&sql, params![id], conversation_from_row)
            .optional()?)
    }

    fn messages(&self, conversation_id: i64) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.reader();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = ?1 ORDER BY m.id"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![conversation_id], message_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn search(
        &self,
        query: &str,
        channel: Option<Channel>,
        limit: usize,
        order: SearchOrder,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let fts_query = fts_phrase_query(query)
            .ok_or_else(|| StoreError::Invalid("the search text has no words".into()))?;
        let conn = self.reader();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS}, c.channel, c.sender,
                    snippet(messages_fts, 0, '[', ']', '…', 12)
             FROM messages_fts
             JOIN messages m ON m.id = messages_fts.rowid
             JOIN conversations c ON c.id = m.conversation_id
             WHERE messages_fts MATCH ?1 AND (?2 IS NULL OR c.channel = ?2)
             ORDER BY {} LIMIT +?3",
            match order {
                // FTS5 walks its index in rowid order and stops at the limit;
                // ids grow with arrival, so this is newest first.
                SearchOrder::Newest => "messages_fts.rowid DESC",
                SearchOrder::Relevance => "rank",
            }
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![fts_query, channel.map(Channel::as_str), limit.max(1) as i64],
            |r| {
                let channel: String = r.get(17)?;
                Ok(SearchHit {
                    message: message_from_row(r)?,
                    channel: parse_channel(&channel, 17)?,
                    sender: r.get(18)?,
                    snippet: r.get(19)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl PromptStore for SqliteStore {
    fn current_prompt(&self) -> Result<Option<PromptVersion>, StoreError> {
        let sql =
            format!("SELECT {PROMPT_COLUMNS} FROM system_prompts ORDER BY version DESC LIMIT 1");
        Ok(self
            .reader()
            .query_row(&sql, [], prompt_from_row)
            .optional()?)
    }

    fn add_prompt(&self, text: &str, source: &str, at: i64) -> Result<PromptVersion, StoreError> {
        if text.trim().is_empty() {
            return Err(StoreError::Invalid("the system prompt is empty".into()));
        }
        let conn = self.conn();
        let version = conn
            .prepare_cached(
                "INSERT INTO system_prompts (text, created_at, source) VALUES (?1, ?2, ?3)
                 RETURNING version",
            )?
            .query_row(params![text, at, source], |r| r.get(0))?;
        Ok(PromptVersion {
            version,
            text: text.to_string(),
            created_at: at,
            source: source.to_string(),
        })
    }

    fn latest_prompt_from(&self, source: &str) -> Result<Option<PromptVersion>, StoreError> {
        let sql = format!(
            "SELECT {PROMPT_COLUMNS} FROM system_prompts WHERE source = ?1
             ORDER BY version DESC LIMIT 1"
        );
        Ok(self
            .reader()
            .query_row(&sql, params![source], prompt_from_row)
            .optional()?)
    }
}

impl BreakerStore for SqliteStore {
    fn breaker(&self, provider: &str, model: &str) -> Result<Option<Breaker>, StoreError> {
        let sql =
            format!("SELECT {BREAKER_COLUMNS} FROM breakers WHERE provider = ?1 AND model = ?2");
        Ok(self
            .conn()
            .query_row(&sql, params![provider, model], breaker_from_row)
            .optional()?)
    }

    fn breakers(&self) -> Result<Vec<Breaker>, StoreError> {
        let conn = self.reader();
        let sql = format!("SELECT {BREAKER_COLUMNS} FROM breakers ORDER BY provider, model");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], breaker_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Store for SqliteStore {
    fn health(&self) -> Result<StoreHealth, StoreError> {
        let conn = self.conn();
        let migrations = Migrations::from_slice(MIGRATIONS);
        let schema_version = match migrations
            .current_version(&conn)
            .map_err(|e| StoreError::Backend(e.to_string()))?
        {
            SchemaVersion::NoneSet => 0,
            SchemaVersion::Inside(v) | SchemaVersion::Outside(v) => v.get(),
        };
        let check: String = conn
            .prepare_cached("PRAGMA quick_check")?
            .query_row([], |r| r.get(0))?;
        Ok(StoreHealth {
            location: self.path.display().to_string(),
            schema_version,
            latest_schema_version: MIGRATIONS.len(),
            integrity: if check == "ok" { Ok(()) } else { Err(check) },
        })
    }
}
