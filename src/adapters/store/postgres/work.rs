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
    Accepted, ClaimKind, Held, OutboxUpdate, StoreError, StoredMessage, Summary, TraceEvent,
    TurnRecord, Write, Written,
};

pub(super) fn write_in(tx: &mut Transaction<'_>, write: &Write) -> Result<Written, StoreError> {
    Ok(match write {
        Write::Accept(message) => Written::Accepted(accept(tx, message)?),
        Write::Turn(record) => Written::Reply(turn(tx, record)?),
        Write::Outbox { id, update, at } => {
            outbox(tx, *id, update, *at)?;
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
        Write::Handoff(handoff) => {
            super::relay::handoff_in(tx, handoff)?;
            Written::Done
        }
        Write::OptOut {
            channel,
            sender,
            out,
            at,
        } => {
            super::relay::opt_out_in(tx, *channel, sender, *out, *at)?;
            Written::Done
        }
        Write::Prune(prune) => Written::Erased(super::people::prune_in(tx, prune)?),
        Write::Hold(held) => Written::Reply(hold_in(tx, held)?),
        Write::Send(out) => Written::Sent(super::relay::send_in(tx, out)?),
        Write::Take(take) => Written::Taken(super::relay::take_in(tx, take)?),
        Write::Token(change) => {
            super::relay::token_in(tx, change)?;
            Written::Done
        }
        Write::Ask(ask) => {
            let (approval, new) = super::relay::ask_in(tx, ask)?;
            Written::Approval(approval, new)
        }
        Write::Decide {
            id,
            decision,
            by,
            at,
        } => {
            let (after, took) = super::relay::decide_in(tx, *id, *decision, by, *at)?;
            Written::Approval(after, took)
        }
        Write::RunApproved { id, at } => {
            Written::Claimed(super::relay::run_approved_in(tx, *id, *at)?)
        }
        Write::Link { a, b, at } => Written::Person(super::people::link_in(tx, a, b, *at)?),
        Write::Unlink { sender, at } => Written::Person(super::people::unlink_in(tx, sender, *at)?),
        Write::LinkCode { sender, code, at } => {
            super::people::link_code_in(tx, sender, code, *at)?;
            Written::Done
        }
        Write::Redeem { sender, code, at } => {
            Written::Redeemed(super::people::redeem_in(tx, sender, code, *at)?)
        }
        Write::ErasePerson { person, at } => {
            Written::Erased(super::people::erase_person_in(tx, *person, *at)?)
        }
        Write::Knowledge(change) => {
            super::knowledge::knowledge_in(tx, change)?;
            Written::Done
        }
        Write::ApprovalResult { id, result } => {
            tx.execute(
                "UPDATE approvals SET result = $2 WHERE id = $1",
                &[id, result],
            )?;
            Written::Done
        }
        Write::Attachments {
            message_id,
            attachments,
        } => {
            tx.execute(
                "UPDATE messages SET attachments = $2 WHERE id = $1",
                &[message_id, &crate::core::media::to_stored(attachments)],
            )?;
            Written::Done
        }
    })
}

pub(super) fn message_by_id(
    tx: &mut Transaction<'_>,
    id: i64,
) -> Result<StoredMessage, StoreError> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = $1");
    rows::message(&tx.query_one(&sql, &[&id])?)
}

/// Stores `message`, or finds it stored before (`convagent_accept`,
/// migration 3: one round trip).
pub(super) fn accept(
    client: &mut impl postgres::GenericClient,
    message: &InboundMessage,
) -> Result<Accepted, StoreError> {
    if message.provider_message_id.is_empty() {
        return Err(StoreError::Invalid("provider message id is empty".into()));
    }
    let attachments = crate::core::media::to_stored(&message.attachments);
    let metadata =
        serde_json::to_string(&message.metadata).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let key = &message.key;
    let name = message
        .metadata
        .get(SENDER_NAME)
        .filter(|n| !n.is_empty())
        .map(String::as_str);
    let row = client.query_one(
        "SELECT message_id, conversation_id, duplicate
         FROM convagent_accept($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &key.channel.as_str(),
            &key.sender,
            &key.thread,
            &message.received_at,
            &name,
            &message.text,
            &message.provider_message_id,
            &message.provider_ts,
            &message.correlation_id.0,
            &attachments,
            &metadata,
        ],
    )?;
    Ok(Accepted {
        message_id: row.try_get(0)?,
        conversation_id: row.try_get(1)?,
        duplicate: row.try_get(2)?,
    })
}

