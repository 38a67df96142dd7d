//! `convagent store migrate`: a SQLite store copied into Postgres, ids and
//! all, in one transaction; idempotent (rows already there are kept, so a
//! second run copies nothing new), then the row counts compared.
//!
//! The copy keeps every id, so references stay as they were. The triggers
//! that queue replies and count tokens are off for the copy (inside the
//! transaction: no other session ever sees them off), since the outbox and
//! the token counts are copied as they are.

use std::path::Path;

use postgres::types::ToSql;
use rusqlite::types::ValueRef;

use super::PostgresStore;
use crate::core::ports::StoreError;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    /// An INTEGER 0/1 in SQLite, a BOOLEAN in Postgres.
    Bool,
    /// A BLOB in SQLite, a BYTEA in Postgres.
    Bytes,
}
use Kind::{Bool, Bytes, Int, Text};

/// The tables and their columns, parents before children.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "conversations",
        &[
            ("id", Int),
            ("channel", Text),
            ("sender", Text),
            ("thread", Text),
            ("started_at", Int),
            ("last_activity_at", Int),
            ("message_count", Int),
            ("closed_at", Int),
            ("display_name", Text),
            ("mode", Text),
            ("mode_at", Int),
            ("mode_by", Text),
        ],
    ),
    ("people", &[("id", Int), ("created_at", Int)]),
    (
        "identities",
        &[
            ("channel", Text),
            ("sender", Text),
            ("person_id", Int),
            ("since", Int),
        ],
    ),
    (
        "opt_outs",
        &[("channel", Text), ("sender", Text), ("at", Int)],
    ),
    (
        "system_prompts",
        &[
            ("version", Int),
            ("text", Text),
            ("created_at", Int),
            ("source", Text),
        ],
    ),
    (
        "messages",
        &[
            ("id", Int),
            ("conversation_id", Int),
            ("role", Text),
            ("channel", Text),
            ("text", Text),
            ("created_at", Int),
            ("provider_message_id", Text),
            ("answered_at", Int),
            ("provider_ts", Int),
            ("correlation_id", Text),
            ("attachments", Text),
            ("metadata", Text),
            ("reply_to", Int),
            ("kind", Text),
            ("provider", Text),
            ("model", Text),
            ("prompt_version", Int),
            ("prompt_tokens", Int),
            ("completion_tokens", Int),
            ("latency_ms", Int),
            // `answered_by` points at a later reply: set in a second pass.
        ],
    ),
    (
        "summaries",
        &[
            ("id", Int),
            ("conversation_id", Int),
            ("from_message_id", Int),
            ("to_message_id", Int),
            ("text", Text),
            ("provider", Text),
            ("model", Text),
            ("created_at", Int),
        ],
    ),
    (
        "guardrail_violations",
        &[
            ("id", Int),
            ("message_id", Int),
            ("rule", Text),
            ("created_at", Int),
        ],
    ),
    (
        "breakers",
        &[
            ("provider", Text),
            ("model", Text),
            ("state", Text),
            ("failures", Int),
            ("opened_at", Int),
            ("next_probe_at", Int),
            ("last_error", Text),
            ("updated_at", Int),
        ],
    ),
    (
        "breaker_transitions",
        &[
            ("id", Int),
            ("provider", Text),
            ("model", Text),
            ("from_state", Text),
            ("to_state", Text),
            ("reason", Text),
            ("at", Int),
        ],
    ),
    (
        "outbox",
        &[
            ("id", Int),
            ("reply_id", Int),
            ("conversation_id", Int),
            ("channel", Text),
            ("state", Text),
            ("parts_sent", Int),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_error", Text),
            ("error_code", Text),
            ("provider_message_ids", Text),
            ("dry_run", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("discarded_at", Int),
        ],
    ),
    (
        "traces",
        &[
            ("id", Int),
            ("correlation_id", Text),
            ("stage", Text),
            ("started_at", Int),
            ("duration_us", Int),
            ("outcome", Text),
            ("detail", Text),
            ("attempt", Int),
        ],
    ),
    (
        "erasures",
        &[
            ("id", Int),
            ("at", Int),
            ("channel", Text),
            ("counts", Text),
        ],
    ),
    (
        "token_usage",
        &[("day", Int), ("conversation_id", Int), ("tokens", Int)],
    ),
    (
        "takes",
        &[("message_id", Int), ("consumer", Text), ("until", Int)],
    ),
    (
        "access_tokens",
        &[
            ("name", Text),
            ("sha256", Text),
            ("created_at", Int),
            ("last_used_at", Int),
            ("operator", Bool),
        ],
    ),
    (
        "approvals",
        &[
            ("id", Int),
            ("conversation_id", Int),
            ("message_id", Int),
            ("call_key", Text),
            ("correlation_id", Text),
            ("tool", Text),
            ("arguments", Text),
            ("asked_at", Int),
            ("deadline_at", Int),
            ("state", Text),
            ("decided_by", Text),
            ("decided_at", Int),
            ("ran_at", Int),
            ("result", Text),
        ],
    ),
    (
        "knowledge_docs",
        &[
            ("path", Text),
            ("sha256", Text),
            ("title", Text),
            ("chunks", Int),
            ("indexed_at", Int),
            ("embedder", Text),
        ],
    ),
    (
        "knowledge_chunks",
        &[
            ("id", Int),
            ("path", Text),
            ("ord", Int),
            ("text", Text),
            ("vector", Bytes),
        ],
    ),
];

