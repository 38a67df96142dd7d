//! What a turn retrieves on SQLite: `[knowledge]` chunks ranked by FTS5's
//! BM25, and the person's other conversations (through their identities).

use rusqlite::{Connection, params};

use super::SqliteStore;
use crate::core::Channel;
use crate::core::embeddings::{self, VectorChunk};
use crate::core::knowledge::{KnowledgeChange, KnowledgeDoc, Passage, Source};
use crate::core::ports::{Retrieval, StoreError};

fn channel_of(s: &str) -> Result<Channel, StoreError> {
    s.parse().map_err(|e| StoreError::Backend(format!("{e}")))
}

impl Retrieval for SqliteStore {
    fn knowledge_docs(&self) -> Result<Vec<KnowledgeDoc>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT path, sha256, title, chunks, indexed_at, embedder
             FROM knowledge_docs ORDER BY path",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(KnowledgeDoc {
                path: r.get(0)?,
                sha256: r.get(1)?,
                title: r.get(2)?,
                chunks: r.get(3)?,
                indexed_at: r.get(4)?,
                embedder: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn knowledge_vectors(&self, embedder: &str) -> Result<Vec<VectorChunk>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT c.path, c.ord, c.text, c.vector FROM knowledge_chunks c
             JOIN knowledge_docs d ON d.path = c.path
             WHERE d.embedder = ?1 AND c.vector IS NOT NULL ORDER BY c.id",
        )?;
        let rows = stmt.query_map(params![embedder], |r| {
            Ok(VectorChunk {
                path: r.get(0)?,
                chunk: r.get::<_, i64>(1)? + 1,
                text: r.get(2)?,
                vector: embeddings::from_bytes(&r.get::<_, Vec<u8>>(3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn search_knowledge(&self, words: &[String], limit: usize) -> Result<Vec<Passage>, StoreError> {
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // Any of the words, each quoted (no FTS5 syntax gets through).
        let query = words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR ");
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT c.path, c.ord, c.text, bm25(knowledge_fts) FROM knowledge_fts
             JOIN knowledge_chunks c ON c.id = knowledge_fts.rowid
             WHERE knowledge_fts MATCH ?1 ORDER BY rank LIMIT +?2",
        )?;
        let rows = stmt.query_map(params![query, limit as i64], |r| {
            Ok(Passage {
                source: Source::Document {
                    path: r.get(0)?,
                    chunk: r.get::<_, i64>(1)? + 1,
                },
                text: r.get(2)?,
                // FTS5's bm25() is lower for better matches.
                score: -r.get::<_, f64>(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn person_conversations(
        &self,
        conversation_id: i64,
    ) -> Result<Vec<(i64, Channel)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT c.id, c.channel FROM conversations cur
             JOIN identities me ON me.channel = cur.channel AND me.sender = cur.sender
             JOIN identities i ON i.person_id = me.person_id
             JOIN conversations c ON c.channel = i.channel AND c.sender = i.sender
             WHERE cur.id = ?1 AND c.id <> ?1
             ORDER BY c.id DESC LIMIT 100",
        )?;
        let rows = stmt.query_map(params![conversation_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (id, channel) = row?;
            Ok((id, channel_of(&channel)?))
        })
        .collect()
    }

    fn user_messages_of(
        &self,
        conversations: &[i64],
        limit: usize,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        let ids =
            serde_json::to_string(conversations).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT conversation_id, created_at, text FROM messages
             WHERE conversation_id IN (SELECT value FROM json_each(?1)) AND role = 'user'
             ORDER BY id DESC LIMIT +?2",
        )?;
        let rows = stmt.query_map(params![ids, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// [`crate::core::ports::Write::Knowledge`].
pub(super) fn knowledge_in(conn: &Connection, change: &KnowledgeChange) -> Result<(), StoreError> {
    match change {
        KnowledgeChange::Put {
            path,
            sha256,
            title,
            chunks,
            at,
            embedder,
            vectors,
        } => {
            let embedder = embeddings::vectors_fit(chunks, embedder, vectors)?;
            conn.prepare_cached("DELETE FROM knowledge_chunks WHERE path = ?1")?
                .execute(params![path])?;
            conn.prepare_cached(
                "INSERT INTO knowledge_docs (path, sha256, title, chunks, indexed_at, embedder)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,
                     title = excluded.title, chunks = excluded.chunks,
                     indexed_at = excluded.indexed_at, embedder = excluded.embedder",
            )?
            .execute(params![
                path,
                sha256,
                title,
                chunks.len() as i64,
                at,
                embedder
            ])?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO knowledge_chunks (path, ord, text, vector) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (ord, text) in chunks.iter().enumerate() {
                let vector = vectors.get(ord).map(|v| embeddings::to_bytes(v));
                insert.execute(params![path, ord as i64, text, vector])?;
            }
        }
        KnowledgeChange::Remove { path } => {
            conn.prepare_cached("DELETE FROM knowledge_chunks WHERE path = ?1")?
                .execute(params![path])?;
            let gone = conn
                .prepare_cached("DELETE FROM knowledge_docs WHERE path = ?1")?
                .execute(params![path])?;
            if gone == 0 {
                return Err(StoreError::NotFound(format!("document {path}")));
            }
        }
    }
    Ok(())
}
