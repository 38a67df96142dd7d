//! `convagent release CONV`: the agent answers the conversation again,
//! what waits there included, at its next message.

use std::process::ExitCode;

use anyhow::Result;
use convagent::core::handoff::Mode;

use crate::context::Context;

/// The same arguments as `takeover`'s: a conversation, and who.
pub use crate::takeover::Args;

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let operator = crate::takeover::operator(args.operator);
    let summary = crate::takeover::hand(ctx, args.conversation, Mode::Agent, &operator)?;
    outln!(
        "Conversation {} ({}) is the agent's again.",
        summary.id,
        summary.who()
    );
    Ok(ExitCode::SUCCESS)
}
