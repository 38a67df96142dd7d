//! What the MCP server writes and reads on Postgres (as `sqlite/relay.rs`):
//! messages an outside agent sends, the messages it takes, the tokens of
//! `/mcp`. Each write locks the conversation's row before adding to it, as
//! every write here does (see `work.rs`).

use postgres::{Row, Transaction};

use super::PostgresStore;
use super::work::{message_by_id, turn};
use crate::core::approvals::{Approval, ApprovalState, Ask, Decision};
use crate::core::ports::{
    AccessToken, ApprovalReads, Destination, Outgoing, Sent, StoreError, StoredMessage, Take,
    TokenChange, TokenStore,
};

/// The conversation a message goes to, locked: the one named, or the
/// person's open one (a new one if they have none).
fn conversation_of(tx: &mut Transaction<'_>, to: &Destination, at: i64) -> Result<i64, StoreError> {
    match to {
        Destination::Conversation(id) => tx
            .query_opt(
                "SELECT id FROM conversations WHERE id = $1 FOR UPDATE",
                &[id],
            )?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::NotFound(format!("conversation {id}"))),
        Destination::Key(key) => Ok(tx
            .query_one(
                "INSERT INTO conversations (channel, sender, thread, started_at,
                     last_activity_at, message_count)
                 VALUES ($1, $2, $3, $4, $4, 0)
                 ON CONFLICT (channel, sender, thread) WHERE closed_at IS NULL
                 DO UPDATE SET last_activity_at = conversations.last_activity_at
                 RETURNING id",
                &[&key.channel.as_str(), &key.sender, &key.thread, &at],
            )?
            .get(0)),
    }
}

pub(super) fn send_in(tx: &mut Transaction<'_>, out: &Outgoing) -> Result<Sent, StoreError> {
    let conversation_id = conversation_of(tx, &out.to, out.at)?;
    let pending: Vec<i64> = if out.answers_pending {
        tx.query(
            "SELECT id FROM messages
             WHERE conversation_id = $1 AND role = 'user' AND answered_at IS NULL ORDER BY id",
            &[&conversation_id],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect()
    } else {
        Vec::new()
    };
    let message = match out.answering(&pending) {
        Some(record) => turn(tx, &record)?,
        None => {
            let id: i64 = tx
                .query_one(
                    "INSERT INTO messages (conversation_id, role, channel, text, created_at,
                         correlation_id, kind, provider, model, prompt_version, latency_ms)
                     SELECT id, 'assistant', channel, $2, $3, $4, 'answer', $5, $6, NULL, 0
                     FROM conversations WHERE id = $1
                     RETURNING id",
                    &[
                        &conversation_id,
                        &out.text,
                        &out.at,
                        &out.correlation_id,
                        &out.provider,
                        &out.sender,
                    ],
                )?
                .get(0);
            tx.execute(
                "UPDATE conversations SET message_count = message_count + 1,
                     last_activity_at = greatest(last_activity_at, $2)
                 WHERE id = $1",
                &[&conversation_id, &out.at],
            )?;
            message_by_id(tx, id)?
        }
    };
    tx.execute("DELETE FROM takes WHERE message_id = ANY($1)", &[&pending])?;
    let outbox_id = tx
        .query_opt("SELECT id FROM outbox WHERE reply_id = $1", &[&message.id])?
        .map(|r| r.get(0));
    Ok(Sent {
        message,
        outbox_id,
        answered: pending,
    })
}

/// Two consumers asking at once take different messages. The take itself
/// decides: an upsert that succeeds only where no live take exists, waiting
/// for another consumer's uncommitted one (a snapshot's view of `takes`
/// could be stale by then). Candidates another transaction holds are
/// skipped, so consumers spread over different messages.
pub(super) fn take_in(
    tx: &mut Transaction<'_>,
    take: &Take,
) -> Result<Option<StoredMessage>, StoreError> {
    let channel = take.channel.map(|c| c.as_str());
    let candidates = tx.query(
        "SELECT m.id FROM messages m LEFT JOIN takes t ON t.message_id = m.id
         WHERE m.role = 'user' AND m.answered_at IS NULL AND m.channel <> 'cli'
           AND (t.message_id IS NULL OR t.until <= $1)
           AND ($2::text IS NULL OR m.channel = $2)
           AND ($3::bigint IS NULL OR m.conversation_id = $3)
         ORDER BY m.id LIMIT 16
         FOR UPDATE OF m SKIP LOCKED",
        &[&take.now, &channel, &take.conversation_id],
    )?;
    for row in candidates {
        let id: i64 = row.get(0);
        let won = tx.query_opt(
            "INSERT INTO takes (message_id, consumer, until) VALUES ($1, $2, $3)
             ON CONFLICT (message_id) DO UPDATE SET consumer = excluded.consumer,
                 until = excluded.until
             WHERE takes.until <= $4
             RETURNING message_id",
            &[&id, &take.consumer, &take.until, &take.now],
        )?;
        if won.is_some() {
            return Ok(Some(message_by_id(tx, id)?));
        }
    }
    Ok(None)
}

