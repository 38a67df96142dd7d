//! The first of the work-queue pieces on Postgres: storing an inbound
//! message (once, whichever process receives it and its redeliveries), and
//! claims with leases, by which several daemons share conversations and
//! outboxes without two working on one at a time.

use crate::core::message::{InboundMessage, SENDER_NAME};
use crate::core::ports::{Accepted, StoreError};

/// What a claim covers: a conversation's turns, or its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    Turns,
    Outbox,
}

impl ClaimKind {
    fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Turns => "turns",
            ClaimKind::Outbox => "outbox",
        }
    }
}

/// Stores `message` in one transaction, or finds it stored before. The
/// conversation's row is locked (by its upsert) before the message takes
/// its id, so one conversation's ids become visible in increasing order
/// (`ConversationReads::turns_after` relies on it). Two processes storing
/// the same provider message id at once: one stores it, the other rolls
/// back and reports the duplicate.
pub(super) fn accept(
    client: &mut postgres::Client,
    message: &InboundMessage,
) -> Result<Accepted, StoreError> {
    if message.provider_message_id.is_empty() {
        return Err(StoreError::Invalid("provider message id is empty".into()));
    }
    let channel = message.key.channel.as_str();
    let seen = |client: &mut postgres::Client| -> Result<Option<Accepted>, StoreError> {
        Ok(client
            .query_opt(
                "SELECT id, conversation_id FROM messages
                 WHERE channel = $1 AND provider_message_id = $2",
                &[&channel, &message.provider_message_id],
            )?
            .map(|r| Accepted {
                message_id: r.get(0),
                conversation_id: r.get(1),
                duplicate: true,
            }))
    };
    if let Some(found) = seen(client)? {
        return Ok(found);
    }
    let attachments = serde_json::to_string(&message.attachments)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let metadata =
        serde_json::to_string(&message.metadata).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let key = &message.key;
    let at = message.received_at;
    let stored = (|| -> Result<Option<Accepted>, postgres::Error> {
        let mut tx = client.transaction()?;
        let conversation_id: i64 = tx
            .query_one(
                "INSERT INTO conversations (channel, sender, thread, started_at, last_activity_at,
                     message_count)
                 VALUES ($1, $2, $3, $4, $4, 1)
                 ON CONFLICT (channel, sender, thread) WHERE closed_at IS NULL
                 DO UPDATE SET
                     last_activity_at = greatest(conversations.last_activity_at,
                                                 EXCLUDED.last_activity_at),
                     message_count = conversations.message_count + 1
                 RETURNING id",
                &[&channel, &key.sender, &key.thread, &at],
            )?
            .get(0);
        if let Some(name) = message.metadata.get(SENDER_NAME).filter(|n| !n.is_empty()) {
            tx.execute(
                "UPDATE conversations SET display_name = $2
                 WHERE id = $1 AND display_name IS DISTINCT FROM $2",
                &[&conversation_id, name],
            )?;
        }
        let inserted = tx.query_opt(
            "INSERT INTO messages (conversation_id, role, channel, text, created_at,
                 provider_message_id, provider_ts, correlation_id, attachments, metadata)
             VALUES ($1, 'user', $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (channel, provider_message_id) WHERE provider_message_id IS NOT NULL
             DO NOTHING
             RETURNING id",
            &[
                &conversation_id,
                &channel,
                &message.text,
                &at,
                &message.provider_message_id,
                &message.provider_ts,
                &message.correlation_id.0,
                &attachments,
                &metadata,
            ],
        )?;
        match inserted {
            Some(row) => {
                tx.commit()?;
                Ok(Some(Accepted {
                    message_id: row.get(0),
                    conversation_id,
                    duplicate: false,
                }))
            }
            // Another process stored it meanwhile: undo the count.
            None => Ok(None),
        }
    })()?;
    match stored {
        Some(accepted) => Ok(accepted),
        None => seen(client)?.ok_or_else(|| {
            StoreError::Backend("a message seen as a duplicate is not stored".into())
        }),
    }
}

