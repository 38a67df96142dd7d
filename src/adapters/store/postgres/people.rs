//! A person's data on Postgres: everything held about one sender, its
//! erasure in one transaction, and retention's batches of the same.

use postgres::Transaction;

use super::PostgresStore;
use super::rows::{self, ENTRY_SELECT, SUMMARY_COLUMNS};
use crate::core::people::{self, Identity, Person};
use crate::core::ports::{
    ConversationReads, Erased, PeopleStore, Prune, SenderData, SenderRef, StoreError, TraceStore,
    ViolationRecord,
};

/// The sender's conversations, matched with or without the channel's
/// prefix on the stored sender (`whatsapp:+1555…`).
const CONVERSATIONS_OF: &str = "SELECT id FROM conversations
     WHERE channel = $1 AND (sender = $2 OR sender = $1 || ':' || $2) ORDER BY id";

impl PeopleStore for PostgresStore {
    fn sender_data(&self, sender: &SenderRef) -> Result<SenderData, StoreError> {
        let (channel, id) = (sender.channel.as_str(), sender.id.clone());
        let ids: Vec<i64> = self.read(move |c| {
            Ok(c.query(CONVERSATIONS_OF, &[&channel, &id])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })?;
        let mut data = SenderData::default();
        for id in ids {
            data.conversations.extend(self.conversation(id)?);
            data.messages.extend(self.messages(id)?);
            let (summaries, outbox, violations) = self.read(move |c| {
                let summaries = rows::all(
                    c.query(
                        &format!(
                            "SELECT {SUMMARY_COLUMNS} FROM summaries
                             WHERE conversation_id = $1 ORDER BY id"
                        ),
                        &[&id],
                    )?,
                    rows::summary,
                )?;
                let outbox = rows::all(
                    c.query(
                        &format!("{ENTRY_SELECT} WHERE o.conversation_id = $1 ORDER BY o.id"),
                        &[&id],
                    )?,
                    rows::entry,
                )?;
                let violations = c
                    .query(
                        "SELECT v.message_id, v.rule, v.created_at FROM guardrail_violations v
                         JOIN messages m ON m.id = v.message_id
                         WHERE m.conversation_id = $1 ORDER BY v.id",
                        &[&id],
                    )?
                    .iter()
                    .map(|r| ViolationRecord {
                        message_id: r.get(0),
                        rule: r.get(1),
                        created_at: r.get(2),
                    })
                    .collect::<Vec<_>>();
                Ok((summaries, outbox, violations))
            })?;
            data.summaries.extend(summaries);
            data.outbox.extend(outbox);
            data.violations.extend(violations);
        }
        data.traces = self.traces_of(&data.messages)?;
        Ok(data)
    }

    fn person_of(&self, sender: &SenderRef) -> Result<Option<Person>, StoreError> {
        let sender = sender.clone();
        self.read(move |c| {
            let mut tx = c.transaction()?;
            let found = match person_id_of(&mut tx, &sender)? {
                Some(id) => person_in(&mut tx, id)?,
                None => None,
            };
            tx.commit()?;
            Ok(found)
        })
    }

    fn person(&self, id: i64) -> Result<Option<Person>, StoreError> {
        self.read(move |c| {
            let mut tx = c.transaction()?;
            let found = person_in(&mut tx, id)?;
            tx.commit()?;
            Ok(found)
        })
    }

    fn people(&self, limit: usize) -> Result<Vec<Person>, StoreError> {
        let limit = limit as i64;
        self.read(move |c| {
            let mut tx = c.transaction()?;
            let ids: Vec<i64> = tx
                .query("SELECT id FROM people ORDER BY id DESC LIMIT $1", &[&limit])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut people = Vec::new();
            for id in ids {
                people.extend(person_in(&mut tx, id)?);
            }
            tx.commit()?;
            Ok(people)
        })
    }
}

/// An identity as stored: the sender with or without the channel's prefix.
const IDENTITY_OF: &str = "channel = $1 AND (sender = $2 OR sender = $1 || ':' || $2)";

fn person_id_of(tx: &mut Transaction<'_>, sender: &SenderRef) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .query_opt(
            &format!("SELECT person_id FROM identities WHERE {IDENTITY_OF}"),
            &[&sender.channel.as_str(), &sender.id],
        )?
        .map(|r| r.get(0)))
}

