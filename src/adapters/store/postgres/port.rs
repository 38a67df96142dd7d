//! The reading ports on Postgres: the work queue, conversations, prompts,
//! breakers, health.

use super::PostgresStore;
use super::rows::{self, BREAKER_COLUMNS, CONVERSATION_COLUMNS, MESSAGE_COLUMNS, PROMPT_COLUMNS};
use crate::core::breaker::Breaker;
use crate::core::limits::{MINUTE_MS, NOTICE_PROVIDER, Notice, Usage, UsageQuery};
use crate::core::message::{Channel, ConversationKey, Turn};
use crate::core::ports::{
    BreakerStore, ConversationFilter, ConversationReads, ConversationSummary, Ingest, Pending,
    PromptStore, PromptVersion, SearchHit, SearchOrder, Store, StoreError, StoreHealth,
    StoredMessage, Summary, TurnsAfter, WorkQueue,
};

/// The words of a search, or an error when it has none (as on SQLite:
/// every word must match, operators are taken literally).
pub(super) fn search_words(text: &str) -> Result<String, StoreError> {
    let words: Vec<&str> = crate::core::ports::search_words(text).collect();
    if words.is_empty() {
        return Err(StoreError::Invalid("the search text has no words".into()));
    }
    Ok(words.join(" "))
}

impl WorkQueue for PostgresStore {
    fn pending(&self, conversation_id: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let limit = limit as i64;
        self.read(move |c| {
            let found = c.query(
                "SELECT m.text, m.provider_message_id, m.provider_ts, m.created_at,
                        m.attachments, m.metadata, m.correlation_id,
                        c.channel, c.sender, c.thread, m.id,
                        CASE c.mode WHEN 'human' THEN coalesce(c.mode_at, 0) END
                 FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.conversation_id = $1 AND m.role = 'user' AND m.answered_at IS NULL
                 ORDER BY m.id LIMIT $2",
                &[&conversation_id, &limit],
            )?;
            rows::all(found, |r| {
                let (message_id, message) = rows::inbound(r)?;
                Ok(Pending {
                    message_id,
                    conversation_id,
                    message,
                    human_since: r.try_get(11)?,
                })
            })
        })
    }

    fn reply_to(&self, message_id: i64) -> Result<Option<StoredMessage>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.reply_to = $1 AND m.kind <> 'fallback'"
                ),
                &[&message_id],
            )?
            .as_ref()
            .map(rows::message)
            .transpose()
        })
    }

    fn last_reply_by(
        &self,
        conversation_id: i64,
        provider: &str,
        model: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (provider, model) = (provider.to_string(), model.to_string());
        self.read(move |c| {
            let r = c.query_one(
                "SELECT max(created_at) FROM messages
                 WHERE conversation_id = $1 AND role = 'assistant'
                   AND provider = $2 AND model = $3",
                &[&conversation_id, &provider, &model],
            )?;
            Ok(r.try_get::<_, Option<i64>>(0)?)
        })
    }

    fn latest_reply(&self, conversation_id: i64) -> Result<Option<StoredMessage>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.conversation_id = $1 AND m.role = 'assistant'
                     ORDER BY m.id DESC LIMIT 1"
                ),
                &[&conversation_id],
            )?
            .as_ref()
            .map(rows::message)
            .transpose()
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn claim(
        &self,
        kind: crate::core::ports::ClaimKind,
        key: i64,
        owner: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        self.read(move |c| super::work::claim(c, kind, key, &owner, lease_ms))
    }

    fn release(
        &self,
        kind: crate::core::ports::ClaimKind,
        key: i64,
        owner: &str,
    ) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.read(move |c| super::work::release(c, kind, key, &owner))
    }

    fn unclaimed_pending(&self, limit: usize) -> Result<Vec<i64>, StoreError> {
        let limit = limit as i64;
        self.read(move |c| super::work::unclaimed_pending(c, limit))
    }
}

impl Ingest for PostgresStore {
    fn record_violation(&self, message_id: i64, rule: &str, at: i64) -> Result<(), StoreError> {
        let rule = rule.to_string();
        self.read(move |c| {
            c.execute(
                "INSERT INTO guardrail_violations (message_id, rule, created_at)
                 VALUES ($1, $2, $3)",
                &[&message_id, &rule, &at],
            )?;
            Ok(())
        })
    }

    fn close_conversation(&self, key: &ConversationKey, at: i64) -> Result<bool, StoreError> {
        let key = key.clone();
        self.read(move |c| {
            let n = c.execute(
                "UPDATE conversations SET closed_at = $4
                 WHERE channel = $1 AND sender = $2 AND thread = $3 AND closed_at IS NULL",
                &[&key.channel.as_str(), &key.sender, &key.thread, &at],
            )?;
            Ok(n > 0)
        })
    }

    fn opted_out(&self, channel: Channel, sender: &str) -> Result<Option<i64>, StoreError> {
        let sender = sender.to_string();
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT at FROM opt_outs WHERE channel = $1 AND sender = $2",
                &[&channel.as_str(), &sender],
            )?
            .map(|r| r.get(0)))
        })
    }
}

