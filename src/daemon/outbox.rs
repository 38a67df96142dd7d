//! The outbox dispatcher (SPEC.md step 8): sends queued replies in order
//! per conversation, split at the channel's limit. 429 waits what the
//! provider asks; 5xx and network errors back off (1, 2, 4, 8, 16 s) then
//! dead-letter; a permanent 4xx dead-letters at once with the provider's
//! code. A crash between a send and its record is the only way to send twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Daemon;
use super::leases::Lease;
use crate::core::channel::{self, SendError, split_message};
use crate::core::{
    ClaimKind, OutboxItem, OutboxUpdate, Outcome, Stage, StageSink, StoreError, TraceEvent, Write,
};

/// Items picked per look at the whole outbox.
const BATCH: usize = 64;
/// Longest time between looks at the whole outbox: replies that another
/// process queued, or that were queued before a restart, are found by these.
const FULL_ROUND_EVERY: Duration = Duration::from_secs(1);

/// What wakes the dispatcher.
#[derive(Default)]
pub(crate) struct Signals {
    wake: Notify,
    /// Conversations with a reply just queued, or a send just finished:
    /// the dispatcher looks at the head of their queues (one indexed read
    /// each), not at the whole outbox.
    ready: Mutex<Vec<i64>>,
    /// Look at the whole outbox next (the clock moved, another process).
    everywhere: AtomicBool,
}

