//! A person's data on Postgres: everything held about one sender, its
//! erasure in one transaction, and retention's batches of the same.

use postgres::Transaction;

use super::PostgresStore;
use super::rows::{self, ENTRY_SELECT, SUMMARY_COLUMNS};
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
