//! What a turn retrieves on Postgres (as `sqlite/knowledge.rs`):
//! `[knowledge]` chunks ranked by full-text search (`ts_rank_cd` over the
//! `convagent` configuration), and the person's other conversations.

use postgres::Transaction;

use super::PostgresStore;
use crate::core::Channel;
use crate::core::embeddings::{self, VectorChunk};
use crate::core::knowledge::{KnowledgeChange, KnowledgeDoc, Passage, Source};
use crate::core::ports::{Retrieval, StoreError};

fn channel_of(s: &str) -> Result<Channel, StoreError> {
    s.parse().map_err(|e| StoreError::Backend(format!("{e}")))
}

impl Retrieval for PostgresStore {
    fn knowledge_docs(&self) -> Result<Vec<KnowledgeDoc>, StoreError> {
        self.read(|c| {
            Ok(c.query(
                "SELECT path, sha256, title, chunks, indexed_at, embedder
                 FROM knowledge_docs ORDER BY path",
                &[],
            )?
            .iter()
            .map(|r| KnowledgeDoc {
                path: r.get(0),
                sha256: r.get(1),
                title: r.get(2),
                chunks: r.get(3),
                indexed_at: r.get(4),
                embedder: r.get(5),
            })
            .collect())
        })
    }

    fn knowledge_vectors(&self, embedder: &str) -> Result<Vec<VectorChunk>, StoreError> {
        let embedder = embedder.to_string();
        self.read(move |c| {
            Ok(c.query(
                "SELECT c.path, c.ord, c.text, c.vector FROM knowledge_chunks c
                 JOIN knowledge_docs d ON d.path = c.path
                 WHERE d.embedder = $1 AND c.vector IS NOT NULL ORDER BY c.id",
                &[&embedder],
            )?
            .iter()
            .map(|r| VectorChunk {
                path: r.get(0),
                chunk: r.get::<_, i64>(1) + 1,
                text: r.get(2),
                vector: embeddings::from_bytes(r.get::<_, &[u8]>(3)),
            })
            .collect())
        })
    }

    fn search_knowledge(&self, words: &[String], limit: usize) -> Result<Vec<Passage>, StoreError> {
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // Any of the words; each is plain text to the parser (no syntax).
        let words = words.to_vec();
        let limit = limit as i64;
        self.read(move |c| {
            let rows = c.query(
                "WITH q AS (
                     SELECT to_tsquery('convagent', string_agg(quote_literal(w), ' | ')) AS query
                     FROM unnest($1::text[]) AS w
                 )
                 SELECT k.path, k.ord, k.text, ts_rank_cd(k.search, q.query)::float8
                 FROM knowledge_chunks k, q
                 WHERE k.search @@ q.query
                 ORDER BY 4 DESC, k.id LIMIT $2",
                &[&words, &limit],
            )?;
            Ok(rows
                .iter()
                .map(|r| Passage {
                    source: Source::Document {
                        path: r.get(0),
                        chunk: r.get::<_, i64>(1) + 1,
                    },
                    text: r.get(2),
                    score: r.get(3),
                })
                .collect())
        })
    }

    fn person_conversations(
        &self,
        conversation_id: i64,
    ) -> Result<Vec<(i64, Channel)>, StoreError> {
        let rows = self.read(move |c| {
            Ok(c.query(
                "SELECT c.id, c.channel FROM conversations cur
                 JOIN identities me ON me.channel = cur.channel AND me.sender = cur.sender
                 JOIN identities i ON i.person_id = me.person_id
                 JOIN conversations c ON c.channel = i.channel AND c.sender = i.sender
                 WHERE cur.id = $1 AND c.id <> $1
                 ORDER BY c.id DESC LIMIT 100",
                &[&conversation_id],
            )?
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>())
        })?;
        rows.into_iter()
            .map(|(id, channel)| Ok((id, channel_of(&channel)?)))
            .collect()
    }

    fn user_messages_of(
        &self,
        conversations: &[i64],
        limit: usize,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        let ids = conversations.to_vec();
        let limit = limit as i64;
        self.read(move |c| {
            Ok(c.query(
                "SELECT conversation_id, created_at, text FROM messages
                 WHERE conversation_id = ANY($1) AND role = 'user'
                 ORDER BY id DESC LIMIT $2",
                &[&ids, &limit],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
        })
    }
}

/// [`crate::core::ports::Write::Knowledge`].
pub(super) fn knowledge_in(
    tx: &mut Transaction<'_>,
    change: &KnowledgeChange,
) -> Result<(), StoreError> {
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
            tx.execute("DELETE FROM knowledge_chunks WHERE path = $1", &[path])?;
            tx.execute(
                "INSERT INTO knowledge_docs (path, sha256, title, chunks, indexed_at, embedder)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,
                     title = excluded.title, chunks = excluded.chunks,
                     indexed_at = excluded.indexed_at, embedder = excluded.embedder",
                &[path, sha256, title, &(chunks.len() as i64), at, &embedder],
            )?;
            let ords: Vec<i64> = (0..chunks.len() as i64).collect();
            let vectors: Vec<Option<Vec<u8>>> = (0..chunks.len())
                .map(|i| vectors.get(i).map(|v| embeddings::to_bytes(v)))
                .collect();
            tx.execute(
                "INSERT INTO knowledge_chunks (path, ord, text, vector)
                 SELECT $1, o, t, v FROM unnest($2::bigint[], $3::text[], $4::bytea[]) AS u (o, t, v)",
                &[path, &ords, chunks, &vectors],
            )?;
        }
        KnowledgeChange::Remove { path } => {
            tx.execute("DELETE FROM knowledge_chunks WHERE path = $1", &[path])?;
            if tx.execute("DELETE FROM knowledge_docs WHERE path = $1", &[path])? == 0 {
                return Err(StoreError::NotFound(format!("document {path}")));
            }
        }
    }
    Ok(())
}
