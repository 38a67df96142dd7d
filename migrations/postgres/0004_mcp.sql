-- MCP (issue 13), as ../0009_mcp.sql: what outside consumers took with
-- `wait_for_message` and until when, and the hashed tokens of `/mcp`.
CREATE TABLE takes (
    message_id BIGINT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    consumer   TEXT   NOT NULL,
    until      BIGINT NOT NULL
);

CREATE TABLE access_tokens (
    name         TEXT   PRIMARY KEY,
    sha256       TEXT   NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
