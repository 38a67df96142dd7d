//! A person's data on SQLite: everything held about one sender, and its
//! erasure in one transaction.

use rusqlite::{Connection, params};

use super::SqliteStore;
use super::outbox::{ENTRY_SELECT, entry_from_row};
use super::rows::summary_from_row;
use crate::core::people::{self, Identity, Person};
use crate::core::ports::{
    ConversationReads, Erased, PeopleStore, Prune, SenderData, SenderRef, StoreError, TraceStore,
    ViolationRecord,
};
use rusqlite::OptionalExtension;

/// The sender's conversations, matched with or without the channel's
/// prefix on the stored sender (`whatsapp:+1555…`).
const CONVERSATIONS_OF: &str = "SELECT id FROM conversations
     WHERE channel = ?1 AND (sender = ?2 OR sender = ?1 || ':' || ?2) ORDER BY id";

fn conversations_of(conn: &Connection, sender: &SenderRef) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(CONVERSATIONS_OF)?;
    let rows = stmt.query_map(params![sender.channel.as_str(), sender.id], |r| r.get(0))?;
    rows.collect()
}

impl PeopleStore for SqliteStore {
    fn sender_data(&self, sender: &SenderRef) -> Result<SenderData, StoreError> {
        let ids = conversations_of(&self.reader(), sender)?;
        let mut data = SenderData::default();
        for id in ids {
            data.conversations.extend(self.conversation(id)?);
            data.messages.extend(self.messages(id)?);
            let conn = self.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT conversation_id, from_message_id, to_message_id, text, provider, model,
                        created_at
                 FROM summaries WHERE conversation_id = ?1 ORDER BY id",
            )?;
            for s in stmt.query_map(params![id], summary_from_row)? {
                data.summaries.push(s?);
            }
            let mut stmt = conn.prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE o.conversation_id = ?1 ORDER BY o.id"
            ))?;
            for e in stmt.query_map(params![id], entry_from_row)? {
                data.outbox.push(e?);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT v.message_id, v.rule, v.created_at FROM guardrail_violations v
                 JOIN messages m ON m.id = v.message_id
                 WHERE m.conversation_id = ?1 ORDER BY v.id",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                Ok(ViolationRecord {
                    message_id: r.get(0)?,
                    rule: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })?;
            for v in rows {
                data.violations.push(v?);
            }
        }
        data.traces = self.traces_of(&data.messages)?;
        Ok(data)
    }

    fn person_of(&self, sender: &SenderRef) -> Result<Option<Person>, StoreError> {
        let conn = self.reader();
        match person_id_of(&conn, sender)? {
            Some(id) => person_in(&conn, id),
            None => Ok(None),
        }
    }

    fn person(&self, id: i64) -> Result<Option<Person>, StoreError> {
        person_in(&self.reader(), id)
    }

    fn people(&self, limit: usize) -> Result<Vec<Person>, StoreError> {
        let conn = self.reader();
        let ids: Vec<i64> = conn
            .prepare_cached("SELECT id FROM people ORDER BY id DESC LIMIT +?1")?
            .query_map(params![limit as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut people = Vec::new();
        for id in ids {
            people.extend(person_in(&conn, id)?);
        }
        Ok(people)
    }
}

/// An identity as stored: the sender with or without the channel's prefix.
const IDENTITY_OF: &str = "channel = ?1 AND (sender = ?2 OR sender = ?1 || ':' || ?2)";

fn person_id_of(conn: &Connection, sender: &SenderRef) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT person_id FROM identities WHERE {IDENTITY_OF}"
        ))?
        .query_row(params![sender.channel.as_str(), sender.id], |r| r.get(0))
        .optional()?)
}

/// The identity's sender as stored (`whatsapp:+1555…` for `whatsapp:+1555…`
/// given as channel `whatsapp`, id `+1555…`).
fn stored_sender(conn: &Connection, sender: &SenderRef) -> Result<String, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT sender FROM identities WHERE {IDENTITY_OF}"
    ))?
    .query_row(params![sender.channel.as_str(), sender.id], |r| r.get(0))
    .optional()?
    .ok_or_else(|| unknown(sender))
}

