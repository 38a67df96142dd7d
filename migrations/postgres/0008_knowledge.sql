-- Knowledge (issue 26), as migrations/0013_knowledge.sql on SQLite; ranked
-- by full-text search with the `convagent` configuration (diacritics
-- folded).
CREATE TABLE knowledge_docs (
    path       TEXT   PRIMARY KEY,
    sha256     TEXT   NOT NULL,
    title      TEXT   NOT NULL,
    chunks     BIGINT NOT NULL,
    indexed_at BIGINT NOT NULL
);
CREATE TABLE knowledge_chunks (
    id     BIGSERIAL PRIMARY KEY,
    path   TEXT   NOT NULL REFERENCES knowledge_docs (path),
    ord    BIGINT NOT NULL,
    text   TEXT   NOT NULL,
    search TSVECTOR GENERATED ALWAYS AS (to_tsvector('convagent', text)) STORED
);
CREATE INDEX knowledge_chunks_by_path ON knowledge_chunks (path, ord);
CREATE INDEX knowledge_chunks_search ON knowledge_chunks USING GIN (search);