/// Rows per insert.
const CHUNK: usize = 2_000;

/// One table copied: rows in the SQLite file, and in Postgres after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub table: &'static str,
    pub source: u64,
    pub target: u64,
}

/// Where a copy is: a table's name, rows done, rows in it.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// A column's values, as Postgres takes them in one array.
enum Column {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    fn new(kind: Kind) -> Column {
        match kind {
            Int => Column::Int(Vec::with_capacity(CHUNK)),
            Text => Column::Text(Vec::with_capacity(CHUNK)),
            Bool => Column::Bool(Vec::with_capacity(CHUNK)),
            Bytes => Column::Bytes(Vec::with_capacity(CHUNK)),
        }
    }

    fn push(&mut self, value: ValueRef<'_>) -> Result<(), StoreError> {
        match (self, value) {
            (Column::Int(v), ValueRef::Null) => v.push(None),
            (Column::Text(v), ValueRef::Null) => v.push(None),
            (Column::Bool(v), ValueRef::Null) => v.push(None),
            (Column::Bytes(v), ValueRef::Null) => v.push(None),
            (Column::Bytes(v), ValueRef::Blob(b)) => v.push(Some(b.to_vec())),
            (Column::Int(v), ValueRef::Integer(i)) => v.push(Some(i)),
            (Column::Bool(v), ValueRef::Integer(i)) => v.push(Some(i != 0)),
            (Column::Text(v), ValueRef::Text(t)) => {
                v.push(Some(String::from_utf8_lossy(t).into_owned()))
            }
            (_, other) => {
                return Err(StoreError::Invalid(format!(
                    "unexpected {:?} value in the SQLite store",
                    other.data_type()
                )));
            }
        }
        Ok(())
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Int(v) => v,
            Column::Text(v) => v,
            Column::Bool(v) => v,
            Column::Bytes(v) => v,
        }
    }
}

impl PostgresStore {
    /// Copies the SQLite store at `sqlite` into this database (see the
    /// module's header).
    pub fn import_sqlite(
        &self,
        sqlite: &Path,
        progress: Progress<'_>,
    ) -> Result<Vec<Copied>, StoreError> {
        let source = rusqlite::Connection::open_with_flags(
            sqlite,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", sqlite.display())))?;
        // One read transaction: the copy is of one moment of the file.
        source.execute_batch("BEGIN")?;
        let mut counts = Vec::new();
        for (table, _) in TABLES {
            let n: i64 =
                source.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
            counts.push(n.max(0) as u64);
        }
        self.refuse_other_data(&source)?;
        // Rows go over as they are read, a chunk at a time, on a pooled
        // connection (this thread reads SQLite meanwhile).
        let (chunks, queue) = std::sync::mpsc::sync_channel::<Chunk>(2);
        let copying = self.pool.spawn(move |client| copy(client, queue));
        let read = || -> Result<(), StoreError> {
            for ((table, columns), total) in TABLES.iter().zip(&counts) {
                let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
                let mut stmt = source.prepare(&format!(
                    "SELECT {} FROM {table} ORDER BY 1",
                    names.join(", ")
                ))?;
                let mut rows = stmt.query([])?;
                let mut done = 0;
                let mut chunk = Chunk::new(table, columns);
                progress(table, 0, *total);
                while let Some(row) = rows.next()? {
                    for (i, column) in chunk.columns.iter_mut().enumerate() {
                        column.push(row.get_ref(i)?)?;
                    }
                    chunk.rows += 1;
                    if chunk.rows == CHUNK {
                        done += chunk.rows as u64;
                        let next = Chunk::new(table, columns);
                        send(&chunks, std::mem::replace(&mut chunk, next))?;
                        progress(table, done, *total);
                    }
                }
                done += chunk.rows as u64;
                send(&chunks, chunk)?;
                progress(table, done, *total);
            }
            // The second pass: which reply covers which message.
            let mut stmt = source.prepare(
                "SELECT id, answered_by FROM messages WHERE answered_by IS NOT NULL ORDER BY id",
            )?;
            let mut rows = stmt.query([])?;
            let mut chunk = Chunk::new("answered_by", &[("id", Int), ("answered_by", Int)]);
            while let Some(row) = rows.next()? {
                for (i, column) in chunk.columns.iter_mut().enumerate() {
                    column.push(row.get_ref(i)?)?;
                }
                chunk.rows += 1;
                if chunk.rows == CHUNK {
                    let next = Chunk::new("answered_by", &[("id", Int), ("answered_by", Int)]);
                    send(&chunks, std::mem::replace(&mut chunk, next))?;
                }
            }
            send(&chunks, chunk)?;
            Ok(())
        };
        let read = read();
        drop(chunks);
        let copied = copying
            .blocking_recv()
            .map_err(|_| StoreError::Backend("a connection thread stopped".into()))?;
        read?;
        let target = copied?;
        Ok(TABLES
            .iter()
            .zip(counts)
            .zip(target)
            .map(|(((table, _), source), target)| Copied {
                table,
                source,
                target,
            })
            .collect())
    }
}

impl PostgresStore {
    /// A database holding conversations that are not this file's (a daemon
    /// ran on it first) would mix two stores' rows under the same ids:
    /// refused. Conversations with the file's ids that are the file's (an
    /// earlier run of this copy), and later ones (daemons since), are fine.
    fn refuse_other_data(&self, source: &rusqlite::Connection) -> Result<(), StoreError> {
        let newest: i64 =
            source.query_row("SELECT coalesce(max(id), 0) FROM conversations", [], |r| {
                r.get(0)
            })?;
        let held = self.read(move |c| {
            Ok(c.query(
                "SELECT id, channel, sender, thread, started_at FROM conversations
                 WHERE id <= $1 ORDER BY id",
                &[&newest],
            )?
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                    r.get::<_, i64>(4),
                )
            })
            .collect::<Vec<_>>())
        })?;
        let mut same = source.prepare(
            "SELECT 1 FROM conversations
             WHERE id = ?1 AND channel = ?2 AND sender = ?3 AND thread = ?4 AND started_at = ?5",
        )?;
        for (id, channel, sender, thread, started_at) in held {
            if !same.exists(rusqlite::params![id, channel, sender, thread, started_at])? {
                return Err(StoreError::Invalid(format!(
                    "the database already holds conversation {id}, which is not this store's: \
                     copy into an empty database (before any daemon runs on it)"
                )));
            }
        }
        Ok(())
    }
}

