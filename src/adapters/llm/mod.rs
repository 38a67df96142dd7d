//! LLM providers behind the core's [`LlmProvider`] port, and the chain that
//! tries them in order.

pub mod chain;
pub mod embedded;
pub mod http;
pub mod ollama;
pub mod openai;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ProviderKind, Settings, secs};
use crate::core::llm::LlmProvider;
use crate::core::{BreakerPolicy, Clock, Store};

pub use chain::{Chain, ChainPolicy};
pub use embedded::{Embedded, EmbeddedSettings};
pub use http::Timeouts;
pub use ollama::{Ollama, OllamaSettings};
pub use openai::{OpenAi, OpenAiSettings};

/// One configured provider, kept concrete so `doctor` can ask each kind its
/// own questions (model lists, model file).
#[derive(Clone)]
pub enum Configured {
    Ollama(Arc<Ollama>),
    OpenAi(Arc<OpenAi>),
    Embedded(Arc<Embedded>),
}

impl Configured {
    pub fn build(kind: ProviderKind, settings: &Settings) -> Self {
        let llm = &settings.config.llm;
        match kind {
            ProviderKind::Ollama => Configured::Ollama(Arc::new(Ollama::new(OllamaSettings {
                host: llm.ollama.host.clone(),
                model: llm.ollama.model.clone(),
                num_ctx: llm.ollama.num_ctx,
                keep_alive: llm.ollama.keep_alive.clone(),
                timeouts: Timeouts {
                    first_chunk: secs(llm.ollama.first_chunk_timeout_secs),
                    between_chunks: secs(llm.ollama.chunk_timeout_secs),
                },
                vision: llm.ollama.vision,
            }))),
            ProviderKind::Openai => Configured::OpenAi(Arc::new(OpenAi::new(OpenAiSettings {
                base_url: llm.openai.base_url.clone(),
                api_key: llm.openai.api_key.clone(),
                model: llm.openai.model.clone(),
                timeouts: Timeouts {
                    first_chunk: secs(llm.openai.first_chunk_timeout_secs),
                    between_chunks: secs(llm.openai.chunk_timeout_secs),
                },
                vision: llm.openai.vision,
            }))),
            ProviderKind::Embedded => {
                let threads = match llm.embedded.threads {
                    0 => std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
                    n => n,
                };
                Configured::Embedded(Arc::new(Embedded::new(EmbeddedSettings {
                    model_path: settings.model_path(),
                    threads,
                    context_size: llm.embedded.context_size,
                    temperature: llm.embedded.temperature,
                    seed: llm.embedded.seed,
                    cached_conversations: llm.embedded.cached_conversations,
                })))
            }
        }
    }

    pub fn provider(&self) -> Arc<dyn LlmProvider> {
        match self {
            Configured::Ollama(p) => p.clone(),
            Configured::OpenAi(p) => p.clone(),
            Configured::Embedded(p) => p.clone(),
        }
    }
}

/// The configured providers, in chain order.
pub fn configured(settings: &Settings) -> Vec<Configured> {
    settings
        .config
        .llm
        .chain
        .iter()
        .map(|&kind| Configured::build(kind, settings))
        .collect()
}

/// The retry, deadline and breaker policy from the configuration.
pub fn chain_policy(settings: &Settings) -> ChainPolicy {
    let llm = &settings.config.llm;
    ChainPolicy {
        breaker: BreakerPolicy {
            failure_threshold: llm.breaker_failures,
            cooldown_ms: (llm.breaker_cooldown_secs * 1000) as i64,
        },
        backoff: llm
            .retry_backoff_ms
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect(),
        deadline: secs(llm.turn_deadline_secs),
        patience: None,
    }
}

/// The configured chain as one provider, its breakers kept in `store`.
/// `patient` (the daemon): a provider without a first token after
/// `agent.patience_secs` hands the turn on; otherwise (`chat`, where a
/// person watches a spinner) only the providers' own timeouts apply.
pub fn chain(
    providers: &[Configured],
    settings: &Settings,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    patient: bool,
) -> Chain {
    let policy = ChainPolicy {
        patience: patient.then(|| secs(settings.config.agent.patience_secs)),
        ..chain_policy(settings)
    };
    Chain::new(
        providers.iter().map(Configured::provider).collect(),
        store,
        clock,
        policy,
    )
}
