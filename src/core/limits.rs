//! Limits and caps, checked before the LLM is called: messages per minute
//! per sender (per channel configurable), tokens per day per sender, and
//! tokens per day for everyone. A sender over a limit gets one polite
//! notice per conversation and window; the messages over it are stored,
//! recorded as violations of the limit's rule and answered by that notice
//! (never by the LLM). Counts come from the store, so several daemons on
//! one store count together.
//!
//! This module is the arithmetic; the agent asks the store for a
//! [`UsageQuery`] and applies the [`Verdict`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::message::Channel;
use super::ports::Pending;

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

pub const DEFAULT_MESSAGES_PER_MINUTE: u32 = 10;

pub const DEFAULT_NOTICE: &str = "You're sending messages faster than I can answer them. \
     Please wait a minute; I'll read what you send after that.";

pub const DEFAULT_TOKENS_NOTICE: &str = "I've reached my limit for today, so I can't answer \
     this now. Please try again tomorrow.";

/// The name a provider of notices is stored under (`messages.provider`);
/// the rule goes in `model`, as a guardrail's does.
pub const NOTICE_PROVIDER: &str = "limit";

/// A limit a message can be over; its name is recorded with each violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    MessagesPerMinute,
    SenderTokensPerDay,
    TokensPerDay,
}

