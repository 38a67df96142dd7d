//! The real clock: system time, and tokio's timer for waiting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::Clock;
use crate::core::llm::BoxFuture;

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}
