-- Issue 10: a send's attempt number is a field of its trace row, so that
-- stage names (and the /metrics labels made from them) are a fixed set.
ALTER TABLE traces ADD COLUMN attempt INTEGER;

-- Dead letters per conversation, for monitors (the TUI's list counts them
-- for each conversation it shows; without this, a scan of the outbox each).
CREATE INDEX outbox_dead ON outbox (conversation_id) WHERE state = 'dead';
