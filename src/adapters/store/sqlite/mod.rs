//! The SQLite store: one database file in WAL mode, schema from the
//! append-only migrations in `migrations/`, applied on open.
//!
//! Limits are written `LIMIT +?N`, never `LIMIT ?N`: SQLite plans with the
//! value of a bare bound limit, and every new binding of it (the same value
//! too) makes the statement compile again at its next step. That was a
//! third of the pipeline's time under load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};

pub mod backup;
mod knowledge;
mod limits;
mod monitor;
mod outbox;
mod people;
mod port;
mod relay;
mod rows;
mod writer;

use crate::core::llm::BoxFuture;
use crate::core::ports::{StoreError, Write, Writes, Written};

/// Read connections of a store that writes (a daemon's tokio workers and
/// its dispatcher read at once).
const READERS: usize = 3;
/// How much of the database file readers map instead of reading. A reader's
/// page cache starts empty after every commit of the writer (SQLite drops it
/// when the database changed), so without the map each turn's context is a
/// few hundred `pread` calls and copies.
const READER_MMAP_BYTES: i64 = 1 << 30;

/// The schema, oldest first. Append only.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../../../migrations/0001_init.sql")),
    M::up(include_str!("../../../../migrations/0002_daemon.sql")),
    M::up(include_str!("../../../../migrations/0003_first_week.sql")),
    M::up(include_str!("../../../../migrations/0004_writer.sql")),
    M::up(include_str!(
        "../../../../migrations/0005_fts_per_batch.sql"
    )),
    M::up(include_str!("../../../../migrations/0006_outbox_cli.sql")),
    M::up(include_str!("../../../../migrations/0007_erasures.sql")),
    M::up(include_str!("../../../../migrations/0008_limits.sql")),
    M::up(include_str!("../../../../migrations/0009_mcp.sql")),
    M::up(include_str!("../../../../migrations/0010_handoff.sql")),
    M::up(include_str!("../../../../migrations/0011_approvals.sql")),
    M::up(include_str!("../../../../migrations/0012_people.sql")),
    M::up(include_str!("../../../../migrations/0013_knowledge.sql")),
    M::up(include_str!(
        "../../../../migrations/0014_knowledge_vectors.sql"
    )),
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub struct SqliteStore {
    /// The connection that writes, shared with the writer thread.
    conn: Arc<Mutex<Connection>>,
    /// The one writer of async writes, started by the first of them (a
    /// command that only reads never starts it).
    writer: OnceLock<writer::Writer>,
    /// Connections for reads, so that readers (workers, the outbox,
    /// monitors) neither queue behind the writer (WAL lets both run) nor,
    /// on a busy daemon, behind each other. Empty for in-memory and
    /// read-only stores, which read on `conn`.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    path: PathBuf,
    /// This process's share of the store (`backup::share`): a restore
    /// waits for every holder to close it.
    _hold: Option<backup::Hold>,
}

/// How to open the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if needed and bring the schema up to date.
    ReadWrite,
    /// Never write: for readers beside a running daemon, and for `doctor`,
    /// which must report an outdated schema rather than fix it silently.
    ReadOnly,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and applies pending
    /// migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, OpenMode::ReadWrite)
    }

    pub fn open_with(path: &Path, mode: OpenMode) -> Result<Self, StoreError> {
        if mode == OpenMode::ReadWrite
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // A read-only open of a file in a read-only place goes without.
        let hold = match backup::share(path) {
            Ok(Some(hold)) => Some(hold),
            Ok(None) => {
                return Err(StoreError::Conflict(format!(
                    "{} is being restored (`convagent store restore`); try again when it is done",
                    path.display()
                )));
            }
            Err(e) if mode == OpenMode::ReadOnly => {
                tracing::debug!(error = %e, "no hold on a store opened read-only");
                None
            }
            Err(e) => return Err(e),
        };

        let mut conn = match mode {
            OpenMode::ReadWrite => Connection::open(path),
            OpenMode::ReadOnly => Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
        }
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        if mode == OpenMode::ReadWrite {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // FULL: in WAL mode each commit syncs the WAL before it
            // returns, so a webhook's 200 (sent after its accept's commit)
            // means the message survives a power cut, not only a crash of
            // the process as with NORMAL. The writer's group commit makes it
            // one sync per batch of accepts, not one per message.
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.pragma_update(None, "cache_size", -16_000)?;
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            Migrations::from_slice(MIGRATIONS)
                .to_latest(&mut conn)
                .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", path.display())))?;
        }
        let mut readers = Vec::new();
        if mode == OpenMode::ReadWrite {
            for _ in 0..READERS {
                let r = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
                r.busy_timeout(Duration::from_secs(5))?;
                r.pragma_update(None, "cache_size", -8_000)?;
                r.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
                readers.push(Mutex::new(r));
            }
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            writer: OnceLock::new(),
            readers,
            next_reader: AtomicUsize::new(0),
            path: path.to_path_buf(),
            _hold: hold,
        })
    }

    /// An in-memory store, for tests and benchmarks.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            writer: OnceLock::new(),
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
            path: PathBuf::from(":memory:"),
            _hold: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection that writes (and reads what must be read in the
    /// same transaction).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for plain reads. Every write is committed before its
    /// method returns, so a read here sees all earlier writes.
    /// The first free one, or (all busy) one picked by turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        if self.readers.is_empty() {
            return self.conn();
        }
        for r in &self.readers {
            match r.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[turn].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SqliteStore {
    fn writer(&self) -> &writer::Writer {
        self.writer.get_or_init(|| {
            let file = (!self.readers.is_empty()).then_some(self.path.as_path());
            writer::Writer::start(self.conn.clone(), file)
        })
    }
}

impl Writes for SqliteStore {
    fn write_batch(&self, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
        writer::batch(&mut self.conn(), writes)
    }

    fn write(&self, write: Write) -> BoxFuture<'_, Result<Written, StoreError>> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.writer().submit(write, Some(done));
        Box::pin(async move {
            result
                .await
                .map_err(|_| StoreError::Backend("the store's writer stopped".into()))?
        })
    }

    fn append(&self, write: Write) {
        self.writer().submit(write, None);
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        match self.writer.get() {
            // Nothing was ever queued.
            None => Box::pin(async {}),
            Some(_) => {
                let written = self.write(Write::Traces(Vec::new()));
                Box::pin(async move {
                    let _ = written.await;
                })
            }
        }
    }
}

/// The newest turns of a conversation up to a message: a backwards range
/// scan of `messages_by_conversation`, bounded by the limit.
pub const RECENT_TURNS_SQL: &str = "SELECT id, role, text, attachments FROM messages
     WHERE conversation_id = ?1 AND id <= ?2
     ORDER BY id DESC LIMIT +?3";

/// Turns free text into an FTS5 query that matches all its words, each
/// quoted so that FTS5 operators in user input are taken literally.
fn fts_phrase_query(text: &str) -> Option<String> {
    let words: Vec<String> = crate::core::ports::search_words(text)
        .map(|w| format!("\"{w}\""))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_queries_quote_every_word() {
        assert_eq!(
            fts_phrase_query("hello, NEAR(world) \"x\"").as_deref(),
            Some("\"hello\" \"NEAR\" \"world\" \"x\"")
        );
        assert_eq!(fts_phrase_query(" ,;* "), None);
    }

    #[test]
    fn migrations_are_valid() {
        Migrations::from_slice(MIGRATIONS).validate().unwrap();
    }
}
