//! What the agent knows beyond one conversation: the operator's documents
//! (`[knowledge] paths`, cut into chunks the store ranks by full-text
//! search) and the person's own earlier words (their other conversations,
//! every channel they are linked on). Each turn takes the best passages
//! within a budget and gives them to the model with their source; the
//! `retrieve` stage of the trace lists what was picked and its score.

use serde::{Deserialize, Serialize};

use super::message::Channel;

/// `[knowledge]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeConfig {
    /// Files and directories to answer from: Markdown, plain text, HTML and
    /// PDF (`convagent knowledge add` adds more; `serve` picks up changes).
    pub paths: Vec<std::path::PathBuf>,
    /// The longest chunk a document is cut into, in characters.
    pub chunk_chars: usize,
    /// Passages from the documents a turn may take at most.
    pub top: usize,
    /// Tokens of the context the passages (documents and memory) may fill.
    pub budget_tokens: usize,
    /// How often `serve` looks for changed files, in seconds (0: never).
    pub rescan_secs: u64,
    /// Vectors for hybrid ranking (none by default).
    pub embeddings: super::embeddings::EmbeddingsConfig,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        KnowledgeConfig {
            paths: Vec::new(),
            chunk_chars: 1_000,
            top: 4,
            budget_tokens: 600,
            rescan_secs: 60,
            embeddings: Default::default(),
        }
    }
}

/// `[memory]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// A conversation sees the summaries of the same person's recent
    /// conversations on their other channels.
    pub across_channels: bool,
    /// Earlier messages of the person (other conversations) a turn may take.
    pub recall: usize,
    /// The person's newest messages looked through for them.
    pub window: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            across_channels: true,
            recall: 3,
            window: 500,
        }
    }
}

/// Where a passage comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A chunk of a document: its path and its number in it (from 1).
    Document { path: String, chunk: i64 },
    /// The person's own earlier message.
    Memory { channel: Channel, at: i64 },
    /// The summary of the person's conversation on another channel.
    Summary { channel: Channel, conversation: i64 },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Document { path, chunk } => {
                let name = std::path::Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.clone());
                write!(f, "{name}#{chunk}")
            }
            Source::Memory { channel, at } => {
                write!(f, "you on {channel}, {}", day(*at))
            }
            Source::Summary {
                channel,
                conversation,
            } => write!(f, "conversation {conversation} on {channel}"),
        }
    }
}

/// `YYYY-MM-DD` of unix ms (UTC), for sources.
fn day(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One passage offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    pub source: Source,
    pub text: String,
    /// Higher is better; comparable within one kind of source.
    pub score: f64,
}

/// A document as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KnowledgeDoc {
    pub path: String,
    pub sha256: String,
    pub title: String,
    pub chunks: i64,
    pub indexed_at: i64,
    /// The embedder its chunks' vectors are of ([`super::embeddings::Embedder::name`]);
    /// none: not embedded.
    pub embedder: Option<String>,
}

/// What changes in the documents (`Write::Knowledge`).
#[derive(Debug, Clone, PartialEq)]
pub enum KnowledgeChange {
    /// A document, new or changed: its chunks replace any it had.
    Put {
        path: String,
        sha256: String,
        title: String,
        chunks: Vec<String>,
        at: i64,
        /// The chunks' vectors, one each, made by `embedder`; or neither.
        embedder: Option<String>,
        vectors: Vec<Vec<f32>>,
    },
    /// `NotFound` when there is no such document.
    Remove { path: String },
}

/// Words too common to rank by (English; other languages' words rank as
/// they are).
const STOP: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "your", "with", "have", "this", "that", "was",
    "what", "when", "where", "which", "who", "why", "how", "can", "could", "would", "should",
    "will", "does", "did", "has", "had", "its", "our", "they", "them", "there", "their", "from",
    "about", "into", "than", "then", "any", "all", "some", "one", "tell", "please", "there",
    "here", "also", "just", "get", "got", "may", "might", "must", "is", "am", "be", "do", "of",
    "to", "in", "on", "at", "it", "me", "my", "we", "an", "or",
];

/// The words a turn's text is searched by: lower-cased, without the most
/// common ones, each once, at most 16.
pub fn query_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for w in super::ports::search_words(text) {
        let w = w.to_lowercase();
        if w.chars().count() < 3 || STOP.contains(&w.as_str()) || words.contains(&w) {
            continue;
        }
        words.push(w);
        if words.len() == 16 {
            break;
        }
    }
    words
}

/// Ranks `texts` against `words` as BM25 does (k1 1.2, b 0.75), with the
/// document frequencies of these texts: for the person's few hundred
/// recent messages, which no index needs to cover.
pub fn rank(words: &[String], texts: &[&str]) -> Vec<f64> {
    let tokenised: Vec<Vec<String>> = texts
        .iter()
        .map(|t| {
            super::ports::search_words(t)
                .map(|w| w.to_lowercase())
                .collect()
        })
        .collect();
    let n = tokenised.len() as f64;
    let average = (tokenised.iter().map(Vec::len).sum::<usize>() as f64 / n.max(1.0)).max(1.0);
    let idf: Vec<f64> = words
        .iter()
        .map(|w| {
            let df = tokenised.iter().filter(|t| t.contains(w)).count() as f64;
            ((n - df + 0.5) / (df + 0.5) + 1.0).ln()
        })
        .collect();
    tokenised
        .iter()
        .map(|t| {
            let len = t.len() as f64;
            words
                .iter()
                .zip(&idf)
                .map(|(w, idf)| {
                    let tf = t.iter().filter(|x| *x == w).count() as f64;
                    idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / average))
                })
                .sum()
        })
        .collect()
}

