-- Issue 10: a send's attempt number is a field of its trace row, so that
-- stage names (and the /metrics labels made from them) are a fixed set.
ALTER TABLE traces ADD COLUMN attempt INTEGER;
