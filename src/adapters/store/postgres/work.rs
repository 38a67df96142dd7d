//! Every write of the pipeline on Postgres, each inside the caller's
//! transaction (`write_in`), and the claims with leases by which several
//! daemons share conversations and outboxes.
//!
//! Several processes write at once here, so each write that adds to a
//! conversation locks the conversation's row first: one conversation's
//! message ids then become visible in increasing order
//! (`ConversationReads::turns_after` relies on it), and two processes
//! storing the same message or answering it meet on that lock and on the
//! unique indexes, not on a race.

use postgres::Transaction;

use super::rows::{self, MESSAGE_COLUMNS};
use crate::core::breaker::{Breaker, Transition};
use crate::core::message::{InboundMessage, SENDER_NAME};
use crate::core::ports::{
    Accepted, ClaimKind, Held, OutboxUpdate, ReplyKind, StoreError, StoredMessage, Summary,
    TraceEvent, TurnRecord, Write, Written,
};

pub(super) fn write_in(tx: &mut Transaction<'_>, write: &Write) -> Result<Written, StoreError> {
    Ok(match write {
        Write::Accept(message) => Written::Accepted(accept_in(tx, message)?),
        Write::Turn(turn) => Written::Reply(turn_in(tx, turn)?),
        Write::Outbox { id, update, at } => {
            outbox_in(tx, *id, update, *at)?;
            Written::Done
        }
        Write::Traces(events) => {
            traces_in(tx, events)?;
            Written::Done
        }
        Write::Breaker {
            breaker,
            transition,
        } => {
            breaker_in(tx, breaker, transition.as_ref())?;
            Written::Done
        }
        Write::Summary(summary) => Written::Summary(summary_in(tx, summary)?),
        Write::Erase { sender, at } => Written::Erased(super::people::erase_in(tx, sender, *at)?),
        Write::Prune(prune) => Written::Erased(super::people::prune_in(tx, prune)?),
        Write::Hold(held) => Written::Reply(hold_in(tx, held)?),
    })
}

fn message_by_id(tx: &mut Transaction<'_>, id: i64) -> Result<StoredMessage, StoreError> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = $1");
    rows::message(&tx.query_one(&sql, &[&id])?)
}

/// Stores `message`, or finds it stored before. Two processes storing the
/// same provider message id at once: one stores it, the other's insert
/// waits for that commit, does nothing, and this reports the duplicate
/// (its conversation count undone with its savepoint).
fn accept_in(tx: &mut Transaction<'_>, message: &InboundMessage) -> Result<Accepted, StoreError> {
    if message.provider_message_id.is_empty() {
        return Err(StoreError::Invalid("provider message id is empty".into()));
    }
    let channel = message.key.channel.as_str();
    let seen = |tx: &mut Transaction<'_>| -> Result<Option<Accepted>, StoreError> {
        Ok(tx
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
    if let Some(found) = seen(tx)? {
        return Ok(found);
    }
    let attachments = serde_json::to_string(&message.attachments)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let metadata =
        serde_json::to_string(&message.metadata).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let key = &message.key;
    let at = message.received_at;
    let mut sp = tx.transaction()?;
    let conversation_id: i64 = sp
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
        sp.execute(
            "UPDATE conversations SET display_name = $2
             WHERE id = $1 AND display_name IS DISTINCT FROM $2",
            &[&conversation_id, name],
        )?;
    }
    let inserted = sp.query_opt(
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
            sp.commit()?;
            Ok(Accepted {
                message_id: row.get(0),
                conversation_id,
                duplicate: false,
            })
        }
        None => {
            drop(sp);
            seen(tx)?.ok_or_else(|| {
                StoreError::Backend("a message seen as a duplicate is not stored".into())
            })
        }
    }
}

/// Stores a turn's outcome: violations, the reply (one answer per message,
/// whichever process records it first: the others get that one back), the
/// burst it covers, and by trigger its outbox row and token count.
fn turn_in(tx: &mut Transaction<'_>, turn: &TurnRecord) -> Result<StoredMessage, StoreError> {
    let reply = &turn.reply;
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
        // Answered first by another process (or before): that answer stays.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m
             WHERE m.reply_to = $1 AND m.kind <> 'fallback'"
        );
        return rows::message(&tx.query_one(&sql, &[&turn.message_id])?);
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
        // Only unanswered user messages of the same conversation: a stray
        // id cannot mark anything else.
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
    message_by_id(tx, id)
}

