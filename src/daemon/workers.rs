//! Workers: strictly one turn at a time per conversation, in arrival
//! order; different conversations in parallel, bounded. A turn takes every
//! message pending for its conversation (`agent.burst = "collect"`) or one
//! (`"each"`). A conversation is scheduled when a message is accepted, at
//! start for what a crash left unanswered, and again later when the LLM
//! was down. A conversation that already got its fallback is not woken by
//! new messages while every LLM provider is known to be down: its answer
//! waits for the retry (or for a provider to be due for a probe), and an
//! outage does not cost a turn per message over a growing backlog.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

use super::Daemon;
use super::leases::Lease;
use crate::core::handoff;
use crate::core::{Burst, ClaimKind, Pending, ReplyKind};

/// Messages read per round of a conversation (and so at most in one
/// collected turn; more wait for the next).
const ROUND: usize = 32;
/// Conversations recovered at start, at most (the rest follow as they
/// receive messages, or at the next start).
const RECOVER_LIMIT: usize = 10_000;

pub struct Workers {
    /// Conversations being processed; `true` when more arrived meanwhile.
    active: Mutex<HashMap<i64, bool>>,
    /// Conversations whose last round got the fallback: waiting for an
    /// LLM provider to recover.
    waiting: Mutex<HashSet<i64>>,
    /// Conversations a person answers with a wake-up set for when the
    /// takeover runs out (one per conversation, however many messages wait).
    held: Mutex<HashSet<i64>>,
    permits: Arc<Semaphore>,
    idle: Notify,
}

impl Workers {
    pub fn new(parallel: usize) -> Self {
        Workers {
            active: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashSet::new()),
            held: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(parallel.max(1))),
            idle: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, bool>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once no conversation is being processed.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }
}

fn waiting(daemon: &Daemon) -> std::sync::MutexGuard<'_, HashSet<i64>> {
    daemon
        .workers
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn held(daemon: &Daemon) -> std::sync::MutexGuard<'_, HashSet<i64>> {
    daemon
        .workers
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A message for `conversation` was stored: make sure it gets processed
/// (or, with `agent.mode = "external"`, handed to MCP consumers),
/// unless the conversation waits for an LLM provider that is still down.
pub fn schedule(daemon: &Arc<Daemon>, conversation: i64) {
    if daemon.settings.external {
        // An MCP consumer answers: tell those waiting.
        daemon.arrivals.send_modify(|n| *n = n.wrapping_add(1));
        return;
    }
    if waiting(daemon).contains(&conversation) && !daemon.live().agent.llm().ready() {
        return;
    }
    start(daemon, conversation);
}

/// Makes sure `conversation` gets processed: starts a worker, or tells the
/// running one to look again when it is done.
fn start(daemon: &Arc<Daemon>, conversation: i64) {
    {
        let mut active = daemon.workers.lock();
        if let Some(more) = active.get_mut(&conversation) {
            *more = true;
            return;
        }
        active.insert(conversation, false);
    }
    let daemon = daemon.clone();
    let pipeline = daemon.clone();
    pipeline
        .pipeline
        .spawn(async move { process(daemon, conversation).await });
}

async fn process(daemon: Arc<Daemon>, conversation: i64) {
    let _permit = daemon.workers.permits.clone().acquire_owned().await;
    // Another daemon sharing the store works on it: it answers what is
    // pending, or the sweep brings it back here once nobody holds it.
    let Some(_lease) = Lease::take(&daemon, ClaimKind::Turns, conversation) else {
        let mut active = daemon.workers.lock();
        active.remove(&conversation);
        if active.is_empty() {
            daemon.workers.idle.notify_waiters();
        }
        return;
    };
    let mut retry_later = false;
    loop {
        if !daemon.stopping() {
            retry_later |= round(&daemon, conversation).await;
        }
        let mut active = daemon.workers.lock();
        match active.get_mut(&conversation) {
            Some(more) if *more && !daemon.stopping() => *more = false,
            _ => {
                active.remove(&conversation);
                if active.is_empty() {
                    daemon.workers.idle.notify_waiters();
                }
                break;
            }
        }
    }
    if !retry_later {
        waiting(&daemon).remove(&conversation);
    } else if !daemon.stopping() {
        waiting(&daemon).insert(conversation);
        let daemon = daemon.clone();
        tokio::spawn(async move {
            tokio::time::sleep(daemon.settings.fallback_retry).await;
            if !daemon.stopping() {
                start(&daemon, conversation);
            }
        });
    }
}

/// Answers the conversation's pending messages in order; returns whether
/// one got the fallback (and so needs another try later).
async fn round(daemon: &Arc<Daemon>, conversation: i64) -> bool {
    'read: loop {
        let pending = match daemon.store.pending(conversation, ROUND) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(conversation, error = %e, "cannot read pending messages");
                return true;
            }
        };
        if pending.is_empty() {
            return false;
        }
        // A person answers it now: the messages wait for them, and the
        // worker comes back when the takeover runs out.
        let human_since = pending[0].human_since;
        if let Some(wait) = super::handoff::held(daemon, conversation, human_since).await {
            if held(daemon).insert(conversation) {
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    held(&daemon).remove(&conversation);
                    if !daemon.stopping() {
                        start(&daemon, conversation);
                    }
                });
            }
            return false;
        }
        let mut pending = pending;
        super::media::take_in(daemon, &mut pending).await;
        let turns: Vec<&[Pending]> = match daemon.settings.burst {
            Burst::Collect if !pending.is_empty() => vec![&pending[..]],
            Burst::Collect => Vec::new(),
            Burst::Each => pending.chunks(1).collect(),
        };
        for turn in turns {
            if daemon.stopping() {
                break;
            }
            let typing = super::typing::start(daemon, turn);
            let agent = daemon.live().agent.clone();
            let result = agent.answer(turn, &mut |_| {}).await;
            drop(typing);
            match result {
                Ok(reply) => {
                    match reply.limited {
                        Some(rule) => daemon.metrics.limited(
                            turn[0].message.key.channel.as_str(),
                            rule.as_str(),
                            reply.covers.len() as u64 + 1,
                        ),
                        None => daemon.metrics.reply(reply.kind()),
                    }
                    // Queued for sending, a fallback too.
                    daemon.outbox.ready(conversation);
                    if reply.kind() == ReplyKind::Fallback {
                        return true;
                    }
                    // The person asked for a person: what follows waits for one.
                    if reply.reply.provider.as_deref() == Some(handoff::NOTICE_PROVIDER) {
                        continue 'read;
                    }
                    // A limit split the turn: the rest is a turn of its own.
                    if turn
                        .last()
                        .is_some_and(|m| m.message_id != reply.message_id)
                    {
                        continue 'read;
                    }
                }
                Err(e) => {
                    let last = turn.last().map(|p| p.message.correlation_id.0.as_str());
                    tracing::error!(correlation_id = last, error = %e, "cannot answer the message");
                    return true;
                }
            }
        }
        // Another daemon may have accepted a message for this conversation
        // while this one held it (and so could not take it): look again
        // before giving the claim up.
        if daemon.store.shared() && !pending.is_empty() && !daemon.stopping() {
            continue 'read;
        }
        return false;
    }
}

/// Schedules every conversation left with unanswered messages.
pub fn recover(daemon: &Arc<Daemon>) {
    match daemon.store.conversations_with_pending(RECOVER_LIMIT) {
        Ok(conversations) => {
            if !conversations.is_empty() {
                tracing::info!(
                    count = conversations.len(),
                    "resuming conversations with unanswered messages"
                );
            }
            for c in conversations {
                schedule(daemon, c);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot look for unanswered messages"),
    }
}
