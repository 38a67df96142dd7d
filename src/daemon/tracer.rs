//! Trace events of every stage of every message: logged at once, and
//! appended to the store's writer, which commits them with the next batch
//! of pipeline writes (no transaction of their own, off the request path).

use std::sync::Arc;
use std::time::Instant;

use super::Metrics;
use crate::core::{Outcome, Stage, StageSink, TraceEvent, Write, Writes};
use crate::telemetry::Masker;

#[derive(Clone)]
pub struct Tracer {
    store: Arc<dyn Writes>,
    metrics: Metrics,
    masker: Masker,
}

impl Tracer {
    pub fn start(store: Arc<dyn Writes>, metrics: Metrics) -> Self {
        Tracer {
            store,
            metrics,
            masker: Masker::default(),
        }
    }

    /// Masks these secrets (the log's: a reload's new ones too) in every
    /// detail it stores, besides what looks like a credential.
    pub fn masking(mut self, masker: Masker) -> Self {
        self.masker = masker;
        self
    }

    /// Records that `stage` of message `correlation_id` began at
    /// `started_at` (unix ms), took since `began`, and ended with `outcome`.
    pub fn stage(
        &self,
        correlation_id: &str,
        stage: Stage,
        started_at: i64,
        began: Instant,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        self.record(TraceEvent {
            correlation_id: correlation_id.to_string(),
            stage,
            attempt: None,
            started_at,
            duration_us: began.elapsed().as_micros() as u64,
            outcome,
            detail,
        });
    }

    /// `text` with the secrets this tracer masks masked.
    pub fn mask(&self, text: &str) -> String {
        self.masker.mask(text).into_owned()
    }

    /// Waits until everything recorded so far is in the store.
    pub async fn flush(&self) {
        self.store.flush().await;
    }
}

/// The agent's stages (guarded, context built, LLM call, reply stored) go
/// the same way as the daemon's.
impl StageSink for Tracer {
    fn record(&self, mut event: TraceEvent) {
        // Details quote error bodies: configured secrets and what looks
        // like a credential stay out of the store (and so out of the TUI).
        event.detail = event.detail.map(|d| self.masker.mask(&d).into_owned());
        self.metrics.observe_stage(
            event.stage.as_str(),
            std::time::Duration::from_micros(event.duration_us),
        );
        tracing::info!(
            correlation_id = %event.correlation_id,
            stage = event.stage.as_str(),
            attempt = event.attempt,
            duration_us = event.duration_us,
            outcome = event.outcome.as_str(),
            detail = event.detail.as_deref().unwrap_or(""),
            "stage"
        );
        self.store.append(Write::Traces(vec![event]));
    }
}
