//! `[knowledge]` on disk: the files of the configured paths (Markdown,
//! plain text, HTML through `html2text`, PDF through `pdf-extract`), read,
//! cut into chunks and put in the store when new or changed (by their
//! SHA-256), and taken out when gone; with an [`Embedder`], each chunk's
//! vector is stored with it (and a document embedded by another embedder
//! is embedded again). `convagent knowledge` and `serve`'s periodic look
//! both run [`sync`].

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::core::embeddings::Embedder;
use crate::core::knowledge::{self, KnowledgeChange};
use crate::core::ports::{AnyStore, StoreError, Write};

/// How deep a directory is walked for files.
const MAX_DEPTH: usize = 8;

/// Whether a file's kind is read: by its extension.
pub fn readable(path: &Path) -> bool {
    matches!(
        extension(path).as_str(),
        "md" | "markdown" | "txt" | "text" | "html" | "htm" | "pdf"
    )
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The readable files of `paths` (a directory's, walked), each once, sorted.
pub fn files_under(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(path: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            if depth >= MAX_DEPTH {
                return;
            }
            let Ok(entries) = std::fs::read_dir(path) else {
                return;
            };
            for entry in entries.flatten() {
                walk(&entry.path(), depth + 1, out);
            }
        } else if path.is_file() && readable(path) {
            out.push(path.to_path_buf());
        }
    }
    let mut out = Vec::new();
    for path in paths {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        walk(&path, 0, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// A file as the store keeps it: its title, and its text in chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub title: String,
    pub chunks: Vec<String>,
}

/// Reads one file's text and cuts it; why not, for a file that cannot be
/// read (not UTF-8, a scanned PDF).
pub fn read(path: &Path, bytes: &[u8], chunk_chars: usize) -> Result<Read, String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let text = match extension(path).as_str() {
        "html" | "htm" => {
            html2text::from_read(bytes, 100).map_err(|e| format!("unreadable HTML: {e}"))?
        }
        _ => super::documents::text_of(bytes, None, name.as_deref(), usize::MAX).unwrap_or_else(
            || {
                // Text kinds the documents reader does not name (`.text`).
                std::str::from_utf8(bytes)
                    .map(str::to_string)
                    .map_err(|_| "not UTF-8 text".into())
            },
        )?,
    };
    let title = html_title(path, bytes)
        .or_else(|| {
            text.lines()
                .map(|l| l.trim().trim_start_matches('#').trim())
                .find(|l| !l.is_empty())
                .map(|l| l.chars().take(80).collect())
        })
        .or(name)
        .unwrap_or_default();
    let chunks = knowledge::chunk(&text, chunk_chars);
    if chunks.is_empty() {
        return Err("no text in it".into());
    }
    Ok(Read { title, chunks })
}

/// An HTML page's `<title>`, when it has a non-empty one (its first
/// rendered line is often the site's navigation).
fn html_title(path: &Path, bytes: &[u8]) -> Option<String> {
    if !matches!(extension(path).as_str(), "html" | "htm") {
        return None;
    }
    let page = String::from_utf8_lossy(bytes);
    let lower = page.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open = start + lower[start..].find('>')? + 1;
    let close = open + lower[open..].find("</title")?;
    let title = html2text::from_read(page[open..close].as_bytes(), 200).ok()?;
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then(|| title.chars().take(80).collect())
}

/// What a [`sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
    pub removed: Vec<String>,
    /// Files that could not be read, or were indexed without their
    /// vectors (for full-text search only, embedded at the next sync), and
    /// why.
    pub failed: Vec<(String, String)>,
}

/// An embedder, for [`sync`], which runs on a blocking thread: the runtime
/// its calls run on.
pub struct Embedding<'a> {
    pub embedder: &'a dyn Embedder,
    pub runtime: tokio::runtime::Handle,
}

/// Brings the store's documents in line with `paths` and with the files
/// it already holds: new and changed files (or, with `force`, every one)
/// are indexed again, vanished ones removed. Call it off the async threads
/// (it reads files, and waits for the embedder).
pub fn sync(
    store: &dyn AnyStore,
    paths: &[PathBuf],
    chunk_chars: usize,
    force: bool,
    now: i64,
    embedding: Option<&Embedding<'_>>,
) -> Result<Synced, StoreError> {
    let wanted_embedder = embedding.map(|e| e.embedder.name().to_string());
    let held = store.knowledge_docs()?;
    let mut wanted: Vec<PathBuf> = paths.to_vec();
    wanted.extend(held.iter().map(|d| PathBuf::from(&d.path)));
    let files = files_under(&wanted);
    let mut synced = Synced::default();
    for file in &files {
        let path = file.display().to_string();
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                synced.failed.push((path, e.to_string()));
                continue;
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let before = held.iter().find(|d| d.path == path);
        let embedded =
            wanted_embedder.is_none() || before.is_some_and(|d| d.embedder == wanted_embedder);
        if !force && embedded && before.is_some_and(|d| d.sha256 == sha256) {
            synced.unchanged += 1;
            continue;
        }
        let read = match read(file, &bytes, chunk_chars) {
            Ok(r) => r,
            Err(why) => {
                synced.failed.push((path, why));
                continue;
            }
        };
        let (embedder, vectors) = match embedding {
            None => (None, Vec::new()),
            Some(e) => match e.runtime.block_on(e.embedder.embed(&read.chunks)) {
                Ok(vectors) => (Some(e.embedder.name().to_string()), vectors),
                Err(why) => {
                    synced
                        .failed
                        .push((path.clone(), format!("indexed without vectors: {why}")));
                    (None, Vec::new())
                }
            },
        };
        store.write_now(Write::Knowledge(KnowledgeChange::Put {
            path: path.clone(),
            sha256,
            title: read.title,
            chunks: read.chunks,
            at: now,
            embedder,
            vectors,
        }))?;
        match before {
            Some(_) => synced.changed.push(path),
            None => synced.added.push(path),
        }
    }
    for doc in &held {
        if !Path::new(&doc.path).is_file() {
            store.write_now(Write::Knowledge(KnowledgeChange::Remove {
                path: doc.path.clone(),
            }))?;
            synced.removed.push(doc.path.clone());
        }
    }
    Ok(synced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_read_into_chunks_with_a_title() {
        let md = read(Path::new("a.md"), b"# Returns\n\nWithin 30 days.", 500).unwrap();
        assert_eq!(md.title, "Returns");
        assert_eq!(md.chunks, ["# Returns\n\nWithin 30 days."]);
        let html = read(
            Path::new("b.html"),
            b"<html><head><title>Opening hours</title></head><body><h1>Hours</h1><p>We open at <b>nine</b>.</p></body></html>",
            500,
        )
        .unwrap();
        assert_eq!(html.title, "Opening hours");
        assert!(
            html.chunks[0].contains("We open at") && html.chunks[0].contains("nine"),
            "{html:?}"
        );
        assert!(!html.chunks[0].contains("<p>"));
        assert!(read(Path::new("c.txt"), &[0xff, 0xfe], 500).is_err());
        assert!(readable(Path::new("x.PDF")) && !readable(Path::new("x.docx")));
    }
}
