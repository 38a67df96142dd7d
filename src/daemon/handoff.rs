//! A conversation a person took over (`human` mode, in the store): its
//! worker leaves its messages waiting for the operator, and comes back when
//! the takeover runs out (`[handoff] resume_after_secs` after it began or
//! the operator last replied), ends it (recorded and traced as
//! `auto-resume`), and lets the agent answer what waits.

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use crate::core::Write;
use crate::core::handoff::{self, Handoff, Mode};

/// How long a person still answers `conversation`, taken over at
/// `human_since` (as its pending messages were read); `None`: the agent
/// does (a takeover that ran out ends here).
pub(super) async fn held(
    daemon: &Arc<Daemon>,
    conversation: i64,
    human_since: Option<i64>,
) -> Option<Duration> {
    let since = human_since?;
    let now = daemon.clock.now_ms();
    let resumes_at = daemon.live().agent.handoff().resumes_at(since);
    if now < resumes_at {
        return Some(Duration::from_millis((resumes_at - now) as u64));
    }
    let handoff = Handoff {
        conversation_id: conversation,
        mode: Mode::Agent,
        by: handoff::AUTO_RESUME.into(),
        at: now,
    };
    let event = handoff.trace();
    if let Err(e) = daemon.store.write(Write::Handoff(handoff)).await {
        tracing::error!(conversation, error = %e, "cannot end a takeover that ran out");
    }
    tracing::info!(conversation, "a takeover ran out: the agent answers again");
    daemon.tracer.stage(
        &event.correlation_id,
        event.stage,
        event.started_at,
        std::time::Instant::now(),
        event.outcome,
        event.detail,
    );
    None
}