impl Signals {
    pub(crate) fn ready(&self, conversation: i64) {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conversation);
        self.wake.notify_one();
    }

    pub(crate) fn look_everywhere(&self) {
        self.everywhere.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    fn take_ready(&self) -> Vec<i64> {
        std::mem::take(&mut *self.ready.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

pub async fn run(daemon: Arc<Daemon>) {
    let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_full_round = Instant::now();
    // The earliest retry known to come due (store clock, ms).
    let mut retry_at: Option<i64> = None;
    loop {
        if daemon.stopping() {
            break;
        }
        let now = daemon.clock.now_ms();
        let full = daemon.outbox.everywhere.swap(false, Ordering::SeqCst)
            || Instant::now() >= next_full_round
            || retry_at.is_some_and(|at| at <= now);
        let ready = daemon.outbox.take_ready();
        // Read what is due while holding the in-flight set: a send finishes
        // by recording its outcome and only then leaves the set, so an item
        // read here is either still in flight (skipped) or not yet sent.
        // Reading first and checking after would send a just-sent reply again.
        let (due, read): (Vec<OutboxItem>, usize) = {
            let mut busy = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let due = if full {
                next_full_round = Instant::now() + FULL_ROUND_EVERY;
                retry_at = None;
                daemon.store.due(now, BATCH).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot read the outbox");
                    Vec::new()
                })
            } else {
                heads(&daemon, &busy, ready, now, &mut retry_at)
            };
            let read = due.len();
            // One send at a time per conversation keeps the order.
            let due = due
                .into_iter()
                .filter(|i| busy.insert(i.conversation_id))
                .collect();
            (due, read)
        };
        let dispatched = due.len();
        for item in due {
            let (daemon, in_flight) = (daemon.clone(), in_flight.clone());
            tasks.spawn(async move {
                let conversation = item.conversation_id;
                let sent = send_claimed(&daemon, item, now).await;
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&conversation);
                // The conversation's next reply may be waiting behind it.
                // (Not when another daemon holds its outbox: that daemon
                // sends the rest, and the look at the whole outbox every
                // second finds what it leaves.)
                if sent {
                    daemon.outbox.ready(conversation);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
        if full {
            if dispatched > 0 && read == BATCH {
                // More may be due than one read returns.
                daemon.outbox.everywhere.store(true, Ordering::SeqCst);
                tokio::task::yield_now().await;
                continue;
            }
            match daemon.store.next_due_after(now) {
                Ok(at) => retry_at = earliest(retry_at, at),
                Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
            }
        }
        // Event-driven: a queued reply, a finished send and shutdown wake
        // the dispatcher. The timers are real waits: the next retry coming
        // due, and the next look at the whole outbox.
        let mut wait = next_full_round.saturating_duration_since(Instant::now());
        if let Some(at) = retry_at {
            wait = wait.min(Duration::from_millis((at - now).max(1) as u64));
        }
        tokio::select! {
            _ = daemon.outbox.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Let sends already on the wire finish and be recorded.
    while tasks.join_next().await.is_some() {}
}

/// The heads of the queues of `ready` conversations that are due; notes
/// when the others come due.
fn heads(
    daemon: &Daemon,
    busy: &HashSet<i64>,
    mut ready: Vec<i64>,
    now: i64,
    retry_at: &mut Option<i64>,
) -> Vec<OutboxItem> {
    ready.sort_unstable();
    ready.dedup();
    let mut due = Vec::new();
    // A conversation in flight is ready again when its send finishes.
    for conversation in ready.into_iter().filter(|c| !busy.contains(c)) {
        match daemon.store.head(conversation) {
            Ok(Some(item)) if item.next_attempt_at <= now => due.push(item),
            Ok(Some(item)) => *retry_at = earliest(*retry_at, Some(item.next_attempt_at)),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(conversation, error = %e, "cannot read the outbox");
                daemon.outbox.look_everywhere();
            }
        }
    }
    due.sort_by_key(|i| i.id);
    due
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sends `item` holding its conversation's outbox claim (on a store other
/// daemons share): read again once claimed, since another daemon may have
/// sent it meanwhile. Whether the claim was had.
async fn send_claimed(daemon: &Arc<Daemon>, item: OutboxItem, now: i64) -> bool {
    let Some(lease) = Lease::take(daemon, ClaimKind::Outbox, item.conversation_id) else {
        return false;
    };
    let item = if daemon.store.shared() {
        match daemon.store.head(item.conversation_id) {
            Ok(Some(head)) if head.id == item.id && head.next_attempt_at <= now => Some(head),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                None
            }
        }
    } else {
        Some(item)
    };
    if let Some(item) = item {
        deliver(daemon, item).await;
    }
    drop(lease);
    true
}

/// How a send withheld from a person who sent /stop is said.
const OPTED_OUT: &str = "opted out";

async fn deliver(daemon: &Arc<Daemon>, item: OutboxItem) {
    let correlation = item.correlation_id.clone().unwrap_or_default();
    let started_at = daemon.clock.now_ms();
    let began = Instant::now();
    let (update, outcome) = attempt_send(daemon, &item).await;
    let update = masked(&daemon.tracer, update);
    let channel = item.key.channel.as_str();
    let attempt = |outcome: Outcome, detail: Option<String>| TraceEvent {
        correlation_id: correlation.clone(),
        stage: Stage::Send,
        attempt: Some(item.attempts + 1),
        started_at,
        duration_us: began.elapsed().as_micros() as u64,
        outcome,
        detail,
    };
    let tracer = &daemon.tracer;
    match &update {
        OutboxUpdate::Sent { .. } => {
            tracer.record(attempt(Outcome::Ok, None));
            tracer.stage(
                &correlation,
                Stage::Sent,
                started_at,
                began,
                Outcome::Ok,
                None,
            );
            daemon.metrics.send(channel, "sent");
        }
        OutboxUpdate::Progress { .. } => {
            tracer.record(attempt(Outcome::PartSent, None));
        }
        OutboxUpdate::Retry { error, .. } => {
            tracer.record(attempt(Outcome::Retry, Some(error.clone())));
            daemon.metrics.send(channel, "retry");
        }
        OutboxUpdate::Discard if outcome == OPTED_OUT => {
            tracer.stage(
                &correlation,
                Stage::Dead,
                started_at,
                began,
                Outcome::Dead,
                Some("opted_out: the person sent /stop; withheld until /start".into()),
            );
            daemon.metrics.send(channel, "withheld");
        }
        // An operator's, never the outcome of a send.
        OutboxUpdate::Requeue | OutboxUpdate::Discard => {}
        OutboxUpdate::Dead { code, error } => {
            tracer.record(attempt(Outcome::Failed, Some(error.clone())));
            tracer.stage(
                &correlation,
                Stage::Dead,
                started_at,
                began,
                Outcome::Dead,
                Some(format!("{code}: {error}")),
            );
            daemon.metrics.send(channel, "dead");
            tracing::warn!(correlation_id = %correlation, code, error, "reply dead-lettered");
        }
    }
    if let Err(e) = record(daemon, item.id, update).await {
        tracing::error!(correlation_id = %correlation, error = %e, outcome, "cannot record a send");
    }
}

/// A provider's error may quote a secret (an echoed token, a URL with
/// one): the error kept with the item (`convagent outbox`, the TUI, the
/// log) is masked as the trace is.
fn masked(tracer: &super::Tracer, update: OutboxUpdate) -> OutboxUpdate {
    match update {
        OutboxUpdate::Retry {
            next_attempt_at,
            attempts,
            error,
        } => OutboxUpdate::Retry {
            next_attempt_at,
            attempts,
            error: tracer.mask(&error),
        },
        OutboxUpdate::Dead { code, error } => OutboxUpdate::Dead {
            code,
            error: tracer.mask(&error),
        },
        other => other,
    }
}

/// Records what became of a send through the store's writer.
async fn record(daemon: &Daemon, id: i64, update: OutboxUpdate) -> Result<(), StoreError> {
    let at = daemon.clock.now_ms();
    daemon
        .store
        .write(Write::Outbox { id, update, at })
        .await
        .map(drop)
}

/// One attempt: sends the parts not sent yet; returns how it went.
async fn attempt_send(daemon: &Arc<Daemon>, item: &OutboxItem) -> (OutboxUpdate, &'static str) {
    let Some(adapter) = channel::find(&daemon.live().channels, item.key.channel).cloned() else {
        return (
            OutboxUpdate::Dead {
                code: "channel_disabled".into(),
                error: format!("channel {} is not enabled", item.key.channel),
            },
            "dead",
        );
    };
    // The person sent /stop: what was stored after its answer is withheld
    // (/stop's own answer goes).
    if item
        .opted_out_since
        .is_some_and(|since| item.created_at > since)
    {
        return (OutboxUpdate::Discard, OPTED_OUT);
    }
    let parts = split_message(&item.text, adapter.max_message_len());
    if daemon.settings.dry_run {
        tracing::info!(to = %item.key.sender, channel = %item.key.channel, parts = parts.len(), "dry run: reply recorded, not sent");
        return (
            OutboxUpdate::Sent {
                provider_message_id: None,
                dry_run: true,
            },
            "dry run",
        );
    }
    let mut sent = item.parts_sent as usize;
    let mut last_id = None;
    while sent < parts.len() {
        match adapter.send(&item.key, &parts[sent]).await {
            Ok(receipt) => {
                sent += 1;
                last_id = receipt.provider_message_id;
                if sent < parts.len() {
                    // Record each part so a crash never resends it.
                    let progress = OutboxUpdate::Progress {
                        parts_sent: sent as u32,
                        provider_message_id: last_id.clone(),
                    };
                    if let Err(e) = record(daemon, item.id, progress).await {
                        tracing::error!(error = %e, "cannot record a sent part");
                    }
                }
            }
            Err(error) => return (failure(daemon, item, error), "failed"),
        }
    }
    (
        OutboxUpdate::Sent {
            provider_message_id: last_id,
            dry_run: false,
        },
        "sent",
    )
}

fn failure(daemon: &Arc<Daemon>, item: &OutboxItem, error: SendError) -> OutboxUpdate {
    let now = daemon.clock.now_ms();
    match error {
        SendError::RateLimited {
            retry_after,
            detail,
        } => {
            let next_attempt_at = now + retry_after.as_millis() as i64;
            let cap = daemon.settings.rate_limited_max_wait;
            // However often the provider says "later", a reply waits at
            // most this long in all; then it is a dead letter to act on.
            if next_attempt_at - item.created_at > cap.as_millis() as i64 {
                OutboxUpdate::Dead {
                    code: "rate_limited".into(),
                    error: format!(
                        "still rate limited after {} s: {detail}",
                        (now - item.created_at).max(0) / 1000
                    ),
                }
            } else {
                OutboxUpdate::Retry {
                    next_attempt_at,
                    attempts: item.attempts,
                    error: format!("429: {detail}"),
                }
            }
        }
        SendError::Transient(detail) => {
            match daemon.settings.send_backoff.get(item.attempts as usize) {
                Some(wait) => OutboxUpdate::Retry {
                    next_attempt_at: now + wait.as_millis() as i64,
                    attempts: item.attempts + 1,
                    error: detail,
                },
                None => OutboxUpdate::Dead {
                    code: "retries_exhausted".into(),
                    error: detail,
                },
            }
        }
        SendError::Permanent { code, detail } => OutboxUpdate::Dead {
            code,
            error: detail,
        },
    }
}
