//! `convagent reply CONV TEXT`: an operator's answer, sent through the
//! outbox like any reply (order, 429 waits, dead letters), recorded with
//! provider `human` and the operator's name. It answers what waits in the
//! conversation and takes it over (or keeps it taken over: a takeover
//! runs out `[handoff] resume_after_secs` after the last operator reply).
//! A running daemon sends it within a second.

use std::process::ExitCode;

use anyhow::Result;
use convagent::core::handoff::Mode;
use convagent::core::ports::{Destination, Outgoing};
use convagent::core::{CorrelationId, Write};

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
    if text.trim().is_empty() {
        return Err(UserError::new("nothing to send", "give the reply's text").into());
    }
    let operator = crate::takeover::operator(args.operator);
    let summary = crate::takeover::hand(ctx, args.conversation, Mode::Human, &operator)?;
    let sent = ctx
        .store()?
        .write_now(Write::Send(Outgoing {
            to: Destination::Conversation(summary.id),
            text,
            provider: PROVIDER.into(),
            sender: operator.clone(),
            correlation_id: CorrelationId::generate().0,
            answers_pending: true,
            at: now_ms(),
        }))?
        .sent()?;
    outln!(
        "Queued for {} as {operator} (message {}, answering {} waiting).",
        summary.who(),
        sent.message.id,
        sent.answered.len()
    );
    Ok(ExitCode::SUCCESS)
}
