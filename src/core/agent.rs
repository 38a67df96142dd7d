//! The agent orchestrator (SPEC.md pipeline steps 2, 4–7): store the
//! message, refuse what the guardrails refuse, build the context (with a
//! summary of older turns once a conversation grows long), ask the LLM
//! chain, store the reply. A message answered before gets its stored reply
//! back without an LLM call; when every provider fails the user gets the
//! canned fallback and the message stays pending until a provider recovers.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use tracing::{Instrument, info, info_span, warn};

use super::context::{self, ContextWindow};
use super::guardrails::{Guardrails, SecretFilter, Violation};
use super::llm::{ChatMessage, LlmError, LlmProvider, LlmRequest, OnEvent, StreamEvent};
use super::message::{InboundMessage, Role, Turn};
use super::ports::{
    Accepted, Clock, NewReply, PromptVersion, ReplyKind, StageSink, Store, StoreError,
    StoredMessage, Summary, TraceEvent,
};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// The system prompt stored as version 1 when the store has none.
    pub default_system_prompt: String,
    /// The model's context window, in tokens.
    pub context_budget: usize,
    /// Tokens of the window kept free for the reply.
    pub reply_reserve: usize,
    /// Sent when every LLM provider failed.
    pub fallback_reply: String,
    /// Summarise only conversations with more stored turns than this...
    pub summary_min_turns: u64,
    /// ...whose window is at least this full (fraction of the budget)...
    pub summary_threshold: f32,
    /// ...once at least this many turns fell out of it since the last summary.
    pub summary_batch: usize,
    /// Configured secrets: never echoed in a reply.
    pub secrets: Vec<String>,
    /// Characters of one message the model sees at most (the stored
    /// message keeps all of it).
    pub max_input_chars: usize,
}

/// How a conversation's worker answers messages that queued up while its
/// previous turn ran (`agent.burst`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Burst {
    /// One turn for all of them: one answer that sees every message.
    #[default]
    Collect,
    /// One turn, and one reply, per message.
    Each,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            default_system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
            context_budget: 4096,
            reply_reserve: 512,
            fallback_reply: DEFAULT_FALLBACK_REPLY.to_string(),
            summary_min_turns: 50,
            summary_threshold: 0.8,
            summary_batch: 10,
            secrets: Vec::new(),
            max_input_chars: DEFAULT_MAX_INPUT_CHARS,
        }
    }
}

pub const DEFAULT_MAX_INPUT_CHARS: usize = 4000;

pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful, concise assistant. Answer in plain text, in the user's language.";

pub const DEFAULT_FALLBACK_REPLY: &str = "Sorry, I can't answer right now. \
     I'll reply to this message as soon as I can.";

const SUMMARIZER_PROMPT: &str = "You summarise conversations. Write a concise summary \
     (under 150 words) of the conversation below, keeping names, facts, decisions and open \
     questions. Reply with the summary only.";

/// Turns read at most when folding older turns into a summary.
const SUMMARY_READ_LIMIT: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Llm(#[from] LlmError),
}

/// The answer to one turn: one message, or a burst of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The (last) message answered.
    pub message_id: i64,
    /// Earlier messages of the burst the reply answers too.
    pub covers: Vec<i64>,
    pub conversation_id: i64,
    pub reply: StoredMessage,
    /// The reply was stored before (a redelivered message); no LLM call.
    pub from_store: bool,
    /// Turns of the conversation the model did not see (beyond the summary).
    pub dropped_turns: usize,
    /// For a fallback: why every provider failed.
    pub llm_error: Option<String>,
    /// A fallback that was not sent again: the conversation already got
    /// one since its last answer.
    pub suppressed: bool,
}

impl Reply {
    pub fn kind(&self) -> ReplyKind {
        self.reply.kind.unwrap_or(ReplyKind::Answer)
    }
}

pub struct Agent {
    store: Arc<dyn Store>,
    llm: Arc<dyn LlmProvider>,
    clock: Arc<dyn Clock>,
    guardrails: Guardrails,
    settings: AgentSettings,
    stages: Option<Arc<dyn StageSink>>,
}

impl Agent {
    pub fn new(
        store: Arc<dyn Store>,
        llm: Arc<dyn LlmProvider>,
        clock: Arc<dyn Clock>,
        guardrails: Guardrails,
        settings: AgentSettings,
    ) -> Self {
        Agent {
            store,
            llm,
            clock,
            guardrails,
            settings,
            stages: None,
        }
    }

    /// Reports every stage of every message to `sink` as well.
    pub fn with_stages(mut self, sink: Arc<dyn StageSink>) -> Self {
        self.stages = Some(sink);
        self
    }

