//! What the MCP server writes and reads on SQLite: messages an outside agent
//! sends, the messages it takes to answer, and the access tokens of `/mcp`.

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::port::turn_in;
use super::rows::message_by_id;
use crate::core::approvals::{Approval, ApprovalState, Ask, Decision};
use crate::core::ports::{
    AccessToken, ApprovalReads, Destination, Outgoing, Sent, StoreError, StoredMessage, Take,
    TokenChange, TokenStore,
};

/// The conversation a message goes to: the one named, or the person's
/// open one (a new one if they have none).
fn conversation_of(conn: &Connection, to: &Destination, at: i64) -> Result<i64, StoreError> {
    match to {
        Destination::Conversation(id) => conn
            .prepare_cached("SELECT id FROM conversations WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("conversation {id}"))),
        Destination::Key(key) => Ok(conn
            .prepare_cached(
                "INSERT INTO conversations (channel, sender, thread, started_at,
                     last_activity_at, message_count)
                 VALUES (?1, ?2, ?3, ?4, ?4, 0)
                 ON CONFLICT (channel, sender, thread) WHERE closed_at IS NULL
                 DO UPDATE SET last_activity_at = last_activity_at
                 RETURNING id",
            )?
            .query_row(
                params![key.channel.as_str(), key.sender, key.thread, at],
                |r| r.get(0),
            )?),
    }
}

