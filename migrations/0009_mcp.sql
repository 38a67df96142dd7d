-- MCP (issue 13). The messages an outside consumer took with
-- `wait_for_message`, and until when: another consumer gets them only once
-- that time is past and they are still unanswered.
CREATE TABLE takes (
    message_id INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    consumer   TEXT    NOT NULL,
    until      INTEGER NOT NULL
);

-- The bearer tokens of `/mcp` on `serve`: only their SHA-256 is kept.
CREATE TABLE access_tokens (
    name         TEXT    PRIMARY KEY,
    sha256       TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);
