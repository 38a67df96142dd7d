//! `convagent approvals`: tool calls marked `approve` that wait for an
//! operator (`list`), and the answer (`approve ID`, `deny ID`). The answer
//! is written to the store: the daemon whose turn waits sees it within a
//! second, whichever daemon that is. No answer within `[mcp]
//! approve_timeout_secs` means no.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::core::approvals::{Approval, Decision};
use convagent::core::ports::{AnyStore, StoreError, Write, Written};

use crate::context::{Context, UserError};
use crate::output::{now_ms, preview, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// The calls waiting for an answer (with --all, the answered ones too)
    List {
        /// Answered ones too, newest first
        #[arg(long)]
        all: bool,
        /// JSON lines instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Let a waiting call run
    Approve {
        /// Approval id, as `convagent approvals list` shows it
        id: i64,
        /// The operator's name, as recorded (default: the user name)
        #[arg(long = "as", value_name = "NAME")]
        operator: Option<String>,
    },
    /// Refuse a waiting call: the model is told and answers without it
    Deny {
        /// Approval id, as `convagent approvals list` shows it
        id: i64,
        /// The operator's name, as recorded (default: the user name)
        #[arg(long = "as", value_name = "NAME")]
        operator: Option<String>,
    },
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    match args.action {
        Action::List { all, json } => list(ctx, all, json),
        Action::Approve { id, operator } => {
            let by = crate::takeover::operator(operator);
            let after = answer(&*ctx.store()?, id, Decision::Approve, &by)?;
            outln!(
                "Approval {id} ({}): approved by {by}; it runs now.",
                after.tool
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Deny { id, operator } => {
            let by = crate::takeover::operator(operator);
            let after = answer(&*ctx.store()?, id, Decision::Deny, &by)?;
            outln!(
                "Approval {id} ({}): denied by {by}; the model is told.",
                after.tool
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(ctx: &Context, all: bool, json: bool) -> Result<ExitCode> {
    let Some(store) = ctx.store_read_only()? else {
        eprintln!("no store yet: nothing has asked for an approval");
        return Ok(ExitCode::SUCCESS);
    };
    let approvals = store.approvals(!all, 200)?;
    if json {
        for a in &approvals {
            outln!("{}", serde_json::to_string(a)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if approvals.is_empty() {
        eprintln!(
            "{}",
            if all {
                "no approvals yet"
            } else {
                "nothing waits for an approval"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    outln!(
        "{:>5}  {:>5}  {:<9} {:<20} {:<24} CALL",
        "ID",
        "CONV",
        "STATE",
        "ASKED",
        "ANSWER"
    );
    for a in &approvals {
        outln!(
            "{:>5}  {:>5}  {:<9} {:<20} {:<24} {}",
            a.id,
            a.conversation_id,
            a.state.as_str(),
            utc(a.asked_at),
            answer_of(a, now),
            preview(&format!("{} {}", a.tool, a.arguments), 60)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Who answered, or how long is left.
fn answer_of(a: &Approval, now: i64) -> String {
    match &a.decided_by {
        Some(by) => preview(by, 24),
        None if now > a.deadline_at => "ran out".into(),
        None => format!("{}s left", (a.deadline_at - now + 999) / 1000),
    }
}

/// Writes an operator's answer and traces it with who gave it; an answer
/// that does not take (answered already, run out, no such approval) is an
/// error with a hint. Shared by the TUI.
pub fn answer(store: &dyn AnyStore, id: i64, decision: Decision, by: &str) -> Result<Approval> {
    let at = now_ms();
    let (after, took) = match store.write_now(Write::Decide {
        id,
        decision,
        by: by.to_string(),
        at,
    }) {
        Ok(written) => Written::approval(written)?,
        Err(StoreError::NotFound(_)) => {
            return Err(UserError::new(
                format!("there is no approval {id}"),
                "`convagent approvals list` shows the calls waiting",
            )
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = convagent::daemon::operators::not_taken(&after, took, at) {
        return Err(
            UserError::new(why, "`convagent approvals list --all` shows every answer").into(),
        );
    }
    store.write_now(Write::Traces(vec![after.trace(at)]))?;
    Ok(after)
}
