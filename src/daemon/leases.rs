//! Claims with leases, when several daemons share one store (Postgres):
//! a conversation's turns, or its outbox, are worked by one daemon at a
//! time. A daemon claims before it works and gives the claim up after;
//! while it works, a task renews the lease every third of it. A daemon
//! that dies keeps its claims only until their leases run out; then the
//! sweep (every second) finds its conversations with unanswered messages
//! and another daemon takes them, and the outbox's look at every due
//! reply finds its unsent replies. Leases are measured by the database's
//! clock, so machines' clocks do not matter.
//!
//! On a store only this process writes (SQLite) claims cost nothing: the
//! store says it is not shared, and every claim is granted without a
//! round trip.

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use crate::core::ClaimKind;

/// How often the sweep looks for work nobody holds.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Conversations the sweep takes per look, at most.
const SWEEP_LIMIT: usize = 256;

/// A claim held; renewed while it lives, given up when dropped.
pub(crate) struct Lease {
    held: Option<(Arc<Daemon>, ClaimKind, i64, tokio::task::JoinHandle<()>)>,
}

impl Lease {
    /// Claims `kind` of `conversation` for this daemon; `None` when another
    /// daemon holds it (or the store cannot say: then nobody works on it
    /// here, and the sweep tries again).
    pub(crate) fn take(daemon: &Arc<Daemon>, kind: ClaimKind, conversation: i64) -> Option<Lease> {
        if !daemon.store.shared() {
            return Some(Lease { held: None });
        }
        let lease_ms = daemon.settings.lease.as_millis() as i64;
        match daemon
            .store
            .claim(kind, conversation, &daemon.owner, lease_ms)
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(conversation, error = %e, "cannot claim the conversation");
                return None;
            }
        }
        let renewing = daemon.clone();
        let renew = tokio::spawn(async move {
            let every = renewing.settings.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                let store = renewing.store.clone();
                let owner = renewing.owner.clone();
                let renewed = tokio::task::spawn_blocking(move || {
                    store.claim(kind, conversation, &owner, lease_ms)
                })
                .await;
                match renewed {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        tracing::warn!(
                            conversation,
                            ?kind,
                            "another daemon took over this conversation (this one was too slow \
                             to renew its lease)"
                        );
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(conversation, error = %e, "cannot renew a lease"),
                    Err(_) => return,
                }
            }
        });
        Some(Lease {
            held: Some((daemon.clone(), kind, conversation, renew)),
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((daemon, kind, conversation, renew)) = self.held.take() {
            renew.abort();
            if let Err(e) = daemon.store.release(kind, conversation, &daemon.owner) {
                // It runs out by itself.
                tracing::warn!(conversation, error = %e, "cannot give up a claim");
            }
        }
    }
}

/// Every second, on a shared store: conversations with unanswered messages
/// that no daemon holds (one died, or this one was busy with the
/// conversation when another daemon accepted a message for it) are
/// scheduled here. While no LLM provider is ready, nothing is: the
/// daemons' own retry timers and probes answer those.
pub(crate) async fn sweep(daemon: Arc<Daemon>) {
    if !daemon.store.shared() {
        return;
    }
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if daemon.stopping() {
            return;
        }
        if !daemon.live().agent.llm().ready() {
            continue;
        }
        let store = daemon.store.clone();
        match tokio::task::spawn_blocking(move || store.unclaimed_pending(SWEEP_LIMIT)).await {
            Ok(Ok(conversations)) => {
                for c in conversations {
                    super::workers::schedule(&daemon, c);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot look for unclaimed work"),
            Err(_) => return,
        }
    }
}
