-- Approvals (issue 25): a tool call marked `approve` waits here for an
-- operator's yes or no. One row per call a turn asks for: the same call
-- asked again by the same turn after a restart finds its row (and its
-- decision, and whether it ran) by (message_id, call_key).
CREATE TABLE approvals (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    -- The user message whose turn asked.
    message_id      INTEGER NOT NULL,
    -- The tool's name and its arguments as text: what makes two asks one.
    call_key        TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    tool            TEXT    NOT NULL,
    -- The arguments, with configured secrets taken out.
    arguments       TEXT    NOT NULL,
    asked_at        INTEGER NOT NULL,
    deadline_at     INTEGER NOT NULL,
    -- 'pending', 'approved', 'denied' or 'expired'.
    state           TEXT    NOT NULL DEFAULT 'pending',
    decided_by      TEXT,
    decided_at      INTEGER,
    -- When the approved call began to run: it runs once.
    ran_at          INTEGER,
    result          TEXT,
    UNIQUE (message_id, call_key)
);
CREATE INDEX approvals_pending ON approvals (asked_at) WHERE state = 'pending';
CREATE INDEX approvals_by_conversation ON approvals (conversation_id);
-- A token whose MCP client is an operator's: its send_message takes the
-- conversation over.
ALTER TABLE access_tokens ADD COLUMN operator INTEGER NOT NULL DEFAULT 0;