pub(super) fn token_in(tx: &mut Transaction<'_>, change: &TokenChange) -> Result<(), StoreError> {
    match change {
        TokenChange::Create {
            name,
            sha256,
            at,
            operator,
        } => {
            let added = tx.execute(
                "INSERT INTO access_tokens (name, sha256, created_at, operator)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[name, sha256, at, operator],
            )?;
            if added == 0 {
                return Err(StoreError::Invalid(format!(
                    "a token named {name:?} exists already"
                )));
            }
        }
        TokenChange::Revoke { name } => {
            if tx.execute("DELETE FROM access_tokens WHERE name = $1", &[name])? == 0 {
                return Err(StoreError::NotFound(format!("token {name:?}")));
            }
        }
        TokenChange::Used { sha256, at } => {
            tx.execute(
                "UPDATE access_tokens SET last_used_at = $2 WHERE sha256 = $1",
                &[sha256, at],
            )?;
        }
    }
    Ok(())
}

const TOKEN_SELECT: &str =
    "SELECT name, sha256, created_at, last_used_at, operator FROM access_tokens";

fn token(r: &Row) -> Result<AccessToken, StoreError> {
    Ok(AccessToken {
        name: r.try_get(0)?,
        sha256: r.try_get(1)?,
        created_at: r.try_get(2)?,
        last_used_at: r.try_get(3)?,
        operator: r.try_get(4)?,
    })
}

const APPROVAL_SELECT: &str = "SELECT id, conversation_id, message_id, correlation_id, tool,
    arguments, asked_at, deadline_at, state, decided_by, decided_at, ran_at, result
    FROM approvals";

fn approval(r: &Row) -> Result<Approval, StoreError> {
    let state: String = r.try_get(8)?;
    Ok(Approval {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        message_id: r.try_get(2)?,
        correlation_id: r.try_get(3)?,
        tool: r.try_get(4)?,
        arguments: r.try_get(5)?,
        asked_at: r.try_get(6)?,
        deadline_at: r.try_get(7)?,
        state: ApprovalState::parse(&state)
            .ok_or_else(|| StoreError::Backend(format!("unknown approval state {state:?}")))?,
        decided_by: r.try_get(9)?,
        decided_at: r.try_get(10)?,
        ran_at: r.try_get(11)?,
        result: r.try_get(12)?,
    })
}

fn approval_in(tx: &mut Transaction<'_>, id: i64) -> Result<Approval, StoreError> {
    let row = tx
        .query_opt(&format!("{APPROVAL_SELECT} WHERE id = $1"), &[&id])?
        .ok_or_else(|| StoreError::NotFound(format!("approval {id}")))?;
    approval(&row)
}

/// [`crate::core::ports::Write::Ask`]: the row of this call of this turn,
/// made if new (two daemons asking at once make one).
pub(super) fn ask_in(tx: &mut Transaction<'_>, ask: &Ask) -> Result<(Approval, bool), StoreError> {
    let key = ask.call_key();
    let made = tx.execute(
        "INSERT INTO approvals (conversation_id, message_id, call_key, correlation_id, tool,
             arguments, asked_at, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (message_id, call_key) DO NOTHING",
        &[
            &ask.conversation_id,
            &ask.message_id,
            &key,
            &ask.correlation_id,
            &ask.tool,
            &ask.arguments,
            &ask.at,
            &ask.deadline_at,
        ],
    )?;
    let id: i64 = tx
        .query_one(
            "SELECT id FROM approvals WHERE message_id = $1 AND call_key = $2",
            &[&ask.message_id, &key],
        )?
        .try_get(0)?;
    Ok((approval_in(tx, id)?, made > 0))
}

