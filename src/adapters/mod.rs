//! Adapters: the concrete stores, LLM providers and channels behind the
//! core's ports.

pub mod audio;
pub mod channels;
pub mod clock;
pub mod documents;
pub mod embeddings;
pub mod knowledge_files;
pub mod llm;
pub mod mcp;
pub mod media_files;
pub mod store;
pub mod stt;
