//! Trace events of every stage of every message, logged at once and
//! written to the store in batches off the request path.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::Metrics;
use crate::core::{StageSink, TraceEvent, TraceStore};

enum Command {
    Record(TraceEvent),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Tracer {
    tx: mpsc::UnboundedSender<Command>,
    metrics: Metrics,
}

/// Events per write transaction at most.
const BATCH: usize = 512;

impl Tracer {
    pub fn start(store: Arc<dyn TraceStore>, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut flushes = Vec::new();
                let mut next = Some(first);
                while let Some(command) = next.take() {
                    match command {
                        Command::Record(e) => batch.push(e),
                        Command::Flush(done) => flushes.push(done),
                    }
                    if batch.len() < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !batch.is_empty() {
                    if let Err(e) = store.record_traces(&batch) {
                        tracing::warn!(error = %e, events = batch.len(), "cannot store trace events");
                    }
                    batch.clear();
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        Tracer { tx, metrics }
    }

    /// Records that `stage` of message `correlation_id` began at
    /// `started_at` (unix ms), took since `began`, and ended with `outcome`.
    pub fn stage(
        &self,
        correlation_id: &str,
        stage: &str,
        started_at: i64,
        began: Instant,
        outcome: &str,
        detail: Option<String>,
    ) {
        let took = began.elapsed();
        self.metrics.observe_stage(stage, took);
        // Details quote error bodies: what looks like a credential stays out
        // of the store (and so out of the TUI).
        let detail = detail.map(|d| crate::telemetry::mask_credential_shapes(&d).into_owned());
        let duration_us = took.as_micros() as u64;
        tracing::info!(
            correlation_id,
            stage,
            duration_us,
            outcome,
            detail = detail.as_deref().unwrap_or(""),
            "stage"
        );
        let _ = self.tx.send(Command::Record(TraceEvent {
            correlation_id: correlation_id.to_string(),
            stage: stage.to_string(),
            started_at,
            duration_us,
            outcome: outcome.to_string(),
            detail,
        }));
    }

    /// Waits until everything recorded so far is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// The agent's stages (guarded, context built, LLM call, reply stored) go
/// the same way as the daemon's.
impl StageSink for Tracer {
    fn record(&self, mut event: TraceEvent) {
        event.detail = event
            .detail
            .map(|d| crate::telemetry::mask_credential_shapes(&d).into_owned());
        self.metrics.observe_stage(
            &event.stage,
            std::time::Duration::from_micros(event.duration_us),
        );
        tracing::info!(
            correlation_id = %event.correlation_id,
            stage = %event.stage,
            duration_us = event.duration_us,
            outcome = %event.outcome,
            "stage"
        );
        let _ = self.tx.send(Command::Record(event));
    }
}
