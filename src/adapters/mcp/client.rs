//! The MCP servers whose tools convagent's agent calls.
