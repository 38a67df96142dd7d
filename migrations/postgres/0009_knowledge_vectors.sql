-- Embeddings for hybrid ranking, as migrations/0014_knowledge_vectors.sql
-- on SQLite: the same bytes, searched in memory (no pgvector needed).
ALTER TABLE knowledge_chunks ADD COLUMN vector BYTEA;
ALTER TABLE knowledge_docs ADD COLUMN embedder TEXT;
