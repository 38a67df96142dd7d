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
