//! `convagent chat`: talk to the agent in the terminal, through the same
//! core as the daemon, stored under channel `cli`. Interactive on a
//! terminal (streamed replies, slash commands); one reply per input line
//! when stdin is a pipe, so it can be scripted.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use convagent::adapters::channels::cli;
use convagent::config::parse_chain;
use convagent::core::{
    Agent, ConversationKey, Outcome, Reply, ReplyKind, Stage, Store, StreamEvent,
};
use convagent::daemon::{Metrics, Tracer};
use tokio::io::AsyncBufReadExt;

use crate::context::{Context, UserError};
use crate::output::{now_ms, preview, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// LLM providers to try, in order, for this session (e.g. `embedded`)
    #[arg(long, value_name = "LIST")]
    chain: Option<String>,

    /// Start a new conversation instead of continuing the last one
    #[arg(long)]
    new: bool,

    /// Print one JSON object per reply (for scripts)
    #[arg(long)]
    json: bool,
}

const HELP: &str = "\
/reset              start a new conversation
/history            show this conversation
/prompt             show the system prompt
/prompt set TEXT    save TEXT as a new system prompt version
/model              show the LLM providers and models in use
/sources            what the last reply was given from documents and memory
/attach PATH [TEXT] send a local file as a channel would (a voice note, a photo)
/human /stop /start /link   the agent's commands, as on any channel
/help               this list
/quit               leave (Ctrl-D works too)";

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(session(ctx, args))
}

struct Session {
    agent: Agent,
    key: ConversationKey,
    interactive: bool,
    json: bool,
    last_answer: Option<(String, String)>,
    /// What the last reply was given (`[knowledge]`, the person's memory).
    last_sources: Vec<convagent::core::knowledge::Passage>,
    first_provider: Option<String>,
    /// The media stage for `/attach`ed files (kept, heard with `[stt]`,
    /// read), as `serve` has it for a channel's.
    media: convagent::daemon::Media,
}

async fn session(ctx: &Context, args: Args) -> Result<ExitCode> {
    let mut settings = ctx.settings()?.clone();
    if let Some(list) = &args.chain {
        settings.config.llm.chain = parse_chain(list)
            .map_err(|m| UserError::new(format!("--chain: {m}"), "e.g. --chain ollama,embedded"))?;
    }
    let providers = convagent::adapters::llm::configured(&settings);
    ctx.start_tools("chat").await?;
    // Every stage of a turn (its tool calls too) is stored as the daemon
    // stores them: `history show` and the TUI see chat's turns the same way.
    let tracer = Tracer::start(ctx.store()?, Metrics::new()).masking(ctx.log_masker());
    let agent = ctx
        .agent(&providers, false)?
        .with_stages(Arc::new(tracer.clone()));
    let key = cli::conversation_key(&cli::local_user());
    if args.new {
        agent.store().close_conversation(&key, now_ms())?;
    }

    let interactive = std::io::stdin().is_terminal();
    let mut s = Session {
        agent,
        key,
        interactive,
        json: args.json,
        last_answer: None,
        last_sources: Vec::new(),
        first_provider: providers.first().map(|p| p.provider().name().to_string()),
        media: convagent::daemon::Media::from_settings(&settings),
    };
    if interactive {
        outln!(
            "convagent chat — {}. Type /help for commands, Ctrl-D to leave.",
            describe_chain(&providers)
        );
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut failures = 0usize;
    loop {
        if s.interactive {
            out!("\n› ");
            std::io::stdout().flush()?;
        }
        let Some(line) = lines.next_line().await.context("reading stdin")? else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let outcome = match line.strip_prefix('/') {
            Some(command) if command == "attach" || command.starts_with("attach ") => {
                attach(&mut s, command["attach".len()..].trim()).await
            }
            // The agent's own chat commands (`/human`, `/stop`, `/start`,
            // `/link`) go to it as on any channel; `/reset` and `/help`
            // are chat's.
            Some(_) if agent_command(line) => turn(&mut s, line).await,
            Some(command) => match slash(&mut s, command, &providers) {
                Ok(true) => Ok(true),
                Ok(false) => break,
                Err(e) => Err(e),
            },
            None => turn(&mut s, line).await,
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => failures += 1,
            Err(e) => {
                let masked = ctx.masker().mask(&format!("{e:#}")).into_owned();
                eprintln!("error: {masked}");
                failures += 1;
            }
        }
    }
    if s.interactive {
        outln!();
    }
    tracer.flush().await;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Answers one typed line (after any earlier message still waiting for
/// its answer); returns false when the reply was the canned fallback.
async fn turn(s: &mut Session, text: &str) -> Result<bool> {
    turn_with(s, text, Vec::new()).await
}

/// `/attach PATH [TEXT]`: the file as the attachment of a message, through
/// the same turn as any message (a voice note gets what it would get on
/// Telegram).
async fn attach(s: &mut Session, rest: &str) -> Result<bool> {
    let (path, text) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(p, t)| (p, t.trim()));
    if path.is_empty() {
        anyhow::bail!(UserError::new(
            "/attach needs a file",
            "e.g. /attach ~/voice.ogg or /attach photo.jpg what is this?"
        ));
    }
    let path = match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(rest))
            .unwrap_or_else(|| path.into()),
        None => path.into(),
    };
    let mut attachment = cli::attachment_of(&path).map_err(|why| {
        UserError::new(
            format!("cannot attach {why}"),
            "give the path of a file you can read",
        )
    })?;
    // Through the media stage, as `serve` takes in a channel's file: kept,
    // a voice note heard, a document read.
    let source = convagent::daemon::Source::Local;
    let mut said = |stage: Stage, outcome: Outcome, detail: String| {
        if outcome == Outcome::Failed {
            eprintln!("  [{stage} failed: {detail}]");
        }
    };
    s.media.take_in(source, &mut attachment, &mut said).await;
    turn_with(s, text, vec![attachment]).await
}

