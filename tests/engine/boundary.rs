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

/// Lines of the Rust files under `dir` naming a forbidden crate.
fn forbidden_names(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
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
    offences
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
    let offences = forbidden_names(&core);
    assert!(
        offences.is_empty(),
        "the core names adapter crates:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_scan_catches_an_offence_in_a_nested_file() {
    // The same scan over a tree with one offending file, two levels down:
    // a scan that silently matched nothing would pass the test above.
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("ports/store");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(dir.path().join("clean.rs"), "pub struct Fine;\n").unwrap();
    std::fs::write(
        nested.join("leak.rs"),
        "//! fine\nuse rusqlite::Connection;\n",
    )
    .unwrap();
    let offences = forbidden_names(dir.path());
    assert_eq!(offences.len(), 1, "{offences:?}");
    assert!(offences[0].ends_with("leak.rs:2: rusqlite"), "{offences:?}");
}

/// Lines of the Rust files under `dir` that contain `needle`.
fn lines_naming(dir: &str, needle: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    assert!(!files.is_empty(), "no Rust files under {dir}");
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains(needle))
                .map(|(n, _)| format!("{}:{}", f.display(), n + 1))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn config_depends_on_no_adapter() {
    // Adapters read the configuration; the configuration never reaches
    // into an adapter (that made an import cycle once).
    let offences = lines_naming("src/config", "adapters::");
    assert!(offences.is_empty(), "{offences:?}");
}

#[test]
fn only_the_registry_lists_the_channels() {
    // Adding a channel is its adapter file and one line in the registry:
    // the daemon, commands and TUI never name a particular channel's adapter.
    for dir in ["src/daemon", "commands", "tui"] {
        for adapter in ["telegram::", "slack::", "whatsapp::", "sms::", "twilio::"] {
            let offences = lines_naming(dir, &format!("channels::{adapter}"));
            assert!(offences.is_empty(), "{dir} names {adapter}: {offences:?}");
        }
    }
}

/// Each test binary (`tests/X.rs`) names its files by `#[path]`, and cargo
/// compiles only what is named: a file left out of the list would never
/// run, silently. Every `.rs` file under `tests/` is named by its binary
/// (or, for `support/`, by `support/mod.rs`).
#[test]
fn no_test_file_is_forgotten() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut forgotten = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (lister, prefix) = if name == "support" {
            (dir.join("mod.rs"), String::new())
        } else {
            (tests.join(format!("{name}.rs")), format!("{name}/"))
        };
        let Ok(listed) = std::fs::read_to_string(&lister) else {
            continue; // golden payloads and other data
        };
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        for file in files {
            let rel = file
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "mod.rs" {
                continue;
            }
            if !listed.contains(&format!("#[path = \"{prefix}{rel}\"]")) {
                forgotten.push(format!("{} (not in {})", file.display(), lister.display()));
            }
        }
    }
    assert!(forgotten.is_empty(), "never compiled: {forgotten:#?}");
}