/// Stores a turn's outcome (`convagent_turn`, migration 3: one round
/// trip); a reply recorded first by another daemon is returned instead.
pub(super) fn turn(
    client: &mut impl postgres::GenericClient,
    turn: &TurnRecord,
) -> Result<StoredMessage, StoreError> {
    let reply = &turn.reply;
    let (violating, rules): (Vec<i64>, Vec<&str>) = turn
        .violations
        .iter()
        .map(|(id, rule)| (*id, rule.as_str()))
        .unzip();
    let tokens = |t: Option<u32>| t.map(i64::from);
    let latency = i64::try_from(reply.latency_ms).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            &format!(
                "SELECT {MESSAGE_COLUMNS}
                 FROM convagent_turn($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) m"
            ),
            &[
                &turn.message_id,
                &turn.covers,
                &violating,
                &rules,
                &reply.kind.as_str(),
                &reply.text,
                &reply.provider,
                &reply.model,
                &reply.stored_prompt_version(),
                &tokens(reply.prompt_tokens),
                &tokens(reply.completion_tokens),
                &latency,
                &reply.created_at,
            ],
        )
        .map_err(|e| match e.code() {
            Some(c) if *c == postgres::error::SqlState::NO_DATA_FOUND => {
                StoreError::NotFound(format!("user message {}", turn.message_id))
            }
            _ => StoreError::from(e),
        })?;
    rows::message(&row)
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

/// Records what became of a send, in one statement.
pub(super) fn outbox(
    client: &mut impl postgres::GenericClient,
    id: i64,
    update: &OutboxUpdate,
    at: i64,
) -> Result<(), StoreError> {
    // A provider's message id is added to the list in the same statement.
    const PUSH_ID: &str = "provider_message_ids = CASE WHEN $4::text IS NULL
         THEN provider_message_ids
         ELSE (provider_message_ids::jsonb || to_jsonb($4::text))::text END";
    let n = match update {
        OutboxUpdate::Progress {
            parts_sent,
            provider_message_id,
        } => client.execute(
            &format!(
                "UPDATE outbox SET parts_sent = $2, attempts = 0, updated_at = $3, {PUSH_ID}
                 WHERE id = $1"
            ),
            &[&id, &i64::from(*parts_sent), &at, provider_message_id],
        )?,
        OutboxUpdate::Sent {
            provider_message_id,
            dry_run,
        } => client.execute(
            &format!(
                "UPDATE outbox SET state = 'sent', dry_run = $2, updated_at = $3, {PUSH_ID}
                 WHERE id = $1"
            ),
            &[&id, &i64::from(*dry_run), &at, provider_message_id],
        )?,
        OutboxUpdate::Retry {
            next_attempt_at,
            attempts,
            error,
        } => client.execute(
            "UPDATE outbox SET attempts = $5, next_attempt_at = $2, last_error = $3,
                 updated_at = $4
             WHERE id = $1",
            &[&id, next_attempt_at, error, &at, &i64::from(*attempts)],
        )?,
        OutboxUpdate::Dead { code, error } => client.execute(
            "UPDATE outbox SET state = 'dead', attempts = attempts + 1, error_code = $2,
                 last_error = $3, updated_at = $4
             WHERE id = $1",
            &[&id, code, error, &at],
        )?,
        OutboxUpdate::Requeue => client.execute(
            "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = $2,
                 updated_at = $2
             WHERE id = $1 AND state = 'dead' AND discarded_at IS NULL",
            &[&id, &at],
        )?,
        OutboxUpdate::Discard => client.execute(
            "UPDATE outbox SET state = 'dead', discarded_at = $2, updated_at = $2,
                 error_code = CASE state WHEN 'queued' THEN 'discarded' ELSE error_code END
             WHERE id = $1 AND state IN ('queued', 'dead') AND discarded_at IS NULL",
            &[&id, &at],
        )?,
    };
    if n == 0 {
        return Err(update.not_applied(id));
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
