//! The `convagent` binary: parses the command line and dispatches to one
//! module per subcommand. Errors become exit codes and hints here, once.

#[macro_use]
mod output;
mod approvals;
mod chat;
mod completions;
mod context;
mod doctor;
mod history;
mod knowledge;
mod mcp;
mod outbox;
mod people;
mod release;
mod replay;
mod reply;
mod serve;
mod service;
mod signals;
mod store;
mod takeover;
#[path = "../tui/mod.rs"]
mod tui;
mod tunnel;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use context::{Context, UserError};

#[derive(Debug, Parser)]
#[command(
    name = "convagent",
    version,
    about = "An LLM agent behind WhatsApp, Telegram and Slack — local-first, with the tools around it",
    propagate_version = true
)]
pub struct Cli {
    /// Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)
    #[arg(long, global = true, env = "CONVAGENT_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// KEY=VALUE lines read as environment variables (secrets of a service;
    /// the real environment wins); `serve` reads it again on SIGHUP
    #[arg(long, global = true, env = "CONVAGENT_ENV_FILE", value_name = "PATH")]
    env_file: Option<PathBuf>,

    /// Show log lines on stderr (-v info, -vv debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: channel webhooks, workers, outbox, health, metrics
    Serve(serve::Args),
    /// Talk to the agent in the terminal (channel `cli`)
    Chat(chat::Args),
    /// List, show and search stored conversations
    History(history::Args),
    /// Replies still to be sent and dead letters: list, retry, discard
    Outbox(outbox::Args),
    /// Take a conversation over: the agent is silent there until released
    Takeover(takeover::Args),
    /// Answer a conversation as an operator (takes it over)
    Reply(reply::Args),
    /// Give a conversation back to the agent
    Release(release::Args),
    /// Tool calls waiting for an operator's yes or no: list, approve, deny
    Approvals(approvals::Args),
    /// Who is who across channels: list, show, link and unlink identities
    People(people::Args),
    /// The documents the agent answers from: add, list, remove, reindex
    Knowledge(knowledge::Args),
    /// Check config, store and LLM providers, with a fix for each problem
    Doctor(doctor::Args),
    /// Sign golden webhook payloads and post them to a daemon (or load-test it)
    Replay(replay::Args),
    /// Expose the daemon through cloudflared and register the webhooks
    Tunnel(tunnel::Args),
    /// Watch conversations, traces, breakers and the log live; take
    /// conversations over, reply, answer approvals
    Tui(tui::Args),
    /// Run `serve` as a systemd service: install or remove its unit
    Service(service::Args),
    /// Move the store: copy a SQLite store into Postgres
    Store(store::Args),
    /// Serve convagent's tools to other agents over MCP (stdio), and the
    /// tokens of `/mcp` on `serve`
    Mcp(mcp::Args),
    /// Print shell completion scripts, or write them and the man page
    Completions(completions::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context::new(cli.config, cli.env_file, cli.verbose);
    let result = match cli.command {
        Command::Serve(args) => serve::run(&ctx, args),
        Command::Chat(args) => chat::run(&ctx, args),
        Command::History(args) => history::run(&ctx, args),
        Command::Outbox(args) => outbox::run(&ctx, args),
        Command::Takeover(args) => takeover::run(&ctx, args),
        Command::Reply(args) => reply::run(&ctx, args),
        Command::Release(args) => release::run(&ctx, args),
        Command::Approvals(args) => approvals::run(&ctx, args),
        Command::People(args) => people::run(&ctx, args),
        Command::Knowledge(args) => knowledge::run(&ctx, args),
        Command::Doctor(args) => doctor::run(&ctx, args),
        Command::Replay(args) => replay::run(&ctx, args),
        Command::Tui(args) => tui::run(&ctx, args),
        Command::Tunnel(args) => tunnel::run(&ctx, args),
        Command::Service(args) => service::run(&ctx, args),
        Command::Store(args) => store::run(&ctx, args),
        Command::Mcp(args) => mcp::run(&ctx, args),
        Command::Completions(args) => completions::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            report(&ctx, &error);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error with its causes and, where known, a hint — never a secret.
fn report(ctx: &Context, error: &anyhow::Error) {
    let masker = ctx.masker();
    eprintln!("error: {}", masker.mask(&error.to_string()));
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {}", masker.mask(&cause.to_string()));
    }
    if let Some(hint) = error
        .chain()
        .find_map(|e| e.downcast_ref::<UserError>())
        .and_then(|u| u.hint.as_deref())
    {
        eprintln!("hint: {hint}");
    }
}
