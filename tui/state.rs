//! The TUI's state and what keys do to it — no terminal code here, so the
//! behaviour is testable and `draw` only reads.

use std::collections::HashMap;

use convagent::core::{
    ActivityBucket, Breaker, Channel, ConversationOverview, OutboxStats, ProviderActivity,
    StoredMessage, TraceEvent,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Conversations,
    Conversation,
    Trace,
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
}

#[derive(Debug, Clone, Default)]
pub struct State {
    pub now_ms: i64,
    pub view: Option<View>,
    pub help: bool,
    /// Text typed after `/`, while searching.
    pub typing: Option<String>,
    pub search: Option<String>,
    pub channel: Option<Channel>,
    pub conversations: Vec<ConversationOverview>,
    pub selected: usize,
    pub messages: Vec<StoredMessage>,
    pub message: usize,
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

    /// Keeps the cursors inside the lists after a reload.
    pub fn clamp(&mut self) {
        self.selected = self
            .selected
            .min(self.conversations.len().saturating_sub(1));
        self.message = self.message.min(self.messages.len().saturating_sub(1));
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
}
