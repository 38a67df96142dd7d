-- convagent schema, version 1. Migrations are append-only: never edit this
-- file once it has landed; add 0002_*.sql instead.

-- One row per conversation. A conversation is (channel, sender, thread);
-- `/reset` closes it and the sender's next message opens a new one, so at
-- most one conversation per key is open at a time.
CREATE TABLE conversations (
    id               INTEGER PRIMARY KEY,
    channel          TEXT    NOT NULL,
    sender           TEXT    NOT NULL,
    thread           TEXT    NOT NULL DEFAULT '',
    started_at       INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    message_count    INTEGER NOT NULL DEFAULT 0,
    closed_at        INTEGER
);
CREATE UNIQUE INDEX conversations_open_key
    ON conversations (channel, sender, thread) WHERE closed_at IS NULL;
CREATE INDEX conversations_by_activity ON conversations (last_activity_at DESC);

-- Every system prompt ever set; the highest version is current.
CREATE TABLE system_prompts (
    version    INTEGER PRIMARY KEY AUTOINCREMENT,
    text       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- User messages and assistant replies. Times are unix milliseconds.
CREATE TABLE messages (
    id                  INTEGER PRIMARY KEY,
    conversation_id     INTEGER NOT NULL REFERENCES conversations (id),
    role                TEXT    NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    channel             TEXT    NOT NULL,
    text                TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    -- user messages: the provider's id, unique per channel (deduplication),
    -- and when the message got its answer (NULL: still to be answered)
    provider_message_id TEXT,
    answered_at         INTEGER,
    provider_ts         INTEGER,
    correlation_id      TEXT,
    attachments         TEXT    NOT NULL DEFAULT '[]',
    metadata            TEXT    NOT NULL DEFAULT '{}',
    -- assistant messages: the user message answered and how. `fallback`
    -- replies (every provider failed) do not count as the answer.
    reply_to            INTEGER REFERENCES messages (id),
    kind                TEXT CHECK (kind IN ('answer', 'fallback', 'refusal')),
    provider            TEXT,
    model               TEXT,
    prompt_version      INTEGER REFERENCES system_prompts (version),
    prompt_tokens       INTEGER,
    completion_tokens   INTEGER,
    latency_ms          INTEGER
);
CREATE UNIQUE INDEX messages_provider_id
    ON messages (channel, provider_message_id) WHERE provider_message_id IS NOT NULL;
-- exactly one answer (or refusal) per user message; fallbacks come before it
CREATE UNIQUE INDEX messages_answer
    ON messages (reply_to) WHERE reply_to IS NOT NULL AND kind <> 'fallback';
CREATE INDEX messages_fallback ON messages (reply_to) WHERE kind = 'fallback';
-- messages still to be answered (after a fallback, a crash, a restart)
CREATE INDEX messages_pending
    ON messages (conversation_id, id) WHERE role = 'user' AND answered_at IS NULL;
-- "last N turns of a conversation": a bounded backwards range scan
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

-- Full-text search over message text (external content: no second copy).
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    text,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;

-- A summary of a conversation's older turns, from_message_id..to_message_id
-- inclusive. Each range is summarised once and reused.
CREATE TABLE summaries (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    from_message_id INTEGER NOT NULL,
    to_message_id   INTEGER NOT NULL,
    text            TEXT    NOT NULL,
    provider        TEXT,
    model           TEXT,
    created_at      INTEGER NOT NULL,
    UNIQUE (conversation_id, from_message_id, to_message_id)
);

-- Inputs refused by a guardrail, with the rule that fired.
CREATE TABLE guardrail_violations (
    id         INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    rule       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX guardrail_violations_by_message ON guardrail_violations (message_id);

-- Circuit breaker per LLM provider+model, shared by every process on the
-- store (the daemon, `doctor`, the TUI, `/metrics`).
CREATE TABLE breakers (
    provider      TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures      INTEGER NOT NULL DEFAULT 0,
    opened_at     INTEGER,
    next_probe_at INTEGER,
    last_error    TEXT,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (provider, model)
);
CREATE TABLE breaker_transitions (
    id         INTEGER PRIMARY KEY,
    provider   TEXT    NOT NULL,
    model      TEXT    NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    at         INTEGER NOT NULL
);
