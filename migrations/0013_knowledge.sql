-- Knowledge (issue 26): the operator's documents, cut into chunks that
-- full-text search ranks (BM25) at each turn.
CREATE TABLE knowledge_docs (
    path       TEXT    PRIMARY KEY,
    sha256     TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    chunks     INTEGER NOT NULL,
    indexed_at INTEGER NOT NULL
);
CREATE TABLE knowledge_chunks (
    id   INTEGER PRIMARY KEY,
    path TEXT    NOT NULL REFERENCES knowledge_docs (path),
    ord  INTEGER NOT NULL,
    text TEXT    NOT NULL
);
CREATE INDEX knowledge_chunks_by_path ON knowledge_chunks (path, ord);
CREATE VIRTUAL TABLE knowledge_fts USING fts5 (
    text,
    content = 'knowledge_chunks',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
-- Documents change seldom: triggers keep the index.
CREATE TRIGGER knowledge_fts_insert AFTER INSERT ON knowledge_chunks BEGIN
    INSERT INTO knowledge_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER knowledge_fts_delete AFTER DELETE ON knowledge_chunks BEGIN
    INSERT INTO knowledge_fts (knowledge_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