/// Takes (or renews) `kind` of `key` for `owner` until `until` (unix ms),
/// if nobody else holds it past `now`. Returns whether `owner` holds it.
pub(super) fn claim(
    client: &mut postgres::Client,
    kind: ClaimKind,
    key: i64,
    owner: &str,
    now: i64,
    until: i64,
) -> Result<bool, StoreError> {
    let row = client.query_opt(
        "INSERT INTO claims (kind, key, owner, until) VALUES ($1, $2, $3, $5)
         ON CONFLICT (kind, key) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until
             WHERE claims.owner = EXCLUDED.owner OR claims.until <= $4
         RETURNING owner",
        &[&kind.as_str(), &key, &owner, &now, &until],
    )?;
    Ok(row.is_some())
}

/// Gives up a claim `owner` holds (a claim of someone else stays).
pub(super) fn release(
    client: &mut postgres::Client,
    kind: ClaimKind,
    key: i64,
    owner: &str,
) -> Result<(), StoreError> {
    client.execute(
        "DELETE FROM claims WHERE kind = $1 AND key = $2 AND owner = $3",
        &[&kind.as_str(), &key, &owner],
    )?;
    Ok(())
}

/// Stores a turn's reply in one transaction (`Write::Turn`'s part so far):
/// violations, the reply — one answer per message, whichever process
/// records it first (the others get its id back) — the burst it covers,
/// and by trigger its outbox row and token count. Returns the reply's id
/// and whether this call stored it.
pub(super) fn record_turn(
    client: &mut postgres::Client,
    turn: &crate::core::ports::TurnRecord,
) -> Result<(i64, bool), StoreError> {
    use crate::core::ports::ReplyKind;
    let reply = &turn.reply;
    let mut tx = client.transaction()?;
    let Some(row) = tx.query_opt(
        "SELECT conversation_id, channel, correlation_id FROM messages
         WHERE id = $1 AND role = 'user'",
        &[&turn.message_id],
    )?
    else {
        return Err(StoreError::NotFound(format!(
            "user message {}",
            turn.message_id
        )));
    };
    let (conversation_id, channel, correlation_id): (i64, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    // The conversation's row first: its ids stay in commit order.
    tx.execute(
        "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
        &[&conversation_id],
    )?;
    for (violating, rule) in &turn.violations {
        tx.execute(
            "INSERT INTO guardrail_violations (message_id, rule, created_at) VALUES ($1, $2, $3)",
            &[violating, rule, &reply.created_at],
        )?;
    }
    let tokens = |t: Option<u32>| t.map(i64::from);
    let latency = i64::try_from(reply.latency_ms).unwrap_or(i64::MAX);
    let inserted = tx.query_opt(
        "INSERT INTO messages (conversation_id, role, channel, text, created_at, correlation_id,
             reply_to, kind, provider, model, prompt_version, prompt_tokens, completion_tokens,
             latency_ms)
         VALUES ($1, 'assistant', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (reply_to) WHERE reply_to IS NOT NULL AND kind <> 'fallback' DO NOTHING
         RETURNING id",
        &[
            &conversation_id,
            &channel,
            &reply.text,
            &reply.created_at,
            &correlation_id,
            &turn.message_id,
            &reply.kind.as_str(),
            &reply.provider,
            &reply.model,
            &reply.prompt_version,
            &tokens(reply.prompt_tokens),
            &tokens(reply.completion_tokens),
            &latency,
        ],
    )?;
    let Some(row) = inserted else {
        // Another process answered it first: nothing of this turn stays.
        drop(tx);
        let id = client
            .query_one(
                "SELECT id FROM messages WHERE reply_to = $1 AND kind <> 'fallback'",
                &[&turn.message_id],
            )?
            .get(0);
        return Ok((id, false));
    };
    let id: i64 = row.get(0);
    tx.execute(
        "UPDATE conversations
         SET message_count = message_count + 1,
             last_activity_at = greatest(last_activity_at, $2)
         WHERE id = $1",
        &[&conversation_id, &reply.created_at],
    )?;
    if reply.kind != ReplyKind::Fallback {
        tx.execute(
            "UPDATE messages SET answered_at = $2 WHERE id = $1",
            &[&turn.message_id, &reply.created_at],
        )?;
        tx.execute(
            "UPDATE messages SET answered_at = $3, answered_by = $2
             WHERE id = ANY($1) AND id <> $4 AND conversation_id = $5 AND role = 'user'
               AND answered_at IS NULL",
            &[
                &turn.covers,
                &id,
                &reply.created_at,
                &turn.message_id,
                &conversation_id,
            ],
        )?;
    }
    tx.commit()?;
    Ok((id, true))
}