/// Marks the held messages answered by the notice (only unanswered user
/// messages of the notice's conversation) and records their violations.
fn hold_in(tx: &mut Transaction<'_>, held: &Held) -> Result<StoredMessage, StoreError> {
    let notice = message_by_id(tx, held.notice)?;
    if notice.conversation_id != held.conversation_id {
        return Err(StoreError::Invalid(format!(
            "notice {} belongs to another conversation",
            held.notice
        )));
    }
    tx.execute(
        "WITH marked AS (
             UPDATE messages SET answered_at = $3, answered_by = $2
             WHERE id = ANY($1) AND conversation_id = $4 AND role = 'user'
               AND answered_at IS NULL
             RETURNING id)
         INSERT INTO guardrail_violations (message_id, rule, created_at)
         SELECT id, $5, $3 FROM marked",
        &[
            &held.messages,
            &held.notice,
            &held.at,
            &held.conversation_id,
            &held.rule,
        ],
    )?;
    Ok(notice)
}

fn summary_in(tx: &mut Transaction<'_>, summary: &Summary) -> Result<Summary, StoreError> {
    tx.execute(
        "INSERT INTO summaries (conversation_id, from_message_id, to_message_id, text, provider,
             model, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (conversation_id, from_message_id, to_message_id) DO NOTHING",
        &[
            &summary.conversation_id,
            &summary.from_message_id,
            &summary.to_message_id,
            &summary.text,
            &summary.provider,
            &summary.model,
            &summary.created_at,
        ],
    )?;
    let sql = format!(
        "SELECT {} FROM summaries
         WHERE conversation_id = $1 AND from_message_id = $2 AND to_message_id = $3",
        rows::SUMMARY_COLUMNS
    );
    rows::summary(&tx.query_one(
        &sql,
        &[
            &summary.conversation_id,
            &summary.from_message_id,
            &summary.to_message_id,
        ],
    )?)
}

fn breaker_in(
    tx: &mut Transaction<'_>,
    breaker: &Breaker,
    transition: Option<&Transition>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO breakers (provider, model, state, failures, opened_at, next_probe_at,
             last_error, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (provider, model) DO UPDATE SET
             state = EXCLUDED.state, failures = EXCLUDED.failures,
             opened_at = EXCLUDED.opened_at, next_probe_at = EXCLUDED.next_probe_at,
             last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at",
        &[
            &breaker.provider,
            &breaker.model,
            &breaker.state.as_str(),
            &i64::from(breaker.failures),
            &breaker.opened_at,
            &breaker.next_probe_at,
            &breaker.last_error,
            &breaker.updated_at,
        ],
    )?;
    if let Some(t) = transition {
        tx.execute(
            "INSERT INTO breaker_transitions (provider, model, from_state, to_state, reason, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &breaker.provider,
                &breaker.model,
                &t.from.as_str(),
                &t.to.as_str(),
                &t.reason,
                &t.at,
            ],
        )?;
    }
    Ok(())
}

