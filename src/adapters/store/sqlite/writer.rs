//! The one writer. Every write of the pipeline (accepts, replies, outbox
//! updates, traces, breakers) queues here, and one thread commits whatever
//! is waiting in one transaction (should one write fail, the batch runs
//! again with a savepoint per write, so that it fails alone). Accepts have
//! their own lane and go first: a webhook waits for its commit and nothing
//! else may make that wait longer than one batch. Callers await a oneshot;
//! no async thread blocks on SQLite. Traces nobody waits for are merged
//! into one insert per batch.
//!
//! Checkpoints (copying the WAL back into the database file, with an
//! fsync) would otherwise run inside a commit of this thread every 1,000
//! pages and stall every writer behind it; with the writer running they
//! happen on a thread and connection of their own, passively (never
//! blocking a commit), a few times a second.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{outbox, port};
use crate::core::ports::{StoreError, Write, Written};

/// Writes per transaction at most: commits stay short, so an accept that
/// arrives during one waits little.
const BATCH: usize = 512;
/// How often the checkpointer copies the WAL back.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

type Done = oneshot::Sender<Result<Written, StoreError>>;

struct Job {
    write: Write,
    done: Option<Done>,
}

#[derive(Default)]
struct Lanes {
    accepts: VecDeque<Job>,
    rest: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    lanes: Mutex<Lanes>,
    ready: Condvar,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// `file`: the database file, for the checkpointer (none in memory).
    pub(super) fn start(conn: Arc<Mutex<Connection>>, file: Option<&Path>) -> Writer {
        let shared = Arc::new(Shared::default());
        if let Some(checkpoints) = file.and_then(checkpointer) {
            let lock = conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = lock.pragma_update(None, "wal_autocheckpoint", 0) {
                tracing::warn!(error = %e, "cannot move checkpoints off the writer");
            }
            drop(lock);
            let thread = shared.clone();
            std::thread::Builder::new()
                .name("convagent-checkpoint".into())
                .spawn(move || checkpoint(&thread, &checkpoints))
                .expect("spawning the store's checkpoint thread");
        }
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("convagent-writer".into())
            .spawn(move || run(&thread, &conn))
            .expect("spawning the store's writer thread");
        Writer { shared }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.shared.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn submit(&self, write: Write, done: Option<Done>) {
        let mut lanes = self.lanes();
        let job = Job { write, done };
        if job.write.is_accept() {
            lanes.accepts.push_back(job);
        } else {
            lanes.rest.push_back(job);
        }
        drop(lanes);
        self.shared.ready.notify_one();
    }
}

impl Drop for Writer {
    /// The threads commit what is queued, checkpoint, then end.
    fn drop(&mut self) {
        self.lanes().closed = true;
        self.shared.ready.notify_one();
    }
}

fn checkpointer(file: &Path) -> Option<Connection> {
    let conn = Connection::open(file)
        .map_err(|e| tracing::warn!(error = %e, "cannot open a connection for checkpoints"))
        .ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(conn)
}

/// Passive checkpoints until the writer is dropped, and one at the end.
fn checkpoint(shared: &Shared, conn: &Connection) {
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        let closed = shared
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed;
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
        if closed {
            return;
        }
    }
}

fn run(shared: &Shared, conn: &Mutex<Connection>) {
    loop {
        let jobs = {
            let mut lanes = shared.lanes.lock().unwrap_or_else(|p| p.into_inner());
            while lanes.accepts.is_empty() && lanes.rest.is_empty() {
                if lanes.closed {
                    return;
                }
                lanes = shared.ready.wait(lanes).unwrap_or_else(|p| p.into_inner());
            }
            let take = lanes.accepts.len().min(BATCH);
            let mut jobs: Vec<Job> = lanes.accepts.drain(..take).collect();
            let take = lanes.rest.len().min(BATCH - jobs.len());
            jobs.extend(lanes.rest.drain(..take));
            jobs
        };
        let mut writes = Vec::with_capacity(jobs.len());
        let mut waiting = Vec::with_capacity(jobs.len());
        let mut traces = Vec::new();
        for job in jobs {
            match job {
                Job {
                    write: Write::Traces(events),
                    done: None,
                } => traces.extend(events),
                Job { write, done } => {
                    writes.push(write);
                    waiting.push(done);
                }
            }
        }
        if !traces.is_empty() {
            writes.push(Write::Traces(traces));
            waiting.push(None);
        }
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        let results = batch(&mut conn, &writes);
        drop(conn);
        for (result, done) in results.into_iter().zip(waiting) {
            match done {
                Some(done) => {
                    let _ = done.send(result);
                }
                None => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "cannot store trace events");
                    }
                }
            }
        }
    }
}

/// `writes` in one transaction; one result per write. If the commit itself
/// fails, every write failed.
///
/// First without savepoints: each one would make the full-text index flush
/// a segment of its own (a tenth of the writer's time under load). Should a
/// write fail, that transaction is rolled back and the batch runs again
/// with a savepoint per write, so that the failure stays its own.
pub(super) fn batch(conn: &mut Connection, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
    if let Some(results) = batch_at_once(conn, writes) {
        return results;
    }
    batch_one_by_one(conn, writes)
}

/// `None` when a write failed (nothing is kept) or the commit did.
fn batch_at_once(
    conn: &mut Connection,
    writes: &[Write],
) -> Option<Vec<Result<Written, StoreError>>> {
    let tx = conn.transaction().ok()?;
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        results.push(Ok(write_in(&tx, write).ok()?));
    }
    tx.commit().ok()?;
    Some(results)
}

fn batch_one_by_one(conn: &mut Connection, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
    let all_failed = |e: rusqlite::Error| {
        let e = e.to_string();
        writes
            .iter()
            .map(|_| Err(StoreError::Backend(e.clone())))
            .collect()
    };
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return all_failed(e),
    };
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        let result = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
            let written = write_in(&sp, write)?;
            sp.commit()?;
            Ok(written)
        });
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => all_failed(e),
    }
}

fn write_in(conn: &Connection, write: &Write) -> Result<Written, StoreError> {
    Ok(match write {
        Write::Accept(message) => Written::Accepted(port::accept_in(conn, message)?),
        Write::Turn(turn) => Written::Reply(port::turn_in(conn, turn)?),
        Write::Outbox { id, update, at } => {
            outbox::update_in(conn, *id, update, *at)?;
            Written::Done
        }
        Write::Traces(events) => {
            outbox::traces_in(conn, events)?;
            Written::Done
        }
        Write::Breaker {
            breaker,
            transition,
        } => {
            port::breaker_in(conn, breaker, transition.as_ref())?;
            Written::Done
        }
        Write::Summary(summary) => Written::Summary(port::summary_in(conn, summary)?),
    })
}
