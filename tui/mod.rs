//! `convagent tui`: a live view of the store — conversations across
//! channels (those waiting for a person first), one conversation's turns,
//! one message's trace as a timeline, the daemon's JSON log, and a health
//! strip (breakers, outbox, traffic). It follows the store's change counter
//! a few times a second and restores the terminal on exit and on panic.
//! It reads only, except what an operator does: take a conversation over,
//! give it back, reply (the same writes as `takeover`, `release`, `reply`).

mod draw;
mod log;
mod state;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use convagent::adapters::store::{OpenMode, PostgresStore, SqliteStore};
use convagent::core::ConversationFilter;
use convagent::core::handoff::Mode;
use convagent::core::ports::AnyStore;
use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

pub use draw::draw;
pub use state::{Action, Key, LogScope, Operation, State, View};

use crate::context::Context;
use crate::output::now_ms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The operator's name recorded with takeovers and replies made here
    /// (default: the user name)
    #[arg(long = "as", value_name = "NAME")]
    operator: Option<String>,
}

/// How often the loop wakes to look for changes (and redraw ages).
const TICK: Duration = Duration::from_millis(250);
/// Conversations listed at most.
const LIST_LIMIT: usize = 500;

/// How the TUI reaches the store: the SQLite file (read-only, once it
/// exists) or the Postgres database (connected without migrating).
pub enum Place {
    File(PathBuf),
    Postgres(String),
}

/// Where the data comes from: the store, opened read-only once it exists.
pub struct Source {
    place: Place,
    store: Option<Box<dyn AnyStore>>,
    /// The configured chain's provider names, shown from the start.
    providers: Vec<String>,
    /// The daemon's JSON log, for the log view.
    log: log::Tail,
}

impl Source {
    pub fn new(place: Place, providers: Vec<String>, log_dir: PathBuf) -> Self {
        Source {
            place,
            store: None,
            providers,
            log: log::Tail::new(log_dir),
        }
    }

    /// Reads what the log gained since the last look (the log view only).
    pub fn load_log(&mut self, state: &mut State) {
        state.log.dir = self.log.dir().display().to_string();
        if let Err(e) = self.log.read(&mut state.log.lines) {
            state.notice = Some(format!("cannot read the log: {e}"));
        }
    }

    /// What the health strip calls the store (never a password).
    fn label(&self) -> String {
        match &self.place {
            Place::File(path) => path.display().to_string(),
            Place::Postgres(url) => convagent::adapters::store::postgres::redact(url),
        }
    }

    fn store(&mut self) -> Option<&dyn AnyStore> {
        if self.store.is_none() {
            self.store = match &self.place {
                Place::File(path) if path.exists() => {
                    SqliteStore::open_with(path, OpenMode::ReadOnly)
                        .ok()
                        .map(|s| Box::new(s) as Box<dyn AnyStore>)
                }
                Place::File(_) => None,
                Place::Postgres(url) => PostgresStore::connect(url, 1)
                    .ok()
                    .map(|s| Box::new(s) as Box<dyn AnyStore>),
            };
        }
        self.store.as_deref()
    }

    /// A value that changes when the store does (or appears).
    pub fn change_counter(&mut self) -> Option<i64> {
        self.store()?.change_counter().ok()
    }

