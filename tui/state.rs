//! The TUI's state and what keys do to it — no terminal code here, so the
//! behaviour is testable and `draw` only reads.

use std::collections::{HashMap, VecDeque};

use convagent::core::approvals::{Approval, Decision};
use convagent::core::handoff::Mode;
use convagent::core::{
    ActivityBucket, Breaker, Channel, ConversationOverview, OutboxStats, ProviderActivity,
    StoredMessage, TraceEvent,
};

use super::log::{Level, LogLine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Conversations,
    Conversation,
    Trace,
    /// The daemon's JSON log, followed live.
    Log,
    /// Tool calls waiting for an operator's yes or no.
    Approvals,
}

/// What an operator does to a conversation; the event loop writes it to
/// the store (the views themselves only read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Take the conversation over (`Mode::Human`) or give it back.
    Hand { conversation: i64, mode: Mode },
    /// Send an operator's reply (which takes the conversation over).
    Reply { conversation: i64, text: String },
    /// Answer a tool call's approval.
    Answer { approval: i64, decision: Decision },
}

/// Which correlation ids the log view keeps to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogScope {
    #[default]
    All,
    /// Every message of this conversation.
    Conversation(i64),
    /// One message's trace.
    Trace(String),
}

/// The log view: the lines read so far and its filters.
#[derive(Debug, Clone, Default)]
pub struct LogState {
    pub lines: VecDeque<LogLine>,
    /// The most verbose level shown.
    pub level: Level,
    /// What the view was opened on; `scoped` says whether it filters.
    pub scope: LogScope,
    pub scoped: bool,
    /// The correlation ids of `scope` (read from the store).
    pub ids: Vec<String>,
    /// Lines scrolled back from the newest; 0 follows the log.
    pub back: usize,
    /// The view Esc returns to.
    pub from: Option<View>,
    /// Where the log is read from, for the title.
    pub dir: String,
}

impl LogState {
    /// The lines the filters let through, oldest first.
    pub fn shown(&self) -> Vec<&LogLine> {
        let ids = (self.scoped && self.scope != LogScope::All).then_some(self.ids.as_slice());
        self.lines
            .iter()
            .filter(|l| l.shown(self.level, ids))
            .collect()
    }
}

/// Keys the TUI understands, independent of the terminal library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    CtrlC,
}

/// What the event loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Read the store again (the selection or a filter changed).
    Reload,
    Quit,
    /// Hand this correlation id to the user (clipboard and, at exit, stdout).
    Copy(String),
    /// Write an operator's action to the store, then read it again.
    Operate(Operation),
}

#[derive(Debug, Clone, Default)]
pub struct State {
    pub now_ms: i64,
    pub view: Option<View>,
    pub help: bool,
    /// Text typed after `/`, while searching.
    pub typing: Option<String>,
    /// An operator's reply being typed after `r`.
    pub compose: Option<String>,
    pub search: Option<String>,
    pub channel: Option<Channel>,
    pub conversations: Vec<ConversationOverview>,
    pub selected: usize,
    pub messages: Vec<StoredMessage>,
    pub message: usize,
    /// The open conversation's person, when they are known on more than
    /// this one identity.
    pub person: Option<convagent::core::people::Person>,
    pub trace_id: Option<String>,
    pub trace: Vec<TraceEvent>,
    pub breakers: Vec<Breaker>,
    /// The configured providers in chain order, each with its last answer.
    pub providers: Vec<(String, Option<ProviderActivity>)>,
    pub outbox: OutboxStats,
    pub activity: Vec<ActivityBucket>,
    pub store: String,
    /// The store file does not exist yet.
    pub no_store: bool,
    pub notice: Option<String>,
    /// When this TUI session began: activity after it is new to the user.
    pub session_start: i64,
    /// The last activity the user saw, per conversation opened.
    pub seen: HashMap<i64, i64>,
    pub log: LogState,
    /// Tool calls waiting for an answer, newest first.
    pub approvals: Vec<Approval>,
    pub approval: usize,
    /// The view Esc returns to from the approvals.
    pub approvals_from: Option<View>,
}

/// Whether a conversation waits for a person: taken over, with messages
/// nobody has answered yet.
pub fn waits_for_person(c: &ConversationOverview) -> bool {
    c.summary.mode == Mode::Human && c.pending > 0
}