impl ConversationReads for PostgresStore {
    fn latest_summary(&self, conversation_id: i64) -> Result<Option<Summary>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                &format!(
                    "SELECT {} FROM summaries WHERE conversation_id = $1
                     ORDER BY to_message_id DESC, id DESC LIMIT 1",
                    rows::SUMMARY_COLUMNS
                ),
                &[&conversation_id],
            )?
            .as_ref()
            .map(rows::summary)
            .transpose()
        })
    }

    fn recent_turns(
        &self,
        conversation_id: i64,
        up_to_message_id: i64,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let limit = limit as i64;
        let mut turns = self.read(move |c| {
            let found = c.query(
                "SELECT id, role, text, attachments FROM messages
                 WHERE conversation_id = $1 AND id <= $2
                 ORDER BY id DESC LIMIT $3",
                &[&conversation_id, &up_to_message_id, &limit],
            )?;
            rows::all(found, |r| rows::turn(r, 0))
        })?;
        turns.reverse();
        Ok(turns)
    }

    fn turns_after(
        &self,
        conversation_id: i64,
        after_message_id: i64,
        limit: usize,
    ) -> Result<TurnsAfter, StoreError> {
        let limit = limit as i64;
        self.read(move |c| {
            // One statement, one snapshot; the outer join keeps the count
            // when nothing came after.
            let found = c.query(
                "SELECT c.message_count, m.id, m.role, m.text, m.attachments
                 FROM conversations c
                 LEFT JOIN LATERAL (SELECT id, role, text, attachments FROM messages
                                    WHERE conversation_id = c.id AND id > $2
                                    ORDER BY id LIMIT $3) m ON true
                 WHERE c.id = $1
                 ORDER BY m.id",
                &[&conversation_id, &after_message_id, &limit],
            )?;
            let mut after = TurnsAfter::default();
            for r in &found {
                after.message_count = r.try_get(0)?;
                if r.try_get::<_, Option<i64>>(1)?.is_some() {
                    after.turns.push(rows::turn(r, 1)?);
                }
            }
            Ok(after)
        })
    }

    fn open_conversation(&self, key: &ConversationKey) -> Result<Option<i64>, StoreError> {
        let key = key.clone();
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT id FROM conversations
                 WHERE channel = $1 AND sender = $2 AND thread = $3 AND closed_at IS NULL",
                &[&key.channel.as_str(), &key.sender, &key.thread],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let channel = filter.channel.map(Channel::as_str);
        let sender = filter.sender.clone();
        let limit = (filter.limit > 0).then_some(filter.limit as i64);
        self.read(move |c| {
            let found = c.query(
                &format!(
                    "SELECT {CONVERSATION_COLUMNS} FROM conversations c
                     WHERE ($1::text IS NULL OR c.channel = $1)
                       AND ($2::text IS NULL OR c.sender = $2)
                     ORDER BY c.last_activity_at DESC, c.id DESC LIMIT $3"
                ),
                &[&channel, &sender, &limit],
            )?;
            rows::all(found, rows::conversation)
        })
    }

    fn conversation(&self, id: i64) -> Result<Option<ConversationSummary>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(rows::conversation)
            .transpose()
        })
    }

    fn messages(&self, conversation_id: i64) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(move |c| {
            let found = c.query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.conversation_id = $1 ORDER BY m.id"
                ),
                &[&conversation_id],
            )?;
            rows::all(found, rows::message)
        })
    }

    fn usage(&self, query: &UsageQuery) -> Result<Usage, StoreError> {
        let q = query.clone();
        self.read(move |c| usage(c, &q))
    }

    fn search(
        &self,
        query: &str,
        channel: Option<Channel>,
        limit: usize,
        order: SearchOrder,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let words = search_words(query)?;
        let channel = channel.map(Channel::as_str);
        let limit = limit.max(1) as i64;
        let order = match order {
            SearchOrder::Newest => "m.id DESC",
            SearchOrder::Relevance => "ts_rank(m.search, q) DESC, m.id DESC",
        };
        self.read(move |c| {
            let found = c.query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS}, c.channel, c.sender,
                        ts_headline('convagent', m.text, q,
                                    'StartSel=[, StopSel=], MaxWords=12, MinWords=4')
                     FROM messages m
                     JOIN conversations c ON c.id = m.conversation_id,
                          plainto_tsquery('convagent', $1) q
                     WHERE m.search @@ q AND ($2::text IS NULL OR c.channel = $2)
                     ORDER BY {order} LIMIT $3"
                ),
                &[&words, &channel, &limit],
            )?;
            rows::all(found, |r| {
                Ok(SearchHit {
                    message: rows::message(r)?,
                    channel: rows::channel(r.try_get(17)?)?,
                    sender: r.try_get(18)?,
                    snippet: r.try_get(19)?,
                })
            })
        })
    }
}

