//! Prometheus metrics: inbound webhooks per channel and outcome, latency
//! per stage as histograms, LLM outcomes, messages held back by limits,
//! sends, and — read from the store at each scrape — breaker states,
//! outbox depth and dead letters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::DaemonStore;
use crate::core::{BreakerState, ReplyKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelOutcome {
    channel: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelRule {
    channel: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabel {
    provider: String,
    model: String,
}

type StageHistograms = Family<StageLabel, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    // 50 µs to ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    inbound: Family<ChannelOutcome, Counter>,
    sends: Family<ChannelOutcome, Counter>,
    replies: Family<KindLabel, Counter>,
    limited: Family<ChannelRule, Counter>,
    stages: StageHistograms,
    breakers: Family<BreakerLabel, Gauge>,
    outbox_depth: Gauge,
    dead_letters: Gauge,
    waiting_for_human: Gauge,
    waiting_for_human_oldest: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::default(),
            inbound: Family::default(),
            sends: Family::default(),
            replies: Family::default(),
            limited: Family::default(),
            stages: Family::new_with_constructor(stage_histogram),
            breakers: Family::default(),
            outbox_depth: Gauge::default(),
            dead_letters: Gauge::default(),
            waiting_for_human: Gauge::default(),
            waiting_for_human_oldest: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register("convagent_inbound", "Webhooks by channel and outcome (accepted, duplicate, ignored, rejected, not_enabled)", m.inbound.clone());
            r.register(
                "convagent_sends",
                "Reply send attempts by channel and outcome (sent, retry, dead)",
                m.sends.clone(),
            );
            r.register(
                "convagent_replies",
                "Replies by kind: answer, fallback (every LLM failed), refusal (guardrail)",
                m.replies.clone(),
            );
            r.register(
                "convagent_limited",
                "Messages held back by a limit, by channel and rule (messages_per_minute, sender_tokens_per_day, tokens_per_day): answered by the limit's notice, not the LLM",
                m.limited.clone(),
            );
            r.register(
                "convagent_stage_duration_seconds",
                "Duration of each pipeline stage",
                m.stages.clone(),
            );
            r.register(
                "convagent_breaker_state",
                "Circuit breaker per provider and model: 0 closed, 1 half-open, 2 open",
                m.breakers.clone(),
            );
            r.register(
                "convagent_outbox_depth",
                "Replies queued for sending",
                m.outbox_depth.clone(),
            );
            r.register(
                "convagent_dead_letters",
                "Replies given up on",
                m.dead_letters.clone(),
            );
            r.register(
                "convagent_waiting_for_human",
                "Conversations a person took over with messages waiting for them",
                m.waiting_for_human.clone(),
            );
            r.register(
                "convagent_waiting_for_human_oldest_seconds",
                "How long the oldest message waiting for a person has waited (0: none)",
                m.waiting_for_human_oldest.clone(),
            );
        }
        m
    }

    pub fn inbound(&self, channel: &str, outcome: &str) {
        self.inbound
            .get_or_create(&ChannelOutcome {
                channel: channel.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn send(&self, channel: &str, outcome: &str) {
        self.sends
            .get_or_create(&ChannelOutcome {
                channel: channel.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// `count` messages of `channel` held back by the limit `rule` (a
    /// fixed set of names).
    pub fn limited(&self, channel: &str, rule: &str, count: u64) {
        self.limited
            .get_or_create(&ChannelRule {
                channel: channel.into(),
                rule: rule.into(),
            })
            .inc_by(count);
    }

    pub fn reply(&self, kind: ReplyKind) {
        self.replies
            .get_or_create(&KindLabel {
                kind: kind.as_str().into(),
            })
            .inc();
    }

    /// `stage` is a [`crate::core::Stage`] name (or `ack`): a fixed label set.
    pub fn observe_stage(&self, stage: &'static str, took: Duration) {
        self.stages
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition, with the store-held gauges fresh.
    pub fn render(&self, store: &dyn DaemonStore, now_ms: i64) -> String {
        if let Ok((waiting, oldest)) = store.waiting_for_person() {
            self.waiting_for_human.set(waiting as i64);
            self.waiting_for_human_oldest
                .set(oldest.map_or(0, |at| (now_ms - at).max(0) / 1000));
        }
        if let Ok(stats) = store.outbox_stats() {
            self.outbox_depth.set(stats.queued as i64);
            self.dead_letters.set(stats.dead as i64);
        }
        if let Ok(breakers) = store.breakers() {
            for b in breakers {
                let value = match b.state {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                self.breakers
                    .get_or_create(&BreakerLabel {
                        provider: b.provider,
                        model: b.model,
                    })
                    .set(value);
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &registry).is_err() {
            out = "# metrics encoding failed\n".into();
        }
        out
    }
}
