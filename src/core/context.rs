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
/// by page, stopping once they exceed what `budget` tokens can hold (or at
/// [`max_turns_for`]). The cost depends on the budget, never on how long
/// the conversation is. Oldest first.
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
    loop {
        let page = store.recent_turns(conversation_id, cursor, PAGE_TURNS)?;
        let exhausted = page.len() < PAGE_TURNS;
        let Some(oldest) = page.first().map(|t| t.message_id) else {
            break;
        };
        for turn in page.into_iter().rev() {
            tokens += estimate_tokens(&turn.text);
            newest_first.push(turn);
        }
        if exhausted || tokens > budget || newest_first.len() >= max_turns {
            break;
        }
        cursor = oldest - 1;
    }
    newest_first.reverse();
    Ok(newest_first)
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
