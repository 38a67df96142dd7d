//! `convagent takeover CONV`: a person answers the conversation from now
//! on; the agent is silent there until `convagent release`, or until the
//! takeover runs out (`[handoff] resume_after_secs` after it began or the
//! operator last replied). Only the store is written: every daemon on it
//! obeys at its next turn.

use std::process::ExitCode;

use anyhow::Result;
use convagent::core::handoff::{Handoff, Mode};
use convagent::core::ports::AnyStore;
use convagent::core::{ConversationSummary, Write};

use crate::context::{Context, UserError};
use crate::output::now_ms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Conversation id, as `convagent history` lists it
    pub(crate) conversation: i64,
    /// The operator's name, as recorded (default: the user name)
    #[arg(long = "as", value_name = "NAME")]
    pub(crate) operator: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let operator = operator(args.operator);
    let summary = hand(ctx, args.conversation, Mode::Human, &operator)?;
    outln!(
        "Conversation {} ({}) is yours, {operator}: the agent is silent there. Answer with \
         `convagent reply {} TEXT`; `convagent release {}` gives it back.",
        summary.id,
        summary.who(),
        summary.id,
        summary.id
    );
    Ok(ExitCode::SUCCESS)
}

/// The operator's name: `--as`, else the user name.
pub fn operator(named: Option<String>) -> String {
    named
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(convagent::adapters::channels::cli::local_user)
}

/// Records who answers `conversation` from now on, traced with who did
/// it; a conversation that is not there is an error with a hint.
pub fn hand(ctx: &Context, conversation: i64, mode: Mode, by: &str) -> Result<ConversationSummary> {
    hand_in(&*ctx.store()?, conversation, mode, by)
}

/// [`hand`] on a store already open (the TUI's).
pub fn hand_in(
    store: &dyn AnyStore,
    conversation: i64,
    mode: Mode,
    by: &str,
) -> Result<ConversationSummary> {
    let Some(summary) = store.conversation(conversation)? else {
        return Err(UserError::new(
            format!("there is no conversation {conversation}"),
            "`convagent history` lists the conversations with their ids",
        )
        .into());
    };
    let handoff = Handoff {
        conversation_id: conversation,
        mode,
        by: by.to_string(),
        at: now_ms(),
    };
    let trace = handoff.trace();
    store.write_now(Write::Handoff(handoff))?;
    store.write_now(Write::Traces(vec![trace]))?;
    Ok(summary)
}
