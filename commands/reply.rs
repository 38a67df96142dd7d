//! `convagent reply CONV TEXT`: an operator's answer, sent through the
//! outbox like any reply (order, 429 waits, dead letters), recorded with
//! provider `human` and the operator's name. It answers what waits in the
//! conversation and takes it over (or keeps it taken over: a takeover
//! runs out `[handoff] resume_after_secs` after the last operator reply).
//! A running daemon sends it within a second.

use std::process::ExitCode;

use anyhow::Result;
use convagent::core::handoff::Mode;
use convagent::core::ports::{AnyStore, Destination, Outgoing, Sent};
use convagent::core::{ConversationSummary, CorrelationId, Write};

use crate::context::{Context, UserError};
use crate::output::now_ms;

/// The provider recorded with an operator's reply.
pub const PROVIDER: &str = "human";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Conversation id, as `convagent history` lists it
    conversation: i64,
    /// What to send
    #[arg(required = true)]
    text: Vec<String>,
    /// The operator's name, as recorded (default: the user name)
    #[arg(long = "as", value_name = "NAME")]
    operator: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let text = args.text.join(" ");
    let operator = crate::takeover::operator(args.operator);
    let (summary, sent) = send(&*ctx.store()?, args.conversation, &text, &operator)?;
    outln!(
        "Queued for {} as {operator} (message {}, answering {} waiting).",
        summary.who(),
        sent.message.id,
        sent.answered.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Takes `conversation` over (or keeps it taken over) and queues `text`
/// from `operator`, answering what waits there. Shared by the TUI.
pub fn send(
    store: &dyn AnyStore,
    conversation: i64,
    text: &str,
    operator: &str,
) -> Result<(ConversationSummary, Sent)> {
    if text.trim().is_empty() {
        return Err(UserError::new("nothing to send", "give the reply's text").into());
    }
    let summary = crate::takeover::hand_in(store, conversation, Mode::Human, operator)?;
    let sent = store
        .write_now(Write::Send(Outgoing {
            to: Destination::Conversation(summary.id),
            text: text.to_string(),
            provider: PROVIDER.into(),
            sender: operator.to_string(),
            correlation_id: CorrelationId::generate().0,
            answers_pending: true,
            at: now_ms(),
        }))?
        .sent()?;
    Ok((summary, sent))
}