struct Chunk {
    table: &'static str,
    names: Vec<&'static str>,
    kinds: Vec<Kind>,
    columns: Vec<Column>,
    rows: usize,
}

impl Chunk {
    fn new(table: &'static str, columns: &[(&'static str, Kind)]) -> Chunk {
        Chunk {
            table,
            names: columns.iter().map(|(c, _)| *c).collect(),
            kinds: columns.iter().map(|(_, k)| *k).collect(),
            columns: columns.iter().map(|(_, k)| Column::new(*k)).collect(),
            rows: 0,
        }
    }
}

fn send(chunks: &std::sync::mpsc::SyncSender<Chunk>, chunk: Chunk) -> Result<(), StoreError> {
    chunks
        .send(chunk)
        .map_err(|_| StoreError::Backend("the copy into Postgres stopped".into()))
}

/// Inserts every chunk in one transaction, then sets each id sequence past
/// the copied ids, and counts each table.
fn copy(
    client: &mut postgres::Client,
    chunks: std::sync::mpsc::Receiver<Chunk>,
) -> Result<Vec<u64>, StoreError> {
    let mut tx = client.transaction()?;
    // The copied rows are what the triggers made in SQLite: the outbox,
    // the token counts, and the people (whose links the copy keeps).
    tx.batch_execute(
        "ALTER TABLE messages DISABLE TRIGGER outbox_enqueue;
         ALTER TABLE messages DISABLE TRIGGER token_usage_count;
         ALTER TABLE conversations DISABLE TRIGGER identities_first_contact;",
    )?;
    for chunk in chunks {
        if chunk.rows == 0 {
            continue;
        }
        let arrays: Vec<String> = chunk
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                Int => format!("${}::bigint[]", i + 1),
                Text => format!("${}::text[]", i + 1),
                Bool => format!("${}::boolean[]", i + 1),
                Bytes => format!("${}::bytea[]", i + 1),
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = chunk.columns.iter().map(Column::param).collect();
        let sql = if chunk.table == "answered_by" {
            format!(
                "UPDATE messages m SET answered_by = s.answered_by
                 FROM unnest({}) AS s(id, answered_by)
                 WHERE m.id = s.id AND m.answered_by IS DISTINCT FROM s.answered_by",
                arrays.join(", ")
            )
        } else {
            format!(
                "INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT DO NOTHING",
                chunk.table,
                chunk.names.join(", "),
                arrays.join(", ")
            )
        };
        tx.execute(&sql, &params)?;
    }
    tx.batch_execute(
        "ALTER TABLE messages ENABLE TRIGGER outbox_enqueue;
         ALTER TABLE messages ENABLE TRIGGER token_usage_count;
         ALTER TABLE conversations ENABLE TRIGGER identities_first_contact;",
    )?;
    let mut target = Vec::new();
    for (table, columns) in TABLES {
        if columns[0].0 == "id" || columns[0].0 == "version" {
            let id = columns[0].0;
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{id}'),
                                   coalesce((SELECT max({id}) FROM {table}), 0) + 1, false)"
                ),
                &[],
            )?;
        }
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
            .get(0);
        target.push(n.max(0) as u64);
    }
    tx.commit()?;
    Ok(target)
}
