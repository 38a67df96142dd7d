//! The outbox dispatcher (SPEC.md step 8): sends queued replies in order
//! per conversation, split at the channel's limit. 429 waits what the
//! provider asks; 5xx and network errors back off (1, 2, 4, 8, 16 s) then
//! dead-letter; a permanent 4xx dead-letters at once with the provider's
//! code. A crash between a send and its record is the only way to send twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Daemon;
use crate::core::channel::{self, SendError, split_message};
use crate::core::{
    OutboxItem, OutboxUpdate, Outcome, Stage, StageSink, StoreError, TraceEvent, Write,
};

/// Items picked per round.
const BATCH: usize = 64;
/// Longest sleep between rounds when nothing is due.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub async fn run(daemon: Arc<Daemon>) {
    let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if daemon.stopping() {
            break;
        }
        let now = daemon.clock.now_ms();
        // Read what is due while holding the in-flight set: a send finishes
        // by recording its outcome and only then leaves the set, so an item
        // read here is either still in flight (skipped) or not yet sent.
        // Reading first and checking after would send a just-sent reply again.
        let (due, read): (Vec<OutboxItem>, usize) = {
            let mut busy = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let due = daemon.store.due(now, BATCH).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            });
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
                deliver(&daemon, item).await;
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&conversation);
                // The conversation's next reply may be waiting behind it.
                daemon.outbox_wake.notify_one();
            });
        }
        while tasks.try_join_next().is_some() {}
        if dispatched > 0 && read == BATCH {
            // More may be due than one read returns.
            tokio::task::yield_now().await;
            continue;
        }
        // Event-driven: a stored reply, a finished send and shutdown wake
        // the dispatcher. The only timer is a real wait (the next retry
        // coming due), capped so that replies another process queued are
        // found too.
        let wait = match daemon.store.next_due_after(now) {
            Ok(Some(at)) => Duration::from_millis((at - now).clamp(1, 1000) as u64),
            _ => IDLE_POLL,
        };
        tokio::select! {
            _ = daemon.outbox_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Let sends already on the wire finish and be recorded.
    while tasks.join_next().await.is_some() {}
}

async fn deliver(daemon: &Arc<Daemon>, item: OutboxItem) {
    let correlation = item.correlation_id.clone().unwrap_or_default();
    let started_at = daemon.clock.now_ms();
    let began = Instant::now();
    let (update, outcome) = attempt_send(daemon, &item).await;
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
    let Some(adapter) = channel::find(&daemon.channels, item.key.channel) else {
        return (
            OutboxUpdate::Dead {
                code: "channel_disabled".into(),
                error: format!("channel {} is not enabled", item.key.channel),
            },
            "dead",
        );
    };
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
        } => OutboxUpdate::Retry {
            next_attempt_at: now + retry_after.as_millis() as i64,
            attempts: item.attempts,
            error: format!("429: {detail}"),
        },
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