/// Records what became of a send.
fn outbox_in(
    tx: &mut Transaction<'_>,
    id: i64,
    update: &OutboxUpdate,
    at: i64,
) -> Result<(), StoreError> {
    let mut push_id = |provider_id: &Option<String>| -> Result<(), StoreError> {
        if let Some(pid) = provider_id {
            tx.execute(
                "UPDATE outbox SET provider_message_ids =
                     (provider_message_ids::jsonb || to_jsonb($2::text))::text
                 WHERE id = $1",
                &[&id, pid],
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
            tx.execute(
                "UPDATE outbox SET parts_sent = $2, attempts = 0, updated_at = $3 WHERE id = $1",
                &[&id, &i64::from(*parts_sent), &at],
            )?
        }
        OutboxUpdate::Sent {
            provider_message_id,
            dry_run,
        } => {
            push_id(provider_message_id)?;
            tx.execute(
                "UPDATE outbox SET state = 'sent', dry_run = $2, updated_at = $3 WHERE id = $1",
                &[&id, &i64::from(*dry_run), &at],
            )?
        }
        OutboxUpdate::Retry {
            next_attempt_at,
            attempts,
            error,
        } => tx.execute(
            "UPDATE outbox SET attempts = $5, next_attempt_at = $2, last_error = $3,
                 updated_at = $4
             WHERE id = $1",
            &[&id, next_attempt_at, error, &at, &i64::from(*attempts)],
        )?,
        OutboxUpdate::Dead { code, error } => tx.execute(
            "UPDATE outbox SET state = 'dead', attempts = attempts + 1, error_code = $2,
                 last_error = $3, updated_at = $4
             WHERE id = $1",
            &[&id, code, error, &at],
        )?,
        OutboxUpdate::Requeue => tx.execute(
            "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = $2,
                 updated_at = $2
             WHERE id = $1 AND state = 'dead' AND discarded_at IS NULL",
            &[&id, &at],
        )?,
        OutboxUpdate::Discard => tx.execute(
            "UPDATE outbox SET state = 'dead', discarded_at = $2, updated_at = $2,
                 error_code = CASE state WHEN 'queued' THEN 'discarded' ELSE error_code END
             WHERE id = $1 AND state IN ('queued', 'dead') AND discarded_at IS NULL",
            &[&id, &at],
        )?,
    };
    if n == 0 {
        return Err(match update {
            OutboxUpdate::Requeue => {
                StoreError::Invalid(format!("outbox item {id} is not a dead letter"))
            }
            OutboxUpdate::Discard => {
                StoreError::Invalid(format!("outbox item {id} is neither queued nor dead"))
            }
            _ => StoreError::NotFound(format!("outbox item {id}")),
        });
    }
    Ok(())
}

/// Trace events in one statement (arrays unnested in order).
fn traces_in(tx: &mut Transaction<'_>, events: &[TraceEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut correlation = Vec::with_capacity(events.len());
    let mut stage = Vec::with_capacity(events.len());
    let mut attempt: Vec<Option<i64>> = Vec::with_capacity(events.len());
    let mut started = Vec::with_capacity(events.len());
    let mut duration = Vec::with_capacity(events.len());
    let mut outcome = Vec::with_capacity(events.len());
    let mut detail = Vec::with_capacity(events.len());
    for e in events {
        correlation.push(e.correlation_id.as_str());
        stage.push(e.stage.as_str());
        attempt.push(e.attempt.map(i64::from));
        started.push(e.started_at);
        duration.push(i64::try_from(e.duration_us).unwrap_or(i64::MAX));
        outcome.push(e.outcome.as_str());
        detail.push(e.detail.as_deref());
    }
    tx.execute(
        "INSERT INTO traces (correlation_id, stage, attempt, started_at, duration_us, outcome,
             detail)
         SELECT a, b, c, d, e, f, g FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                              $6::text[], $7::text[]) WITH ORDINALITY AS t(a, b, c, d, e, f, g, n)
         ORDER BY n",
        &[
            &correlation,
            &stage,
            &attempt,
            &started,
            &duration,
            &outcome,
            &detail,
        ],
    )?;
    Ok(())
}

fn kind(kind: ClaimKind) -> &'static str {
    match kind {
        ClaimKind::Turns => "turns",
        ClaimKind::Outbox => "outbox",
    }
}

/// The database's clock in unix ms: every daemon's leases are measured by
/// the one clock, whatever the machines' clocks say.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Takes (or renews) `kind` of `key` for `owner` for `lease_ms`, unless
/// another owner holds it and its lease is not past. Whether `owner`
/// holds it now.
pub(super) fn claim(
    client: &mut postgres::Client,
    kind_: ClaimKind,
    key: i64,
    owner: &str,
    lease_ms: i64,
) -> Result<bool, StoreError> {
    let row = client.query_opt(
        &format!(
            "INSERT INTO claims (kind, key, owner, until) VALUES ($1, $2, $3, {DB_NOW_MS} + $4)
             ON CONFLICT (kind, key) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until
                 WHERE claims.owner = EXCLUDED.owner OR claims.until <= {DB_NOW_MS}
             RETURNING owner"
        ),
        &[&kind(kind_), &key, &owner, &lease_ms],
    )?;
    Ok(row.is_some())
}

/// Gives up a claim `owner` holds (a claim of someone else stays).
pub(super) fn release(
    client: &mut postgres::Client,
    kind_: ClaimKind,
    key: i64,
    owner: &str,
) -> Result<(), StoreError> {
    client.execute(
        "DELETE FROM claims WHERE kind = $1 AND key = $2 AND owner = $3",
        &[&kind(kind_), &key, &owner],
    )?;
    Ok(())
}

/// Conversations with unanswered messages that no live daemon has claimed:
/// what a sweep takes over (a daemon died, or missed a message another
/// daemon accepted while it held the conversation).
pub(super) fn unclaimed_pending(
    client: &mut postgres::Client,
    limit: i64,
) -> Result<Vec<i64>, StoreError> {
    let rows = client.query(
        &format!(
            "SELECT DISTINCT m.conversation_id FROM messages m
             WHERE m.role = 'user' AND m.answered_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM claims k WHERE k.kind = 'turns'
                               AND k.key = m.conversation_id AND k.until > {DB_NOW_MS})
             ORDER BY m.conversation_id LIMIT $1"
        ),
        &[&limit],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
