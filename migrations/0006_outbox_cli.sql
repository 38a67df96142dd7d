-- Issue 12: dead letters an operator can act on. `convagent outbox discard`
-- gives up on an item for good: it stays in the outbox as the record of what
-- was not sent, but no longer counts as a dead letter to look at or retry.
ALTER TABLE outbox ADD COLUMN discarded_at INTEGER;
