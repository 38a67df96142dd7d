//! Retention in the background: every `prune_every` (an hour; the first a
//! minute after the start), what is older than `retention.messages` / `retention.traces` is
//! deleted in small batches through the store's writer, so that the
//! pipeline's own writes go between them.

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use crate::core::{Prune, Write};

/// Conversations (and trace rows looked at) per batch.
const BATCH: usize = 200;
/// The first sweep waits this long (or `prune_every` if shorter), out of
/// the way of a start.
const FIRST_AFTER: Duration = Duration::from_secs(60);

pub async fn run(daemon: Arc<Daemon>) {
    let retention = daemon.settings.retention;
    if retention == (None, None) {
        return;
    }
    let every = daemon.settings.prune_every;
    let mut wait = FIRST_AFTER.min(every);
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        loop {
            if daemon.stopping() {
                return;
            }
            let prune = Prune::at(daemon.clock.now_ms(), retention, BATCH, false);
            match daemon
                .store
                .write(Write::Prune(prune))
                .await
                .and_then(|w| w.erased())
            {
                Ok(erased) if erased == Default::default() => break,
                Ok(erased) => {
                    let files = remove_files(&daemon, erased.files).await;
                    tracing::info!(
                        conversations = erased.conversations,
                        messages = erased.messages,
                        traces = erased.traces,
                        files,
                        "retention: pruned"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: pruning failed; trying again later");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Removes the media files of pruned messages; how many were here.
async fn remove_files(daemon: &Daemon, files: Vec<String>) -> usize {
    let Some(media) = daemon.live().media.clone() else {
        return 0;
    };
    if files.is_empty() {
        return 0;
    }
    tokio::task::spawn_blocking(move || {
        let (removed, failed) = media.files.remove_all(&files);
        if let Some(why) = failed {
            tracing::warn!(error = %why, "retention: a media file stays");
        }
        removed
    })
    .await
    .unwrap_or(0)
}
