//! Who answers a conversation: the agent (the default), or a person who
//! took it over. In `human` mode the agent is silent: the person's messages
//! are stored and wait for an operator's reply; the mode ends on release,
//! or by itself `[handoff] resume_after_secs` after it began or the
//! operator last replied. The person can ask for a person (`/human`, or a
//! phrase of `[handoff] triggers`) and is told one will answer.

use serde::{Deserialize, Serialize};

/// The provider recorded with the notice a person gets on asking for one.
pub const NOTICE_PROVIDER: &str = "handoff";
/// The provider recorded with the answer to `/reset`, `/stop`, `/start`
/// and `/help` (the command is the model).
pub const COMMAND_PROVIDER: &str = "command";

/// What a person can ask of convagent itself, in any chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `/human` or a trigger phrase: a person should answer.
    Human,
    /// `/reset`: start a new conversation.
    Reset,
    /// `/stop`: send me nothing more.
    Stop,
    /// `/start`: send me messages again.
    Start,
    /// `/help`: what can I ask?
    Help,
    /// `/link` (a code to join another chat to this person), or `/link
    /// CODE` from the other chat.
    Link,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Human => "human",
            Command::Reset => "reset",
            Command::Stop => "stop",
            Command::Start => "start",
            Command::Help => "help",
            Command::Link => "link",
        }
    }
}
/// Who is recorded as ending a takeover that ran out.
pub const AUTO_RESUME: &str = "auto-resume";
/// Who is recorded as asking for a person through the chat.
pub const ASKED_BY_PERSON: &str = "the person";

/// Who answers a conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The agent answers.
    #[default]
    Agent,
    /// A person answers; the agent is silent.
    Human,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Agent => "agent",
            Mode::Human => "human",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "agent" => Some(Mode::Agent),
            "human" => Some(Mode::Human),
            _ => None,
        }
    }
}

/// A change of who answers a conversation (`Write::Handoff`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub conversation_id: i64,
    pub mode: Mode,
    /// The operator's name, [`ASKED_BY_PERSON`] or [`AUTO_RESUME`].
    pub by: String,
    /// Unix ms.
    pub at: i64,
}

impl Handoff {
    /// Its trace event: the stage `handoff`, under a correlation id of its
    /// own, saying the mode, who and the conversation.
    pub fn trace(&self) -> super::trace::TraceEvent {
        super::trace::TraceEvent {
            correlation_id: super::message::CorrelationId::generate().0,
            stage: super::trace::Stage::Handoff,
            attempt: None,
            started_at: self.at,
            duration_us: 0,
            outcome: super::trace::Outcome::Ok,
            detail: Some(format!(
                "{}, by {} (conversation {})",
                self.mode.as_str(),
                self.by,
                self.conversation_id
            )),
        }
    }
}

/// `[handoff]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffConfig {
    /// A takeover ends by itself this long after it began or the operator
    /// last replied.
    pub resume_after_secs: u64,
    /// Phrases that ask for a person, matched as whole words, in any case.
    pub triggers: Vec<String>,
    /// What the person is told when the conversation goes to a person.
    pub notice: String,
    /// The answer to `/reset` (the next message starts a new conversation).
    pub reset_notice: String,
    /// The answer to `/stop`, the last message they get until `/start`.
    pub stop_notice: String,
    /// The answer to `/start`.
    pub start_notice: String,
    /// The answer to `/help`.
    pub help: String,
    /// Receives a JSON POST when a conversation starts waiting for a person
    /// or a tool call for an approval (ids, channel and tool only; masked
    /// in logs, as it may hold a token).
    pub notify_url: Option<String>,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            resume_after_secs: 30 * 60,
            triggers: [
                "talk to a human",
                "speak to a human",
                "talk to a person",
                "speak to a person",
                "real person",
                "human agent",
                "hablar con una persona",
                "persona real",
                "parler à un humain",
                "vraie personne",
                "mit einem menschen sprechen",
                "echter mensch",
            ]
            .map(String::from)
            .to_vec(),
            notice: "A person will answer here soon.".into(),
            reset_notice: "Starting over: I have set our earlier conversation aside.".into(),
            stop_notice:
                "You will get no more messages from us here. Send /start to get them again.".into(),
            start_notice: "Welcome back: you will get messages here again.".into(),
            help: "Ask me anything. /human: a person answers you. /reset: start over. /stop: no \
                   more messages from us. /start: messages again. /link: use me from another \
                   chat too. /help: this."
                .into(),
            notify_url: None,
        }
    }
}

/// Twilio's opt-out keywords (SMS and WhatsApp), matched as the whole
/// message, case-insensitively: Twilio answers them itself, and blocks or
/// unblocks the number; the daemon records what they mean.
pub const TWILIO_STOP_WORDS: [&str; 8] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPTOUT",
    "REVOKE",
];
/// Twilio's opt-in keywords (see [`TWILIO_STOP_WORDS`]).
pub const TWILIO_START_WORDS: [&str; 3] = ["START", "YES", "UNSTOP"];

