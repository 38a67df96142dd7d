//! The agent orchestrator: given an inbound message, store it, build the
//! context, ask the LLM, store the reply. A message that was answered before
//! gets its stored reply back without an LLM call.

use std::sync::Arc;
use std::time::Instant;

use tracing::{Instrument, info, info_span};

use super::context::{self, max_turns_for};
use super::llm::{LlmError, LlmProvider, LlmRequest, OnEvent, StreamEvent};
use super::message::InboundMessage;
use super::ports::{Clock, NewReply, Store, StoreError, StoredMessage};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// The system prompt stored as version 1 when the store has none.
    pub default_system_prompt: String,
    /// The model's context window, in tokens.
    pub context_budget: usize,
    /// Tokens of the window kept free for the reply.
    pub reply_reserve: usize,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            default_system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
            context_budget: 4096,
            reply_reserve: 512,
        }
    }
}

pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful, concise assistant. Answer in plain text, in the user's language.";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Llm(#[from] LlmError),
}

/// The answer to one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message_id: i64,
    pub conversation_id: i64,
    pub reply: StoredMessage,
    /// The reply was stored before (a redelivered message); no LLM call.
    pub from_store: bool,
    /// Turns of the conversation the model did not see.
    pub dropped_turns: usize,
}

pub struct Agent {
    store: Arc<dyn Store>,
    llm: Arc<dyn LlmProvider>,
    clock: Arc<dyn Clock>,
    settings: AgentSettings,
}

impl Agent {
    pub fn new(
        store: Arc<dyn Store>,
        llm: Arc<dyn LlmProvider>,
        clock: Arc<dyn Clock>,
        settings: AgentSettings,
    ) -> Self {
        Agent {
            store,
            llm,
            clock,
            settings,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn llm(&self) -> &Arc<dyn LlmProvider> {
        &self.llm
    }

    /// Handles one inbound message, streaming the reply to `on_event` as it
    /// is generated (a reply found in the store is sent as one token).
    pub async fn handle(
        &self,
        message: &InboundMessage,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let span = info_span!(
            "message",
            correlation_id = %message.correlation_id,
            channel = %message.key.channel,
        );
        self.handle_inner(message, on_event).instrument(span).await
    }

    async fn handle_inner(
        &self,
        message: &InboundMessage,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        tracing::debug!(text = %message.text, "inbound message");
        let accepted = self.store.accept(message)?;
        info!(
            message_id = accepted.message_id,
            conversation_id = accepted.conversation_id,
            duplicate = accepted.duplicate,
            "message stored"
        );
        if let Some(reply) = self.store.reply_to(accepted.message_id)? {
            info!(
                reply_id = reply.id,
                "already answered; returning the stored reply"
            );
            on_event(StreamEvent::Token(&reply.text));
            return Ok(Reply {
                message_id: accepted.message_id,
                conversation_id: accepted.conversation_id,
                reply,
                from_store: true,
                dropped_turns: 0,
            });
        }

        let prompt = self
            .store
            .ensure_prompt(&self.settings.default_system_prompt, self.clock.now_ms())?;
        let turns = self.store.recent_turns(
            accepted.conversation_id,
            accepted.message_id,
            max_turns_for(self.settings.context_budget),
        )?;
        let window = context::build(
            &prompt.text,
            &turns,
            self.settings.context_budget,
            self.settings.reply_reserve,
        );
        info!(
            prompt_version = prompt.version,
            turns = window.messages.len() - 1,
            dropped_turns = window.dropped_turns,
            estimated_tokens = window.estimated_tokens,
            "context built"
        );

        let request = LlmRequest {
            messages: window.messages,
            max_tokens: self.settings.reply_reserve as u32,
        };
        let started = Instant::now();
        let output = self
            .llm
            .generate(&request, on_event)
            .await
            .inspect_err(|e| {
                tracing::warn!(error = %e, "LLM call failed");
            })?;
        let latency_ms = started.elapsed().as_millis() as u64;
        info!(
            provider = %output.provider,
            model = %output.model,
            latency_ms,
            completion_tokens = output.completion_tokens,
            "LLM replied"
        );

        let new_reply = NewReply {
            text: output.text,
            provider: output.provider,
            model: output.model,
            prompt_version: prompt.version,
            prompt_tokens: output.prompt_tokens,
            completion_tokens: output.completion_tokens,
            latency_ms,
            created_at: self.clock.now_ms(),
        };
        self.store.record_reply(accepted.message_id, &new_reply)?;
        let reply = self
            .store
            .reply_to(accepted.message_id)?
            .ok_or_else(|| StoreError::NotFound("the reply just recorded".into()))?;
        info!(reply_id = reply.id, "reply stored");
        Ok(Reply {
            message_id: accepted.message_id,
            conversation_id: accepted.conversation_id,
            reply,
            from_store: false,
            dropped_turns: window.dropped_turns,
        })
    }
}
