-- Search folds diacritics, as the SQLite store's full-text index does
-- ("marz" finds "März"): a text search configuration that runs each word
-- through `unaccent` (a trusted extension from Postgres's contrib, which a
-- database owner may create) before the simple dictionary.
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH CONFIGURATION convagent (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION convagent
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
    WITH unaccent, simple;

DROP INDEX messages_search;
ALTER TABLE messages DROP COLUMN search;
ALTER TABLE messages
    ADD COLUMN search TSVECTOR GENERATED ALWAYS AS (to_tsvector('convagent', text)) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);
