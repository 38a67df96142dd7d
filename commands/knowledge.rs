//! `convagent knowledge`: the documents the agent answers from. `add`
//! indexes files or directories (Markdown, text, HTML, PDF) now, `list`
//! shows what is indexed, `remove` takes a document out, `reindex` reads
//! every configured and indexed file again. `serve` also looks for changed
//! files every `[knowledge] rescan_secs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::adapters::knowledge_files::{self, Synced};
use convagent::core::knowledge::KnowledgeChange;
use convagent::core::ports::{StoreError, Write};

use crate::context::{Context, UserError};
use crate::output::{now_ms, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Index files or directories now (new and changed files)
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The indexed documents: path, title, chunks, when, their vectors' embedder
    List {
        /// JSON lines instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Take a document out of the index
    Remove { path: PathBuf },
    /// Read every configured and indexed file again
    Reindex,
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let settings = ctx.settings()?;
    let chunk_chars = settings.config.knowledge.chunk_chars;
    match args.action {
        Action::Add { paths } => {
            for p in &paths {
                if !p.exists() {
                    return Err(UserError::new(
                        format!("{} does not exist", p.display()),
                        "give files or directories of Markdown, text, HTML or PDF",
                    )
                    .into());
                }
            }
            if knowledge_files::files_under(&paths).is_empty() {
                return Err(UserError::new(
                    "no readable file there",
                    "knowledge reads .md, .markdown, .txt, .text, .html, .htm and .pdf files",
                )
                .into());
            }
            let synced = sync(ctx, &paths, chunk_chars, false)?;
            report(&synced);
            Ok(exit(&synced))
        }
        Action::List { json } => {
            let Some(store) = ctx.store_read_only()? else {
                eprintln!("no documents: `convagent knowledge add PATH` indexes some");
                return Ok(ExitCode::SUCCESS);
            };
            let docs = store.knowledge_docs()?;
            if json {
                for d in &docs {
                    outln!("{}", serde_json::to_string(d)?);
                }
            } else if docs.is_empty() {
                eprintln!("no documents: `convagent knowledge add PATH` indexes some");
            } else {
                outln!(
                    "{:>6}  {:<20} {:<32} {:<24} PATH",
                    "CHUNKS",
                    "INDEXED",
                    "TITLE",
                    "VECTORS"
                );
                for d in &docs {
                    outln!(
                        "{:>6}  {:<20} {:<32} {:<24} {}",
                        d.chunks,
                        utc(d.indexed_at),
                        crate::output::preview(&d.title, 32),
                        crate::output::preview(d.embedder.as_deref().unwrap_or("-"), 24),
                        d.path
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Remove { path } => {
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            let shown = path.display().to_string();
            match ctx
                .store()?
                .write_now(Write::Knowledge(KnowledgeChange::Remove {
                    path: shown.clone(),
                })) {
                Ok(_) => {
                    outln!("Removed {shown}.");
                    Ok(ExitCode::SUCCESS)
                }
                Err(StoreError::NotFound(_)) => Err(UserError::new(
                    format!("{shown} is not indexed"),
                    "`convagent knowledge list` shows what is",
                )
                .into()),
                Err(e) => Err(e.into()),
            }
        }
        Action::Reindex => {
            let paths = settings.config.knowledge.paths.clone();
            let synced = sync(ctx, &paths, chunk_chars, true)?;
            report(&synced);
            Ok(exit(&synced))
        }
    }
}

/// [`knowledge_files::sync`] with `[knowledge.embeddings]`'s embedder, on
/// a runtime of its own for the embedder's calls.
fn sync(ctx: &Context, paths: &[PathBuf], chunk_chars: usize, force: bool) -> Result<Synced> {
    let store = ctx.store()?;
    let embedder = ctx.embedder()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let embedding = embedder
        .as_deref()
        .map(|embedder| knowledge_files::Embedding {
            embedder,
            runtime: runtime.handle().clone(),
        });
    Ok(knowledge_files::sync(
        &*store,
        paths,
        chunk_chars,
        force,
        now_ms(),
        embedding.as_ref(),
    )?)
}

fn report(s: &Synced) {
    for p in &s.added {
        outln!("added    {p}");
    }
    for p in &s.changed {
        outln!("indexed  {p}");
    }
    for p in &s.removed {
        outln!("removed  {p} (gone from disk)");
    }
    for (p, why) in &s.failed {
        eprintln!("skipped  {p}: {why}");
    }
    outln!(
        "{} added, {} indexed again, {} unchanged, {} removed, {} skipped.",
        s.added.len(),
        s.changed.len(),
        s.unchanged,
        s.removed.len(),
        s.failed.len()
    );
}

/// A file that could not be read is a failure a script should see.
fn exit(s: &Synced) -> ExitCode {
    if s.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