/// [`crate::core::ports::Write::Decide`]: the row after the answer, and
/// whether it took.
pub(super) fn decide_in(
    tx: &mut Transaction<'_>,
    id: i64,
    decision: Decision,
    by: &str,
    at: i64,
) -> Result<(Approval, bool), StoreError> {
    let when = match decision {
        Decision::Expire => "deadline_at < $4",
        _ => "deadline_at >= $4",
    };
    let took = tx.execute(
        &format!(
            "UPDATE approvals SET state = $2, decided_by = $3, decided_at = $4
             WHERE id = $1 AND state = 'pending' AND {when}"
        ),
        &[&id, &decision.state().as_str(), &by, &at],
    )?;
    Ok((approval_in(tx, id)?, took == 1))
}

/// [`crate::core::ports::Write::RunApproved`]: whether this caller runs it.
pub(super) fn run_approved_in(
    tx: &mut Transaction<'_>,
    id: i64,
    at: i64,
) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE approvals SET ran_at = $2
         WHERE id = $1 AND state = 'approved' AND ran_at IS NULL",
        &[&id, &at],
    )? == 1)
}

impl ApprovalReads for PostgresStore {
    fn approval(&self, id: i64) -> Result<Option<Approval>, StoreError> {
        let row = self
            .read(move |c| Ok(c.query_opt(&format!("{APPROVAL_SELECT} WHERE id = $1"), &[&id])?))?;
        row.as_ref().map(approval).transpose()
    }

    fn approvals(&self, pending_only: bool, limit: usize) -> Result<Vec<Approval>, StoreError> {
        let filter = if pending_only {
            "WHERE state = 'pending'"
        } else {
            ""
        };
        let limit = limit as i64;
        let rows = self.read(move |c| {
            Ok(c.query(
                &format!("{APPROVAL_SELECT} {filter} ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )?)
        })?;
        rows.iter().map(approval).collect()
    }
}

impl TokenStore for PostgresStore {
    fn tokens(&self) -> Result<Vec<AccessToken>, StoreError> {
        let rows = self.read(|c| Ok(c.query(&format!("{TOKEN_SELECT} ORDER BY name"), &[])?))?;
        rows.iter().map(token).collect()
    }

    fn token_by_hash(&self, sha256: &str) -> Result<Option<AccessToken>, StoreError> {
        let sha256 = sha256.to_owned();
        let row = self.read(move |c| {
            Ok(c.query_opt(&format!("{TOKEN_SELECT} WHERE sha256 = $1"), &[&sha256])?)
        })?;
        row.as_ref().map(token).transpose()
    }
}

/// Who answers a conversation now ([`Write::Handoff`]).
pub(super) fn handoff_in(
    tx: &mut Transaction<'_>,
    handoff: &crate::core::handoff::Handoff,
) -> Result<(), StoreError> {
    let changed = tx.execute(
        "UPDATE conversations SET mode = $2, mode_at = $3, mode_by = $4 WHERE id = $1",
        &[
            &handoff.conversation_id,
            &handoff.mode.as_str(),
            &handoff.at,
            &handoff.by,
        ],
    )?;
    match changed {
        0 => Err(StoreError::NotFound(format!(
            "conversation {}",
            handoff.conversation_id
        ))),
        _ => Ok(()),
    }
}

/// `/stop` (`out`) or `/start` of `sender` on `channel` ([`Write::OptOut`]).
pub(super) fn opt_out_in(
    tx: &mut Transaction<'_>,
    channel: crate::core::Channel,
    sender: &str,
    out: bool,
    at: i64,
) -> Result<(), StoreError> {
    if out {
        tx.execute(
            "INSERT INTO opt_outs (channel, sender, at) VALUES ($1, $2, $3)
             ON CONFLICT (channel, sender) DO UPDATE SET at = excluded.at",
            &[&channel.as_str(), &sender, &at],
        )?;
    } else {
        tx.execute(
            "DELETE FROM opt_outs WHERE channel = $1 AND sender = $2",
            &[&channel.as_str(), &sender],
        )?;
    }
    Ok(())
}
