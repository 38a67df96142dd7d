//! "A person never waits in silence": once a turn has run for
//! `typing_after`, the channel's typing signal is shown and repeated before
//! it fades, until the turn ends (the guard is dropped). Best effort: a failed signal is logged and
//! never holds up the reply. Nothing is sent in dry-run mode.

use std::sync::Arc;

use super::Daemon;
use crate::core::Pending;
use crate::core::channel;

/// Stops the signal when dropped.
pub struct Typing(tokio::task::JoinHandle<()>);

impl Drop for Typing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the typing signal for the turn answering `turn` (its last message).
pub fn start(daemon: &Arc<Daemon>, turn: &[Pending]) -> Option<Typing> {
    if daemon.settings.dry_run {
        return None;
    }
    let message = turn.last()?.message.clone();
    let adapter = channel::find(&daemon.live().channels, message.key.channel)?.clone();
    // Channels without a signal spawn nothing (the future is never run).
    drop(adapter.typing(&message.key, &message)?);
    let every = adapter
        .typing_lasts()
        .saturating_sub(std::time::Duration::from_secs(1))
        .max(std::time::Duration::from_secs(1));
    let after = daemon.settings.typing_after;
    Some(Typing(daemon.pipeline.spawn(async move {
        // A reply this quick needs no sign (and costs no extra API call).
        tokio::time::sleep(after).await;
        loop {
            if let Some(signal) = adapter.typing(&message.key, &message)
                && let Err(e) = signal.await
            {
                tracing::info!(correlation_id = %message.correlation_id, error = %e, "typing signal not shown");
                // A channel that refuses it once will refuse it again.
                return;
            }
            tokio::time::sleep(every).await;
        }
    })))
}
