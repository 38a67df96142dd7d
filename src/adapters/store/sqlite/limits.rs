//! What limits need from SQLite (`core::limits`): a sender's messages in
//! the last minute, tokens used per day (kept by `token_usage`'s trigger,
//! migration 0008), the conversation's last notice; and `Write::Hold`.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::message_by_id;
use crate::core::limits::{MINUTE_MS, NOTICE_PROVIDER, Notice, Usage, UsageQuery};
use crate::core::ports::{Held, StoreError, StoredMessage};

pub(super) fn usage(conn: &Connection, q: &UsageQuery) -> Result<Usage, StoreError> {
    let mut usage = Usage::default();
    let (channel, sender) = (q.channel.as_str(), q.sender.as_str());
    if q.count_at_most > 0
        && let Some(&(_, first_at)) = q.messages.first()
    {
        // The sender's conversations with a message in the window (usually
        // one): reads that do not grow with history.
        let conversations: Vec<i64> = conn
            .prepare_cached(
                "SELECT id FROM conversations
                 WHERE channel = ?1 AND sender = ?2 AND last_activity_at > ?3",
            )?
            .query_map(params![channel, sender, first_at - MINUTE_MS], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // The newest messages up to the turn's last, enough to count back
        // `count_at_most` from each of the turn's: one read per conversation.
        let Some(&(last_id, _)) = q.messages.last() else {
            return Ok(usage);
        };
        let reach = i64::from(q.count_at_most) + q.messages.len() as i64;
        let mut newest = conn.prepare_cached(
            "SELECT id, created_at FROM messages
             WHERE conversation_id = ?1 AND id <= ?2 AND role = 'user'
             ORDER BY id DESC LIMIT +?3",
        )?;
        let mut sent: Vec<(i64, i64)> = Vec::new();
        for &c in &conversations {
            let rows =
                newest.query_map(params![c, last_id, reach], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for row in rows {
                sent.push(row?);
            }
        }
        usage.recent = q.recent_counts(&sent);
    }
    if let Some(day) = q.day {
        usage.sender_tokens = conn
            .prepare_cached(
                "SELECT coalesce(sum(u.tokens), 0) FROM token_usage u
                 WHERE u.day = ?1 AND u.conversation_id IN
                     (SELECT id FROM conversations WHERE channel = ?2 AND sender = ?3)",
            )?
            .query_row(params![day, channel, sender], |r| r.get::<_, i64>(0))?
            .max(0) as u64;
        usage.all_tokens = conn
            .prepare_cached("SELECT coalesce(sum(tokens), 0) FROM token_usage WHERE day = ?1")?
            .query_row(params![day], |r| r.get::<_, i64>(0))?
            .max(0) as u64;
    }
    usage.last_notice = conn
        .prepare_cached(
            "SELECT id, model, created_at FROM messages
             WHERE conversation_id = ?1 AND role = 'assistant' AND kind = 'refusal'
               AND provider = ?2
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![q.conversation_id, NOTICE_PROVIDER], |r| {
            Ok(Notice {
                reply_id: r.get(0)?,
                rule: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                at: r.get(2)?,
            })
        })
        .optional()?;
    Ok(usage)
}

/// Marks the held messages answered by the notice (only unanswered user
/// messages of the notice's conversation) and records their violations.
pub(super) fn hold_in(conn: &Connection, held: &Held) -> Result<StoredMessage, StoreError> {
    let notice = message_by_id(conn, held.notice)?;
    if notice.conversation_id != held.conversation_id {
        return Err(StoreError::Invalid(format!(
            "notice {} belongs to another conversation",
            held.notice
        )));
    }
    let mut mark = conn.prepare_cached(
        "UPDATE messages SET answered_at = ?3, answered_by = ?2
         WHERE id = ?1 AND conversation_id = ?4 AND role = 'user' AND answered_at IS NULL",
    )?;
    let mut violation = conn.prepare_cached(
        "INSERT INTO guardrail_violations (message_id, rule, created_at) VALUES (?1, ?2, ?3)",
    )?;
    for &id in &held.messages {
        if mark.execute(params![id, held.notice, held.at, held.conversation_id])? > 0 {
            violation.execute(params![id, held.rule, held.at])?;
        }
    }
    Ok(notice)
}
