//! The LLM port: one streaming interface that every provider (Ollama,
//! OpenAI-compatible, embedded llama.cpp, the provider chain, test fakes)
//! implements.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::message::Role;
use super::tools::{ToolCall, ToolExchange, ToolSpec};

/// A boxed future, so the trait stays object-safe without `async-trait`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// What was said; an image is also here, as its stand-in, for the
    /// providers that cannot see.
    pub content: String,
    /// Images for a provider that sees; the others leave them out (each
    /// provider writes them in its API's own shape).
    #[serde(skip)]
    pub images: Vec<Image>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            images: Vec::new(),
        }
    }
}

/// An image's bytes for a model that sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub mime: String,
    pub bytes: std::sync::Arc<[u8]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    pub messages: Vec<ChatMessage>,
    /// Upper bound on generated tokens (the room kept for the reply).
    pub max_tokens: u32,
    /// Tools the model may ask to call (providers with native tool calling
    /// offer them; the others ignore them).
    pub tools: Vec<ToolSpec>,
    /// The tool rounds of this turn so far, after `messages`.
    pub exchanges: Vec<ToolExchange>,
}

impl LlmRequest {
    /// A request without tools.
    pub fn new(messages: Vec<ChatMessage>, max_tokens: u32) -> Self {
        LlmRequest {
            messages,
            max_tokens,
            tools: Vec::new(),
            exchanges: Vec::new(),
        }
    }
}

/// What a finished generation produced, and who produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmOutput {
    pub text: String,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// Tools the model asked to call before it answers (then `text` is
    /// what it said along with them, often nothing).
    pub tool_calls: Vec<ToolCall>,
}

/// Events streamed to the caller while a reply is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    /// The next piece of the reply text.
    Token(&'a str),
    /// A provider failed after streaming some text; what was streamed so far
    /// is void and the next provider starts over.
    Restart { provider: &'a str, error: &'a str },
}

/// The sink for [`StreamEvent`]s.
pub type OnEvent<'a> = dyn FnMut(StreamEvent<'_>) + Send + 'a;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// Nothing listens there (connection refused, unknown host): the chain
    /// moves on at once, without retrying.
    #[error("{provider} is unreachable at {url}: {reason}")]
    Unreachable {
        provider: String,
        url: String,
        reason: String,
    },
    /// A connection failed on the way (reset, connect timeout): worth a
    /// retry after a short wait.
    #[error("{provider}: connection to {url} failed: {reason}")]
    Connection {
        provider: String,
        url: String,
        reason: String,
    },
    #[error("{provider} sent nothing for {}s ({phase})", .after.as_secs())]
    Timeout {
        provider: String,
        phase: &'static str,
        after: Duration,
    },
    #[error("{provider} answered HTTP {status}: {message}")]
    Http {
        provider: String,
        status: u16,
        message: String,
    },
    /// An error reported inside the stream (e.g. Ollama's `{"error": ...}`
    /// line after an HTTP 200).
    #[error("{provider} failed mid-stream: {message}")]
    Stream { provider: String, message: String },
    #[error("{provider}: model `{model}` is not available: {hint}")]
    ModelMissing {
        provider: String,
        model: String,
        hint: String,
    },
    #[error("{provider}: {message}")]
    Other { provider: String, message: String },
    /// The provider's circuit breaker is open: skipped without a call.
    #[error(
        "{provider} ({model}) skipped: circuit open after repeated failures, next probe in {retry_in_secs}s"
    )]
    CircuitOpen {
        provider: String,
        model: String,
        retry_in_secs: i64,
    },
    /// No first token within the turn's patience: the turn moved on. A
    /// slow provider (a cold model load) is not a failing one; its call
    /// finishes in the background.
    #[error("{provider} sent no first token within {}s (agent.patience_secs); moved on", .after.as_secs())]
    Slow { provider: String, after: Duration },
    #[error("no LLM provider is configured (set `llm.chain` or CONVAGENT_LLM_CHAIN)")]
    NoProvider,
    #[error("every LLM provider failed: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<LlmError>),
}

impl LlmError {
    /// Whether the same call may succeed after a short wait.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LlmError::Connection { .. })
    }
}

/// A streaming chat-completion provider.
pub trait LlmProvider: Send + Sync {
    /// Short provider name (`ollama`, `openai`, `embedded`, `chain`).
    fn name(&self) -> &str;
    /// The model this provider asks for.
    fn model(&self) -> &str;
    /// Whether a call now could reach a model: false only while every
    /// provider behind it is known to be down (a chain whose breakers are
    /// all open and not yet due for a probe).
    fn ready(&self) -> bool {
        true
    }
    /// Whether a call the caller gave up on (past its patience) should go
    /// on in the background: yes where that warms the model for the next
    /// turn (a server loading it); no where the model loads by itself and
    /// an abandoned generation would only hold up the next one (embedded).
    fn finish_when_abandoned(&self) -> bool {
        true
    }
    /// Whether the model takes images (`vision = true` in its section, or
    /// what its API reports): a chain sees when any provider in it does,
    /// and one that cannot reads the images' stand-ins.
    fn sees(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
    /// Generates a reply, streaming pieces of it to `on_event` as they come.
    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>>;
}
