//! `convagent store migrate --to postgres://…`: copies the SQLite store
//! (conversations, messages, summaries, prompts, traces, outbox, breakers,
//! violations, erasures, token counts) into a Postgres database, ids and
//! all, in one transaction, with a progress bar; idempotent (a second run
//! copies nothing new); then compares the row counts.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::adapters::store::{PostgresStore, SqliteStore};
use indicatif::{ProgressBar, ProgressStyle};

use crate::context::{Context, UserError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Copy the SQLite store into Postgres (run it before starting daemons
    /// on Postgres; running it again copies only what is new)
    Migrate {
        /// The Postgres database: postgres://user:password@host/database
        #[arg(long, value_name = "URL")]
        to: String,
        /// The SQLite file (default: `store.path`, or the usual place)
        #[arg(long, value_name = "PATH")]
        from: Option<std::path::PathBuf>,
    },
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    match args.action {
        Action::Migrate { to, from } => migrate(ctx, &to, from),
    }
}

fn migrate(ctx: &Context, to: &str, from: Option<std::path::PathBuf>) -> Result<ExitCode> {
    let from = match from {
        Some(path) => path,
        None => ctx.settings()?.store_path(),
    };
    if !from.is_file() {
        return Err(UserError::new(
            format!("no SQLite store at {}", from.display()),
            "give its path with --from, or set `store.path`",
        )
        .into());
    }
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        return Err(UserError::new(
            "--to is not a Postgres URL",
            "expected postgres://user:password@host/database",
        )
        .into());
    }
    // Opening it for writing brings an older SQLite file's schema up to
    // date first, so that its columns are the ones copied.
    drop(SqliteStore::open(&from).map_err(|e| {
        UserError::new(
            format!("cannot open {}: {e}", from.display()),
            "check the file is a convagent store and writable",
        )
    })?);
    let target = PostgresStore::open(to, 1).map_err(|e| {
        UserError::new(
            format!("cannot open the Postgres store: {e}"),
            "check the URL, that Postgres runs and accepts this user",
        )
    })?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let progress = |table: &str, done: u64, total: u64| {
        bar.set_message(table.to_string());
        bar.set_length(total);
        bar.set_position(done);
    };
    let copied = target.import_sqlite(&from, &progress);
    bar.finish_and_clear();
    let copied = copied.map_err(|e| {
        UserError::new(
            format!("the copy failed and nothing of it was kept: {e}"),
            "fix what it names and run it again",
        )
    })?;
    outln!(
        "{} → {}",
        from.display(),
        convagent::adapters::store::postgres::redact(to)
    );
    let mut short = Vec::new();
    for c in &copied {
        let note = if c.target < c.source {
            short.push(c.table);
            "  ← fewer: rows that clash with what the database held"
        } else if c.target > c.source {
            "  (the database held more)"
        } else {
            ""
        };
        outln!("{:>22} {:>9} → {:>9}{note}", c.table, c.source, c.target);
    }
    if !short.is_empty() {
        return Err(UserError::new(
            format!("not every row arrived: {}", short.join(", ")),
            "migrate into an empty database (the daemons must not have run on it yet)",
        )
        .into());
    }
    outln!("Every row is there. Set store.url (or CONVAGENT_DATABASE_URL) to use it.");
    Ok(ExitCode::SUCCESS)
}