pub(super) fn send_in(conn: &Connection, out: &Outgoing) -> Result<Sent, StoreError> {
    let conversation_id = conversation_of(conn, &out.to, out.at)?;
    let pending: Vec<i64> = if out.answers_pending {
        conn.prepare_cached(
            "SELECT id FROM messages
             WHERE conversation_id = ?1 AND role = 'user' AND answered_at IS NULL ORDER BY id",
        )?
        .query_map(params![conversation_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let message = match out.answering(&pending) {
        Some(record) => turn_in(conn, &record)?,
        None => {
            let id: i64 = conn
                .prepare_cached(
                    "INSERT INTO messages (conversation_id, role, channel, text, created_at,
                         correlation_id, kind, provider, model, prompt_version, latency_ms)
                     SELECT id, 'assistant', channel, ?2, ?3, ?4, 'answer', ?5, ?6, NULL, 0
                     FROM conversations WHERE id = ?1
                     RETURNING id",
                )?
                .query_row(
                    params![
                        conversation_id,
                        out.text,
                        out.at,
                        out.correlation_id,
                        out.provider,
                        out.sender
                    ],
                    |r| r.get(0),
                )?;
            conn.prepare_cached(
                "UPDATE conversations SET message_count = message_count + 1,
                     last_activity_at = max(last_activity_at, ?2)
                 WHERE id = ?1",
            )?
            .execute(params![conversation_id, out.at])?;
            message_by_id(conn, id)?
        }
    };
    conn.prepare_cached("DELETE FROM takes WHERE message_id IN (SELECT value FROM json_each(?1))")?
        .execute(params![serde_json::to_string(&pending).unwrap_or_default()])?;
    let outbox_id = conn
        .prepare_cached("SELECT id FROM outbox WHERE reply_id = ?1")?
        .query_row(params![message.id], |r| r.get(0))
        .optional()?;
    Ok(Sent {
        message,
        outbox_id,
        answered: pending,
    })
}

pub(super) fn take_in(conn: &Connection, take: &Take) -> Result<Option<StoredMessage>, StoreError> {
    let found: Option<i64> = conn
        .prepare_cached(
            "SELECT m.id FROM messages m LEFT JOIN takes t ON t.message_id = m.id
             WHERE m.role = 'user' AND m.answered_at IS NULL AND m.channel <> 'cli'
               AND (t.message_id IS NULL OR t.until <= ?1)
               AND (?2 IS NULL OR m.channel = ?2)
               AND (?3 IS NULL OR m.conversation_id = ?3)
             ORDER BY m.id LIMIT 1",
        )?
        .query_row(
            params![
                take.now,
                take.channel.map(|c| c.as_str()),
                take.conversation_id
            ],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = found else { return Ok(None) };
    // As on Postgres, the upsert only replaces a take whose time ran out.
    let won = conn
        .prepare_cached(
            "INSERT INTO takes (message_id, consumer, until) VALUES (?1, ?2, ?3)
         ON CONFLICT (message_id) DO UPDATE SET consumer = excluded.consumer,
             until = excluded.until
         WHERE takes.until <= ?4",
        )?
        .execute(params![id, take.consumer, take.until, take.now])?;
    if won == 0 {
        return Ok(None);
    }
    Ok(Some(message_by_id(conn, id)?))
}

pub(super) fn token_in(conn: &Connection, change: &TokenChange) -> Result<(), StoreError> {
    match change {
        TokenChange::Create {
            name,
            sha256,
            at,
            operator,
        } => {
            let added = conn
                .prepare_cached(
                    "INSERT INTO access_tokens (name, sha256, created_at, operator)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![name, sha256, at, operator])?;
            if added == 0 {
                return Err(StoreError::Invalid(format!(
                    "a token named {name:?} exists already"
                )));
            }
        }
        TokenChange::Revoke { name } => {
            let gone = conn
                .prepare_cached("DELETE FROM access_tokens WHERE name = ?1")?
                .execute(params![name])?;
            if gone == 0 {
                return Err(StoreError::NotFound(format!("token {name:?}")));
            }
        }
        TokenChange::Used { sha256, at } => {
            conn.prepare_cached("UPDATE access_tokens SET last_used_at = ?2 WHERE sha256 = ?1")?
                .execute(params![sha256, at])?;
        }
    }
    Ok(())
}

const TOKEN_SELECT: &str =
    "SELECT name, sha256, created_at, last_used_at, operator FROM access_tokens";

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccessToken> {
    Ok(AccessToken {
        name: r.get(0)?,
        sha256: r.get(1)?,
        created_at: r.get(2)?,
        last_used_at: r.get(3)?,
        operator: r.get(4)?,
    })
}

const APPROVAL_SELECT: &str = "SELECT id, conversation_id, message_id, correlation_id, tool,
    arguments, asked_at, deadline_at, state, decided_by, decided_at, ran_at, result
    FROM approvals";

fn approval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    let state: String = r.get(8)?;
    Ok(Approval {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        message_id: r.get(2)?,
        correlation_id: r.get(3)?,
        tool: r.get(4)?,
        arguments: r.get(5)?,
        asked_at: r.get(6)?,
        deadline_at: r.get(7)?,
        state: ApprovalState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                8,
                rusqlite::types::Type::Text,
                format!("unknown approval state {state:?}").into(),
            )
        })?,
        decided_by: r.get(9)?,
        decided_at: r.get(10)?,
        ran_at: r.get(11)?,
        result: r.get(12)?,
    })
}

fn approval_in(conn: &Connection, id: i64) -> Result<Approval, StoreError> {
    conn.prepare_cached(&format!("{APPROVAL_SELECT} WHERE id = ?1"))?
        .query_row(params![id], approval_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("approval {id}")))
}

/// [`Write::Ask`]: the row of this call of this turn, made if new.
pub(super) fn ask_in(conn: &Connection, ask: &Ask) -> Result<(Approval, bool), StoreError> {
    let made = conn
        .prepare_cached(
            "INSERT INTO approvals (conversation_id, message_id, call_key, correlation_id, tool,
                 arguments, asked_at, deadline_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (message_id, call_key) DO NOTHING",
        )?
        .execute(params![
            ask.conversation_id,
            ask.message_id,
            ask.call_key(),
            ask.correlation_id,
            ask.tool,
            ask.arguments,
            ask.at,
            ask.deadline_at
        ])?;
    let id: i64 = conn
        .prepare_cached("SELECT id FROM approvals WHERE message_id = ?1 AND call_key = ?2")?
        .query_row(params![ask.message_id, ask.call_key()], |r| r.get(0))?;
    Ok((approval_in(conn, id)?, made > 0))
}

