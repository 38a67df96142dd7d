-- A person can step in (issue 25): who answers each conversation, since
-- when and by whose doing. 'agent' (the default) or 'human'.
ALTER TABLE conversations ADD COLUMN mode TEXT NOT NULL DEFAULT 'agent'
    CHECK (mode IN ('agent', 'human'));
ALTER TABLE conversations ADD COLUMN mode_at BIGINT;
ALTER TABLE conversations ADD COLUMN mode_by TEXT;
-- The few conversations a person answers, for /metrics' waiting gauge.
CREATE INDEX conversations_human ON conversations (id) WHERE mode = 'human';
-- People who sent /stop: nothing more is sent to them until /start.
CREATE TABLE opt_outs (
    channel TEXT   NOT NULL,
    sender  TEXT   NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (channel, sender)
);
