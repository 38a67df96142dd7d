//! `convagent outbox`: the replies still to be sent and the dead letters —
//! list them (a table or `--json`), queue dead letters again, or give up on
//! an item for good. A running daemon picks re-queued items up within a
//! second; this command only writes to the store.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::core::{
    OutboxEntry, OutboxStore, OutboxUpdate, OutboxView, StoreError, Write, Writes,
};

use crate::context::{Context, UserError};
use crate::output::{age, now_ms, preview};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,

    /// Print JSON instead of a table
    #[arg(long, global = true)]
    json: bool,

    #[command(flatten)]
    which: Which,
}

/// Which items `list` shows (also given without `list`).
#[derive(Debug, Clone, Copy, clap::Args)]
struct Which {
    /// Only dead letters
    #[arg(long, global = true, conflicts_with_all = ["queued", "all"])]
    dead: bool,
    /// Only replies still queued
    #[arg(long, global = true, conflicts_with = "all")]
    queued: bool,
    /// Every item, sent and discarded ones too
    #[arg(long, global = true)]
    all: bool,
    /// At most this many rows
    #[arg(long, global = true, default_value_t = 100)]
    limit: usize,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List queued replies and dead letters, oldest first (the default)
    List,
    /// Queue dead letters again: each is tried at once, in order within its
    /// conversation, with its failures forgotten
    Retry {
        /// Outbox ids, as listed
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        ids: Vec<i64>,
        /// Every dead letter
        #[arg(long)]
        all_dead: bool,
    },
    /// Give up on queued replies or dead letters for good (kept as the
    /// record of what was not sent)
    Discard {
        /// Outbox ids, as listed
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    match args.action.unwrap_or(Action::List) {
        Action::List => {
            let Which {
                dead,
                queued,
                all,
                limit,
            } = args.which;
            let view = match (dead, queued, all) {
                (true, _, _) => OutboxView::Dead,
                (_, true, _) => OutboxView::Queued,
                (_, _, true) => OutboxView::All,
                _ => OutboxView::Open,
            };
            list(ctx, view, limit, args.json)
        }
        Action::Retry { ids, all_dead } => {
            let store = ctx.store()?;
            let ids = if all_dead {
                let dead = store.outbox_entries(OutboxView::Dead, usize::MAX >> 1)?;
                dead.into_iter().map(|e| e.id).collect()
            } else {
                ids
            };
            change(store.as_ref(), &ids, OutboxUpdate::Requeue, "queued again")
        }
        Action::Discard { ids } => change(
            ctx.store()?.as_ref(),
            &ids,
            OutboxUpdate::Discard,
            "discarded",
        ),
    }
}

fn list(ctx: &Context, view: OutboxView, limit: usize, json: bool) -> Result<ExitCode> {
    let entries = match ctx.store_read_only()? {
        Some(store) => store.outbox_entries(view, limit)?,
        None => Vec::new(),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        outln!(
            "{}",
            match view {
                OutboxView::Dead => "No dead letters.",
                _ => "Nothing waiting to be sent, and no dead letters.",
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    outln!(
        "{:>6}  {:<9} {:<24} {:<9} {:>8} {:>8}  {:<18} REPLY",
        "ID",
        "CHANNEL",
        "RECIPIENT",
        "STATE",
        "AGE",
        "ATTEMPTS",
        "ERROR"
    );
    for e in &entries {
        outln!(
            "{:>6}  {:<9} {:<24} {:<9} {:>8} {:>8}  {:<18} {}",
            e.id,
            e.channel.as_str(),
            preview(&e.recipient, 24),
            e.state,
            age(e.created_at, now),
            e.attempts,
            preview(e.error_code.as_deref().unwrap_or("-"), 18),
            preview(&e.text, 40)
        );
        if let Some(error) = e.last_error.as_deref().filter(|_| e.state != "sent") {
            outln!("{:>8}{}", "", preview(error, 100));
        }
    }
    let dead = entries.iter().filter(|e| e.state == "dead").count();
    if dead > 0 {
        outln!(
            "\n{dead} dead: `convagent outbox retry ID` (or `--all-dead`) queues them again, \
             `convagent outbox discard ID` gives up on them."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies `update` to each item in one transaction. Every item is checked
/// first: an unknown one, or one in the wrong state, changes nothing and
/// says why. (One whose state changes in between is reported, and the
/// others are applied.)
fn change(
    store: &(impl OutboxStore + Writes + ?Sized),
    ids: &[i64],
    update: OutboxUpdate,
    done: &str,
) -> Result<ExitCode> {
    if ids.is_empty() {
        outln!("No dead letters.");
        return Ok(ExitCode::SUCCESS);
    }
    for &id in ids {
        let entry = store.outbox_entry(id)?;
        refuse_unless_fits(id, entry.as_ref(), &update)?;
    }
    let at = now_ms();
    let writes: Vec<Write> = ids
        .iter()
        .map(|&id| Write::Outbox {
            id,
            update: update.clone(),
            at,
        })
        .collect();
    for result in store.write_batch(&writes) {
        result.map_err(|e| match e {
            StoreError::Invalid(reason) => {
                UserError::new(reason, "it changed meanwhile: see `convagent outbox --all`").into()
            }
            other => anyhow::Error::from(other),
        })?;
    }
    let list = ids
        .iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    outln!("{} {done}: {list}", plural(ids.len()));
    Ok(ExitCode::SUCCESS)
}

fn refuse_unless_fits(id: i64, entry: Option<&OutboxEntry>, update: &OutboxUpdate) -> Result<()> {
    let Some(entry) = entry else {
        return Err(UserError::new(
            format!("there is no outbox item {id}"),
            "`convagent outbox --all` lists every item with its id",
        )
        .into());
    };
    let fits = match update {
        OutboxUpdate::Requeue => entry.state == "dead",
        _ => entry.state == "dead" || entry.state == "queued",
    };
    if fits {
        return Ok(());
    }
    let hint = match update {
        OutboxUpdate::Requeue => "only dead letters are queued again: `convagent outbox --dead`",
        _ => "only queued replies and dead letters can be discarded",
    };
    Err(UserError::new(format!("outbox item {id} is {}", entry.state), hint).into())
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 item".into()
    } else {
        format!("{n} items")
    }
}