impl Rule {
    pub const ALL: [Rule; 3] = [
        Rule::MessagesPerMinute,
        Rule::SenderTokensPerDay,
        Rule::TokensPerDay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MessagesPerMinute => "messages_per_minute",
            Rule::SenderTokensPerDay => "sender_tokens_per_day",
            Rule::TokensPerDay => "tokens_per_day",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// When the window that `now` falls in began: a sliding minute, or the
    /// UTC day.
    pub fn window_start(self, now: i64) -> i64 {
        match self {
            Rule::MessagesPerMinute => now - MINUTE_MS,
            Rule::SenderTokensPerDay | Rule::TokensPerDay => now.div_euclid(DAY_MS) * DAY_MS,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[limits]` section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Messages one sender may send in any minute; 0: no limit.
    pub messages_per_minute: u32,
    /// The same, for the channels that differ (`sms = 3`).
    pub channel_messages_per_minute: BTreeMap<Channel, u32>,
    /// Tokens (prompt and completion) one sender's replies may use in a UTC
    /// day; `None`: no cap.
    pub sender_tokens_per_day: Option<u64>,
    /// Tokens every reply together may use in a UTC day; `None`: no cap.
    pub tokens_per_day: Option<u64>,
    /// The notice for messages per minute.
    pub notice: String,
    /// The notice for both daily token caps.
    pub tokens_notice: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            messages_per_minute: DEFAULT_MESSAGES_PER_MINUTE,
            channel_messages_per_minute: BTreeMap::new(),
            sender_tokens_per_day: None,
            tokens_per_day: None,
            notice: DEFAULT_NOTICE.into(),
            tokens_notice: DEFAULT_TOKENS_NOTICE.into(),
        }
    }
}

impl Limits {
    /// No limit at all.
    pub fn none() -> Limits {
        Limits {
            messages_per_minute: 0,
            ..Limits::default()
        }
    }

    pub fn messages_per_minute(&self, channel: Channel) -> u32 {
        self.channel_messages_per_minute
            .get(&channel)
            .copied()
            .unwrap_or(self.messages_per_minute)
    }

    /// What the store must count for `turn` (one conversation's messages in
    /// order), or `None` when no limit applies to it. The terminal (`chat`)
    /// is the operator's own and is never limited.
    pub fn query(&self, turn: &[Pending]) -> Option<UsageQuery> {
        let first = turn.first()?;
        let channel = first.message.key.channel;
        if channel == Channel::Cli {
            return None;
        }
        let per_minute = self.messages_per_minute(channel);
        let capped = self.sender_tokens_per_day.is_some() || self.tokens_per_day.is_some();
        if per_minute == 0 && !capped {
            return None;
        }
        let last = turn.last()?;
        Some(UsageQuery {
            channel,
            sender: first.message.key.sender.clone(),
            conversation_id: first.conversation_id,
            messages: turn
                .iter()
                .map(|p| (p.message_id, p.message.received_at))
                .collect(),
            count_at_most: if per_minute == 0 { 0 } else { per_minute + 1 },
            day: capped.then(|| last.message.received_at.div_euclid(DAY_MS)),
        })
    }

    /// What to do with a turn of `len` messages given the store's `usage`
    /// of [`Limits::query`], at `now`.
    pub fn verdict(&self, channel: Channel, len: usize, usage: &Usage, now: i64) -> Verdict {
        let over = |cap: Option<u64>, used: u64| cap.is_some_and(|cap| used >= cap);
        let rule = if over(self.tokens_per_day, usage.all_tokens) {
            Some((Rule::TokensPerDay, len))
        } else if over(self.sender_tokens_per_day, usage.sender_tokens) {
            Some((Rule::SenderTokensPerDay, len))
        } else {
            let per_minute = self.messages_per_minute(channel);
            let over =
                |i: usize| per_minute > 0 && usage.recent.get(i).is_some_and(|&n| n > per_minute);
            let first_over = (0..len).find(|&i| over(i)).unwrap_or(len);
            if first_over > 0 {
                return Verdict::Answer(first_over);
            }
            let held = (0..len).take_while(|&i| over(i)).count();
            Some((Rule::MessagesPerMinute, held))
        };
        let Some((rule, count)) = rule else {
            return Verdict::Answer(len);
        };
        let notice = usage
            .last_notice
            .as_ref()
            .filter(|n| n.rule == rule.as_str() && n.at >= rule.window_start(now))
            .map(|n| n.reply_id);
        Verdict::Hold {
            count,
            rule,
            notice,
        }
    }

    pub fn notice(&self, rule: Rule) -> &str {
        match rule {
            Rule::MessagesPerMinute => &self.notice,
            Rule::SenderTokensPerDay | Rule::TokensPerDay => &self.tokens_notice,
        }
    }
}

/// What the store counts for one turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub channel: Channel,
    /// As stored (`conversations.sender`).
    pub sender: String,
    pub conversation_id: i64,
    /// The turn's messages, `(id, received_at)`, in order.
    pub messages: Vec<(i64, i64)>,
    /// For each message, count the sender's messages (every conversation
    /// of theirs on the channel) in the minute up to it, that one included,
    /// up to this many; 0: do not count.
    pub count_at_most: u32,
    /// The UTC day (unix ms / [`DAY_MS`]) whose tokens to add up, when a
    /// token cap is set.
    pub day: Option<i64>,
}

impl UsageQuery {
    /// For each message of the query, the sender's messages among `sent`
    /// (`(id, received_at)`, the reads a store made) in the minute up to
    /// it, that one included, up to `count_at_most`: `Usage::recent`.
    pub fn recent_counts(&self, sent: &[(i64, i64)]) -> Vec<u32> {
        self.messages
            .iter()
            .map(|&(id, at)| {
                let n = sent
                    .iter()
                    .filter(|&&(other, sent_at)| other <= id && sent_at > at - MINUTE_MS)
                    .count();
                u32::try_from(n).unwrap_or(u32::MAX).min(self.count_at_most)
            })
            .collect()
    }
}

/// What the store counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Per message of the query (empty when not counted).
    pub recent: Vec<u32>,
    /// Tokens of the sender's replies that day.
    pub sender_tokens: u64,
    /// Tokens of every reply that day.
    pub all_tokens: u64,
    /// The conversation's newest limit notice.
    pub last_notice: Option<Notice>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub reply_id: i64,
    pub rule: String,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer the turn's first `n` messages (all of them: no limit reached);
    /// the rest wait for the next round.
    Answer(usize),
    /// Hold back the turn's first `count` messages: the sender is over
    /// `rule`. `notice`: the reply that already told them so in this window
    /// (no second one); `None`: send the notice now.
    Hold {
        count: usize,
        rule: Rule,
        notice: Option<i64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn usage(recent: &[u32]) -> Usage {
        Usage {
            recent: recent.to_vec(),
            ..Usage::default()
        }
    }

    #[test]
    fn under_every_limit_the_whole_turn_is_answered() {
        let limits = Limits::default();
        assert_eq!(
            limits.verdict(Channel::Telegram, 3, &usage(&[8, 9, 10]), NOW),
            Verdict::Answer(3)
        );
    }

    #[test]
    fn messages_over_the_limit_wait_behind_those_under_it() {
        let limits = Limits::default();
        assert_eq!(
            limits.verdict(Channel::Telegram, 3, &usage(&[9, 10, 11]), NOW),
            Verdict::Answer(2)
        );
        assert_eq!(
            limits.verdict(Channel::Telegram, 3, &usage(&[11, 11, 10]), NOW),
            Verdict::Hold {
                count: 2,
                rule: Rule::MessagesPerMinute,
                notice: None
            }
        );
    }

    #[test]
    fn a_notice_is_not_repeated_within_its_window() {
        let limits = Limits::default();
        let mut u = usage(&[12]);
        u.last_notice = Some(Notice {
            reply_id: 7,
            rule: "messages_per_minute".into(),
            at: NOW - 30_000,
        });
        let hold = |u: &Usage| limits.verdict(Channel::Sms, 1, u, NOW);
        assert_eq!(
            hold(&u),
            Verdict::Hold {
                count: 1,
                rule: Rule::MessagesPerMinute,
                notice: Some(7)
            }
        );
        u.last_notice.as_mut().unwrap().at = NOW - MINUTE_MS - 1;
        assert!(matches!(hold(&u), Verdict::Hold { notice: None, .. }));
        // A notice for another rule does not count.
        u.last_notice = Some(Notice {
            reply_id: 7,
            rule: "tokens_per_day".into(),
            at: NOW,
        });
        assert!(matches!(hold(&u), Verdict::Hold { notice: None, .. }));
    }

    #[test]
    fn token_caps_hold_the_whole_turn_until_the_day_is_over() {
        let limits = Limits {
            sender_tokens_per_day: Some(1_000),
            tokens_per_day: Some(50_000),
            ..Limits::default()
        };
        let mut u = usage(&[1, 2]);
        u.sender_tokens = 999;
        assert_eq!(
            limits.verdict(Channel::Slack, 2, &u, NOW),
            Verdict::Answer(2)
        );
        u.sender_tokens = 1_000;
        assert_eq!(
            limits.verdict(Channel::Slack, 2, &u, NOW),
            Verdict::Hold {
                count: 2,
                rule: Rule::SenderTokensPerDay,
                notice: None
            }
        );
        u.all_tokens = 50_000;
        let day_start = Rule::TokensPerDay.window_start(NOW);
        u.last_notice = Some(Notice {
            reply_id: 3,
            rule: "tokens_per_day".into(),
            at: day_start,
        });
        assert_eq!(
            limits.verdict(Channel::Slack, 2, &u, NOW),
            Verdict::Hold {
                count: 2,
                rule: Rule::TokensPerDay,
                notice: Some(3)
            }
        );
        u.last_notice.as_mut().unwrap().at = day_start - 1;
        assert!(matches!(
            limits.verdict(Channel::Slack, 2, &u, NOW),
            Verdict::Hold { notice: None, .. }
        ));
    }

    #[test]
    fn a_channel_can_have_its_own_rate_and_zero_turns_it_off() {
        let mut limits = Limits::default();
        limits.channel_messages_per_minute.insert(Channel::Sms, 2);
        limits.channel_messages_per_minute.insert(Channel::Slack, 0);
        assert!(matches!(
            limits.verdict(Channel::Sms, 1, &usage(&[3]), NOW),
            Verdict::Hold { .. }
        ));
        assert_eq!(
            limits.verdict(Channel::Telegram, 1, &usage(&[3]), NOW),
            Verdict::Answer(1)
        );
        assert_eq!(
            limits.verdict(Channel::Slack, 1, &usage(&[500]), NOW),
            Verdict::Answer(1)
        );
    }

    #[test]
    fn rule_names_read_back() {
        for rule in Rule::ALL {
            assert_eq!(Rule::parse(rule.as_str()), Some(rule));
        }
        assert_eq!(Rule::parse("credential_request"), None);
    }
}
