//! `serve` keeps `[knowledge]` current: at start and every `rescan_secs`
//! it indexes new and changed files of the configured paths (and of the
//! documents already indexed) and removes the vanished ones. Several
//! daemons may each do it: a file indexed twice is the same rows.

use std::sync::Arc;

use super::Daemon;
use crate::adapters::knowledge_files;

pub(crate) async fn run(daemon: Arc<Daemon>) {
    let Some(rescan) = daemon.settings.knowledge.clone() else {
        return;
    };
    loop {
        if daemon.stopping() {
            return;
        }
        let store = daemon.store.clone();
        let (paths, chunk_chars) = (rescan.paths.clone(), rescan.chunk_chars);
        let now = daemon.clock.now_ms();
        let embedder = rescan.embedder.clone();
        let runtime = tokio::runtime::Handle::current();
        let synced = tokio::task::spawn_blocking(move || {
            let embedding = embedder
                .as_deref()
                .map(|embedder| knowledge_files::Embedding { embedder, runtime });
            knowledge_files::sync(&*store, &paths, chunk_chars, false, now, embedding.as_ref())
        })
        .await;
        match synced {
            Ok(Ok(s)) => {
                if !(s.added.is_empty() && s.changed.is_empty() && s.removed.is_empty()) {
                    tracing::info!(
                        added = s.added.len(),
                        changed = s.changed.len(),
                        removed = s.removed.len(),
                        "knowledge indexed"
                    );
                }
                for (path, why) in &s.failed {
                    tracing::warn!(%path, %why, "a knowledge file could not be indexed whole");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot index the knowledge files"),
            Err(_) => return,
        }
        tokio::time::sleep(rescan.every).await;
    }
}

/// What `serve` looks at, and how often.
#[derive(Clone)]
pub struct Rescan {
    pub paths: Vec<std::path::PathBuf>,
    pub chunk_chars: usize,
    pub every: std::time::Duration,
    /// Vectors for the chunks (`[knowledge.embeddings]`).
    pub embedder: Option<Arc<dyn crate::core::embeddings::Embedder>>,
}

impl std::fmt::Debug for Rescan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rescan")
            .field("paths", &self.paths)
            .field("chunk_chars", &self.chunk_chars)
            .field("every", &self.every)
            .field("embedder", &self.embedder.as_ref().map(|e| e.name()))
            .finish()
    }
}
