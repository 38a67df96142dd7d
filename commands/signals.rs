//! SIGINT and SIGTERM for the long-running commands (`serve`, `tunnel`).
//! Handlers are registered when `Stop` is made, before the command says it
//! is ready: a signal in between is then waited for, not fatal.

use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    pub fn register() -> std::io::Result<Self> {
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the next SIGINT or SIGTERM.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