/// What limits count (see the SQLite adapter's `limits.rs`): bounded reads
/// whatever the sender's history.
fn usage(c: &mut postgres::Client, q: &UsageQuery) -> Result<Usage, StoreError> {
    let mut usage = Usage::default();
    let (channel, sender) = (q.channel.as_str(), q.sender.as_str());
    if q.count_at_most > 0
        && let (Some(&(_, first_at)), Some(&(last_id, _))) = (q.messages.first(), q.messages.last())
    {
        let reach = i64::from(q.count_at_most) + q.messages.len() as i64;
        // The newest messages of each of the sender's conversations active
        // in the window (usually one), up to the turn's last.
        let sent: Vec<(i64, i64)> = c
            .query(
                "SELECT m.id, m.created_at
                 FROM conversations c,
                      LATERAL (SELECT id, created_at FROM messages
                               WHERE conversation_id = c.id AND id <= $4 AND role = 'user'
                               ORDER BY id DESC LIMIT $5) m
                 WHERE c.channel = $1 AND c.sender = $2 AND c.last_activity_at > $3",
                &[&channel, &sender, &(first_at - MINUTE_MS), &last_id, &reach],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        usage.recent = q.recent_counts(&sent);
    }
    if let Some(day) = q.day {
        let row = c.query_one(
            "SELECT
                 coalesce((SELECT sum(u.tokens) FROM token_usage u
                           WHERE u.day = $1 AND u.conversation_id IN
                               (SELECT id FROM conversations WHERE channel = $2 AND sender = $3)),
                          0)::bigint,
                 coalesce((SELECT sum(tokens) FROM token_usage WHERE day = $1), 0)::bigint",
            &[&day, &channel, &sender],
        )?;
        usage.sender_tokens = row.get::<_, i64>(0).max(0) as u64;
        usage.all_tokens = row.get::<_, i64>(1).max(0) as u64;
    }
    usage.last_notice = c
        .query_opt(
            "SELECT id, model, created_at FROM messages
             WHERE conversation_id = $1 AND role = 'assistant' AND kind = 'refusal'
               AND provider = $2
             ORDER BY id DESC LIMIT 1",
            &[&q.conversation_id, &NOTICE_PROVIDER],
        )?
        .map(|r| Notice {
            reply_id: r.get(0),
            rule: r.get::<_, Option<String>>(1).unwrap_or_default(),
            at: r.get(2),
        });
    Ok(usage)
}

impl PromptStore for PostgresStore {
    fn current_prompt(&self) -> Result<Option<PromptVersion>, StoreError> {
        self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {PROMPT_COLUMNS} FROM system_prompts ORDER BY version DESC LIMIT 1"
                ),
                &[],
            )?
            .as_ref()
            .map(rows::prompt)
            .transpose()
        })
    }

    fn add_prompt(&self, text: &str, source: &str, at: i64) -> Result<PromptVersion, StoreError> {
        if text.trim().is_empty() {
            return Err(StoreError::Invalid("the system prompt is empty".into()));
        }
        let (text, source) = (text.to_string(), source.to_string());
        self.read(move |c| {
            let version: i64 = c
                .query_one(
                    "INSERT INTO system_prompts (text, created_at, source) VALUES ($1, $2, $3)
                     RETURNING version",
                    &[&text, &at, &source],
                )?
                .get(0);
            Ok(PromptVersion {
                version,
                text,
                created_at: at,
                source,
            })
        })
    }

    fn latest_prompt_from(&self, source: &str) -> Result<Option<PromptVersion>, StoreError> {
        let source = source.to_string();
        self.read(move |c| {
            c.query_opt(
                &format!(
                    "SELECT {PROMPT_COLUMNS} FROM system_prompts WHERE source = $1
                     ORDER BY version DESC LIMIT 1"
                ),
                &[&source],
            )?
            .as_ref()
            .map(rows::prompt)
            .transpose()
        })
    }
}

impl BreakerStore for PostgresStore {
    fn breaker(&self, provider: &str, model: &str) -> Result<Option<Breaker>, StoreError> {
        let (provider, model) = (provider.to_string(), model.to_string());
        self.read(move |c| {
            c.query_opt(
                &format!(
                    "SELECT {BREAKER_COLUMNS} FROM breakers WHERE provider = $1 AND model = $2"
                ),
                &[&provider, &model],
            )?
            .as_ref()
            .map(rows::breaker)
            .transpose()
        })
    }

    fn breakers(&self) -> Result<Vec<Breaker>, StoreError> {
        self.read(|c| {
            let found = c.query(
                &format!("SELECT {BREAKER_COLUMNS} FROM breakers ORDER BY provider, model"),
                &[],
            )?;
            rows::all(found, rows::breaker)
        })
    }
}

impl Store for PostgresStore {
    fn health(&self) -> Result<StoreHealth, StoreError> {
        let (applied, latest) = self.schema_version()?;
        Ok(StoreHealth {
            location: self.location().to_string(),
            schema_version: applied.max(0) as usize,
            latest_schema_version: latest.max(0) as usize,
            // Postgres checks its own pages; reaching it and reading the
            // schema version is what can be checked from here.
            integrity: Ok(()),
        })
    }
}
