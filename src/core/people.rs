//! People: one person owns one or more sender identities (a channel and a
//! sender id). A sender's first conversation makes their person (the
//! store's doing); identities are joined by an operator (`convagent people
//! link`) or by the person: `/link` on one channel gives a short code, and
//! `/link CODE` sent from another channel within ten minutes joins both.
//! Codes are single-use; asking for them and failing to redeem them are
//! each limited per identity and hour.

use serde::Serialize;

use super::message::Channel;
use super::ports::SenderRef;

/// How long a `/link` code may be redeemed.
pub const CODE_LIFETIME_MS: i64 = 10 * 60 * 1000;
/// Codes one identity may ask for per hour.
pub const CODES_PER_HOUR: i64 = 5;
/// Wrong codes one identity may send per hour (six digits: guessing one
/// takes about 200,000 hours at this rate).
pub const FAILURES_PER_HOUR: i64 = 5;
/// The digits of a code.
pub const CODE_DIGITS: usize = 6;

/// One sender identity of a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub channel: Channel,
    pub sender: String,
    /// Since when it belongs to this person.
    pub since: i64,
}

impl Identity {
    pub fn sender_ref(&self) -> SenderRef {
        SenderRef {
            channel: self.channel,
            id: self.sender.clone(),
        }
    }
}

/// A person and the identities they own (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    pub id: i64,
    pub created_at: i64,
    pub identities: Vec<Identity>,
}

impl Person {
    /// `telegram:42, whatsapp:whatsapp:+1555…`, for people reading.
    pub fn describe(&self) -> String {
        self.identities
            .iter()
            .map(|i| format!("{}:{}", i.channel, i.sender))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The channels this person is known on, deduplicated, in order.
    pub fn channels(&self) -> Vec<Channel> {
        let mut channels: Vec<Channel> = Vec::new();
        for i in &self.identities {
            if !channels.contains(&i.channel) {
                channels.push(i.channel);
            }
        }
        channels
    }
}

/// A stored `/link` code, as a redeem finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCode {
    /// The identity it was made for (its sender as stored).
    pub channel: String,
    pub sender: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// Why `code` (`None`: not known) cannot be redeemed at `at` by the
/// identity (`channel`, stored `sender`); `None` when it can.
pub fn refusal(
    code: Option<&StoredCode>,
    channel: &str,
    sender: &str,
    at: i64,
) -> Option<&'static str> {
    match code {
        None => Some("that code is not known: check it, or ask for a new one with /link"),
        Some(c) if c.used_at.is_some() => {
            Some("that code was used already: ask for a new one with /link")
        }
        Some(c) if c.expires_at < at => {
            Some("that code ran out (codes last 10 minutes): ask for a new one with /link")
        }
        Some(c) if c.channel == channel && c.sender == sender => {
            Some("send the code from your other chat, not from this one")
        }
        Some(_) => None,
    }
}

/// A fresh code: `CODE_DIGITS` random digits.
pub fn new_code() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    format!(
        "{:0width$}",
        n % 10u128.pow(CODE_DIGITS as u32),
        width = CODE_DIGITS
    )
}

/// Reads a code as a person types it (`482 913`, `482-913`): its digits,
/// when there are exactly `CODE_DIGITS` of them and nothing else.
pub fn parse_code(text: &str) -> Option<String> {
    let kept: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    (kept.len() == CODE_DIGITS && kept.chars().all(|c| c.is_ascii_digit())).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_read_leniently() {
        for _ in 0..100 {
            let code = new_code();
            assert_eq!(parse_code(&code), Some(code.clone()));
        }
        assert_eq!(parse_code(" 482-913 "), Some("482913".into()));
        assert_eq!(parse_code("48291"), None);
        assert_eq!(parse_code("48291a"), None);
        assert_eq!(parse_code("4829134"), None);
    }
}
