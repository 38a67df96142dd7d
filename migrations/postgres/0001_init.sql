-- convagent on Postgres, version 1: the schema of the SQLite store at its
-- migration 0008 (see ../0001_init.sql and after for why each part is
-- there), in Postgres terms. Append-only: never edit a file that has
-- landed; add 0002_*.sql. Applied under an advisory lock, so that daemons
-- starting together do not race.

CREATE TABLE conversations (
    id               BIGSERIAL PRIMARY KEY,
    channel          TEXT    NOT NULL,
    sender           TEXT    NOT NULL,
    thread           TEXT    NOT NULL DEFAULT '',
    started_at       BIGINT  NOT NULL,
    last_activity_at BIGINT  NOT NULL,
    message_count    BIGINT  NOT NULL DEFAULT 0,
    closed_at        BIGINT,
    display_name     TEXT
);
CREATE UNIQUE INDEX conversations_open_key
    ON conversations (channel, sender, thread) WHERE closed_at IS NULL;
CREATE INDEX conversations_by_activity ON conversations (last_activity_at DESC);
CREATE INDEX conversations_by_sender ON conversations (channel, sender);

CREATE TABLE system_prompts (
    version    BIGSERIAL PRIMARY KEY,
    text       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    source     TEXT   NOT NULL DEFAULT 'default'
);

CREATE TABLE messages (
    id                  BIGSERIAL PRIMARY KEY,
    conversation_id     BIGINT NOT NULL REFERENCES conversations (id),
    role                TEXT   NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    channel             TEXT   NOT NULL,
    text                TEXT   NOT NULL,
    created_at          BIGINT NOT NULL,
    provider_message_id TEXT,
    answered_at         BIGINT,
    provider_ts         BIGINT,
    correlation_id      TEXT,
    attachments         TEXT   NOT NULL DEFAULT '[]',
    metadata            TEXT   NOT NULL DEFAULT '{}',
    reply_to            BIGINT REFERENCES messages (id),
    kind                TEXT CHECK (kind IN ('answer', 'fallback', 'refusal')),
    provider            TEXT,
    model               TEXT,
    prompt_version      BIGINT REFERENCES system_prompts (version),
    prompt_tokens       BIGINT,
    completion_tokens   BIGINT,
    latency_ms          BIGINT,
    answered_by         BIGINT REFERENCES messages (id),
    -- Full-text search: computed by Postgres with the row, no second copy
    -- of the text and no trigger.
    search              TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE UNIQUE INDEX messages_provider_id
    ON messages (channel, provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE UNIQUE INDEX messages_answer
    ON messages (reply_to) WHERE reply_to IS NOT NULL AND kind <> 'fallback';
CREATE INDEX messages_fallback ON messages (reply_to) WHERE kind = 'fallback';
CREATE INDEX messages_pending
    ON messages (conversation_id, id) WHERE role = 'user' AND answered_at IS NULL;
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX messages_by_time ON messages (created_at);
CREATE INDEX messages_answered_by ON messages (answered_by) WHERE answered_by IS NOT NULL;
CREATE INDEX messages_answers_by_provider
    ON messages (provider, created_at) WHERE kind = 'answer';
CREATE INDEX messages_search ON messages USING GIN (search);

CREATE TABLE summaries (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    from_message_id BIGINT NOT NULL,
    to_message_id   BIGINT NOT NULL,
    text            TEXT   NOT NULL,
    provider        TEXT,
    model           TEXT,
    created_at      BIGINT NOT NULL,
    UNIQUE (conversation_id, from_message_id, to_message_id)
);

CREATE TABLE guardrail_violations (
    id         BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id),
    rule       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX guardrail_violations_by_message ON guardrail_violations (message_id);

CREATE TABLE breakers (
    provider      TEXT   NOT NULL,
    model         TEXT   NOT NULL,
    state         TEXT   NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures      BIGINT NOT NULL DEFAULT 0,
    opened_at     BIGINT,
    next_probe_at BIGINT,
    last_error    TEXT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (provider, model)
);
CREATE TABLE breaker_transitions (
    id         BIGSERIAL PRIMARY KEY,
    provider   TEXT   NOT NULL,
    model      TEXT   NOT NULL,
    from_state TEXT   NOT NULL,
    to_state   TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    at         BIGINT NOT NULL
);

CREATE TABLE outbox (
    id                   BIGSERIAL PRIMARY KEY,
    reply_id             BIGINT NOT NULL UNIQUE REFERENCES messages (id),
    conversation_id      BIGINT NOT NULL REFERENCES conversations (id),
    channel              TEXT   NOT NULL,
    state                TEXT   NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'dead')),
    parts_sent           BIGINT NOT NULL DEFAULT 0,
    attempts             BIGINT NOT NULL DEFAULT 0,
    next_attempt_at      BIGINT NOT NULL,
    last_error           TEXT,
    error_code           TEXT,
    provider_message_ids TEXT   NOT NULL DEFAULT '[]',
    dry_run              BIGINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    discarded_at         BIGINT
);
CREATE INDEX outbox_queued ON outbox (conversation_id, id) WHERE state = 'queued';
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'queued';
CREATE INDEX outbox_dead ON outbox (conversation_id) WHERE state = 'dead';

-- Every assistant message of a channel conversation is queued in the
-- transaction that stores it.
CREATE FUNCTION outbox_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (reply_id, conversation_id, channel, next_attempt_at, created_at, updated_at)
    VALUES (NEW.id, NEW.conversation_id, NEW.channel, NEW.created_at, NEW.created_at, NEW.created_at);
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_enqueue AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.role = 'assistant' AND NEW.channel <> 'cli')
    EXECUTE FUNCTION outbox_enqueue();

CREATE TABLE traces (
    id             BIGSERIAL PRIMARY KEY,
    correlation_id TEXT   NOT NULL,
    stage          TEXT   NOT NULL,
    started_at     BIGINT NOT NULL,
    duration_us    BIGINT NOT NULL,
    outcome        TEXT   NOT NULL,
    detail         TEXT,
    attempt        BIGINT
);
CREATE INDEX traces_by_correlation ON traces (correlation_id, id);

CREATE TABLE erasures (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    channel TEXT   NOT NULL,
    counts  TEXT   NOT NULL
);

CREATE TABLE token_usage (
    day             BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    tokens          BIGINT NOT NULL,
    PRIMARY KEY (day, conversation_id)
);
CREATE INDEX token_usage_by_conversation ON token_usage (conversation_id);

CREATE FUNCTION token_usage_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO token_usage (day, conversation_id, tokens)
    VALUES (NEW.created_at / 86400000, NEW.conversation_id,
            coalesce(NEW.prompt_tokens, 0) + coalesce(NEW.completion_tokens, 0))
    ON CONFLICT (day, conversation_id) DO UPDATE SET tokens = token_usage.tokens + EXCLUDED.tokens;
    RETURN NULL;
END $$;
CREATE TRIGGER token_usage_count AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.role = 'assistant'
        AND coalesce(NEW.prompt_tokens, 0) + coalesce(NEW.completion_tokens, 0) > 0)
    EXECUTE FUNCTION token_usage_count();

-- Work a daemon has taken: one conversation's turns, or its outbox, until
-- `until` (unix ms). Another daemon takes it over once the lease is past
-- (the holder died); the holder renews it while it works.
CREATE TABLE claims (
    kind   TEXT   NOT NULL,
    key    BIGINT NOT NULL,
    owner  TEXT   NOT NULL,
    until  BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
