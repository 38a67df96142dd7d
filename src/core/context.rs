//! The context builder (SPEC.md pipeline step 5): the system prompt plus the
//! most recent turns that fit the token budget, oldest dropped first, with
//! room kept for the reply.

use super::llm::ChatMessage;
use super::message::{Role, Turn};
use super::ports::{Store, StoreError};

/// Tokens a chat template spends around each message (role markers, separators).
pub const MESSAGE_OVERHEAD_TOKENS: usize = 4;

/// A conservative token estimate that needs no tokenizer: one token per
/// three bytes of text plus the per-message overhead. Real BPE vocabularies
/// average about four bytes per token on English text, so the estimate
/// errs towards dropping a turn rather than overflowing the model's window.
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(3) + MESSAGE_OVERHEAD_TOKENS
}

/// The most turns that can possibly fit in `budget` tokens: each costs at
/// least the overhead. The store reads no more than this, so the cost of
/// building a context is bounded whatever the conversation's length.
pub fn max_turns_for(budget: usize) -> usize {
    (budget / MESSAGE_OVERHEAD_TOKENS).max(1)
}

/// Turns read from the store per query while gathering a context.
pub const PAGE_TURNS: usize = 64;

/// Reads the newest turns of a conversation up to `up_to_message_id`, page
/// by page, up to and including the one that takes them over what `budget`
/// tokens can hold (or [`max_turns_for`] of them). The cost depends on the
/// budget, never on how long the conversation is. Oldest first.
pub fn gather(
    store: &dyn Store,
    conversation_id: i64,
    up_to_message_id: i64,
    budget: usize,
) -> Result<Vec<Turn>, StoreError> {
    let max_turns = max_turns_for(budget);
    let mut newest_first: Vec<Turn> = Vec::new();
    let mut tokens = 0;
    let mut cursor = up_to_message_id;
    'pages: loop {
        let page = store.recent_turns(conversation_id, cursor, PAGE_TURNS)?;
        let exhausted = page.len() < PAGE_TURNS;
        let Some(oldest) = page.first().map(|t| t.message_id) else {
            break;
        };
        for turn in page.into_iter().rev() {
            tokens += estimate_tokens(&turn.text);
            newest_first.push(turn);
            if tokens > budget || newest_first.len() >= max_turns {
                break 'pages;
            }
        }
        if exhausted {
            break;
        }
        cursor = oldest - 1;
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Conversations whose newest turns a [`TurnCache`] keeps: more than the
/// conversations a busy daemon answers at once, so that each finds its
/// turns still cached when its next message comes.
pub const CACHED_CONVERSATIONS: usize = 4096;
/// Text a [`TurnCache`] holds at most, all conversations together; the
/// conversations answered longest ago go first.
pub const CACHED_TEXT_BYTES: usize = 16 << 20;

/// The turns [`gather`] last returned for recently answered conversations,
/// so that the next turn of one reads only what was stored since (usually
/// the new message and the previous reply) instead of a budget's worth of
/// turns. An entry is used only while the conversation's message count says
/// that nothing it holds was deleted and nothing appeared behind it;
/// otherwise the turns are read again.
#[derive(Default)]
pub struct TurnCache {
    inner: std::sync::Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_conversation: std::collections::HashMap<i64, Cached>,
    /// Text bytes of all entries.
    bytes: usize,
    uses: u64,
}

struct Cached {
    /// What `gather` returns, oldest first.
    turns: std::collections::VecDeque<Turn>,
    tokens: usize,
    budget: usize,
    /// The newest message the entry has seen (a turn or not).
    newest: i64,
    /// Messages of the conversation up to and including `newest`.
    count: i64,
    used: u64,
}

impl TurnCache {
    /// [`gather`], from the cache when it can be.
    pub fn gather(
        &self,
        store: &dyn Store,
        conversation_id: i64,
        up_to_message_id: i64,
        budget: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let max_turns = max_turns_for(budget);
        let cached = self.take(conversation_id);
        let usable = |e: &Cached| e.budget == budget && e.newest <= up_to_message_id;
        if let Some(mut entry) = cached.filter(usable) {
            let after = store.turns_after(conversation_id, entry.newest, max_turns)?;
            if after.turns.len() < max_turns
                && after.message_count == entry.count + after.turns.len() as i64
            {
                for turn in after.turns {
                    if turn.message_id > up_to_message_id {
                        break;
                    }
                    entry.newest = turn.message_id;
                    entry.count += 1;
                    entry.push(turn, max_turns);
                }
                let turns = entry.turns.iter().cloned().collect();
                self.keep(conversation_id, entry);
                return Ok(turns);
            }
        }
        let turns = gather(store, conversation_id, up_to_message_id, budget)?;
        let newest = turns.last().map_or(0, |t| t.message_id);
        let after = store.turns_after(conversation_id, newest, max_turns)?;
        if after.turns.len() < max_turns {
            let mut entry = Cached {
                turns: std::collections::VecDeque::with_capacity(turns.len()),
                tokens: 0,
                budget,
                newest,
                count: after.message_count - after.turns.len() as i64,
                used: 0,
            };
            for turn in turns.iter().cloned() {
                entry.push(turn, max_turns);
            }
            self.keep(conversation_id, entry);
        }
        Ok(turns)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, conversation_id: i64) -> Option<Cached> {
        let mut entries = self.entries();
        let entry = entries.by_conversation.remove(&conversation_id)?;
        entries.bytes -= entry.bytes();
        Some(entry)
    }

    fn keep(&self, conversation_id: i64, mut entry: Cached) {
        let mut entries = self.entries();
        entries.uses += 1;
        entry.used = entries.uses;
        entries.bytes += entry.bytes();
        entries.by_conversation.insert(conversation_id, entry);
        while entries.by_conversation.len() > CACHED_CONVERSATIONS
            || entries.bytes > CACHED_TEXT_BYTES
        {
            let oldest = entries
                .by_conversation
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(&id, _)| id);
            let Some(gone) = oldest.and_then(|id| entries.by_conversation.remove(&id)) else {
                break;
            };
            entries.bytes -= gone.bytes();
        }
    }

    /// Text bytes held, all conversations together.
    pub fn bytes(&self) -> usize {
        self.entries().bytes
    }
}

