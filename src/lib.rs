//! convagent's engine: the agent core, its ports, and the adapters that plug
//! real stores and LLMs into them. The `convagent` binary (in `commands/`)
//! drives this library; nothing here knows about terminals or CLI parsing.

pub mod adapters;
pub mod config;
pub mod core;
pub mod daemon;
pub mod golden;
pub mod telemetry;