async fn turn_with(
    s: &mut Session,
    text: &str,
    attachments: Vec<convagent::core::Attachment>,
) -> Result<bool> {
    if let Some(conversation) = s.agent.store().open_conversation(&s.key)? {
        for earlier in s.agent.store().pending(conversation, 5)? {
            let reply = s
                .agent
                .answer(std::slice::from_ref(&earlier), &mut |_| {})
                .await?;
            if reply.kind() == ReplyKind::Answer {
                if !s.json {
                    eprintln!(
                        "(answering your earlier message «{}»)",
                        preview(&earlier.message.text, 40)
                    );
                }
                report(s, &reply);
            }
        }
    }
    let message = convagent::core::InboundMessage {
        attachments,
        ..cli::inbound(&s.key, text, now_ms())
    };
    let stream = s.interactive && !s.json;
    // A person watching sees that something happens until the first token
    // (a cold model load can take minutes); it goes away as text arrives.
    let spinner = stream.then(|| {
        let bar = indicatif::ProgressBar::new_spinner().with_message("thinking…");
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let mut on_event = |event: StreamEvent<'_>| {
        if !stream {
            return;
        }
        if let Some(bar) = spinner.as_ref().filter(|b| !b.is_finished()) {
            bar.finish_and_clear();
        }
        match event {
            StreamEvent::Token(t) => {
                out!("{t}");
                let _ = std::io::stdout().flush();
            }
            StreamEvent::Restart { provider, error } => {
                eprintln!(
                    "\n[{provider} failed mid-reply ({error}); starting over with the next provider]"
                );
            }
        }
    };
    let reply = s.agent.handle(&message, &mut on_event).await;
    if let Some(bar) = &spinner {
        bar.finish_and_clear();
    }
    let reply = reply?;
    report(s, &reply);
    Ok(reply.kind() != ReplyKind::Fallback)
}

fn report(s: &mut Session, reply: &Reply) {
    let r = &reply.reply;
    let kind = reply.kind();
    let provider = r.provider.clone().unwrap_or_default();
    let model = r.model.clone().unwrap_or_default();
    if s.json {
        let line = serde_json::json!({
            "reply": r.text,
            "kind": kind.as_str(),
            "provider": provider,
            "model": model,
            "prompt_version": r.prompt_version,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "latency_ms": r.latency_ms,
            "correlation_id": r.correlation_id,
            "conversation_id": reply.conversation_id,
            "sources": reply.sources,
        });
        outln!("{line}");
    } else {
        if s.interactive {
            outln!();
        } else {
            outln!("{}", r.text.trim_end());
        }
        match kind {
            ReplyKind::Refusal => {
                eprintln!(
                    "  [{}; the LLM was not asked]",
                    crate::output::refusal(&provider, &model)
                )
            }
            ReplyKind::Fallback => eprintln!(
                "  [no LLM provider answered ({}); this message will be answered once one recovers — see `convagent doctor`]",
                reply.llm_error.as_deref().unwrap_or("they failed before")
            ),
            ReplyKind::Answer if s.interactive => {
                let mut notes = vec![format!("{provider} · {model}")];
                if let Some(n) = r.completion_tokens {
                    notes.push(format!("{n} tokens"));
                }
                if let Some(ms) = r.latency_ms {
                    notes.push(format!("{:.1}s", ms as f64 / 1000.0));
                }
                if s.first_provider
                    .as_deref()
                    .is_some_and(|first| first != provider)
                {
                    notes.push("fallback provider".into());
                }
                eprintln!("  [{}]", notes.join(" · "));
            }
            ReplyKind::Answer => {}
        }
    }
    if kind == ReplyKind::Answer {
        s.last_answer = Some((provider, model));
        s.last_sources = reply.sources.clone();
    }
}

/// Whether `line` is one of the agent's chat commands that chat does not
/// handle itself.
fn agent_command(line: &str) -> bool {
    use convagent::core::handoff::{Command, HandoffConfig};
    matches!(
        HandoffConfig::default().command(line),
        Some(c) if !matches!(c, Command::Reset | Command::Help)
    )
}

/// Handles a slash command; returns false to end the session.
fn slash(
    s: &mut Session,
    command: &str,
    providers: &[convagent::adapters::llm::Configured],
) -> Result<bool> {
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(n, r)| (n, r.trim()));
    let store = s.agent.store().clone();
    match name {
        "quit" | "exit" | "q" => return Ok(false),
        "help" | "?" => outln!("{HELP}"),
        "reset" => {
            store.close_conversation(&s.key, now_ms())?;
            outln!("Started a new conversation.");
        }
        "history" => show_history(store.as_ref(), &s.key)?,
        "prompt" => {
            if let Some(text) = rest.strip_prefix("set") {
                let text = text.trim();
                if text.is_empty() {
                    anyhow::bail!(UserError::new(
                        "/prompt set needs the new prompt text",
                        "e.g. /prompt set You are a pirate. Answer briefly."
                    ));
                }
                // Through the agent, which makes it current for the next turn.
                let p = s.agent.set_prompt(text)?;
                outln!(
                    "System prompt version {} saved; it applies from the next message.",
                    p.version
                );
            } else if rest.is_empty() {
                match store.current_prompt()? {
                    Some(p) => outln!(
                        "System prompt v{} (set {} UTC):\n{}",
                        p.version,
                        utc(p.created_at),
                        p.text
                    ),
                    None => outln!(
                        "No system prompt stored yet; the configured default applies on the first message."
                    ),
                }
            } else {
                anyhow::bail!(UserError::new(
                    format!("unknown /prompt argument `{rest}`"),
                    "use /prompt or /prompt set TEXT"
                ));
            }
        }
        "sources" => {
            if s.last_sources.is_empty() {
                outln!("The last reply was given nothing from documents or memory.");
            }
            for (i, p) in s.last_sources.iter().enumerate() {
                outln!(
                    "[{}] {} (score {:.2}): {}",
                    i + 1,
                    p.source,
                    p.score,
                    crate::output::preview(&p.text, 160)
                );
            }
        }
        "model" => {
            outln!("{}", describe_chain(providers));
            if let Some((p, m)) = &s.last_answer {
                outln!("Last reply from: {p} · {m}");
            }
        }
        other => anyhow::bail!(UserError::new(
            format!("unknown command /{other}"),
            "/help lists the commands"
        )),
    }
    Ok(true)
}

fn show_history(store: &dyn Store, key: &ConversationKey) -> Result<()> {
    let Some(id) = store.open_conversation(key)? else {
        outln!("No messages in this conversation yet.");
        return Ok(());
    };
    for m in store.messages(id)? {
        let who = match m.role {
            convagent::core::Role::User => "you".to_string(),
            _ => format!("agent ({})", m.model.as_deref().unwrap_or("?")),
        };
        outln!("{} {who}: {}", utc(m.created_at), m.text.trim_end());
    }
    Ok(())
}

fn describe_chain(providers: &[convagent::adapters::llm::Configured]) -> String {
    let parts: Vec<String> = providers
        .iter()
        .map(|c| {
            let p = c.provider();
            format!("{} ({})", p.name(), p.model())
        })
        .collect();
    format!("LLM chain: {}", parts.join(" → "))
}
