//! Engine integration tests: the store through its port, the agent, each
//! LLM provider against a local fake speaking its wire format, the real
//! embedded model, and the layout rules.

#[path = "support/mod.rs"]
mod support;

#[path = "engine/agent.rs"]
mod agent;
#[path = "engine/boundary.rs"]
mod boundary;
#[path = "engine/chain.rs"]
mod chain;
#[path = "engine/embedded.rs"]
mod embedded;
#[path = "engine/embeddings.rs"]
mod embeddings;
#[path = "engine/guarded.rs"]
mod guarded;
#[path = "engine/knowledge.rs"]
mod knowledge;
#[path = "engine/ollama.rs"]
mod ollama;
#[path = "engine/openai.rs"]
mod openai;
#[path = "engine/postgres.rs"]
mod postgres;
#[path = "engine/properties.rs"]
mod properties;
#[path = "engine/resilience.rs"]
mod resilience;
#[path = "engine/store.rs"]
mod store;
#[path = "engine/summaries.rs"]
mod summaries;
