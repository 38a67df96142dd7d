//! The circuit breaker of one provider+model (SPEC.md pipeline step 6):
//! closed → open after N consecutive failures → after the cool-down one
//! half-open probe → closed on success, open again on failure. A pure state
//! machine over an injected time; persistence is the store's job.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BreakerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "closed" => Ok(BreakerState::Closed),
            "open" => Ok(BreakerState::Open),
            "half_open" => Ok(BreakerState::HalfOpen),
            other => Err(format!("unknown breaker state `{other}`")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through, in ms.
    pub cooldown_ms: i64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 3,
            cooldown_ms: 5 * 60 * 1000,
        }
    }
}

/// The persisted state of one breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breaker {
    pub provider: String,
    pub model: String,
    pub state: BreakerState,
    /// Consecutive failures so far.
    pub failures: u32,
    pub opened_at: Option<i64>,
    /// When an open breaker lets the next probe through.
    pub next_probe_at: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

/// A change of state, to persist, log and trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub at: i64,
    pub reason: String,
}

/// Whether a call may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// The one half-open probe: its outcome decides the state.
    Probe,
    /// Open: skip this provider without calling it.
    Skip {
        retry_at: i64,
    },
}

impl Breaker {
    pub fn new(provider: &str, model: &str, now: i64) -> Self {
        Breaker {
            provider: provider.to_string(),
            model: model.to_string(),
            state: BreakerState::Closed,
            failures: 0,
            opened_at: None,
            next_probe_at: None,
            last_error: None,
            updated_at: now,
        }
    }

    /// Decides on a call at `now`. Letting the probe through moves the
    /// breaker to half-open, and pushes the next probe one cool-down later
    /// so that a probe whose process died does not block the provider forever.
    pub fn admit(&mut self, now: i64, policy: &BreakerPolicy) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Admission::Allow, None),
            BreakerState::Open | BreakerState::HalfOpen => {
                let due = self.next_probe_at.unwrap_or(now);
                if now < due {
                    return (Admission::Skip { retry_at: due }, None);
                }
                let t = self.move_to(BreakerState::HalfOpen, now, "cool-down over: probing");
                self.next_probe_at = Some(now + policy.cooldown_ms);
                (Admission::Probe, t)
            }
        }
    }

    /// Whether [`Breaker::admit`] at `now` would let a call (or a probe)
    /// through, without changing anything.
    pub fn would_admit(&self, now: i64) -> bool {
        self.state == BreakerState::Closed || now >= self.next_probe_at.unwrap_or(now)
    }

    pub fn on_success(&mut self, now: i64) -> Option<Transition> {
        self.failures = 0;
        self.opened_at = None;
        self.next_probe_at = None;
        self.updated_at = now;
        self.move_to(BreakerState::Closed, now, "call succeeded")
    }

    pub fn on_failure(
        &mut self,
        now: i64,
        error: &str,
        policy: &BreakerPolicy,
    ) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error.to_string());
        self.updated_at = now;
        let open = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.failures >= policy.failure_threshold,
            BreakerState::Open => false,
        };
        if !open {
            return None;
        }
        self.opened_at = Some(now);
        self.next_probe_at = Some(now + policy.cooldown_ms);
        let reason = if self.state == BreakerState::HalfOpen {
            format!("probe failed: {error}")
        } else {
            format!("{} consecutive failures, last: {error}", self.failures)
        };
        self.move_to(BreakerState::Open, now, &reason)
    }

    fn move_to(&mut self, to: BreakerState, at: i64, reason: &str) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let from = self.state;
        self.state = to;
        self.updated_at = at;
        Some(Transition {
            from,
            to,
            at,
            reason: reason.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failure_threshold: 3,
        cooldown_ms: 1_000,
    };

    #[test]
    fn opens_after_the_threshold_and_skips_while_open() {
        let mut b = Breaker::new("ollama", "mistral:7b", 0);
        assert_eq!(b.on_failure(1, "refused", &POLICY), None);
        assert_eq!(b.on_failure(2, "refused", &POLICY), None);
        assert_eq!(b.admit(3, &POLICY).0, Admission::Allow);
        let t = b.on_failure(3, "refused", &POLICY).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert!(t.reason.contains("3 consecutive failures"));
        assert_eq!(b.admit(500, &POLICY).0, Admission::Skip { retry_at: 1_003 });
        assert_eq!(b.last_error.as_deref(), Some("refused"));
    }

    #[test]
    fn one_probe_at_a_time_while_half_open() {
        let mut b = Breaker::new("ollama", "mistral:7b", 0);
        for t in 1..=3 {
            b.on_failure(t, "refused", &POLICY);
        }
        // Cool-down over: the first caller probes...
        let (admission, t) = b.admit(1_003, &POLICY);
        assert_eq!(admission, Admission::Probe);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        // ...and another caller before the probe's outcome is skipped for a
        // whole cool-down, not let through as a second probe.
        assert_eq!(
            b.admit(1_004, &POLICY).0,
            Admission::Skip { retry_at: 2_003 }
        );
    }

    #[test]
    fn states_print_as_they_are_stored() {
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(state.to_string().parse::<BreakerState>(), Ok(state));
        }
        assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
        assert!("ajar".parse::<BreakerState>().is_err());
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::new("p", "m", 0);
        b.on_failure(1, "x", &POLICY);
        b.on_failure(2, "x", &POLICY);
        assert_eq!(b.on_success(3), None, "already closed");
        assert_eq!(b.failures, 0);
        assert_eq!(b.on_failure(4, "x", &POLICY), None);
        assert_eq!(b.state, BreakerState::Closed);
    }

    #[test]
    fn half_opens_after_the_cooldown_then_closes_or_reopens() {
        let mut b = Breaker::new("p", "m", 0);
        for t in 0..3 {
            b.on_failure(t, "x", &POLICY);
        }
        let (admission, t) = b.admit(1_002, &POLICY);
        assert_eq!(admission, Admission::Probe);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        // Only one probe: another caller meanwhile is skipped.
        assert!(matches!(b.admit(1_003, &POLICY).0, Admission::Skip { .. }));
        let t = b.on_failure(1_004, "still down", &POLICY).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert_eq!(b.next_probe_at, Some(2_004));

        assert_eq!(b.admit(2_004, &POLICY).0, Admission::Probe);
        let t = b.on_success(2_005).unwrap();
        assert_eq!(
            (t.from, t.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!((b.failures, b.next_probe_at), (0, None));
        assert_eq!(b.admit(2_006, &POLICY).0, Admission::Allow);
    }

    #[test]
    fn states_round_trip_as_text() {
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(s.as_str().parse::<BreakerState>().unwrap(), s);
        }
        assert!("ajar".parse::<BreakerState>().is_err());
    }
}
