//! `convagent store backup PATH` / `restore PATH`: a consistent copy of the
//! SQLite store while `serve` runs, and putting one back (only while no
//! process uses the store). On Postgres, `pg_dump` is the tool.
//!
//! `convagent store migrate --to postgres://…`: copies the SQLite store
//! (conversations, messages, summaries, prompts, traces, outbox, breakers,
//! violations, erasures, token counts) into a Postgres database, ids and
//! all, in one transaction, with a progress bar; idempotent (a second run
//! copies nothing new); then compares the row counts.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::adapters::store::sqlite::backup;
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
    /// Copy the store to PATH, consistent as of the start, while serve runs
    /// (checked with integrity_check before it takes its name)
    Backup {
        /// Where the copy goes (a new file)
        #[arg(value_name = "PATH")]
        path: std::path::PathBuf,
    },
    /// Put the backup at PATH in place of the store (stop serve first; the
    /// store it replaces is kept beside it)
    Restore {
        /// The backup to restore
        #[arg(value_name = "PATH")]
        path: std::path::PathBuf,
    },
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
        Action::Backup { path } => backup(ctx, &path),
        Action::Restore { path } => restore(ctx, &path),
    }
}

/// The SQLite file, or a clear word that Postgres has its own tools.
fn sqlite_path(ctx: &Context, what: &str) -> Result<std::path::PathBuf> {
    let settings = ctx.settings()?;
    if settings.config.store.url.is_some() {
        return Err(UserError::new(
            format!("the store is Postgres: convagent does not {what} it"),
            "use Postgres's own tools: pg_dump -Fc DATABASE > convagent.dump, \
             pg_restore -d DATABASE convagent.dump (`convagent doctor` says whether pg_dump is installed)",
        )
        .into());
    }
    Ok(settings.store_path())
}

fn backup(ctx: &Context, to: &std::path::Path) -> Result<ExitCode> {
    let db = sqlite_path(ctx, "back up")?;
    if !db.is_file() {
        return Err(UserError::new(
            format!("no store at {}", db.display()),
            "nothing to back up yet; check `store.path`",
        )
        .into());
    }
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("backing up [{bar:30}] {pos}/{len} pages")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let copied = backup::backup(&db, to, &mut progress);
    bar.finish_and_clear();
    let checked = copied.map_err(|e| {
        UserError::new(
            format!("no backup was made: {e}"),
            "nothing was left at that path; fix what it names and run it again",
        )
    })?;
    outln!(
        "{} → {}: {} conversations, {} messages; integrity_check ok",
        db.display(),
        to.display(),
        checked.conversations,
        checked.messages
    );
    Ok(ExitCode::SUCCESS)
}

fn restore(ctx: &Context, from: &std::path::Path) -> Result<ExitCode> {
    let db = sqlite_path(ctx, "restore")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let restored = backup::restore(from, &db, now).map_err(|e| match e {
        convagent::core::ports::StoreError::Conflict(why) => UserError::new(
            format!("not restored: {why}"),
            "stop it first (`systemctl --user stop convagent`, or Ctrl-C on serve), then restore",
        ),
        other => UserError::new(
            format!("not restored: {other}"),
            "the store was left as it was; give a backup made by `convagent store backup`",
        ),
    })?;
    // Brings an older backup's schema up to date.
    drop(SqliteStore::open(&db).map_err(|e| {
        UserError::new(
            format!("restored, but it does not open: {e}"),
            "the previous store is kept beside it: move it back",
        )
    })?);
    if let Some(previous) = &restored.previous {
        outln!("the store it replaced: {}", previous.display());
    }
    outln!(
        "{} restored to {}: {} conversations, {} messages",
        from.display(),
        db.display(),
        restored.checked.conversations,
        restored.checked.messages
    );
    Ok(ExitCode::SUCCESS)
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