impl Cached {
    fn bytes(&self) -> usize {
        self.turns.iter().map(|t| t.text.len()).sum()
    }

    /// Adds the newest turn and drops the oldest ones `gather` would not
    /// have read: it stops at the turn that takes the total over the budget,
    /// or at the most turns the budget can hold.
    fn push(&mut self, turn: Turn, max_turns: usize) {
        self.tokens += estimate_tokens(&turn.text);
        self.turns.push_back(turn);
        while let Some(oldest) = self.turns.front() {
            let without = self.tokens - estimate_tokens(&oldest.text);
            if without <= self.budget && self.turns.len() <= max_turns {
                break;
            }
            self.tokens = without;
            self.turns.pop_front();
        }
    }
}

/// Cuts `text` to at most `max` characters (plus a marker saying so), so
/// that one huge message cannot crowd the rest of the conversation out of
/// the model's view. The stored message keeps all of it.
pub fn cap_chars(text: &mut String, max: usize) {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
        text.push_str(&format!(" […cut at {max} characters]"));
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContextWindow {
    pub messages: Vec<ChatMessage>,
    /// Estimated prompt tokens of `messages`.
    pub estimated_tokens: usize,
    /// Turns left out because they did not fit.
    pub dropped_turns: usize,
}

/// How a stored summary of older turns is introduced to the model.
pub const SUMMARY_PREFIX: &str = "Summary of the earlier conversation:\n";

/// Builds the model's view of a conversation: the system prompt, the
/// summary of older turns if there is one, then the newest turns that fit.
///
/// `turns` are oldest first and end with the message being answered, which
/// is always kept (cut to fit if it alone exceeds the budget). `budget` is
/// the model's whole context; `reply_reserve` of it is kept for the reply.
pub fn build(
    system_prompt: &str,
    summary: Option<&str>,
    turns: &[Turn],
    budget: usize,
    reply_reserve: usize,
) -> ContextWindow {
    let available = budget.saturating_sub(reply_reserve);
    let summary = summary.map(|s| format!("{SUMMARY_PREFIX}{s}"));
    let mut used = estimate_tokens(system_prompt) + summary.as_deref().map_or(0, estimate_tokens);
    let mut kept: Vec<ChatMessage> = Vec::new();

    for (i, turn) in turns.iter().rev().enumerate() {
        let cost = estimate_tokens(&turn.text);
        if used + cost <= available {
            used += cost;
            kept.push(ChatMessage::new(turn.role, turn.text.clone()));
            continue;
        }
        if i == 0 {
            // The message being answered must be in the context even when it
            // is longer than the window: keep as much of its start as fits.
            let room_tokens = available.saturating_sub(used + MESSAGE_OVERHEAD_TOKENS);
            let text = truncate_to_bytes(&turn.text, room_tokens * 3);
            used += estimate_tokens(text);
            kept.push(ChatMessage::new(turn.role, text));
        }
        break;
    }

    let dropped_turns = turns.len() - kept.len();
    if let Some(summary) = summary {
        kept.push(ChatMessage::new(Role::System, summary));
    }
    kept.push(ChatMessage::new(Role::System, system_prompt));
    kept.reverse();
    ContextWindow {
        messages: kept,
        estimated_tokens: used,
        dropped_turns,
    }
}

fn truncate_to_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(id: i64, role: Role, text: &str) -> Turn {
        Turn {
            images: Vec::new(),
            message_id: id,
            role,
            text: text.to_string(),
        }
    }

    #[test]
    fn a_message_longer_than_the_window_is_cut_to_fit_exactly() {
        let huge = "a".repeat(20_000);
        let window = build("be brief", None, &[turn(1, Role::User, &huge)], 1024, 128);
        // 896 tokens available; the prompt costs 7 and the message's own
        // overhead 4, leaving 885 tokens = 2,655 bytes of its start.
        assert_eq!(window.messages.len(), 2);
        assert_eq!(window.messages[1].content, "a".repeat(2_655));
        assert_eq!(window.estimated_tokens, 896, "the window is full, not over");
        assert_eq!(window.dropped_turns, 0, "the message is kept, cut");
        // On a character boundary, never inside one.
        let wide = "é".repeat(5_000);
        let window = build("be brief", None, &[turn(1, Role::User, &wide)], 1024, 128);
        assert_eq!(window.messages[1].content, "é".repeat(1_327));
    }

    #[test]
    fn capped_messages_say_they_were_cut() {
        let mut text = "ab".repeat(10);
        cap_chars(&mut text, 5);
        assert_eq!(text, "ababa […cut at 5 characters]");
        let mut short = "short".to_string();
        cap_chars(&mut short, 5);
        assert_eq!(short, "short");
    }

    fn conversation(n: usize, words: usize) -> Vec<Turn> {
        (0..n)
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                turn(
                    i as i64,
                    role,
                    &format!("turn {i} {}", "word ".repeat(words)),
                )
            })
            .collect()
    }

    #[test]
    fn everything_fits_in_a_short_conversation() {
        let turns = conversation(5, 3);
        let ctx = build("be nice", None, &turns, 4096, 512);
        assert_eq!(ctx.messages.len(), 6);
        assert_eq!(ctx.messages[0], ChatMessage::new(Role::System, "be nice"));
        assert_eq!(ctx.messages[5].content, turns[4].text);
        assert_eq!(ctx.dropped_turns, 0);
    }

    #[test]
    fn oldest_turns_drop_first_and_budget_is_respected() {
        let turns = conversation(400, 20);
        for budget in [256, 1024, 4096] {
            let ctx = build("system", None, &turns, budget, 128);
            let total: usize = ctx
                .messages
                .iter()
                .map(|m| estimate_tokens(&m.content))
                .sum();
            assert_eq!(total, ctx.estimated_tokens);
            assert!(total <= budget - 128, "budget {budget}: used {total}");
            assert!(ctx.dropped_turns > 0);
            // What is kept is the newest contiguous run, ending with the last turn.
            let kept = &ctx.messages[1..];
            let first_kept = turns.len() - kept.len();
            for (m, t) in kept.iter().zip(&turns[first_kept..]) {
                assert_eq!(m.content, t.text);
            }
            // And one more turn would not have fitted.
            let next = estimate_tokens(&turns[first_kept - 1].text);
            assert!(total + next > budget - 128);
        }
    }

    #[test]
    fn an_oversized_current_message_is_cut_to_fit() {
        let mut turns = conversation(3, 2);
        turns.push(turn(9, Role::User, &"é".repeat(10_000)));
        let ctx = build("system", None, &turns, 512, 128);
        assert_eq!(
            ctx.messages.len(),
            2,
            "only system + the cut current message"
        );
        assert!(ctx.estimated_tokens <= 512 - 128);
        assert!(ctx.messages[1].content.len() < 20_000);
        assert!(!ctx.messages[1].content.is_empty());
    }

    #[test]
    fn a_summary_comes_after_the_system_prompt_and_counts_against_the_budget() {
        let turns = conversation(200, 20);
        let without = build("system", None, &turns, 1024, 128);
        let with = build("system", Some("they talked about turns"), &turns, 1024, 128);
        assert_eq!(with.messages[1].role, Role::System);
        assert_eq!(
            with.messages[1].content,
            format!("{SUMMARY_PREFIX}they talked about turns")
        );
        assert!(with.estimated_tokens <= 1024 - 128);
        // The summary takes room from the turns, never adds to the total.
        assert!(with.messages.len() - 2 < without.messages.len());
    }

    #[test]
    fn read_bound_covers_any_fitting_conversation() {
        assert_eq!(max_turns_for(4096), 1024);
        assert_eq!(max_turns_for(0), 1);
        // Even empty turns cost the overhead, so no more than this can fit.
        let turns: Vec<Turn> = (0..5000).map(|i| turn(i, Role::User, "")).collect();
        let ctx = build("", None, &turns, 4096, 0);
        assert!(ctx.messages.len() - 1 <= max_turns_for(4096));
    }
}