/// A Twilio opt-out keyword (`OptOutType`, else the keyword lists) as the
/// command it means: `Stop`, or `Start`. Other channels have none.
pub fn provider_keyword(message: &crate::core::message::InboundMessage) -> Option<Command> {
    use crate::core::message::Channel;
    if !matches!(message.key.channel, Channel::Whatsapp | Channel::Sms) {
        return None;
    }
    match message
        .metadata
        .get("OptOutType")
        .map(|t| t.to_ascii_uppercase())
    {
        Some(t) if t == "STOP" => return Some(Command::Stop),
        Some(t) if t == "START" => return Some(Command::Start),
        _ => {}
    }
    let word = message.text.trim().trim_end_matches(['.', '!']);
    let is = |words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(word));
    if is(&TWILIO_STOP_WORDS) {
        Some(Command::Stop)
    } else if is(&TWILIO_START_WORDS) {
        Some(Command::Start)
    } else {
        None
    }
}

impl HandoffConfig {
    /// The command `text` is: `/human`, `/reset`, `/stop`, `/start`,
    /// `/help` as its first word (Telegram may add `@botname`), or a
    /// trigger phrase asking for a person.
    pub fn command(&self, text: &str) -> Option<Command> {
        let text = text.trim();
        let first = text.split_whitespace().next().unwrap_or_default();
        let command = match first.split('@').next().unwrap_or_default() {
            "/human" => Some(Command::Human),
            "/reset" => Some(Command::Reset),
            "/stop" => Some(Command::Stop),
            "/start" => Some(Command::Start),
            "/help" => Some(Command::Help),
            "/link" => Some(Command::Link),
            _ => None,
        };
        command.or_else(|| self.asks_for_person(text).then_some(Command::Human))
    }

    /// The answer to `command`.
    pub fn answer(&self, command: Command) -> &str {
        match command {
            Command::Human => &self.notice,
            Command::Reset => &self.reset_notice,
            Command::Stop => &self.stop_notice,
            Command::Start => &self.start_notice,
            Command::Help | Command::Link => &self.help,
        }
    }

    /// Whether `text` asks for a person: the `/human` command (Telegram
    /// may add `@botname`), or a trigger phrase as whole words.
    pub fn asks_for_person(&self, text: &str) -> bool {
        let text = text.trim();
        let command = text.split_whitespace().next().unwrap_or_default();
        if command.split('@').next() == Some("/human") {
            return true;
        }
        let words = words_of(text);
        self.triggers.iter().any(|t| {
            let phrase = words_of(t);
            !phrase.is_empty() && words.windows(phrase.len()).any(|w| w == phrase.as_slice())
        })
    }

    /// When a takeover that began or was last replied in at `since` ends.
    pub fn resumes_at(&self, since: i64) -> i64 {
        let after = i64::try_from(self.resume_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        since.saturating_add(after)
    }
}

/// The words of `text`, lowercased, without punctuation.
fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_keywords_are_whole_messages_on_twilio_channels_only() {
        use crate::core::message::{Channel, ConversationKey, CorrelationId, InboundMessage};
        let on = |channel, text: &str, opt_out_type: Option<&str>| {
            let mut m = InboundMessage {
                key: ConversationKey::new(channel, "+1555", "+1555"),
                text: text.into(),
                provider_message_id: "m".into(),
                provider_ts: None,
                received_at: 0,
                attachments: vec![],
                metadata: Default::default(),
                correlation_id: CorrelationId("c".into()),
            };
            if let Some(t) = opt_out_type {
                m.metadata.insert("OptOutType".into(), t.into());
            }
            provider_keyword(&m)
        };
        assert_eq!(on(Channel::Whatsapp, " Stop. ", None), Some(Command::Stop));
        assert_eq!(on(Channel::Sms, "unsubscribe", None), Some(Command::Stop));
        assert_eq!(on(Channel::Sms, "yes", None), Some(Command::Start));
        assert_eq!(
            on(Channel::Sms, "please stop", None),
            None,
            "whole message only"
        );
        assert_eq!(on(Channel::Telegram, "STOP", None), None, "Twilio's only");
        assert_eq!(
            on(Channel::Sms, "arrêt", Some("STOP")),
            Some(Command::Stop),
            "as Twilio says"
        );
    }

    #[test]
    fn a_person_is_asked_for_by_command_or_whole_phrase_in_any_case() {
        let c = HandoffConfig::default();
        assert!(c.asks_for_person("/human"));
        assert!(c.asks_for_person("/human@convagent_bot please"));
        assert!(c.asks_for_person("I want to talk to a REAL person!"));
        assert!(c.asks_for_person("¿Puedo hablar con una persona?"));
        assert!(c.asks_for_person("Je veux parler à un humain"));
        assert!(!c.asks_for_person("is this surreal personality test real?"));
        assert!(!c.asks_for_person("/humans are great"));
        assert!(!c.asks_for_person("human"));
        assert_eq!(c.resumes_at(1_000), 1_000 + 1_800_000);
        assert_eq!(c.command("/stop"), Some(Command::Stop));
        assert_eq!(c.command("/start@convagent_bot"), Some(Command::Start));
        assert_eq!(c.command("/reset please"), Some(Command::Reset));
        assert_eq!(c.command("/help"), Some(Command::Help));
        assert_eq!(c.command("a real person please"), Some(Command::Human));
        assert_eq!(c.command("stop it"), None);
        assert_eq!(c.command("/stopwatch"), None);
    }
}