/// [`Write::Decide`]: the row after the answer, and whether it took.
pub(super) fn decide_in(
    conn: &Connection,
    id: i64,
    decision: Decision,
    by: &str,
    at: i64,
) -> Result<(Approval, bool), StoreError> {
    let when = match decision {
        Decision::Expire => "deadline_at < ?4",
        _ => "deadline_at >= ?4",
    };
    let took = conn
        .prepare_cached(&format!(
            "UPDATE approvals SET state = ?2, decided_by = ?3, decided_at = ?4
             WHERE id = ?1 AND state = 'pending' AND {when}"
        ))?
        .execute(params![id, decision.state().as_str(), by, at])?;
    Ok((approval_in(conn, id)?, took == 1))
}

/// [`Write::RunApproved`]: whether this caller may run the call.
pub(super) fn run_approved_in(conn: &Connection, id: i64, at: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE approvals SET ran_at = ?2
             WHERE id = ?1 AND state = 'approved' AND ran_at IS NULL",
        )?
        .execute(params![id, at])?
        == 1)
}

/// [`Write::ApprovalResult`].
pub(super) fn approval_result_in(
    conn: &Connection,
    id: i64,
    result: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE approvals SET result = ?2 WHERE id = ?1")?
        .execute(params![id, result])?;
    Ok(())
}

impl ApprovalReads for SqliteStore {
    fn approval(&self, id: i64) -> Result<Option<Approval>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{APPROVAL_SELECT} WHERE id = ?1"))?;
        Ok(stmt.query_row(params![id], approval_from_row).optional()?)
    }

    fn approvals(&self, pending_only: bool, limit: usize) -> Result<Vec<Approval>, StoreError> {
        let conn = self.reader();
        let filter = if pending_only {
            "WHERE state = 'pending'"
        } else {
            ""
        };
        let mut stmt = conn.prepare_cached(&format!(
            "{APPROVAL_SELECT} {filter} ORDER BY id DESC LIMIT +?1"
        ))?;
        let rows = stmt.query_map(params![limit as i64], approval_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl TokenStore for SqliteStore {
    fn tokens(&self) -> Result<Vec<AccessToken>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{TOKEN_SELECT} ORDER BY name"))?;
        let rows = stmt.query_map([], token_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn token_by_hash(&self, sha256: &str) -> Result<Option<AccessToken>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{TOKEN_SELECT} WHERE sha256 = ?1"))?;
        Ok(stmt.query_row(params![sha256], token_from_row).optional()?)
    }
}

/// Who answers a conversation now ([`Write::Handoff`]).
pub(super) fn handoff_in(
    conn: &Connection,
    handoff: &crate::core::handoff::Handoff,
) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE conversations SET mode = ?2, mode_at = ?3, mode_by = ?4 WHERE id = ?1",
        )?
        .execute(params![
            handoff.conversation_id,
            handoff.mode.as_str(),
            handoff.at,
            handoff.by
        ])?;
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
    conn: &Connection,
    channel: crate::core::Channel,
    sender: &str,
    out: bool,
    at: i64,
) -> Result<(), StoreError> {
    if out {
        conn.prepare_cached(
            "INSERT INTO opt_outs (channel, sender, at) VALUES (?1, ?2, ?3)
             ON CONFLICT (channel, sender) DO UPDATE SET at = excluded.at",
        )?
        .execute(params![channel.as_str(), sender, at])?;
    } else {
        conn.prepare_cached("DELETE FROM opt_outs WHERE channel = ?1 AND sender = ?2")?
            .execute(params![channel.as_str(), sender])?;
    }
    Ok(())
}