    /// Reads everything the current view shows.
    pub fn load(&mut self, state: &mut State) {
        state.store = self.label();
        state.now_ms = now_ms();
        let providers = self.providers.clone();
        state.providers = providers.iter().map(|p| (p.clone(), None)).collect();
        let Some(store) = self.store() else {
            state.no_store = true;
            return;
        };
        state.no_store = false;
        let filter = ConversationFilter {
            channel: state.channel,
            sender: None,
            limit: LIST_LIMIT,
        };
        let was_on = state.current().map(|c| c.summary.id);
        match store.overview(&filter, state.search.as_deref()) {
            Ok(c) => state.arrange(c, was_on),
            Err(e) => state.notice = Some(format!("cannot read conversations: {e}")),
        }
        state.clamp();
        if state.view() != View::Conversations
            && let Some(id) = state.current().map(|c| c.summary.id)
        {
            state.messages = store.messages(id).unwrap_or_default();
            state.person = state.current().and_then(|c| {
                let sender = convagent::core::ports::SenderRef {
                    channel: c.summary.channel,
                    id: c.summary.sender.clone(),
                };
                store
                    .person_of(&sender)
                    .ok()
                    .flatten()
                    .filter(|p| p.identities.len() > 1)
            });
            state.clamp();
        }
        state.mark_seen();
        if let Some(id) = &state.trace_id {
            state.trace = store.trace(id).unwrap_or_default();
        }
        if state.view() == View::Log {
            state.log.ids = match &state.log.scope {
                LogScope::All => Vec::new(),
                LogScope::Trace(id) => vec![id.clone()],
                LogScope::Conversation(id) => store
                    .messages(*id)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| m.correlation_id)
                    .collect(),
            };
        }
        state.breakers = store.breakers().unwrap_or_default();
        state.providers = providers
            .iter()
            .map(|p| (p.clone(), store.last_answer(p).ok().flatten()))
            .collect();
        state.outbox = store.outbox_stats().unwrap_or_default();
        state.approvals = store.approvals(true, 200).unwrap_or_default();
        state.clamp();
        state.activity = store.activity(state.now_ms, 60_000, 30).unwrap_or_default();
    }
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    // While the TUI owns the screen, logs go to the file only.
    ctx.logs_to_file_only();
    let settings = ctx.settings()?;
    let providers = settings
        .config
        .llm
        .chain
        .iter()
        .map(|p| p.as_str().to_string())
        .collect();
    let place = match &settings.config.store.url {
        Some(url) => Place::Postgres(url.clone()),
        None => Place::File(settings.store_path()),
    };
    let mut source = Source::new(place, providers, settings.log_dir());
    let mut state = State {
        session_start: now_ms(),
        ..State::default()
    };
    source.load(&mut state);
    let operator = crate::takeover::operator(args.operator);
    let mut operate = |op: Operation| operate(ctx, &operator, op);

    let copied = on_terminal(ratatui::init, ratatui::restore, |terminal| {
        event_loop(terminal, &mut source, &mut state, &mut operate)
    });
    for id in copied? {
        outln!("correlation id: {id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes an operator's action as the commands do; returns what to tell
/// the operator. The store is opened for writing only now (the views keep
/// their read-only handle).
fn operate(ctx: &Context, operator: &str, op: Operation) -> Result<String> {
    let store = ctx.store()?;
    Ok(match op {
        Operation::Hand {
            conversation,
            mode: Mode::Human,
        } => {
            let s = crate::takeover::hand_in(&*store, conversation, Mode::Human, operator)?;
            format!(
                "{} is yours, {operator}: the agent is silent there · r reply · h give it back",
                s.who()
            )
        }
        Operation::Hand {
            conversation,
            mode: Mode::Agent,
        } => {
            let s = crate::takeover::hand_in(&*store, conversation, Mode::Agent, operator)?;
            format!("{} is the agent's again", s.who())
        }
        Operation::Answer { approval, decision } => {
            let after = crate::approvals::answer(&*store, approval, decision, operator)?;
            format!(
                "approval {approval} ({}): {} by {operator}",
                after.tool,
                after.state.as_str()
            )
        }
        Operation::Reply { conversation, text } => {
            let (s, sent) = crate::reply::send(&*store, conversation, &text, operator)?;
            format!(
                "queued for {} as {operator} (answering {} waiting)",
                s.who(),
                sent.answered.len()
            )
        }
    })
}

/// Runs `body` on the terminal `init` sets up and calls `restore` however
/// `body` ends: returning, failing, or panicking (the panic then goes on,
/// after the terminal is back). `ratatui::init` also restores it from its
/// panic hook; this guard covers the unwinding itself.
fn on_terminal<B: Backend, T>(
    init: impl FnOnce() -> Terminal<B>,
    restore: impl Fn(),
    body: impl FnOnce(&mut Terminal<B>) -> T,
) -> T {
    struct Restore<F: Fn()>(F);
    impl<F: Fn()> Drop for Restore<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let mut terminal = init();
    let _restore = Restore(restore);
    body(&mut terminal)
}

fn key(k: event::KeyEvent) -> Option<Key> {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Key::CtrlC);
    }
    Some(match k.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        _ => return None,
    })
}

/// Runs until `q`; returns the correlation ids the user copied.
fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    source: &mut Source,
    state: &mut State,
    operate: &mut dyn FnMut(Operation) -> Result<String>,
) -> Result<Vec<String>>
where
    B::Error: Send + Sync + 'static,
{
    let mut copied = Vec::new();
    let mut seen = source.change_counter();
    loop {
        state.now_ms = now_ms();
        terminal.draw(|f| draw(state, f))?;
        if !event::poll(TICK)? {
            if state.view() == View::Log {
                source.load_log(state);
            }
            let now = source.change_counter();
            if now != seen {
                seen = now;
                source.load(state);
            }
            continue;
        }
        let Event::Key(k) = event::read()? else {
            continue; // a resize redraws on the next turn
        };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let Some(k) = key(k) else { continue };
        state.notice = None;
        match state.on_key(k) {
            Action::None => {}
            Action::Reload => {
                source.load(state);
                if state.view() == View::Log {
                    source.load_log(state);
                }
            }
            Action::Operate(op) => {
                state.notice = Some(match operate(op) {
                    Ok(said) => said,
                    Err(e) => format!("not done: {e:#}"),
                });
                source.load(state);
            }
            Action::Quit => return Ok(copied),
            Action::Copy(id) => {
                // OSC 52: terminals that support it put this on the clipboard.
                let encoded = base64::engine::general_purpose::STANDARD.encode(&id);
                let mut out = std::io::stdout();
                let _ = write!(out, "\x1b]52;c;{encoded}\x07");
                let _ = out.flush();
                copied.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