fn stored_sender(tx: &mut Transaction<'_>, sender: &SenderRef) -> Result<String, StoreError> {
    tx.query_opt(
        &format!("SELECT sender FROM identities WHERE {IDENTITY_OF}"),
        &[&sender.channel.as_str(), &sender.id],
    )?
    .map(|r| r.get(0))
    .ok_or_else(|| unknown(sender))
}

fn unknown(sender: &SenderRef) -> StoreError {
    StoreError::NotFound(format!("identity {}:{}", sender.channel, sender.id))
}

fn person_in(tx: &mut Transaction<'_>, id: i64) -> Result<Option<Person>, StoreError> {
    let Some(row) = tx.query_opt("SELECT created_at FROM people WHERE id = $1", &[&id])? else {
        return Ok(None);
    };
    let identities = tx
        .query(
            "SELECT channel, sender, since FROM identities WHERE person_id = $1
             ORDER BY since, channel, sender",
            &[&id],
        )?
        .iter()
        .map(|r| {
            let channel: String = r.get(0);
            Ok(Identity {
                channel: channel
                    .parse()
                    .map_err(|e| StoreError::Backend(format!("{e}")))?,
                sender: r.get(1),
                since: r.get(2),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(Person {
        id,
        created_at: row.get(0),
        identities,
    }))
}

fn person_or_missing(tx: &mut Transaction<'_>, id: i64) -> Result<Person, StoreError> {
    person_in(tx, id)?.ok_or_else(|| StoreError::NotFound(format!("person {id}")))
}

/// [`crate::core::ports::Write::Link`].
pub(super) fn link_in(
    tx: &mut Transaction<'_>,
    a: &SenderRef,
    b: &SenderRef,
    at: i64,
) -> Result<Person, StoreError> {
    let keep = person_id_of(tx, a)?.ok_or_else(|| unknown(a))?;
    let gone = person_id_of(tx, b)?.ok_or_else(|| unknown(b))?;
    if keep != gone {
        tx.execute(
            "UPDATE identities SET person_id = $1, since = $3 WHERE person_id = $2",
            &[&keep, &gone, &at],
        )?;
        tx.execute("DELETE FROM people WHERE id = $1", &[&gone])?;
    }
    person_or_missing(tx, keep)
}

/// [`crate::core::ports::Write::Unlink`].
pub(super) fn unlink_in(
    tx: &mut Transaction<'_>,
    sender: &SenderRef,
    at: i64,
) -> Result<Person, StoreError> {
    let id = person_id_of(tx, sender)?.ok_or_else(|| unknown(sender))?;
    let owned: i64 = tx
        .query_one(
            "SELECT count(*) FROM identities WHERE person_id = $1",
            &[&id],
        )?
        .get(0);
    if owned <= 1 {
        return person_or_missing(tx, id);
    }
    let made: i64 = tx
        .query_one(
            "INSERT INTO people (created_at) VALUES ($1) RETURNING id",
            &[&at],
        )?
        .get(0);
    tx.execute(
        &format!("UPDATE identities SET person_id = $3, since = $4 WHERE {IDENTITY_OF}"),
        &[&sender.channel.as_str(), &sender.id, &made, &at],
    )?;
    person_or_missing(tx, made)
}

/// [`crate::core::ports::Write::LinkCode`].
pub(super) fn link_code_in(
    tx: &mut Transaction<'_>,
    sender: &SenderRef,
    code: &str,
    at: i64,
) -> Result<(), StoreError> {
    let stored = stored_sender(tx, sender)?;
    let channel = sender.channel.as_str();
    let hour = at - 3_600_000;
    tx.execute("DELETE FROM link_codes WHERE created_at < $1", &[&hour])?;
    tx.execute("DELETE FROM link_failures WHERE at < $1", &[&hour])?;
    let asked: i64 = tx
        .query_one(
            "SELECT count(*) FROM link_codes WHERE channel = $1 AND sender = $2 AND created_at >= $3",
            &[&channel, &stored, &hour],
        )?
        .get(0);
    if asked >= people::CODES_PER_HOUR {
        return Err(StoreError::Invalid(
            "too many link codes asked for this hour: try again later".into(),
        ));
    }
    let made = tx.execute(
        "INSERT INTO link_codes (code, channel, sender, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO NOTHING",
        &[
            &code,
            &channel,
            &stored,
            &at,
            &(at + people::CODE_LIFETIME_MS),
        ],
    )?;
    if made == 0 {
        return Err(StoreError::Invalid("that code is in use: ask again".into()));
    }
    Ok(())
}

/// [`crate::core::ports::Write::Redeem`].
pub(super) fn redeem_in(
    tx: &mut Transaction<'_>,
    sender: &SenderRef,
    code: &str,
    at: i64,
) -> Result<Result<Person, String>, StoreError> {
    let stored = stored_sender(tx, sender)?;
    let channel = sender.channel.as_str();
    let failed: i64 = tx
        .query_one(
            "SELECT count(*) FROM link_failures WHERE channel = $1 AND sender = $2 AND at >= $3",
            &[&channel, &stored, &(at - 3_600_000)],
        )?
        .get(0);
    if failed >= people::FAILURES_PER_HOUR {
        return Ok(Err(
            "too many wrong codes this hour: ask for a new one later".into(),
        ));
    }
    // Locked: two daemons redeeming one code at once link once.
    let found: Option<people::StoredCode> = tx
        .query_opt(
            "SELECT channel, sender, expires_at, used_at FROM link_codes WHERE code = $1 FOR UPDATE",
            &[&code],
        )?
        .map(|r| people::StoredCode {
            channel: r.get(0),
            sender: r.get(1),
            expires_at: r.get(2),
            used_at: r.get(3),
        });
    let why = people::refusal(found.as_ref(), channel, &stored, at);
    if let Some(why) = why {
        tx.execute(
            "INSERT INTO link_failures (channel, sender, at) VALUES ($1, $2, $3)",
            &[&channel, &stored, &at],
        )?;
        return Ok(Err(why.to_string()));
    }
    let Some(made) = found else {
        return Ok(Err("that code is not known".into()));
    };
    tx.execute(
        "UPDATE link_codes SET used_at = $2 WHERE code = $1",
        &[&code, &at],
    )?;
    let asked = SenderRef {
        channel: made
            .channel
            .parse()
            .map_err(|e| StoreError::Backend(format!("{e}")))?,
        id: made.sender,
    };
    Ok(Ok(link_in(tx, &asked, sender, at)?))
}

/// [`crate::core::ports::Write::ErasePerson`].
pub(super) fn erase_person_in(
    tx: &mut Transaction<'_>,
    person: i64,
    at: i64,
) -> Result<Erased, StoreError> {
    let p = person_or_missing(tx, person)?;
    let mut total = Erased::default();
    for identity in &p.identities {
        total.add(erase_in(tx, &identity.sender_ref(), at)?);
    }
    tx.execute("DELETE FROM people WHERE id = $1", &[&person])?;
    Ok(total)
}

/// Deletes everything held about `sender` and records the erasure: when,
/// the channel, and how many rows — never who or what.
pub(super) fn erase_in(
    tx: &mut Transaction<'_>,
    sender: &SenderRef,
    at: i64,
) -> Result<Erased, StoreError> {
    let channel = sender.channel.as_str();
    let ids: Vec<i64> = tx
        .query(CONVERSATIONS_OF, &[&channel, &sender.id])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let erased = erase_conversations_in(tx, &ids)?;
    // The identity, its codes, and its person when it owned nothing else.
    let person = person_id_of(tx, sender)?;
    for table in ["link_codes", "link_failures", "identities"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE {IDENTITY_OF}"),
            &[&channel, &sender.id],
        )?;
    }
    if let Some(person) = person {
        tx.execute(
            "DELETE FROM people WHERE id = $1
             AND NOT EXISTS (SELECT 1 FROM identities WHERE person_id = $1)",
            &[&person],
        )?;
    }
    let counts = serde_json::to_string(&erased).map_err(|e| StoreError::Invalid(e.to_string()))?;
    tx.execute(
        "INSERT INTO erasures (at, channel, counts) VALUES ($1, $2, $3)",
        &[&at, &channel, &counts],
    )?;
    Ok(erased)
}

/// Deletes conversations with everything that belongs to them (the search
/// index is part of the message row).
fn erase_conversations_in(tx: &mut Transaction<'_>, ids: &[i64]) -> Result<Erased, StoreError> {
    if ids.is_empty() {
        return Ok(Erased::default());
    }
    let ids = ids.to_vec();
    let mut files = Vec::new();
    for row in tx.query(
        "SELECT attachments FROM messages WHERE conversation_id = ANY($1) AND attachments <> '[]'",
        &[&ids],
    )? {
        files.extend(crate::core::media::stored_files(row.try_get(0)?));
    }
    let mut run = |sql: &str| -> Result<u64, StoreError> { Ok(tx.execute(sql, &[&ids])?) };
    // Children first: every reference points into what is deleted next.
    run("DELETE FROM token_usage WHERE conversation_id = ANY($1)")?;
    run("DELETE FROM approvals WHERE conversation_id = ANY($1)")?;
    run("DELETE FROM claims WHERE kind IN ('turns', 'outbox') AND key = ANY($1)")?;
    let violations = run("DELETE FROM guardrail_violations WHERE message_id IN
             (SELECT id FROM messages WHERE conversation_id = ANY($1))")?;
    let traces = run("DELETE FROM traces WHERE correlation_id IN
             (SELECT correlation_id FROM messages
              WHERE conversation_id = ANY($1) AND correlation_id IS NOT NULL)")?;
    let outbox = run("DELETE FROM outbox WHERE conversation_id = ANY($1)")?;
    let summaries = run("DELETE FROM summaries WHERE conversation_id = ANY($1)")?;
    // Answers point at what they answer, inside the deleted set: foreign
    // keys are checked at the end of the statement.
    let messages = run("DELETE FROM messages WHERE conversation_id = ANY($1)")?;
    let conversations = run("DELETE FROM conversations WHERE id = ANY($1)")?;
    Ok(Erased {
        conversations,
        messages,
        summaries,
        traces,
        outbox,
        violations,
        files,
    })
}

/// One batch of retention (see the SQLite adapter's `prune_in`); with
/// `dry_run` counted and rolled back.
pub(super) fn prune_in(tx: &mut Transaction<'_>, prune: &Prune) -> Result<Erased, StoreError> {
    let mut sp = tx.transaction()?;
    let erased = prune_now(&mut sp, prune)?;
    if !prune.dry_run {
        sp.commit()?;
    }
    Ok(erased)
}

fn prune_now(tx: &mut Transaction<'_>, prune: &Prune) -> Result<Erased, StoreError> {
    let limit = i64::try_from(prune.limit).unwrap_or(i64::MAX);
    let mut erased = Erased::default();
    if let Some(before) = prune.messages_before {
        let ids: Vec<i64> = tx
            .query(
                "SELECT c.id FROM conversations c
                 WHERE c.last_activity_at < $1
                   AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                                   AND m.role = 'user' AND m.answered_at IS NULL)
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.conversation_id = c.id
                                   AND o.state = 'queued')
                 ORDER BY c.last_activity_at LIMIT $2
                 FOR UPDATE SKIP LOCKED",
                &[&before, &limit],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        erased = erase_conversations_in(tx, &ids)?;
    }
    if let Some(before) = prune.traces_before {
        erased.traces += tx.execute(
            "DELETE FROM traces WHERE id IN (SELECT id FROM traces ORDER BY id LIMIT $2)
               AND started_at < $1",
            &[&before, &limit],
        )?;
    }
    Ok(erased)
}
