-- convagent schema, version 2: what `convagent serve` needs. Append-only.

-- Replies waiting to go out to their channel, sent in order per
-- conversation. Every assistant message of a channel conversation is
-- queued by the trigger below, in the transaction that stores it.
CREATE TABLE outbox (
    id                   INTEGER PRIMARY KEY,
    reply_id             INTEGER NOT NULL UNIQUE REFERENCES messages (id),
    conversation_id      INTEGER NOT NULL REFERENCES conversations (id),
    channel              TEXT    NOT NULL,
    state                TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'dead')),
    -- a long reply goes out in parts; those already sent are not sent again
    parts_sent           INTEGER NOT NULL DEFAULT 0,
    attempts             INTEGER NOT NULL DEFAULT 0,
    next_attempt_at      INTEGER NOT NULL,
    last_error           TEXT,
    error_code           TEXT,
    provider_message_ids TEXT    NOT NULL DEFAULT '[]',
    dry_run              INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX outbox_queued ON outbox (conversation_id, id) WHERE state = 'queued';
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'queued';

CREATE TRIGGER outbox_enqueue AFTER INSERT ON messages
WHEN new.role = 'assistant' AND new.channel <> 'cli'
BEGIN
    INSERT INTO outbox (reply_id, conversation_id, channel, next_attempt_at, created_at, updated_at)
    VALUES (new.id, new.conversation_id, new.channel, new.created_at, new.created_at, new.created_at);
END;

-- Every stage of every message, found by its correlation id.
CREATE TABLE traces (
    id             INTEGER PRIMARY KEY,
    correlation_id TEXT    NOT NULL,
    stage          TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_us    INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    detail         TEXT
);
CREATE INDEX traces_by_correlation ON traces (correlation_id, id);

-- Recent traffic by time, for monitors (messages per minute, latency).
CREATE INDEX messages_by_time ON messages (created_at);
