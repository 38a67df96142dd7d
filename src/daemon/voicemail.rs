//! External mode's voicemail: with `agent.mode = "external"` the built-in
//! agent answers nothing and MCP consumers take the messages. When none
//! takes a message within `mcp.voicemail_after_secs`, the person gets
//! `mcp.voicemail` through the outbox, once while they wait (a voicemail
//! sent since their oldest waiting message counts); the message stays
//! unanswered for the consumer. Checked once a second; the wait is measured
//! on the daemon's clock. Several daemons: the one holding the
//! conversation's turns claim sends it, after looking again.

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use super::leases::Lease;
use crate::core::ports::{Destination, Outgoing, Write, Written};
use crate::core::{ClaimKind, CorrelationId};

/// The provider (and model) recorded with a voicemail.
pub const PROVIDER: &str = "voicemail";
/// How often the daemon looks for people nobody answers.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Conversations looked at per look, at most.
const LIMIT: usize = 256;

pub(crate) async fn run(daemon: Arc<Daemon>) {
    let Some((after, text)) = daemon.settings.voicemail.clone() else {
        return;
    };
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if daemon.stopping() {
            return;
        }
        let before = daemon.clock.now_ms() - after.as_millis() as i64;
        let store = daemon.store.clone();
        let waiting =
            match tokio::task::spawn_blocking(move || store.untaken_waiting(before, LIMIT)).await {
                Ok(Ok(waiting)) => waiting,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot look for messages nobody took");
                    continue;
                }
                Err(_) => return,
            };
        for (conversation, since) in waiting {
            if let Err(e) = leave(&daemon, conversation, since, &text).await {
                tracing::warn!(error = %e, conversation, "cannot leave the voicemail");
            }
        }
    }
}

/// Sends the voicemail to `conversation` unless one went out since `since`
/// (its oldest waiting message).
async fn leave(
    daemon: &Arc<Daemon>,
    conversation: i64,
    since: i64,
    text: &str,
) -> Result<(), crate::core::StoreError> {
    let Some(_lease) = Lease::take(daemon, ClaimKind::Turns, conversation) else {
        return Ok(());
    };
    let store = daemon.store.clone();
    let last =
        tokio::task::spawn_blocking(move || store.last_reply_by(conversation, PROVIDER, PROVIDER))
            .await
            .map_err(|e| crate::core::StoreError::Backend(e.to_string()))??;
    if last.is_some_and(|at| at >= since) {
        return Ok(());
    }
    let sent = daemon
        .store
        .write(Write::Send(Outgoing {
            to: Destination::Conversation(conversation),
            text: text.to_string(),
            provider: PROVIDER.into(),
            sender: PROVIDER.into(),
            correlation_id: CorrelationId::generate().0,
            answers_pending: false,
            at: daemon.clock.now_ms(),
        }))
        .await
        .and_then(Written::sent)?;
    tracing::info!(
        conversation,
        message = sent.message.id,
        "nobody took the message in time: voicemail queued"
    );
    daemon.wake_outbox();
    Ok(())
}
