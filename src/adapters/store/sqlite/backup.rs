//! Backups of a running store, and restoring one.
//!
//! A backup is SQLite's online backup API, page by page (with progress),
//! from a read transaction held for the whole copy: in WAL mode that
//! snapshot stays consistent while the daemon goes on writing, and nothing
//! restarts the copy. It is written beside its destination, checked with
//! `integrity_check`, and only then renamed into place, so a backup that
//! stops half way leaves no file that looks whole.
//!
//! Who uses a store: every process that opens one holds a shared `flock` on
//! `<db>-lock` for as long as it has it open; a restore takes it
//! exclusively, so it refuses while `serve` (or `chat`, `mcp`, the TUI) has
//! the store open, and nothing opens it while the restore runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::core::ports::StoreError;

/// Pages copied per step of a backup (4 KiB each: 4 MiB).
const PAGES_PER_STEP: i32 = 1024;

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// A hold on a store: shared by every process using it, exclusive for a
/// restore. Released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Hold {
    _file: File,
}

/// The lock file of the store at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-lock");
    PathBuf::from(name)
}

fn hold(db: &Path, exclusive: bool) -> Result<Option<Hold>, StoreError> {
    use rustix::fs::{FlockOperation, flock};
    let path = lock_path(db);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| failed("cannot open", &path, e))?;
    let operation = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    match flock(&file, operation) {
        Ok(()) => Ok(Some(Hold { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(failed("cannot lock", &path, e)),
    }
}

/// The hold of a process that uses the store. `None` only while a restore
/// holds it: the caller refuses to open the store then.
pub fn share(db: &Path) -> Result<Option<Hold>, StoreError> {
    hold(db, false)
}

/// The hold of a restore: `None` while any other process uses the store.
pub fn exclusive(db: &Path) -> Result<Option<Hold>, StoreError> {
    hold(db, true)
}

/// What a checked store file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub conversations: i64,
    pub messages: i64,
}

/// `path` is a whole convagent store: `integrity_check` finds nothing and
/// it has our tables.
pub fn check(path: &Path) -> Result<Checked, StoreError> {
    if !path.is_file() {
        return Err(StoreError::Invalid(format!(
            "no file at {}",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| failed("cannot open", path, e))?;
    let verdict: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| {
            StoreError::Invalid(format!("{} is not a SQLite database: {e}", path.display()))
        })?;
    if verdict != ["ok"] {
        return Err(StoreError::Invalid(format!(
            "{} is damaged: {}",
            path.display(),
            verdict.join("; ")
        )));
    }
    let count = |table: &str| {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(|_| {
                StoreError::Invalid(format!(
                    "{} is not a convagent store (no {table})",
                    path.display()
                ))
            })
    };
    Ok(Checked {
        conversations: count("conversations")?,
        messages: count("messages")?,
    })
}

/// Copies the store at `db` to `to` (which must not exist), consistent as
/// of the copy's start; `progress(pages done, pages in all)` after each
/// step. The copy is checked before it takes its name.
pub fn backup(
    db: &Path,
    to: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Checked, StoreError> {
    if to.exists() {
        return Err(StoreError::Invalid(format!(
            "{} exists already; give a new path",
            to.display()
        )));
    }
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let copied = copy(db, &partial, progress).and_then(|()| check(&partial));
    match copied {
        Ok(checked) => {
            std::fs::rename(&partial, to).map_err(|e| failed("cannot name", to, e))?;
            Ok(checked)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn copy(db: &Path, to: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<(), StoreError> {
    let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| failed("cannot open", db, e))?;
    source.busy_timeout(Duration::from_secs(5))?;
    let mut target = Connection::open(to).map_err(|e| failed("cannot create", to, e))?;
    // The snapshot: a read transaction for the whole copy. Writers go on
    // (WAL); the copy sees none of what they commit meanwhile, and SQLite
    // has no reason to start it over.
    source.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")?;
    {
        let backup = Backup::new(&source, &mut target)?;
        loop {
            let step = backup.step(PAGES_PER_STEP)?;
            let p = backup.progress();
            let total = p.pagecount.max(0) as u64;
            progress(total - (p.remaining.max(0) as u64).min(total), total);
            match step {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    source.execute_batch("COMMIT")?;
    // A backup is one self-contained file.
    target.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub checked: Checked,
    /// Where the store it replaced was moved (none if there was none).
    pub previous: Option<PathBuf>,
}

/// Puts the backup `from` in place of the store at `db`, which no process
/// may be using; the store it replaces is kept beside it as
/// `<db>.before-restore-<unix time>`.
pub fn restore(from: &Path, db: &Path, now_secs: i64) -> Result<Restored, StoreError> {
    let checked = check(from)?;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| failed("cannot create", dir, e))?;
    }
    let Some(_hold) = exclusive(db)? else {
        return Err(StoreError::Conflict(format!(
            "{} is in use by another process (serve, chat, mcp or the TUI)",
            db.display()
        )));
    };
    let mut previous = None;
    if db.exists() {
        // Everything of the WAL into the file first: the file alone is then
        // the whole store, and moving it keeps all of it.
        let conn = Connection::open(db).map_err(|e| failed("cannot open", db, e))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| failed("cannot checkpoint", db, e))?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| failed("cannot close the WAL of", db, e))?;
        drop(conn);
        let mut aside = db.as_os_str().to_owned();
        aside.push(format!(".before-restore-{now_secs}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(db, &aside).map_err(|e| failed("cannot move aside", db, e))?;
        previous = Some(aside);
    }
    let mut incoming = db.as_os_str().to_owned();
    incoming.push(".restoring");
    let incoming = PathBuf::from(incoming);
    std::fs::copy(from, &incoming).map_err(|e| failed("cannot copy to", &incoming, e))?;
    File::open(&incoming)
        .and_then(|f| f.sync_all())
        .map_err(|e| failed("cannot sync", &incoming, e))?;
    std::fs::rename(&incoming, db).map_err(|e| failed("cannot put in place", db, e))?;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(Restored { checked, previous })
}
