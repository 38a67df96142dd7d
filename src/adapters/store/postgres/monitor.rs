//! The monitor port on Postgres: cheap reads for a live view (the TUI,
//! `doctor`) beside running daemons.

use super::PostgresStore;
use super::port::search_words;
use super::rows::{self, CONVERSATION_COLUMNS, CONVERSATION_WIDTH};
use crate::core::message::Channel;
use crate::core::ports::{
    ActivityBucket, ConversationFilter, ConversationOverview, MonitorStore, ProviderActivity,
    RuleCount, StoreError,
};

impl MonitorStore for PostgresStore {
    fn last_answer(&self, provider: &str) -> Result<Option<ProviderActivity>, StoreError> {
        let provider = provider.to_string();
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT provider, model, created_at, latency_ms FROM messages
                 WHERE provider = $1 AND kind = 'answer'
                 ORDER BY created_at DESC LIMIT 1",
                &[&provider],
            )?
            .map(|r| ProviderActivity {
                provider: r.get(0),
                model: r.get::<_, Option<String>>(1).unwrap_or_default(),
                at: r.get(2),
                latency_ms: r.get::<_, Option<i64>>(3).map(|l| l.max(0) as u64),
            }))
        })
    }

    /// The position of the write-ahead log: it moves with every commit of
    /// any process (and now and then without one, which costs a monitor
    /// one needless refresh).
    fn change_counter(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            Ok(
                c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])?
                    .get(0),
            )
        })
    }

    fn overview(
        &self,
        filter: &ConversationFilter,
        search: Option<&str>,
    ) -> Result<Vec<ConversationOverview>, StoreError> {
        let words = match search.map(search_words) {
            Some(Err(_)) => return Ok(Vec::new()),
            Some(Ok(words)) => Some(words),
            None => None,
        };
        let channel = filter.channel.map(Channel::as_str);
        let sender = filter.sender.clone();
        let limit = (filter.limit > 0).then_some(filter.limit as i64);
        self.read(move |c| {
            // The conversations with the newest matches.
            let matching: Option<Vec<i64>> = match &words {
                None => None,
                Some(words) => Some(
                    c.query(
                        "SELECT m.conversation_id FROM messages m
                         JOIN conversations c ON c.id = m.conversation_id
                         WHERE m.search @@ plainto_tsquery('convagent', $1)
                           AND ($2::text IS NULL OR c.channel = $2)
                           AND ($3::text IS NULL OR c.sender = $3)
                         GROUP BY m.conversation_id ORDER BY max(m.id) DESC LIMIT $4",
                        &[words, &channel, &sender, &limit],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect(),
                ),
            };
            let found = c.query(
                &format!(
                    "SELECT {CONVERSATION_COLUMNS},
                        (SELECT text FROM messages m WHERE m.conversation_id = c.id
                         ORDER BY m.id DESC LIMIT 1),
                        (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id
                           AND m.role = 'user' AND m.answered_at IS NULL),
                        (SELECT count(*) FROM outbox o WHERE o.conversation_id = c.id
                           AND o.state = 'dead' AND o.discarded_at IS NULL)
                     FROM conversations c
                     WHERE ($1::text IS NULL OR c.channel = $1)
                       AND ($2::text IS NULL OR c.sender = $2)
                       AND ($3::bigint[] IS NULL OR c.id = ANY($3))
                     ORDER BY c.last_activity_at DESC, c.id DESC LIMIT $4"
                ),
                &[&channel, &sender, &matching, &limit],
            )?;
            rows::all(found, |r| {
                Ok(ConversationOverview {
                    summary: rows::conversation(r)?,
                    last_text: r
                        .try_get::<_, Option<String>>(CONVERSATION_WIDTH)?
                        .unwrap_or_default(),
                    pending: r.try_get::<_, i64>(CONVERSATION_WIDTH + 1)?.max(0) as u64,
                    failed: r.try_get::<_, i64>(CONVERSATION_WIDTH + 2)?.max(0) as u64,
                })
            })
        })
    }

    fn activity(
        &self,
        now: i64,
        bucket_ms: i64,
        buckets: usize,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let bucket_ms = bucket_ms.max(1);
        let since = now - bucket_ms * buckets as i64;
        let found = self.read(move |c| {
            Ok(c.query(
                "SELECT created_at, role = 'user', latency_ms FROM messages
                 WHERE created_at >= $1",
                &[&since],
            )?
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, bool>(1),
                    r.get::<_, Option<i64>>(2),
                )
            })
            .collect::<Vec<_>>())
        })?;
        Ok(crate::core::ports::activity_buckets(
            since, bucket_ms, buckets, found,
        ))
    }

    fn waiting_for_person(&self) -> Result<(u64, Option<i64>), StoreError> {
        self.read(|c| {
            let row = c.query_one(
                "SELECT count(DISTINCT c.id), min(m.created_at)
                 FROM conversations c
                 JOIN messages m ON m.conversation_id = c.id AND m.role = 'user'
                   AND m.answered_at IS NULL
                 WHERE c.mode = 'human'",
                &[],
            )?;
            Ok((row.get::<_, i64>(0).max(0) as u64, row.get(1)))
        })
    }

    fn violations_since(&self, since: i64) -> Result<Vec<RuleCount>, StoreError> {
        self.read(move |c| {
            Ok(c.query(
                "SELECT v.rule, count(*), count(DISTINCT c.channel || ':' || c.sender)
                 FROM guardrail_violations v
                 JOIN messages m ON m.id = v.message_id
                 JOIN conversations c ON c.id = m.conversation_id
                 WHERE v.created_at >= $1
                 GROUP BY v.rule ORDER BY v.rule",
                &[&since],
            )?
            .iter()
            .map(|r| RuleCount {
                rule: r.get(0),
                messages: r.get::<_, i64>(1).max(0) as u64,
                senders: r.get::<_, i64>(2).max(0) as u64,
            })
            .collect())
        })
    }
}
