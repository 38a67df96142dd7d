//! `convagent history`: conversations and messages from the store — list,
//! show one, full-text search — as a table or `--json`. Read only.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::core::{
    Channel, ConversationFilter, ReplyKind, Role, SearchOrder, Store, StoredMessage,
};

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
    /// Full-text search over all messages, newest first
    Search {
        /// Words to find (all must match)
        #[arg(required = true)]
        query: Vec<String>,
        /// Best matches first instead of newest (ranks every match: slower
        /// on a big store)
        #[arg(long)]
        rank: bool,
    },
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let Some(store) = ctx.store_read_only()? else {
        if args.json {
            outln!("[]");
        } else {
            outln!("No conversations yet. Start one with `convagent chat`.");
        }
        return Ok(ExitCode::SUCCESS);
    };
    match args.action.unwrap_or(Action::List { sender: None }) {
        Action::List { sender } => list(&store, args.channel, sender, args.limit, args.json),
        Action::Show { id } => show(&store, id, args.json),
        Action::Search { query, rank } => search(
            &store,
            &query.join(" "),
            args.channel,
            args.limit,
            if rank {
                SearchOrder::Relevance
            } else {
                SearchOrder::Newest
            },
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
        outln!("{}", serde_json::to_string_pretty(&conversations)?);
        return Ok(());
    }
    if conversations.is_empty() {
        outln!("No conversations match. Start one with `convagent chat`.");
        return Ok(());
    }
    let now = now_ms();
    outln!(
        "{:>6}  {:<9} {:<24} {:>8}  {:<10} ",
        "ID",
        "CHANNEL",
        "SENDER",
        "MESSAGES",
        "LAST"
    );
    for c in conversations {
        let sender = if c.thread.is_empty() || c.thread == c.sender {
            c.who()
        } else {
            format!("{} #{}", c.who(), c.thread)
        };
        let state = if c.closed { "  (closed)" } else { "" };
        outln!(
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
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    outln!(
        "Conversation {} · {} · {} · {} messages",
        conversation.id,
        conversation.channel,
        conversation.who(),
        conversation.message_count
    );
    for m in &messages {
        outln!("\n{}", message_header(m, &messages));
        outln!("{}", m.text.trim_end());
    }
    Ok(())
}

fn message_header(m: &StoredMessage, all: &[StoredMessage]) -> String {
    let when = utc(m.created_at);
    match m.role {
        Role::User => match m.answered_by {
            Some(reply) => {
                format!("── {when} UTC · user · answered together with the next (reply #{reply})")
            }
            None => format!("── {when} UTC · user"),
        },
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
            let covered = all.iter().filter(|u| u.answered_by == Some(m.id)).count();
            if covered > 0 {
                parts.push(format!("answers {} messages", covered + 1));
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
    order: SearchOrder,
    json: bool,
) -> Result<()> {
    let hits = store.search(query, channel, limit, order).map_err(|e| {
        UserError::new(
            e.to_string(),
            "search for words, e.g. `convagent history search invoice march`",
        )
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    if hits.is_empty() {
        outln!("No messages match `{query}`.");
        return Ok(());
    }
    for h in hits {
        outln!(
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
