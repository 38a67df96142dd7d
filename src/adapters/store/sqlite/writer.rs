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

use super::{knowledge, limits, outbox, people, port, relay};
use crate::core::ports::{StoreError, Write, Written};

/// Writes per transaction at most: commits stay short, so an accept that
/// arrives during one waits little.
const BATCH: usize = 512;
/// How often the checkpointer copies the WAL back.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Frames the checkpointer may copy with the writer paused: about 1 MB.
const PAUSED_CHECKPOINT_FRAMES: i64 = 256;

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
            let writer = conn.clone();
            std::thread::Builder::new()
                .name("convagent-checkpoint".into())
                .spawn(move || checkpoint(&thread, &writer, &checkpoints))
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
///
/// Each round copies what the WAL holds while the writer goes on, then
/// copies the little the writer added meanwhile with the writer paused (a
/// fraction of a millisecond). Only a WAL copied to its end is started
/// again from its beginning by the next commit; under steady load the
/// writer would otherwise always be a few frames ahead, and the WAL would
/// grow without end: gigabytes in a minute, every commit writing to fresh
/// blocks of the file that the kernel first fills with zeros (a fifth of
/// the writer's time).
fn checkpoint(shared: &Shared, writer: &Mutex<Connection>, conn: &Connection) {
    // Frames in the WAL not yet copied back, after one passive checkpoint.
    let passive = || {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok(r.get::<_, i64>(1)? - r.get::<_, i64>(2)?)
        })
        .map_err(|e| tracing::warn!(error = %e, "WAL checkpoint failed"))
    };
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        let closed = shared
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed;
        // Catch up while the writer goes on, until what is left is small.
        let mut rounds = 0;
        while let Ok(behind) = passive() {
            rounds += 1;
            if behind <= PAUSED_CHECKPOINT_FRAMES || rounds == 8 {
                break;
            }
        }
        let paused = writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = passive();
        drop(paused);
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
    let tx = begin(conn).ok()?;
    let before = newest_message(&tx).ok()?;
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        results.push(Ok(write_in(&tx, write).ok()?));
    }
    index_messages_after(&tx, before).ok()?;
    tx.commit().ok()?;
    Some(results)
}

/// A transaction holding the write lock from its start (waiting for it up to
/// the busy timeout). Another process writing the same file (`chat`,
/// `convagent mcp` beside `serve`) may commit between a deferred
/// transaction's first read and its first write, and SQLite refuses that
/// write at once (`SQLITE_BUSY_SNAPSHOT`) instead of waiting.
fn begin(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// The id of the newest stored message (0: none).
fn newest_message(tx: &Connection) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT coalesce(max(id), 0) FROM messages")?
        .query_row([], |r| r.get(0))
}

/// Adds the messages this transaction stored (ids after `before`: it holds
/// the only write lock) to the full-text index, in one statement. Every
/// statement that writes to an FTS5 table opens a savepoint, and FTS5 writes
/// a new index segment at each; one per transaction, not one per message.
fn index_messages_after(tx: &Connection, before: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, text) SELECT id, text FROM messages WHERE id > ?1",
    )?
    .execute([before])?;
    Ok(())
}

fn batch_one_by_one(conn: &mut Connection, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
    let all_failed = |e: rusqlite::Error| {
        let e = e.to_string();
        writes
            .iter()
            .map(|_| Err(StoreError::Backend(e.clone())))
            .collect()
    };
    let mut tx = match begin(conn) {
        Ok(tx) => tx,
        Err(e) => return all_failed(e),
    };
    let before = match newest_message(&tx) {
        Ok(id) => id,
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
    if let Err(e) = index_messages_after(&tx, before) {
        return all_failed(e);
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
        Write::Erase { sender, at } => Written::Erased(people::erase_in(conn, sender, *at)?),
        Write::Handoff(handoff) => {
            relay::handoff_in(conn, handoff)?;
            Written::Done
        }
        Write::OptOut {
            channel,
            sender,
            out,
            at,
        } => {
            relay::opt_out_in(conn, *channel, sender, *out, *at)?;
            Written::Done
        }
        Write::Prune(prune) => Written::Erased(people::prune_in(conn, prune)?),
        Write::Hold(held) => Written::Reply(limits::hold_in(conn, held)?),
        Write::Send(out) => Written::Sent(relay::send_in(conn, out)?),
        Write::Take(take) => Written::Taken(relay::take_in(conn, take)?),
        Write::Token(change) => {
            relay::token_in(conn, change)?;
            Written::Done
        }
        Write::Ask(ask) => {
            let (approval, new) = relay::ask_in(conn, ask)?;
            Written::Approval(approval, new)
        }
        Write::Decide {
            id,
            decision,
            by,
            at,
        } => {
            let (after, took) = relay::decide_in(conn, *id, *decision, by, *at)?;
            Written::Approval(after, took)
        }
        Write::RunApproved { id, at } => Written::Claimed(relay::run_approved_in(conn, *id, *at)?),
        Write::ApprovalResult { id, result } => {
            relay::approval_result_in(conn, *id, result)?;
            Written::Done
        }
        Write::Link { a, b, at } => Written::Person(people::link_in(conn, a, b, *at)?),
        Write::Unlink { sender, at } => Written::Person(people::unlink_in(conn, sender, *at)?),
        Write::LinkCode { sender, code, at } => {
            people::link_code_in(conn, sender, code, *at)?;
            Written::Done
        }
        Write::Redeem { sender, code, at } => {
            Written::Redeemed(people::redeem_in(conn, sender, code, *at)?)
        }
        Write::ErasePerson { person, at } => {
            Written::Erased(people::erase_person_in(conn, *person, *at)?)
        }
        Write::Knowledge(change) => {
            knowledge::knowledge_in(conn, change)?;
            Written::Done
        }
        Write::Attachments {
            message_id,
            attachments,
        } => {
            let json = crate::core::media::to_stored(attachments);
            conn.prepare_cached("UPDATE messages SET attachments = ?2 WHERE id = ?1")?
                .execute(rusqlite::params![message_id, json])?;
            Written::Done
        }
    })
}
