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
        "serve", "chat", "history", "outbox", "replay", "doctor", "tunnel", "tui",
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

#[test]
fn man_finds_the_page_where_install_sh_puts_it() {
    // A clean environment: only PATH (with the install's bin directory) and
    // HOME; no MANPATH. `man` derives its search path from PATH.
    let home = tempfile::tempdir().unwrap();
    let cargo_home = home.path().join("cargo");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let installed = std::process::Command::new("sh")
        .arg(root.join("install.sh"))
        .arg("--docs-only")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path())
        .env("CARGO_HOME", &cargo_home)
        .output()
        .unwrap();
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let bin = cargo_home.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(
        assert_cmd::cargo::cargo_bin("convagent"),
        bin.join("convagent"),
    )
    .unwrap();
    let found = std::process::Command::new("man")
        .args(["-w", "convagent"])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("HOME", home.path())
        .output()
        .expect("man is installed by install.sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        found.status.success(),
        "man -w: {}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert_eq!(
        Path::new(&path).canonicalize().unwrap(),
        cargo_home
            .join("share/man/man1/convagent.1")
            .canonicalize()
            .unwrap()
    );
}
