//! Embeddings for knowledge: each chunk of a document, and each turn's
//! words, become a vector; the chunks nearest the turn's vector join the
//! full-text ranking ([`fuse`]: reciprocal rank fusion). Optional
//! (`[knowledge.embeddings]`); without it knowledge is ranked by full-text
//! search alone.
//!
//! The vectors are kept beside their chunks in the store (as bytes, the
//! same on SQLite and Postgres) and searched in memory, exactly: at the
//! sizes a knowledge base has (10,000 chunks of 384 numbers are 15 MB and
//! one search a few milliseconds) no approximate index is needed, and both
//! stores need nothing installed.

use serde::{Deserialize, Serialize};

use super::knowledge::{Passage, Source};
use super::llm::BoxFuture;

/// Which service makes the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EmbedProvider {
    /// No embeddings: full-text ranking only.
    #[default]
    None,
    /// A sentence-transformers model (BERT family, safetensors) run in the
    /// process; `install.sh` fetches all-MiniLM-L6-v2.
    Local,
    /// Ollama's `/api/embed` at `[llm.ollama] host`.
    Ollama,
    /// An OpenAI-compatible `/embeddings` at `[llm.openai] base_url`.
    Openai,
}

/// `[knowledge.embeddings]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingsConfig {
    pub provider: EmbedProvider,
    /// The model: its name for Ollama and OpenAI-compatible servers, its
    /// directory for `local` (default: the one `install.sh` fetched).
    pub model: Option<String>,
}

/// Makes vectors of texts.
pub trait Embedder: Send + Sync {
    /// Which provider and model (`local:all-MiniLM-L6-v2`): vectors of two
    /// names are never compared; a document embedded under another name is
    /// embedded again.
    fn name(&self) -> &str;

    /// One vector per text, in order, or why not.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>>;
}

/// A chunk with its vector, as the store gives them for searching.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorChunk {
    pub path: String,
    /// Its number in the document, from 1.
    pub chunk: i64,
    pub text: String,
    pub vector: Vec<f32>,
}

/// A vector as the stores keep it: little-endian `f32`s.
pub fn to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector of [`to_bytes`]' bytes; trailing bytes short of a number
/// are ignored.
pub fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Cosine similarity; 0 for vectors of different lengths or no length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut aa, mut bb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    dot / (aa.sqrt() * bb.sqrt())
}

/// The `limit` chunks nearest `query`, best first, as passages scored by
/// their cosine similarity.
pub fn nearest(query: &[f32], chunks: &[VectorChunk], limit: usize) -> Vec<Passage> {
    let mut scored: Vec<(f32, &VectorChunk)> = chunks
        .iter()
        .map(|c| (cosine(query, &c.vector), c))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(limit)
        .map(|(score, c)| Passage {
            source: Source::Document {
                path: c.path.clone(),
                chunk: c.chunk,
            },
            text: c.text.clone(),
            score: f64::from(score),
        })
        .collect()
}

/// How many candidates each ranking gives the fusion, per passage wanted.
pub const CANDIDATES: usize = 3;

/// Hybrid ranking: the full-text ranking `by_words` (best first, at least
/// `top * CANDIDATES` of them where there are) fused with the chunks
/// nearest `query`; the best `top`.
pub fn hybrid(
    by_words: Vec<Passage>,
    query: &[f32],
    vectors: &[VectorChunk],
    top: usize,
) -> Vec<Passage> {
    let by_vector = nearest(query, vectors, top * CANDIDATES);
    fuse(&[by_words, by_vector], top)
}

/// Reciprocal rank fusion's constant: how much the first places count
/// more than the next (60, as in Cormack, Clarke and Büttcher, 2009).
const RRF_K: f64 = 60.0;

/// One ranking of the lists (each best first): a passage scores
/// `Σ 1 / (60 + rank)` over the lists it is in, so that one found by both
/// full-text and vector search comes first, and neither list's scale
/// matters. The best `limit`, scored so.
pub fn fuse(lists: &[Vec<Passage>], limit: usize) -> Vec<Passage> {
    let mut fused: Vec<Passage> = Vec::new();
    for list in lists {
        for (rank, p) in list.iter().enumerate() {
            let add = 1.0 / (RRF_K + rank as f64 + 1.0);
            match fused.iter_mut().find(|f| f.source == p.source) {
                Some(f) => f.score += add,
                None => fused.push(Passage {
                    score: add,
                    ..p.clone()
                }),
            }
        }
    }
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(limit);
    fused
}

/// The embedder a document's vectors are recorded under: `Invalid` unless
/// there is one vector per chunk, with the embedder's name, or neither.
pub fn vectors_fit<'a>(
    chunks: &[String],
    embedder: &'a Option<String>,
    vectors: &[Vec<f32>],
) -> Result<Option<&'a str>, super::ports::StoreError> {
    match (embedder, vectors.len()) {
        (None, 0) => Ok(None),
        (Some(name), n) if n == chunks.len() => Ok(Some(name)),
        _ => Err(super::ports::StoreError::Invalid(format!(
            "{} vectors for {} chunks, embedder {:?}",
            vectors.len(),
            chunks.len(),
            embedder
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(path: &str, n: i64, vector: Vec<f32>) -> VectorChunk {
        VectorChunk {
            path: path.into(),
            chunk: n,
            text: format!("{path}#{n}"),
            vector,
        }
    }

    #[test]
    fn vectors_survive_their_bytes() {
        let v = vec![0.25, -1.5, 3.0e-7, f32::MAX];
        assert_eq!(from_bytes(&to_bytes(&v)), v);
        assert_eq!(to_bytes(&v).len(), 16);
    }

    #[test]
    fn nearest_ranks_by_angle_not_length() {
        let chunks = [
            chunk("a", 1, vec![1.0, 0.0]),
            chunk("b", 1, vec![10.0, 9.0]),
            chunk("c", 1, vec![0.0, 1.0]),
            chunk("d", 1, vec![1.0, 2.0, 3.0]),
        ];
        let found = nearest(&[1.0, 1.0], &chunks, 3);
        let order: Vec<&str> = found.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(order[0], "b#1", "nearly the same direction");
        assert!((found[0].score - 0.9986).abs() < 1e-3, "{}", found[0].score);
        assert_eq!(found.len(), 3);
        assert!(
            !order.contains(&"d#1"),
            "another model's length never matches"
        );
    }

    #[test]
    fn fusion_puts_what_both_found_first() {
        let p = |path: &str| Passage {
            source: Source::Document {
                path: path.into(),
                chunk: 1,
            },
            text: path.into(),
            score: 99.0,
        };
        let words = vec![p("x"), p("both"), p("y")];
        let vectors = vec![p("z"), p("both")];
        let fused = fuse(&[words, vectors], 3);
        assert_eq!(fused[0].text, "both");
        assert!((fused[0].score - (1.0 / 62.0 + 1.0 / 62.0)).abs() < 1e-12);
        assert_eq!(fused.len(), 3);
        assert!(
            fused[1].text == "x" || fused[1].text == "z",
            "a first place next: {fused:?}"
        );
    }
}
