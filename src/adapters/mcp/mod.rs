//! The Model Context Protocol, both ways (issue 13):
//! - `server`: convagent's channels, conversations and traces as MCP tools
//!   for other agents (`convagent mcp` on stdio, `/mcp` on `serve`);
//! - `client`: the MCP servers whose tools convagent's own agent calls.

pub mod client;
pub mod sandbox;
pub mod server;

pub use client::{McpTools, ServerStatus};
pub use sandbox::{Sandbox, SandboxSettings};
pub use server::{Relay, RelaySettings, token_hash};