    fn stage(
        &self,
        message: &InboundMessage,
        stage: &str,
        began: (i64, Instant),
        outcome: &str,
        detail: Option<String>,
    ) {
        if let Some(sink) = &self.stages {
            sink.record(TraceEvent {
                correlation_id: message.correlation_id.0.clone(),
                stage: stage.to_string(),
                started_at: began.0,
                duration_us: began.1.elapsed().as_micros() as u64,
                outcome: outcome.to_string(),
                detail,
            });
        }
    }

    fn now(&self) -> (i64, Instant) {
        (self.clock.now_ms(), Instant::now())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn llm(&self) -> &Arc<dyn LlmProvider> {
        &self.llm
    }

    /// Handles one inbound message, streaming the reply to `on_event` as it
    /// is generated (a stored, refused or fallback reply comes as one token).
    pub async fn handle(
        &self,
        message: &InboundMessage,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        self.handle_turn(std::slice::from_ref(message), on_event)
            .await
    }

    /// Answers a turn: `messages` are a conversation's pending messages in
    /// arrival order (one, or a burst), answered by one reply that sees
    /// all of them, linked to the last and recorded as covering the rest.
    pub async fn handle_turn(
        &self,
        messages: &[InboundMessage],
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let Some((message, earlier)) = messages.split_last() else {
            return Err(AgentError::Store(StoreError::Invalid(
                "a turn needs at least one message".into(),
            )));
        };
        let span = info_span!(
            "message",
            correlation_id = %message.correlation_id,
            channel = %message.key.channel,
            burst = messages.len(),
        );
        self.handle_inner(message, earlier, on_event)
            .instrument(span)
            .await
    }

    /// Answers `message`, the turn's last, together with `earlier` ones.
    async fn handle_inner(
        &self,
        message: &InboundMessage,
        earlier: &[InboundMessage],
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let mut accepted = Vec::with_capacity(earlier.len() + 1);
        for m in earlier {
            accepted.push((m, self.store.accept(m)?));
        }
        tracing::debug!(text = %message.text, "inbound message");
        let last = self.store.accept(message)?;
        accepted.push((message, last));
        let covers: Vec<i64> = accepted
            .iter()
            .map(|(_, a)| a.message_id)
            .filter(|&id| id != last.message_id)
            .collect();
        info!(
            message_id = last.message_id,
            conversation_id = last.conversation_id,
            duplicate = last.duplicate,
            covers = covers.len(),
            "message stored"
        );
        if let Some(reply) = self.store.reply_to(last.message_id)? {
            info!(
                reply_id = reply.id,
                "already answered; returning the stored reply"
            );
            on_event(StreamEvent::Token(&reply.text));
            return Ok(self.reply(&last, covers, reply, true, 0, None));
        }
        if !covers.is_empty() {
            let began = self.now();
            for m in earlier {
                self.stage(
                    m,
                    "grouped",
                    began,
                    "ok",
                    Some(format!("answered with {}", message.correlation_id)),
                );
            }
        }

        let prompt = self
            .store
            .ensure_prompt(&self.settings.default_system_prompt, self.clock.now_ms())?;
        let began = self.now();
        let violations: Vec<(i64, Violation)> = accepted
            .iter()
            .filter_map(|(m, a)| Some((a.message_id, self.guardrails.check(&m.text)?)))
            .collect();
        let verdict = violations
            .first()
            .map_or("pass".to_string(), |(_, v)| format!("refused: {}", v.rule));
        self.stage(message, "guarded", began, &verdict, None);
        if let Some((_, first)) = violations.first() {
            info!(rule = %first.rule, "guardrail refused the message");
            for (message_id, violation) in &violations {
                self.store
                    .record_violation(*message_id, &violation.rule, self.clock.now_ms())?;
            }
            let reply = self.record(
                &last,
                &covers,
                ReplyKind::Refusal,
                &first.refusal,
                "guardrail",
                &first.rule,
                &prompt,
                None,
                0,
            )?;
            on_event(StreamEvent::Token(&reply.text));
            self.stage(
                message,
                "reply stored",
                began,
                "refusal",
                Some(format!("reply {}", reply.id)),
            );
            return Ok(self.reply(&last, covers, reply, false, 0, None));
        }

        let began = self.now();
        let window = self.context(&last, &prompt).await?;
        self.stage(
            message,
            "context built",
            began,
            "ok",
            Some(format!(
                "{} messages, ~{} tokens, {} turns dropped",
                window.messages.len(),
                window.estimated_tokens,
                window.dropped_turns
            )),
        );
        info!(
            prompt_version = prompt.version,
            messages = window.messages.len(),
            dropped_turns = window.dropped_turns,
            estimated_tokens = window.estimated_tokens,
            "context built"
        );
        let request = LlmRequest {
            messages: window.messages,
            max_tokens: self.settings.reply_reserve as u32,
        };

        let started = Instant::now();
        let llm_began = self.now();
        let mut filter = SecretFilter::new(&self.settings.secrets);
        let result = self
            .llm
            .generate(&request, &mut |event| match event {
                StreamEvent::Token(t) => {
                    let safe = filter.push(t);
                    if !safe.is_empty() {
                        on_event(StreamEvent::Token(&safe));
                    }
                }
                StreamEvent::Restart { .. } => {
                    filter = SecretFilter::new(&self.settings.secrets);
                    on_event(event);
                }
            })
            .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(o) => self.stage(
                message,
                "llm call",
                llm_began,
                "ok",
                Some(format!("{}/{}", o.provider, o.model)),
            ),
            Err(e) => self.stage(
                message,
                "llm call",
                llm_began,
                "failed",
                Some(e.to_string()),
            ),
        }
        let began = self.now();

        match result {
            Ok(output) => {
                let tail = filter.finish();
                if !tail.is_empty() {
                    on_event(StreamEvent::Token(&tail));
                }
                info!(
                    provider = %output.provider,
                    model = %output.model,
                    latency_ms,
                    completion_tokens = output.completion_tokens,
                    "LLM replied"
                );
                let text = filter.redact(&output.text);
                let reply = self.record(
                    &last,
                    &covers,
                    ReplyKind::Answer,
                    &text,
                    &output.provider,
                    &output.model,
                    &prompt,
                    Some((output.prompt_tokens, output.completion_tokens)),
                    latency_ms,
                )?;
                info!(reply_id = reply.id, "reply stored");
                self.stage(
                    message,
                    "reply stored",
                    began,
                    "answer",
                    Some(format!("reply {}", reply.id)),
                );
                Ok(self.reply(&last, covers, reply, false, window.dropped_turns, None))
            }
            Err(error) => {
                let reason = error.to_string();
                // One fallback per conversation until it is answered again:
                // in an outage, each new message does not get another.
                let previous = self
                    .store
                    .latest_reply(last.conversation_id)?
                    .filter(|r| r.kind == Some(ReplyKind::Fallback));
                let (reply, suppressed) = match previous {
                    Some(previous) => {
                        info!(
                            error = %reason,
                            fallback_id = previous.id,
                            "every LLM provider failed; the conversation already has a fallback reply"
                        );
                        (previous, true)
                    }
                    None => {
                        warn!(error = %reason, "every LLM provider failed; sending the fallback reply");
                        let text = self.settings.fallback_reply.clone();
                        let reply = self.record(
                            &last,
                            &covers,
                            ReplyKind::Fallback,
                            &text,
                            "fallback",
                            "",
                            &prompt,
                            None,
                            latency_ms,
                        )?;
                        (reply, false)
                    }
                };
                on_event(StreamEvent::Token(&reply.text));
                self.stage(
                    message,
                    "reply stored",
                    began,
                    if suppressed {
                        "fallback already sent"
                    } else {
                        "fallback"
                    },
                    Some(format!("reply {}; the message stays pending", reply.id)),
                );
                Ok(Reply {
                    suppressed,
                    ..self.reply(
                        &last,
                        covers,
                        reply,
                        suppressed,
                        window.dropped_turns,
                        Some(reason),
                    )
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        accepted: &Accepted,
        covers: &[i64],
        kind: ReplyKind,
        text: &str,
        provider: &str,
        model: &str,
        prompt: &PromptVersion,
        tokens: Option<(Option<u32>, Option<u32>)>,
        latency_ms: u64,
    ) -> Result<StoredMessage, StoreError> {
        let (prompt_tokens, completion_tokens) = tokens.unwrap_or((None, None));
        self.store.record_turn_reply(
            accepted.message_id,
            covers,
            &NewReply {
                kind,
                text: text.to_string(),
                provider: provider.to_string(),
                model: model.to_string(),
                prompt_version: prompt.version,
                prompt_tokens,
                completion_tokens,
                latency_ms,
                created_at: self.clock.now_ms(),
            },
        )
    }

    fn reply(
        &self,
        accepted: &Accepted,
        covers: Vec<i64>,
        reply: StoredMessage,
        from_store: bool,
        dropped_turns: usize,
        llm_error: Option<String>,
    ) -> Reply {
        Reply {
            message_id: accepted.message_id,
            covers,
            conversation_id: accepted.conversation_id,
            reply,
            from_store,
            dropped_turns,
            llm_error,
            suppressed: false,
        }
    }

    /// The model's view: prompt + latest summary + the newest turns after
    /// it that fit. Summarises first when the conversation has outgrown
    /// the window (see [`AgentSettings`]).
    async fn context(
        &self,
        accepted: &Accepted,
        prompt: &PromptVersion,
    ) -> Result<ContextWindow, StoreError> {
        let (budget, reserve) = (self.settings.context_budget, self.settings.reply_reserve);
        let conversation = accepted.conversation_id;
        let mut summary = self.store.latest_summary(conversation)?;
        let mut turns = context::gather(
            self.store.as_ref(),
            conversation,
            accepted.message_id,
            budget,
        )?;
        for turn in turns.iter_mut().filter(|t| t.role == Role::User) {
            context::cap_chars(&mut turn.text, self.settings.max_input_chars);
        }
        let after = |s: &Option<Summary>| {
            let covered = s.as_ref().map_or(0, |s| s.to_message_id);
            turns
                .iter()
                .filter(|t| t.message_id > covered)
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut recent = after(&summary);
        let mut window = context::build(
            &prompt.text,
            summary.as_ref().map(|s| s.text.as_str()),
            &recent,
            budget,
            reserve,
        );

        if self.should_summarize(conversation, &window)? {
            let first_kept = recent[window.dropped_turns].message_id;
            if let Some(new) = self
                .summarize(conversation, summary.as_ref(), first_kept)
                .await?
            {
                summary = Some(new);
                recent = after(&summary);
                window = context::build(
                    &prompt.text,
                    summary.as_ref().map(|s| s.text.as_str()),
                    &recent,
                    budget,
                    reserve,
                );
            }
        }
        Ok(window)
    }

    fn should_summarize(
        &self,
        conversation: i64,
        window: &ContextWindow,
    ) -> Result<bool, StoreError> {
        if window.dropped_turns == 0 {
            return Ok(false);
        }
        let available = self
            .settings
            .context_budget
            .saturating_sub(self.settings.reply_reserve);
        if (window.estimated_tokens as f32) < self.settings.summary_threshold * available as f32 {
            return Ok(false);
        }
        let turns = self
            .store
            .conversation(conversation)?
            .map_or(0, |c| c.message_count);
        Ok(turns > self.settings.summary_min_turns)
    }

    /// Folds the turns before `first_kept` that the previous summary does
    /// not cover into a new summary, once there are enough of them. Each
    /// range is summarised once; a failed summary leaves the context as is.
    async fn summarize(
        &self,
        conversation: i64,
        previous: Option<&Summary>,
        first_kept: i64,
    ) -> Result<Option<Summary>, StoreError> {
        let covered = previous.map_or(0, |s| s.to_message_id);
        let mut fold: Vec<Turn> = self
            .store
            .recent_turns(conversation, first_kept - 1, SUMMARY_READ_LIMIT)?
            .into_iter()
            .filter(|t| t.message_id > covered)
            .collect();
        if fold.len() < self.settings.summary_batch {
            return Ok(None);
        }
        // The summariser's own input must fit its window too.
        let room = self.settings.context_budget / 2;
        while fold
            .iter()
            .map(|t| context::estimate_tokens(&t.text))
            .sum::<usize>()
            > room
            && fold.len() > 1
        {
            fold.remove(0);
        }
        let (Some(first), Some(last)) = (fold.first(), fold.last()) else {
            return Ok(None);
        };
        let (from, to) = (
            previous.map_or(first.message_id, |s| s.from_message_id),
            last.message_id,
        );

        let mut transcript = String::new();
        if let Some(p) = previous {
            transcript.push_str(&format!("Summary so far: {}\n\n", p.text));
        }
        transcript.push_str("Conversation:\n");
        for t in &fold {
            let who = if t.role == Role::User {
                "user"
            } else {
                "assistant"
            };
            transcript.push_str(&format!("{who}: {}\n", t.text));
        }
        let request = LlmRequest {
            messages: vec![
                ChatMessage::new(Role::System, SUMMARIZER_PROMPT),
                ChatMessage::new(Role::User, transcript),
            ],
            max_tokens: self.settings.reply_reserve.min(256) as u32,
        };
        let output = match self.llm.generate(&request, &mut |_| {}).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "summarising older turns failed; continuing without");
                return Ok(None);
            }
        };
        let filter = SecretFilter::new(&self.settings.secrets);
        let summary = self.store.save_summary(&Summary {
            conversation_id: conversation,
            from_message_id: from,
            to_message_id: to,
            text: filter.redact(output.text.trim()),
            provider: output.provider,
            model: output.model,
            created_at: self.clock.now_ms(),
        })?;
        info!(from, to, turns = fold.len(), "older turns summarised");
        Ok(Some(summary))
    }
}
