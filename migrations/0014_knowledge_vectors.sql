-- Embeddings for hybrid ranking (issue 26): each chunk's vector (little-
-- endian f32s), and which embedder made a document's vectors. Searched in
-- memory, exactly; no index.
ALTER TABLE knowledge_chunks ADD COLUMN vector BLOB;
ALTER TABLE knowledge_docs ADD COLUMN embedder TEXT;
