//! `convagent release CONV`: the agent answers the conversation again,
//! what waits there included, at its next message.

use std::process::ExitCode;

use anyhow::Result;
use convagent::core::handoff::Mode;

use crate::context::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Conversation id, as `convagent history` lists it
    conversation: i64,
    /// The operator's name, as recorded (default: the user name)
    #[arg(long = "as", value_name = "NAME")]
    operator: Option<String>,
}

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