/// Cuts a document's text into chunks of at most `max_chars`: paragraphs
/// (and Markdown headings, which start a chunk) kept whole where they fit,
/// longer ones cut at sentence ends, then at spaces.
pub fn chunk(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(100);
    let mut chunks = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, chunks: &mut Vec<String>| {
        let t = current.trim();
        if !t.is_empty() {
            chunks.push(t.to_string());
        }
        current.clear();
    };
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let heading = paragraph.starts_with('#');
        let size = paragraph.chars().count();
        if heading || current.chars().count() + size + 2 > max {
            flush(&mut current, &mut chunks);
        }
        if size <= max {
            if !current.is_empty() {
                current.push_str("\n\n");
            }
            current.push_str(paragraph);
            continue;
        }
        for piece in pieces(paragraph, max) {
            flush(&mut current, &mut chunks);
            current.push_str(&piece);
        }
    }
    flush(&mut current, &mut chunks);
    chunks
}

/// A paragraph longer than `max`, cut at sentence ends where it can and at
/// spaces where it must.
fn pieces(paragraph: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for sentence in paragraph.split_inclusive(['.', '!', '?']) {
        if current.chars().count() + sentence.chars().count() > max && !current.is_empty() {
            out.push(std::mem::take(&mut current).trim().to_string());
        }
        if sentence.chars().count() > max {
            for word in sentence.split_inclusive(' ') {
                if current.chars().count() + word.chars().count() > max && !current.is_empty() {
                    out.push(std::mem::take(&mut current).trim().to_string());
                }
                current.push_str(word);
            }
        } else {
            current.push_str(sentence);
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The passages that fit `budget_tokens` (about four characters a token),
/// best first within each kind: documents, then memory, then summaries.
pub fn within_budget(passages: Vec<Passage>, budget_tokens: usize) -> Vec<Passage> {
    let mut left = budget_tokens * 4;
    let mut kept = Vec::new();
    for p in passages {
        let size = p.text.chars().count() + 32;
        if size > left {
            continue;
        }
        left -= size;
        kept.push(p);
    }
    kept
}

/// The system message the passages become: each numbered, with its
/// source, so the reply can name it.
pub fn as_context(passages: &[Passage]) -> String {
    let mut text = String::from(
        "What you know that may help (use it only if it answers the person; name the source \
         in brackets, like [1], when you do):",
    );
    for (i, p) in passages.iter().enumerate() {
        text.push_str(&format!("\n[{}] ({}) {}", i + 1, p.source, p.text));
    }
    text
}

/// What the `retrieve` stage says was picked: `source (score)`, in order.
pub fn describe(passages: &[Passage]) -> String {
    passages
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}] {} ({:.2})", i + 1, p.source, p.score))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_drop_the_common_ones() {
        assert_eq!(
            query_words("What are the opening hours of the Lisbon shop, please?"),
            ["opening", "hours", "lisbon", "shop"]
        );
    }

    #[test]
    fn chunks_keep_paragraphs_and_start_at_headings() {
        let text = "# Returns\n\nYou may return anything within 30 days.\n\nBring the receipt.\n\n# Hours\n\nWe open at nine.";
        assert_eq!(
            chunk(text, 1000),
            [
                "# Returns\n\nYou may return anything within 30 days.\n\nBring the receipt.",
                "# Hours\n\nWe open at nine."
            ]
        );
        let long = "One sentence here. ".repeat(100);
        let pieces = chunk(&long, 200);
        assert!(pieces.len() > 5);
        assert!(
            pieces.iter().all(|p| p.chars().count() <= 200),
            "{pieces:?}"
        );
        assert!(pieces[0].ends_with('.'), "cut at a sentence end");
    }

    #[test]
    fn bm25_prefers_rare_matching_words() {
        let words = query_words("my bike was stolen");
        let scores = rank(
            &words,
            &[
                "I love my bike",
                "the bike was stolen at night",
                "nothing here",
            ],
        );
        assert!(scores[1] > scores[0] && scores[0] > scores[2], "{scores:?}");
        assert_eq!(scores[2], 0.0);
    }

    #[test]
    fn sources_read_as_people_read_them() {
        let doc = Source::Document {
            path: "/srv/kb/returns.md".into(),
            chunk: 2,
        };
        assert_eq!(doc.to_string(), "returns.md#2");
        let memory = Source::Memory {
            channel: Channel::Whatsapp,
            at: 1_763_726_400_000,
        };
        assert_eq!(memory.to_string(), "you on whatsapp, 2025-11-21");
    }

    #[test]
    fn the_budget_keeps_the_best_that_fit() {
        let p = |text: &str, score| Passage {
            source: Source::Document {
                path: "a".into(),
                chunk: 1,
            },
            text: text.into(),
            score,
        };
        let kept = within_budget(vec![p(&"x".repeat(300), 3.0), p(&"y".repeat(30), 2.0)], 50);
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0].score, 2.0,
            "the long one does not fit 200 characters"
        );
    }
}
