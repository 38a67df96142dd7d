-- Issue 10: the writer indexes the messages a transaction stored with one
-- statement at its end, instead of this trigger indexing each one. Every
-- write to an FTS5 table inside a transaction opens a statement savepoint,
-- and FTS5 writes out its pending index as a new segment at each savepoint:
-- with the trigger, every stored message cost a segment (and its merges).
DROP TRIGGER messages_fts_insert;
