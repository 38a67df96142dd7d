//! The committed completion scripts and man page match what the binary
//! generates.
//! Regenerate with `cargo run -- completions --dir completions`.

use std::path::Path;

use crate::{Env, stdout_of};

#[test]
fn committed_completions_are_current() {
    let env = Env::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    for (shell, file) in [
        ("bash", "convagent.bash"),
        ("zsh", "_convagent"),
        ("fish", "convagent.fish"),
    ] {
        let out = env.cmd(&["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let generated = stdout_of(&out);
        assert!(
            generated.contains("history"),
            "{shell} script names the subcommands"
        );
        let committed = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("completions/{file}: {e}"));
        assert!(
            committed == generated,
            "completions/{file} is stale: run `cargo run -- completions --dir completions`"
        );
    }
}

#[test]
fn the_committed_man_page_is_current() {
    let env = Env::new();
    let dir = env.path("generated");
    env.cmd(&["completions", "--dir", &dir.to_string_lossy()])
        .assert()
        .success();
    let generated = std::fs::read_to_string(dir.join("convagent.1")).unwrap();
    assert!(generated.contains(".TH convagent 1"), "roff man page");
    for command in [
        "serve", "chat", "history", "replay", "doctor", "tunnel", "tui",
    ] {
        assert!(generated.contains(command), "names {command}");
    }
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("completions/convagent.1"),
    )
    .expect("completions/convagent.1");
    assert!(
        committed == generated,
        "completions/convagent.1 is stale: run `cargo run -- completions --dir completions`"
    );
}
