//! `convagent history`: conversations and messages from the store — list,
//! show one, full-text search — as a table or `--json`. Read only.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::adapters::media_files::DiskFiles;
use convagent::core::handoff::Mode;
use convagent::core::media::MediaFiles as _;
use convagent::core::ports::AnyStore;
use convagent::core::{
    Channel, ConversationFilter, Erased, Prune, ReplyKind, Role, SearchOrder, SenderData,
    SenderRef, Store, StoredMessage, Write,
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
    /// Everything held about one person (conversations, messages, summaries,
    /// traces, outbox items, violations) as JSON
    Export {
        /// CHANNEL:ID, e.g. telegram:12345 or whatsapp:+15551234567
        #[arg(long, required_unless_present = "person", conflicts_with = "person")]
        sender: Option<SenderRef>,
        /// Every identity of a person: their number, or one of their
        /// identities (CHANNEL:ID), as `convagent people` shows them
        #[arg(long)]
        person: Option<crate::people::Who>,
        /// One JSON object per line, each with its `kind`
        #[arg(long)]
        jsonl: bool,
        /// Write to this file instead of standard output
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Delete what is older than the configured retention (`retention.messages`:
    /// conversations idle that long, never one still waiting for an answer;
    /// `retention.traces`), and say what went
    Prune {
        /// Only say what would go
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete everything held about one person, in one transaction; only
    /// a record that a deletion happened (when, how many rows) is kept
    Delete {
        /// CHANNEL:ID, e.g. telegram:12345 or whatsapp:+15551234567
        #[arg(long, required_unless_present = "person", conflicts_with = "person")]
        sender: Option<SenderRef>,
        /// Every identity of a person: their number, or one of their
        /// identities (CHANNEL:ID)
        #[arg(long)]
        person: Option<crate::people::Who>,
        /// Do not ask for confirmation (for scripts)
        #[arg(long)]
        yes: bool,
    },
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let Args {
        action,
        channel,
        json,
        limit,
    } = args;
    match action.unwrap_or(Action::List { sender: None }) {
        Action::List { sender } => {
            reading(ctx, json, |store| list(store, channel, sender, limit, json))
        }
        Action::Show { id } => reading(ctx, json, |store| show(store, id, json)),
        Action::Search { query, rank } => reading(ctx, json, |store| {
            let order = if rank {
                SearchOrder::Relevance
            } else {
                SearchOrder::Newest
            };
            search(store, &query.join(" "), channel, limit, order, json)
        }),
        Action::Export {
            sender,
            person,
            jsonl,
            out,
        } => export(ctx, &whose(sender, person)?, jsonl, out),
        Action::Delete {
            sender,
            person,
            yes,
        } => delete(ctx, &whose(sender, person)?, yes),
        Action::Prune { dry_run } => prune(ctx, dry_run),
    }
}

/// Whose data `export` and `delete` cover: one identity, or a person.
enum Whose {
    Sender(SenderRef),
    Person(crate::people::Who),
}

fn whose(sender: Option<SenderRef>, person: Option<crate::people::Who>) -> Result<Whose> {
    match (sender, person) {
        (_, Some(p)) => Ok(Whose::Person(p)),
        (Some(s), None) => Ok(Whose::Sender(s)),
        (None, None) => Err(UserError::new(
            "whose data?",
            "give --sender CHANNEL:ID or --person (a number, or CHANNEL:ID)",
        )
        .into()),
    }
}

/// Everything held about `whose` (every identity of a person, merged),
/// what to call them, and the person if it is one.
fn held(
    ctx: &Context,
    whose: &Whose,
) -> Result<(SenderData, String, Option<convagent::core::people::Person>)> {
    let Some(store) = ctx.store_read_only()? else {
        let who = match whose {
            Whose::Sender(s) => format!("{}:{}", s.channel.as_str(), s.id),
            Whose::Person(_) => "that person".into(),
        };
        return Ok((SenderData::default(), who, None));
    };
    match whose {
        Whose::Sender(s) => Ok((
            store.sender_data(s)?,
            format!("{}:{}", s.channel.as_str(), s.id),
            None,
        )),
        Whose::Person(who) => {
            let person = crate::people::find(store.as_ref(), who)?;
            let mut data = SenderData::default();
            for identity in &person.identities {
                let d = store.sender_data(&identity.sender_ref())?;
                data.conversations.extend(d.conversations);
                data.messages.extend(d.messages);
                data.summaries.extend(d.summaries);
                data.traces.extend(d.traces);
                data.outbox.extend(d.outbox);
                data.violations.extend(d.violations);
            }
            let who = format!("person {} ({})", person.id, person.describe());
            Ok((data, who, Some(person)))
        }
    }
}

/// Runs a read command on the store, or says there is nothing yet (and
/// creates no store).
fn reading(
    ctx: &Context,
    json: bool,
    read: impl FnOnce(&dyn AnyStore) -> Result<()>,
) -> Result<ExitCode> {
    let Some(store) = ctx.store_read_only()? else {
        if json {
            outln!("[]");
        } else {
            outln!("No conversations yet. Start one with `convagent chat`.");
        }
        return Ok(ExitCode::SUCCESS);
    };
    read(store.as_ref())?;
    Ok(ExitCode::SUCCESS)
}

fn export(
    ctx: &Context,
    whose: &Whose,
    jsonl: bool,
    out: Option<std::path::PathBuf>,
) -> Result<ExitCode> {
    let (data, _, person) = held(ctx, whose)?;
    // The fetched files of the messages, where they are kept (the store
    // holds only their names).
    let kept = DiskFiles::new(ctx.settings()?.media_dir());
    let files: Vec<serde_json::Value> = data
        .messages
        .iter()
        .flat_map(|m| m.attachments.iter().map(move |a| (m.id, a)))
        .filter_map(|(message_id, a)| {
            let file = a.file.as_deref()?;
            let path = kept.locate(file);
            Some(serde_json::json!({
                "message_id": message_id,
                "kind": a.kind,
                "content_type": a.content_type,
                "size": a.size,
                "file": file,
                "path": path,
                "present": std::path::Path::new(&path).is_file(),
            }))
        })
        .collect();
    let text = if jsonl {
        let mut lines = String::new();
        let mut push = |kind: &str, items: Vec<serde_json::Value>| {
            for mut item in items {
                item["kind"] = kind.into();
                lines.push_str(&item.to_string());
                lines.push('\n');
            }
        };
        let values = |v: serde_json::Value| v.as_array().cloned().unwrap_or_default();
        push(
            "conversation",
            values(serde_json::to_value(&data.conversations)?),
        );
        push("message", values(serde_json::to_value(&data.messages)?));
        push("summary", values(serde_json::to_value(&data.summaries)?));
        push("trace", values(serde_json::to_value(&data.traces)?));
        push("outbox", values(serde_json::to_value(&data.outbox)?));
        push("violation", values(serde_json::to_value(&data.violations)?));
        push("file", files);
        if let Some(p) = &person {
            push("person", vec![serde_json::to_value(p)?]);
        }
        lines
    } else {
        let mut all = serde_json::to_value(&data)?;
        all["files"] = files.into();
        if let Some(p) = &person {
            all["person"] = serde_json::to_value(p)?;
        }
        serde_json::to_string_pretty(&all)? + "\n"
    };
    match out {
        Some(path) => std::fs::write(&path, text).map_err(|e| {
            UserError::new(
                format!("cannot write {}: {e}", path.display()),
                "check that its directory exists and is writable",
            )
        })?,
        None => out!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(ctx: &Context, dry_run: bool) -> Result<ExitCode> {
    let (messages, traces) = ctx.settings()?.config.retention()?;
    if messages.is_none() && traces.is_none() {
        outln!("Nothing to prune: neither retention.messages nor retention.traces is set.");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(_) = ctx.store_read_only()? else {
        outln!("Nothing to prune: there is no store yet.");
        return Ok(ExitCode::SUCCESS);
    };
    let now = now_ms();
    let store = ctx.store()?;
    let mut total = Erased::default();
    // A dry run counts everything at once (and keeps it).
    let limit = if dry_run { usize::MAX >> 1 } else { 500 };
    loop {
        let prune = Prune::at(now, (messages, traces), limit, dry_run);
        let erased = store.write_now(Write::Prune(prune))?.erased()?;
        let done = dry_run || erased == Erased::default();
        total.add(erased);
        if done {
            break;
        }
    }
    let files = match dry_run {
        true => total.files.len(),
        false => remove_files(ctx, &total.files)?,
    };
    outln!(
        "{} {} conversations ({} messages) and {} trace events; {files} media files.",
        if dry_run { "Would remove" } else { "Removed" },
        total.conversations,
        total.messages,
        total.traces
    );
    Ok(ExitCode::SUCCESS)
}

fn delete(ctx: &Context, whose: &Whose, yes: bool) -> Result<ExitCode> {
    let (held, who, person) = held(ctx, whose)?;
    if held.conversations.is_empty() && person.is_none() {
        outln!("Nothing is held about {who}.");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        use std::io::IsTerminal as _;
        if !std::io::stdin().is_terminal() {
            return Err(UserError::new(
                format!("deleting everything about {who} needs a confirmation"),
                "run it in a terminal to confirm, or add --yes",
            )
            .into());
        }
        out!(
            "Delete {} conversations, {} messages and everything else held about {who}? This cannot be undone. [y/N] ",
            held.conversations.len(),
            held.messages.len()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            outln!("Nothing deleted.");
            return Ok(ExitCode::FAILURE);
        }
    }
    let erase = match (whose, &person) {
        (_, Some(p)) => Write::ErasePerson {
            person: p.id,
            at: now_ms(),
        },
        (Whose::Sender(sender), None) => Write::Erase {
            sender: sender.clone(),
            at: now_ms(),
        },
        (Whose::Person(_), None) => {
            outln!("Nothing is held about {who}.");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let erased = ctx.store()?.write_now(erase)?.erased()?;
    let files = remove_files(ctx, &erased.files)?;
    outln!(
        "Deleted everything held about {who}: {} conversations, {} messages, {} summaries, {} trace events, {} outbox items, {} violations, {files} media files.",
        erased.conversations,
        erased.messages,
        erased.summaries,
        erased.traces,
        erased.outbox,
        erased.violations
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes the media files of removed messages from this machine's media
/// directory; says how many were there.
fn remove_files(ctx: &Context, files: &[String]) -> Result<usize> {
    let kept = DiskFiles::new(ctx.settings()?.media_dir());
    match kept.remove_all(files) {
        (removed, None) => Ok(removed),
        (_, Some(why)) => Err(UserError::new(
            format!("the messages are deleted, but not all their files: {why}"),
            "check the permissions of [media] dir, then remove the file by hand",
        )
        .into()),
    }
}

fn list(
    store: &dyn AnyStore,
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
    // Each conversation's person (`convagent people`), by number.
    let mut people = Vec::with_capacity(conversations.len());
    for c in &conversations {
        let sender = SenderRef {
            channel: c.channel,
            id: c.sender.clone(),
        };
        people.push(store.person_of(&sender)?.map(|p| p.id));
    }
    if json {
        let mut listed = serde_json::to_value(&conversations)?;
        if let Some(items) = listed.as_array_mut() {
            for (item, person) in items.iter_mut().zip(&people) {
                item["person"] = serde_json::json!(person);
            }
        }
        outln!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if conversations.is_empty() {
        outln!("No conversations match. Start one with `convagent chat`.");
        return Ok(());
    }
    let now = now_ms();
    outln!(
        "{:>6}  {:<9} {:<24} {:>6} {:>8}  {:<10} ",
        "ID",
        "CHANNEL",
        "SENDER",
        "PERSON",
        "MESSAGES",
        "LAST"
    );
    for (c, person) in conversations.into_iter().zip(people) {
        let sender = if c.thread.is_empty() || c.thread == c.sender {
            c.who()
        } else {
            format!("{} #{}", c.who(), c.thread)
        };
        let state = match (c.closed, c.mode) {
            (true, _) => "  (closed)".to_string(),
            (false, Mode::Human) => format!(
                "  (human: {})",
                c.mode_by.as_deref().unwrap_or("an operator")
            ),
            (false, Mode::Agent) => String::new(),
        };
        outln!(
            "{:>6}  {:<9} {:<24} {:>6} {:>8}  {:<10}{state}",
            c.id,
            c.channel.as_str(),
            preview(&sender, 24),
            person.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.message_count,
            age(c.last_activity_at, now),
        );
    }
    Ok(())
}

fn show(store: &dyn AnyStore, id: i64, json: bool) -> Result<()> {
    let Some(conversation) = store.conversation(id)? else {
        anyhow::bail!(UserError::new(
            format!("no conversation with id {id}"),
            "`convagent history` lists the ids"
        ));
    };
    let messages = store.messages(id)?;
    let person = store.person_of(&SenderRef {
        channel: conversation.channel,
        id: conversation.sender.clone(),
    })?;
    if json {
        let value = serde_json::json!({
            "conversation": conversation,
            "messages": messages,
            "person": person,
        });
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
    if let Some(p) = person.filter(|p| p.identities.len() > 1) {
        outln!("Person {}: {}.", p.id, p.describe());
    }
    if conversation.mode == Mode::Human {
        outln!(
            "A person answers here: taken over by {} {}; the agent is silent (`convagent release {}` gives it back).",
            conversation.mode_by.as_deref().unwrap_or("an operator"),
            conversation
                .mode_at
                .map(|at| format!("at {} UTC", utc(at)))
                .unwrap_or_default(),
            conversation.id
        );
    }
    for m in &messages {
        outln!("\n{}", message_header(m, &messages));
        // What came with it first, as the model reads it ([voice note, 4 s]).
        let said = convagent::core::media::for_people(&m.text, &m.attachments);
        outln!("{}", said.trim_end());
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
                (Some(ReplyKind::Refusal), provider, Some(rule)) => parts.push(
                    crate::output::refusal(provider.as_deref().unwrap_or_default(), rule),
                ),
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
