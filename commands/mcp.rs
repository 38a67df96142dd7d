//! `convagent mcp`: convagent's tools for other agents over MCP on stdin and
//! stdout (Claude Desktop, Claude Code, Cursor: `"command": "convagent",
//! "args": ["mcp"]`), and the access tokens of `/mcp` on `serve`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use convagent::adapters::channels;
use convagent::adapters::clock::SystemClock;
use convagent::adapters::mcp::{Relay, RelaySettings, token_hash};
use convagent::config::AgentMode;
use convagent::core::ports::{StoreError, TokenChange, Write};
use rmcp::ServiceExt;

use crate::context::{Context, UserError};
use crate::output::{now_ms, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Serve MCP on stdin and stdout (what `convagent mcp` alone does)
    Stdio,
    /// The bearer tokens `/mcp` on `serve` accepts
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a token and print it (once: only its hash is kept)
    Create {
        /// A name to know it by (who or what uses it)
        name: String,
        /// Its client is an operator's: a `send_message` takes the
        /// conversation over for a person (as `[mcp] send_takes_over` does
        /// for every client)
        #[arg(long)]
        operator: bool,
    },
    /// The tokens by name, when made and last used
    List {
        /// JSON lines instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting a token
    Revoke { name: String },
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    match args.action.unwrap_or(Action::Stdio) {
        Action::Stdio => stdio(ctx),
        Action::Token { action } => token(ctx, action),
    }
}

fn stdio(ctx: &Context) -> Result<ExitCode> {
    // Stdout is the protocol's: log lines go to the log file only.
    ctx.logs_to_file_only();
    let settings = ctx.settings()?;
    let config = &settings.config;
    let store = ctx.store()?;
    let relay = Relay::new(
        store,
        Arc::new(SystemClock),
        RelaySettings {
            channels: channels::enabled(config)
                .iter()
                .map(|c| c.channel())
                .collect(),
            external: config.agent.mode == AgentMode::External,
            take: std::time::Duration::from_secs(config.mcp.take_secs),
            send_takes_over: config.mcp.send_takes_over,
            // `serve`'s outbox looks for replies other processes queued
            // every second.
            after_send: Arc::new(|| {}),
            arrivals: None,
        },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let running = relay
            .serve(rmcp::transport::stdio())
            .await
            .context("starting the MCP session on stdin/stdout")?;
        running.waiting().await.context("the MCP session failed")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A new token: `cvg_` and 64 random hex digits.
fn new_token() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("cvg_{}{}", a.simple(), b.simple())
}

fn token(ctx: &Context, action: TokenAction) -> Result<ExitCode> {
    let store = ctx.store()?;
    match action {
        TokenAction::Create { name, operator } => {
            let name = name.trim().to_string();
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(UserError::new(
                    "a token needs a name",
                    "e.g. `convagent mcp token create claude-laptop`",
                )
                .into());
            }
            let token = new_token();
            let change = TokenChange::Create {
                name: name.clone(),
                sha256: token_hash(&token),
                at: now_ms(),
                operator,
            };
            match store.write_now(Write::Token(change)) {
                Ok(_) => {}
                Err(StoreError::Invalid(why)) => {
                    return Err(UserError::new(
                        why,
                        format!("pick another name, or `convagent mcp token revoke {name}` first"),
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
            // Only the token on stdout, for `TOKEN=$(convagent mcp token create x)`.
            eprintln!("token {name:?} made; it is shown this once (only its hash is kept):");
            outln!("{token}");
            eprintln!(
                "clients send it as `Authorization: Bearer <token>` to /mcp on `convagent serve`"
            );
        }
        TokenAction::List { json } => {
            let tokens = store.tokens()?;
            if json {
                for t in &tokens {
                    outln!("{}", serde_json::to_string(t)?);
                }
            } else if tokens.is_empty() {
                eprintln!("no tokens: make one with `convagent mcp token create NAME`");
            } else {
                let now = now_ms();
                outln!(
                    "{:<24} {:<9} {:<20} LAST USED",
                    "NAME",
                    "OPERATOR",
                    "CREATED"
                );
                for t in &tokens {
                    outln!(
                        "{:<24} {:<9} {:<20} {}",
                        t.name,
                        if t.operator { "yes" } else { "no" },
                        utc(t.created_at),
                        t.last_used_at
                            .map(|at| crate::output::age(at, now))
                            .unwrap_or_else(|| "never".into())
                    );
                }
            }
        }
        TokenAction::Revoke { name } => {
            match store.write_now(Write::Token(TokenChange::Revoke { name: name.clone() })) {
                Ok(_) => outln!("token {name:?} revoked: /mcp refuses it from now on"),
                Err(StoreError::NotFound(_)) => {
                    return Err(UserError::new(
                        format!("no token named {name:?}"),
                        "`convagent mcp token list` shows them",
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