fn unknown(sender: &SenderRef) -> StoreError {
    StoreError::NotFound(format!("identity {}:{}", sender.channel, sender.id))
}

fn person_in(conn: &Connection, id: i64) -> Result<Option<Person>, StoreError> {
    let Some(created_at) = conn
        .prepare_cached("SELECT created_at FROM people WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT channel, sender, since FROM identities WHERE person_id = ?1
         ORDER BY since, channel, sender",
    )?;
    let identities = stmt
        .query_map(params![id], |r| {
            let channel: String = r.get(0)?;
            Ok((channel, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })?
        .map(|row| {
            let (channel, sender, since) = row?;
            Ok(Identity {
                channel: channel
                    .parse()
                    .map_err(|e| StoreError::Backend(format!("{e}")))?,
                sender,
                since,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(Person {
        id,
        created_at,
        identities,
    }))
}

/// [`crate::core::ports::Write::Link`].
pub(super) fn link_in(
    conn: &Connection,
    a: &SenderRef,
    b: &SenderRef,
    at: i64,
) -> Result<Person, StoreError> {
    let keep = person_id_of(conn, a)?.ok_or_else(|| unknown(a))?;
    let gone = person_id_of(conn, b)?.ok_or_else(|| unknown(b))?;
    if keep != gone {
        conn.prepare_cached(
            "UPDATE identities SET person_id = ?1, since = ?3 WHERE person_id = ?2",
        )?
        .execute(params![keep, gone, at])?;
        conn.prepare_cached("DELETE FROM people WHERE id = ?1")?
            .execute(params![gone])?;
    }
    person_in(conn, keep)?.ok_or_else(|| StoreError::NotFound(format!("person {keep}")))
}

/// [`crate::core::ports::Write::Unlink`].
pub(super) fn unlink_in(
    conn: &Connection,
    sender: &SenderRef,
    at: i64,
) -> Result<Person, StoreError> {
    let id = person_id_of(conn, sender)?.ok_or_else(|| unknown(sender))?;
    let owned: i64 = conn
        .prepare_cached("SELECT count(*) FROM identities WHERE person_id = ?1")?
        .query_row(params![id], |r| r.get(0))?;
    if owned <= 1 {
        return person_in(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("person {id}")));
    }
    conn.prepare_cached("INSERT INTO people (created_at) VALUES (?1)")?
        .execute(params![at])?;
    let made = conn.last_insert_rowid();
    conn.prepare_cached(&format!(
        "UPDATE identities SET person_id = ?3, since = ?4 WHERE {IDENTITY_OF}"
    ))?
    .execute(params![sender.channel.as_str(), sender.id, made, at])?;
    person_in(conn, made)?.ok_or_else(|| StoreError::NotFound(format!("person {made}")))
}

/// [`crate::core::ports::Write::LinkCode`].
pub(super) fn link_code_in(
    conn: &Connection,
    sender: &SenderRef,
    code: &str,
    at: i64,
) -> Result<(), StoreError> {
    let stored = stored_sender(conn, sender)?;
    let channel = sender.channel.as_str();
    let hour = at - 3_600_000;
    // Codes older than any limit or lifetime go.
    conn.prepare_cached("DELETE FROM link_codes WHERE created_at < ?1")?
        .execute(params![hour])?;
    conn.prepare_cached("DELETE FROM link_failures WHERE at < ?1")?
        .execute(params![hour])?;
    let asked: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM link_codes WHERE channel = ?1 AND sender = ?2 AND created_at >= ?3",
        )?
        .query_row(params![channel, stored, hour], |r| r.get(0))?;
    if asked >= people::CODES_PER_HOUR {
        return Err(StoreError::Invalid(
            "too many link codes asked for this hour: try again later".into(),
        ));
    }
    let made = conn
        .prepare_cached(
            "INSERT INTO link_codes (code, channel, sender, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (code) DO NOTHING",
        )?
        .execute(params![
            code,
            channel,
            stored,
            at,
            at + people::CODE_LIFETIME_MS
        ])?;
    if made == 0 {
        return Err(StoreError::Invalid("that code is in use: ask again".into()));
    }
    Ok(())
}

/// [`crate::core::ports::Write::Redeem`]: the person, or why not (a wrong
/// code is counted and kept: the caller commits it).
pub(super) fn redeem_in(
    conn: &Connection,
    sender: &SenderRef,
    code: &str,
    at: i64,
) -> Result<Result<Person, String>, StoreError> {
    let stored = stored_sender(conn, sender)?;
    let channel = sender.channel.as_str();
    let failed: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM link_failures WHERE channel = ?1 AND sender = ?2 AND at >= ?3",
        )?
        .query_row(params![channel, stored, at - 3_600_000], |r| r.get(0))?;
    if failed >= people::FAILURES_PER_HOUR {
        return Ok(Err(
            "too many wrong codes this hour: ask for a new one later".into(),
        ));
    }
    let found: Option<people::StoredCode> = conn
        .prepare_cached(
            "SELECT channel, sender, expires_at, used_at FROM link_codes WHERE code = ?1",
        )?
        .query_row(params![code], |r| {
            Ok(people::StoredCode {
                channel: r.get(0)?,
                sender: r.get(1)?,
                expires_at: r.get(2)?,
                used_at: r.get(3)?,
            })
        })
        .optional()?;
    let why = people::refusal(found.as_ref(), channel, &stored, at);
    if let Some(why) = why {
        conn.prepare_cached("INSERT INTO link_failures (channel, sender, at) VALUES (?1, ?2, ?3)")?
            .execute(params![channel, stored, at])?;
        return Ok(Err(why.to_string()));
    }
    let Some(made) = found else {
        return Ok(Err("that code is not known".into()));
    };
    conn.prepare_cached("UPDATE link_codes SET used_at = ?2 WHERE code = ?1")?
        .execute(params![code, at])?;
    let asked = SenderRef {
        channel: made
            .channel
            .parse()
            .map_err(|e| StoreError::Backend(format!("{e}")))?,
        id: made.sender,
    };
    Ok(Ok(link_in(conn, &asked, sender, at)?))
}

/// [`crate::core::ports::Write::ErasePerson`]: every identity's data, then
/// the person.
pub(super) fn erase_person_in(
    conn: &Connection,
    person: i64,
    at: i64,
) -> Result<Erased, StoreError> {
    let Some(p) = person_in(conn, person)? else {
        return Err(StoreError::NotFound(format!("person {person}")));
    };
    let mut total = Erased::default();
    for identity in &p.identities {
        total.add(erase_in(conn, &identity.sender_ref(), at)?);
    }
    conn.prepare_cached("DELETE FROM people WHERE id = ?1")?
        .execute(params![person])?;
    Ok(total)
}

/// Deletes everything held about `sender` inside the caller's transaction
/// (the full-text index follows its rows by trigger) and records the
/// erasure: when, the channel, and how many rows — never who or what.
pub(super) fn erase_in(
    conn: &Connection,
    sender: &SenderRef,
    at: i64,
) -> Result<Erased, StoreError> {
    let erased = erase_conversations_in(conn, &conversations_of(conn, sender)?)?;
    // The identity, its codes, and its person when it owned nothing else.
    let person = person_id_of(conn, sender)?;
    let run = |sql: &str| -> Result<usize, StoreError> {
        Ok(conn
            .prepare_cached(sql)?
            .execute(params![sender.channel.as_str(), sender.id])?)
    };
    run(&format!("DELETE FROM link_codes WHERE {IDENTITY_OF}"))?;
    run(&format!("DELETE FROM link_failures WHERE {IDENTITY_OF}"))?;
    run(&format!("DELETE FROM identities WHERE {IDENTITY_OF}"))?;
    if let Some(person) = person {
        conn.prepare_cached(
            "DELETE FROM people WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM identities WHERE person_id = ?1)",
        )?
        .execute(params![person])?;
    }
    let counts = serde_json::to_string(&erased).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached("INSERT INTO erasures (at, channel, counts) VALUES (?1, ?2, ?3)")?
        .execute(params![at, sender.channel.as_str(), counts])?;
    Ok(erased)
}

/// Deletes conversations with everything that belongs to them: violations,
/// the traces of their messages, outbox items, summaries, messages (the
/// full-text index follows by trigger).
pub(super) fn erase_conversations_in(conn: &Connection, ids: &[i64]) -> Result<Erased, StoreError> {
    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let run = |sql: &str| -> Result<u64, StoreError> {
        Ok(conn.prepare_cached(sql)?.execute(params![ids])? as u64)
    };
    // Children first: every reference points into what is deleted next.
    // Tokens used per day are counts, not reported apart.
    run("DELETE FROM token_usage WHERE conversation_id IN (SELECT value FROM json_each(?1))")?;
    run("DELETE FROM approvals WHERE conversation_id IN (SELECT value FROM json_each(?1))")?;
    let mut files = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT attachments FROM messages
         WHERE conversation_id IN (SELECT value FROM json_each(?1)) AND attachments <> '[]'",
    )?;
    let mut rows = stmt.query(params![ids])?;
    while let Some(row) = rows.next()? {
        files.extend(crate::core::media::stored_files(&row.get::<_, String>(0)?));
    }
    let erased = Erased {
        files,
        violations: run("DELETE FROM guardrail_violations WHERE message_id IN
                 (SELECT id FROM messages WHERE conversation_id IN (SELECT value FROM json_each(?1)))")?,
        traces: run("DELETE FROM traces WHERE correlation_id IN
                 (SELECT correlation_id FROM messages
                  WHERE conversation_id IN (SELECT value FROM json_each(?1))
                    AND correlation_id IS NOT NULL)")?,
        outbox: run("DELETE FROM outbox WHERE conversation_id IN (SELECT value FROM json_each(?1))")?,
        summaries: run(
            "DELETE FROM summaries WHERE conversation_id IN (SELECT value FROM json_each(?1))",
        )?,
        messages: run("DELETE FROM messages WHERE conversation_id IN (SELECT value FROM json_each(?1))")?,
        conversations: run("DELETE FROM conversations WHERE id IN (SELECT value FROM json_each(?1))")?,
    };
    Ok(erased)
}

/// One batch of retention: up to `limit` conversations idle since before
/// `messages_before` (never one with a message still unanswered or a reply
/// still queued), and trace events from before `traces_before` among the
/// `limit` oldest. With `dry_run` the batch is counted and rolled back.
pub(super) fn prune_in(conn: &Connection, prune: &Prune) -> Result<Erased, StoreError> {
    if prune.dry_run {
        conn.execute_batch("SAVEPOINT prune_dry_run")?;
    }
    let result = prune_now(conn, prune);
    if prune.dry_run {
        conn.execute_batch("ROLLBACK TO prune_dry_run; RELEASE prune_dry_run")?;
    }
    result
}

fn prune_now(conn: &Connection, prune: &Prune) -> Result<Erased, StoreError> {
    let limit = i64::try_from(prune.limit).unwrap_or(i64::MAX);
    let mut erased = Erased::default();
    if let Some(before) = prune.messages_before {
        let mut stmt = conn.prepare_cached(
            "SELECT c.id FROM conversations c
             WHERE c.last_activity_at < ?1
               AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                               AND m.role = 'user' AND m.answered_at IS NULL)
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.conversation_id = c.id
                               AND o.state = 'queued')
             ORDER BY c.last_activity_at LIMIT +?2",
        )?;
        let ids = stmt
            .query_map(params![before, limit], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        erased = erase_conversations_in(conn, &ids)?;
    }
    if let Some(before) = prune.traces_before {
        // The oldest rows only (ids follow time): a sweep never scans the
        // whole table to find that nothing is old.
        erased.traces += conn
            .prepare_cached(
                "DELETE FROM traces WHERE id IN (SELECT id FROM traces ORDER BY id LIMIT +?2)
                   AND started_at < ?1",
            )?
            .execute(params![before, limit])? as u64;
    }
    Ok(erased)
}
