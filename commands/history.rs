//! `convagent history`: conversations and messages from the store — list,
//! show one, full-text search — as a table or `--json`. Read only.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::core::{Channel, ConversationFilter, ReplyKind, Role, Store, StoredMessage};

use crate::context::{Context, UserError};
use crate::output::{age, now_ms, preview, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,

    /// Only this channel (whatsapp, sms, telegram, slack, cli)
    #[arg(long, global = true)]
    channel: Option<Channel>,

    /// Print JSON instead of a table
    #[arg(long, global = true)]
    json: bool,

    /// At most this many rows
    #[arg(long, global = true, default_value_t = 50)]
    limit: usize,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List conversations, most recent first (the default)
    List {
        /// Only this sender
        #[arg(long)]
        sender: Option<String>,
    },
    /// Show one conversation's messages
    Show {
        /// Conversation id, as listed
        id: i64,
    },
    /// Full-text search over all messages
    Search {
        /// Words to find (all must match)
        #[arg(required = true)]
        query: Vec<String>,
    },
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let Some(store) = ctx.store_read_only()? else {
        if args.json {
            println!("[]");
        } else {
            println!("No conversations yet. Start one with `convagent chat`.");
        }
        return Ok(ExitCode::SUCCESS);
    };
    match args.action.unwrap_or(Action::List { sender: None }) {
        Action::List { sender } => list(&store, args.channel, sender, args.limit, args.json),
        Action::Show { id } => show(&store, id, args.json),
        Action::Search { query } => search(
            &store,
            &query.join(" "),
            args.channel,
            args.limit,
            args.json,
        ),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn list(
    store: &dyn Store,
    channel: Option<Channel>,
    sender: Option<String>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let filter = ConversationFilter {
        channel,
        sender,
        limit,
    };
    let conversations = store.conversations(&filter)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&conversations)?);
        return Ok(());
    }
    if conversations.is_empty() {
        println!("No conversations match. Start one with `convagent chat`.");
        return Ok(());
    }
    let now = now_ms();
    println!(
        "{:>6}  {:<9} {:<24} {:>8}  {:<10} ",
        "ID", "CHANNEL", "SENDER", "MESSAGES", "LAST"
    );
    for c in conversations {
        let sender = if c.thread.is_empty() {
            c.sender.clone()
        } else {
            format!("{} #{}", c.sender, c.thread)
        };
        let state = if c.closed { "  (closed)" } else { "" };
        println!(
            "{:>6}  {:<9} {:<24} {:>8}  {:<10}{state}",
            c.id,
            c.channel.as_str(),
            preview(&sender, 24),
            c.message_count,
            age(c.last_activity_at, now),
        );
    }
    Ok(())
}

fn show(store: &dyn Store, id: i64, json: bool) -> Result<()> {
    let Some(conversation) = store.conversation(id)? else {
        anyhow::bail!(UserError::new(
            format!("no conversation with id {id}"),
            "`convagent history` lists the ids"
        ));
    };
    let messages = store.messages(id)?;
    if json {
        let value = serde_json::json!({ "conversation": conversation, "messages": messages });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "Conversation {} · {} · {} · {} messages",
        conversation.id, conversation.channel, conversation.sender, conversation.message_count
    );
    for m in &messages {
        println!("\n{}", message_header(m));
        println!("{}", m.text.trim_end());
    }
    Ok(())
}

fn message_header(m: &StoredMessage) -> String {
    let when = utc(m.created_at);
    match m.role {
        Role::User => format!("── {when} UTC · user"),
        _ => {
            let mut parts = vec![format!("── {when} UTC · {}", m.role.as_str())];
            match (m.kind, &m.provider, &m.model) {
                (Some(ReplyKind::Refusal), _, Some(rule)) => {
                    parts.push(format!("refused by guardrail `{rule}`"))
                }
                (Some(ReplyKind::Fallback), _, _) => {
                    parts.push("fallback (no LLM answered)".into())
                }
                (_, Some(p), Some(model)) => parts.push(format!("{p}/{model}")),
                _ => {}
            }
            if let Some(v) = m.prompt_version {
                parts.push(format!("prompt v{v}"));
            }
            if let (Some(pt), Some(ct)) = (m.prompt_tokens, m.completion_tokens) {
                parts.push(format!("{pt}+{ct} tokens"));
            }
            if let Some(ms) = m.latency_ms {
                parts.push(format!("{ms} ms"));
            }
            parts.join(" · ")
        }
    }
}

fn search(
    store: &dyn Store,
    query: &str,
    channel: Option<Channel>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let hits = store.search(query, channel, limit).map_err(|e| {
        UserError::new(
            e.to_string(),
            "search for words, e.g. `convagent history search invoice march`",
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("No messages match `{query}`.");
        return Ok(());
    }
    for h in hits {
        println!(
            "#{:<5} {} · {} · {} · {}: {}",
            h.message.conversation_id,
            utc(h.message.created_at),
            h.channel,
            h.sender,
            h.message.role.as_str(),
            h.snippet.replace('\n', " "),
        );
    }
    Ok(())
}