/// The channel filter cycles through every channel, then back to all.
fn next_channel(current: Option<Channel>) -> Option<Channel> {
    match current {
        None => Channel::ALL.first().copied(),
        Some(c) => Channel::ALL.iter().skip_while(|&&x| x != c).nth(1).copied(),
    }
}

impl State {
    pub fn view(&self) -> View {
        self.view.unwrap_or(View::Conversations)
    }

    /// The conversation the cursor is on.
    pub fn current(&self) -> Option<&ConversationOverview> {
        self.conversations.get(self.selected)
    }

    /// Whether a conversation had activity the user has not looked at
    /// since this session began.
    pub fn unread(&self, c: &ConversationOverview) -> bool {
        let seen = self
            .seen
            .get(&c.summary.id)
            .copied()
            .unwrap_or(self.session_start);
        c.summary.last_activity_at > seen
    }

    /// Marks what the open conversation shows as seen.
    pub fn mark_seen(&mut self) {
        if self.view() != View::Conversations
            && let Some(c) = self.current()
        {
            let (id, at) = (c.summary.id, c.summary.last_activity_at);
            self.seen.insert(id, at);
        }
    }

    pub fn current_message(&self) -> Option<&StoredMessage> {
        self.messages.get(self.message)
    }

    /// Orders a freshly read list: conversations waiting for a person
    /// first (the order within each part stays the store's, newest first),
    /// keeping the cursor on the conversation it was on.
    pub fn arrange(&mut self, fresh: Vec<ConversationOverview>, was_on: Option<i64>) {
        let mut fresh = fresh;
        fresh.sort_by_key(|c| !waits_for_person(c));
        self.conversations = fresh;
        if let Some(i) =
            was_on.and_then(|id| self.conversations.iter().position(|c| c.summary.id == id))
        {
            self.selected = i;
        }
        self.clamp();
    }

    /// How many conversations wait for a person.
    pub fn waiting(&self) -> usize {
        self.conversations
            .iter()
            .filter(|c| waits_for_person(c))
            .count()
    }

    /// Keeps the cursors inside the lists after a reload.
    pub fn clamp(&mut self) {
        self.selected = self
            .selected
            .min(self.conversations.len().saturating_sub(1));
        self.message = self.message.min(self.messages.len().saturating_sub(1));
        self.approval = self.approval.min(self.approvals.len().saturating_sub(1));
    }

