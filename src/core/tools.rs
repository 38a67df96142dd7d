//! Tools the agent may call while it answers (the MCP servers of
//! `[[mcp.servers]]`): what the model is offered, what it asks for, and
//! the port the agent calls them through.

use serde::Serialize;

use super::llm::BoxFuture;

/// A tool as the model is offered it (a JSON Schema for its arguments).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// A call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The provider's id of the call (OpenAI's `tool_call_id`), if it has one.
    pub id: Option<String>,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// What a call gave back: the tool's text, or why there is none (the
/// model is told so and answers without it).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub text: String,
    pub failed: bool,
}

/// One round of tool use: the calls the model asked for and their results,
/// in order; the next request carries every round so far.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolExchange {
    /// What the model said along with its calls.
    pub text: String,
    pub calls: Vec<ToolCall>,
    pub results: Vec<ToolResult>,
}

/// The tools of a turn.
pub trait Tools: Send + Sync {
    /// What the model is offered.
    fn specs(&self) -> Vec<ToolSpec>;
    /// Runs one call within the tool's time limit. `Err` is why it gave
    /// nothing (unknown tool, the server failed, it took too long).
    fn call<'a>(&'a self, call: &'a ToolCall) -> BoxFuture<'a, Result<String, String>>;
    /// Whether a call of `name` waits for an operator's approval first
    /// (see [`crate::core::approvals`]), and how it is asked.
    fn needs_approval(&self, _name: &str) -> Option<ApprovalRule> {
        None
    }
}

/// How a tool's calls are approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalRule {
    /// Ask in the chat too, with buttons.
    pub in_chat: bool,
}
