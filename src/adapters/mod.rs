//! Adapters: the concrete stores, LLM providers and channels behind the
//! core's ports.

pub mod channels;
pub mod clock;
pub mod llm;
pub mod mcp;
pub mod store;
pub mod stt;