    pub fn on_key(&mut self, key: Key) -> Action {
        if key == Key::CtrlC {
            return Action::Quit;
        }
        if let Some(typed) = self.typing.as_mut() {
            match key {
                Key::Char(c) => typed.push(c),
                Key::Backspace => {
                    typed.pop();
                }
                Key::Enter => {
                    let text = self.typing.take().unwrap_or_default();
                    self.search = Some(text).filter(|t| !t.trim().is_empty());
                    self.selected = 0;
                    return Action::Reload;
                }
                Key::Esc => self.typing = None,
                _ => {}
            }
            return Action::None;
        }
        if let Some(typed) = self.compose.as_mut() {
            match key {
                Key::Char(c) => typed.push(c),
                Key::Backspace => {
                    typed.pop();
                }
                Key::Enter => {
                    let text = self.compose.take().unwrap_or_default();
                    if text.trim().is_empty() {
                        self.notice = Some("nothing sent: the reply was empty".into());
                        return Action::None;
                    }
                    return match self.current() {
                        Some(c) => Action::Operate(Operation::Reply {
                            conversation: c.summary.id,
                            text,
                        }),
                        None => Action::None,
                    };
                }
                Key::Esc => self.compose = None,
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            self.help = false;
            return Action::None;
        }
        match (self.view(), key) {
            (_, Key::Char('q')) => Action::Quit,
            (_, Key::Char('?')) => {
                self.help = true;
                Action::None
            }
            (View::Conversations | View::Conversation, Key::Char('h')) => match self.current() {
                Some(c) => Action::Operate(Operation::Hand {
                    conversation: c.summary.id,
                    mode: match c.summary.mode {
                        Mode::Agent => Mode::Human,
                        Mode::Human => Mode::Agent,
                    },
                }),
                None => Action::None,
            },
            (View::Conversations | View::Conversation, Key::Char('r'))
                if self.current().is_some() =>
            {
                self.compose = Some(String::new());
                Action::None
            }
            (View::Approvals, Key::Up | Key::Char('k')) => {
                self.approval = self.approval.saturating_sub(1);
                Action::None
            }
            (View::Approvals, Key::Down | Key::Char('j')) => {
                self.approval = (self.approval + 1).min(self.approvals.len().saturating_sub(1));
                Action::None
            }
            (View::Approvals, Key::Char(c @ ('y' | 'n'))) => {
                match self.approvals.get(self.approval) {
                    Some(a) => Action::Operate(Operation::Answer {
                        approval: a.id,
                        decision: if c == 'y' {
                            Decision::Approve
                        } else {
                            Decision::Deny
                        },
                    }),
                    None => Action::None,
                }
            }
            (View::Approvals, Key::Esc | Key::Backspace | Key::Char('a')) => {
                self.view = self.approvals_from.take();
                Action::Reload
            }
            (view @ (View::Conversations | View::Conversation | View::Trace), Key::Char('a')) => {
                self.approvals_from = Some(view);
                self.approval = 0;
                self.view = Some(View::Approvals);
                Action::Reload
            }
            (View::Log, Key::Char('v')) => {
                self.log.level = self.log.level.next();
                self.log.back = 0;
                Action::None
            }
            (View::Log, Key::Char('f')) if self.log.scope != LogScope::All => {
                self.log.scoped = !self.log.scoped;
                self.log.back = 0;
                Action::None
            }
            (View::Log, Key::Up | Key::Char('k')) => self.scroll_log(1),
            (View::Log, Key::Down | Key::Char('j')) => self.scroll_log(-1),
            (View::Log, Key::PageUp) => self.scroll_log(20),
            (View::Log, Key::PageDown) => self.scroll_log(-20),
            (View::Log, Key::Esc | Key::Backspace | Key::Char('l')) => {
                self.view = self.log.from.take();
                Action::Reload
            }
            (view, Key::Char('l')) => {
                let scope = match view {
                    View::Trace => self.trace_id.clone().map(LogScope::Trace),
                    View::Conversation => {
                        self.current().map(|c| LogScope::Conversation(c.summary.id))
                    }
                    _ => None,
                };
                self.log.scoped = scope.is_some();
                self.log.scope = scope.unwrap_or_default();
                self.log.ids.clear();
                self.log.back = 0;
                self.log.from = Some(view);
                self.view = Some(View::Log);
                Action::Reload
            }
            (View::Conversations, Key::Up | Key::Char('k')) => self.step(-1),
            (View::Conversations, Key::Down | Key::Char('j')) => self.step(1),
            (View::Conversations, Key::PageUp) => self.step(-10),
            (View::Conversations, Key::PageDown) => self.step(10),
            (View::Conversations, Key::Enter) if self.current().is_some() => {
                self.view = Some(View::Conversation);
                self.message = usize::MAX;
                Action::Reload
            }
            (View::Conversations, Key::Char('/')) => {
                self.typing = Some(String::new());
                Action::None
            }
            (View::Conversations, Key::Char('c')) => {
                self.channel = next_channel(self.channel);
                self.selected = 0;
                Action::Reload
            }
            (View::Conversations, Key::Esc) if self.search.is_some() || self.channel.is_some() => {
                self.search = None;
                self.channel = None;
                Action::Reload
            }
            (View::Conversation, Key::Up | Key::Char('k')) => {
                self.message = self.message.saturating_sub(1);
                Action::None
            }
            (View::Conversation, Key::Down | Key::Char('j')) => {
                self.message = (self.message + 1).min(self.messages.len().saturating_sub(1));
                Action::None
            }
            (View::Conversation, Key::Enter | Key::Char('t')) => match self
                .current_message()
                .and_then(|m| m.correlation_id.clone())
            {
                Some(id) => {
                    self.trace_id = Some(id);
                    self.view = Some(View::Trace);
                    Action::Reload
                }
                None => {
                    self.notice = Some("this message has no correlation id".into());
                    Action::None
                }
            },
            (View::Conversation, Key::Esc | Key::Backspace) => {
                self.view = Some(View::Conversations);
                Action::Reload
            }
            (View::Trace, Key::Char('y')) => match &self.trace_id {
                Some(id) => {
                    self.notice = Some(format!(
                        "correlation id {id}: copied, and printed when you quit"
                    ));
                    Action::Copy(id.clone())
                }
                None => Action::None,
            },
            (View::Trace, Key::Esc | Key::Backspace) => {
                self.view = Some(View::Conversation);
                Action::None
            }
            _ => Action::None,
        }
    }

    /// Scrolls the log view `by` lines back (negative: forward); back at
    /// the newest line it follows the log again.
    fn scroll_log(&mut self, by: isize) -> Action {
        let last = self.log.shown().len().saturating_sub(1) as isize;
        self.log.back = (self.log.back as isize + by).clamp(0, last.max(0)) as usize;
        Action::None
    }

    fn step(&mut self, by: isize) -> Action {
        let last = self.conversations.len().saturating_sub(1) as isize;
        self.selected = (self.selected as isize + by).clamp(0, last.max(0)) as usize;
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_typing_and_filters() {
        let mut s = State::default();
        assert_eq!(s.on_key(Key::Char('/')), Action::None);
        for c in "invoice".chars() {
            s.on_key(Key::Char(c));
        }
        s.on_key(Key::Backspace);
        assert_eq!(s.on_key(Key::Enter), Action::Reload);
        assert_eq!(s.search.as_deref(), Some("invoic"));
        assert_eq!(s.on_key(Key::Char('c')), Action::Reload);
        assert_eq!(s.channel, Some(Channel::Whatsapp));
        assert_eq!(s.on_key(Key::Esc), Action::Reload);
        assert_eq!((s.search.clone(), s.channel), (None, None));
        assert_eq!(s.on_key(Key::Char('q')), Action::Quit);
    }

    #[test]
    fn conversations_are_unread_until_opened() {
        use convagent::core::ConversationSummary;
        let c = |id, at| ConversationOverview {
            summary: ConversationSummary {
                id,
                channel: Channel::Cli,
                sender: "me".into(),
                thread: String::new(),
                message_count: 1,
                started_at: 0,
                last_activity_at: at,
                closed: false,
                display_name: None,
                mode: Default::default(),
                mode_at: None,
                mode_by: None,
            },
            last_text: String::new(),
            pending: 0,
            failed: 0,
        };
        let mut s = State {
            session_start: 100,
            conversations: vec![c(1, 150), c(2, 50)],
            ..State::default()
        };
        assert!(s.unread(&s.conversations[0].clone()));
        assert!(
            !s.unread(&s.conversations[1].clone()),
            "older than the session"
        );
        s.on_key(Key::Enter);
        s.mark_seen();
        assert!(!s.unread(&s.conversations[0].clone()));
        s.conversations[0].summary.last_activity_at = 200;
        assert!(s.unread(&s.conversations[0].clone()), "new activity since");
    }

    #[test]
    fn help_closes_on_any_key_and_enter_needs_a_conversation() {
        let mut s = State::default();
        s.on_key(Key::Char('?'));
        assert!(s.help);
        assert_eq!(
            s.on_key(Key::Char('q')),
            Action::None,
            "the key closes help only"
        );
        assert!(!s.help);
        assert_eq!(s.on_key(Key::Enter), Action::None, "nothing to open");
        assert_eq!(s.view(), View::Conversations);
    }

    fn overview(id: i64, mode: Mode, pending: u64) -> ConversationOverview {
        use convagent::core::ConversationSummary;
        ConversationOverview {
            summary: ConversationSummary {
                id,
                channel: Channel::Telegram,
                sender: format!("s{id}"),
                thread: String::new(),
                message_count: 1,
                started_at: 0,
                last_activity_at: 0,
                closed: false,
                display_name: None,
                mode,
                mode_at: None,
                mode_by: None,
            },
            last_text: String::new(),
            pending,
            failed: 0,
        }
    }

    #[test]
    fn waiting_for_a_person_comes_first_and_the_cursor_stays_put() {
        let mut s = State::default();
        s.arrange(
            vec![
                overview(1, Mode::Agent, 1),
                overview(2, Mode::Human, 0),
                overview(3, Mode::Human, 2),
            ],
            None,
        );
        let ids = |s: &State| {
            s.conversations
                .iter()
                .map(|c| c.summary.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&s),
            [3, 1, 2],
            "only a taken-over conversation with messages waits"
        );
        assert_eq!(s.waiting(), 1);
        s.selected = 1;
        s.arrange(
            vec![
                overview(4, Mode::Human, 1),
                overview(1, Mode::Agent, 0),
                overview(3, Mode::Human, 2),
            ],
            Some(1),
        );
        assert_eq!(ids(&s), [4, 3, 1]);
        assert_eq!(
            s.current().unwrap().summary.id,
            1,
            "still on conversation 1"
        );
    }

    #[test]
    fn h_toggles_the_takeover_and_r_composes_a_reply() {
        let mut s = State::default();
        s.arrange(vec![overview(7, Mode::Agent, 1)], None);
        assert_eq!(
            s.on_key(Key::Char('h')),
            Action::Operate(Operation::Hand {
                conversation: 7,
                mode: Mode::Human
            })
        );
        s.conversations[0].summary.mode = Mode::Human;
        assert_eq!(
            s.on_key(Key::Char('h')),
            Action::Operate(Operation::Hand {
                conversation: 7,
                mode: Mode::Agent
            })
        );
        assert_eq!(s.on_key(Key::Char('r')), Action::None);
        for c in "on it q".chars() {
            assert_eq!(s.on_key(Key::Char(c)), Action::None, "q is text here");
        }
        s.on_key(Key::Backspace);
        s.on_key(Key::Backspace);
        assert_eq!(
            s.on_key(Key::Enter),
            Action::Operate(Operation::Reply {
                conversation: 7,
                text: "on it".into()
            })
        );
        assert!(s.compose.is_none());
        s.on_key(Key::Char('r'));
        s.on_key(Key::Char(' '));
        assert_eq!(
            s.on_key(Key::Enter),
            Action::None,
            "an empty reply is not sent"
        );
        assert!(s.notice.as_deref().unwrap().contains("empty"));
        s.on_key(Key::Char('r'));
        s.on_key(Key::Char('x'));
        assert_eq!(s.on_key(Key::Esc), Action::None);
        assert!(s.compose.is_none(), "Esc drops the draft");
        let mut empty = State::default();
        assert_eq!(
            empty.on_key(Key::Char('h')),
            Action::None,
            "no conversation"
        );
        assert_eq!(empty.on_key(Key::Char('r')), Action::None);
        assert!(empty.compose.is_none());
    }

    #[test]
    fn the_log_view_opens_on_what_was_selected_and_filters() {
        let line = |level: &str, text: &str, id: &str| {
            LogLine::parse(&format!(
                r#"{{"timestamp":"2026-12-04T10:00:00Z","level":"{level}","fields":{{"message":"{text}","correlation_id":"{id}"}}}}"#
            ))
        };
        let mut s = State::default();
        s.arrange(vec![overview(7, Mode::Agent, 0)], None);
        s.log.lines = [
            line("INFO", "ours", "c7"),
            line("DEBUG", "ours, verbose", "c7"),
            line("WARN", "theirs", "c8"),
        ]
        .into();
        s.on_key(Key::Enter);
        assert_eq!(s.on_key(Key::Char('l')), Action::Reload);
        assert_eq!(s.view(), View::Log);
        assert_eq!(s.log.scope, LogScope::Conversation(7));
        s.log.ids = vec!["c7".into()];
        let shown = |s: &State| {
            s.log
                .shown()
                .iter()
                .map(|l| l.message.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(shown(&s), ["ours"]);
        s.on_key(Key::Char('v'));
        assert_eq!(shown(&s), ["ours", "ours, verbose"], "debug shown");
        s.on_key(Key::Char('f'));
        assert_eq!(shown(&s), ["ours", "ours, verbose", "theirs"], "everything");
        s.on_key(Key::Up);
        assert_eq!(s.log.back, 1);
        s.on_key(Key::PageUp);
        assert_eq!(s.log.back, 2, "no further back than the oldest line");
        assert_eq!(s.on_key(Key::Esc), Action::Reload);
        assert_eq!(s.view(), View::Conversation, "back where it was opened");
        s.on_key(Key::Esc);
        s.on_key(Key::Char('l'));
        assert_eq!(s.log.scope, LogScope::All, "from the list: everything");
        assert_eq!(s.on_key(Key::Char('f')), Action::None);
        assert!(!s.log.scoped);
    }
}
