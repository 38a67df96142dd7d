//! The core knows no adapter: `src/core/` may not name a database, HTTP or
//! terminal crate (ARCHITECTURE.md, habit 12).

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "rusqlite",
    "reqwest",
    "axum",
    "ratatui",
    "llama_cpp",
    "hyper",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_names_no_adapter_crate() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(
        files.len() >= 5,
        "expected the core's files, found {files:?}"
    );
    let mut offences = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for word in FORBIDDEN {
                if line.contains(word) {
                    offences.push(format!("{}:{}: {word}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the core names adapter crates:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_check_would_catch_an_offence() {
    // Guard against the scan silently matching nothing.
    let line = "use rusqlite::Connection;";
    assert!(FORBIDDEN.iter().any(|w| line.contains(w)));
}
