//! End-to-end tests of the built `convagent` binary with a temp HOME: chat,
//! history, doctor, completions.

#[path = "support/mod.rs"]
mod support;

#[path = "cli/chat.rs"]
mod chat;
#[path = "cli/completions.rs"]
mod completions;
#[path = "cli/doctor.rs"]
mod doctor;
#[path = "cli/handoff.rs"]
mod handoff;
#[path = "cli/history.rs"]
mod history;
#[path = "cli/knowledge.rs"]
mod knowledge;
#[path = "cli/mcp.rs"]
mod mcp;
#[path = "cli/media.rs"]
mod media;
#[path = "cli/outbox.rs"]
mod outbox;
#[path = "cli/serve.rs"]
mod serve;
#[path = "cli/service.rs"]
mod service;
#[path = "cli/several.rs"]
mod several;
#[path = "cli/store.rs"]
mod store;
#[path = "cli/tools.rs"]
mod tools;
#[path = "cli/tui.rs"]
mod tui;
#[path = "cli/tunnel.rs"]
mod tunnel;

use std::path::PathBuf;

use assert_cmd::Command;

/// Every variable of SPEC.md's contract: cleared so the developer's own
/// environment cannot leak into a test.
const CONTRACT_VARS: &[&str] = &[
    "CONVAGENT_CONFIG",
    "CONVAGENT_LOG",
    "CONVAGENT_LISTEN",
    "CONVAGENT_PUBLIC_URL",
    "CONVAGENT_METRICS_TOKEN",
    "CONVAGENT_DRY_RUN",
    "OLLAMA_HOST",
    "CONVAGENT_OLLAMA_MODEL",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "CONVAGENT_OPENAI_MODEL",
    "CONVAGENT_MODEL_PATH",
    "CONVAGENT_LLM_CHAIN",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_WHATSAPP_FROM",
    "TWILIO_SMS_FROM",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "CONVAGENT_TWILIO_API_BASE",
    "CONVAGENT_TELEGRAM_API_BASE",
    "CONVAGENT_SLACK_API_BASE",
    "CONVAGENT_ENV_FILE",
    "CONVAGENT_DATABASE_URL",
    "CONVAGENT_STT_BASE_URL",
    "CONVAGENT_STT_MODEL",
    "CONVAGENT_STT_API_KEY",
    "TWILIO_AUTH_TOKEN_PREVIOUS",
    "TELEGRAM_WEBHOOK_SECRET_PREVIOUS",
    "SLACK_SIGNING_SECRET_PREVIOUS",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The config every test starts from (tests that write their own keep this).
pub const BASE_CONFIG: &str = "[llm.embedded]\nthreads = 1\n";

/// A temp HOME with XDG dirs inside it; nothing is read or written elsewhere.
pub struct Env {
    pub home: tempfile::TempDir,
    /// Where Ollama is supposed to be: a closed port unless a test fakes it.
    pub ollama: String,
    /// CONVAGENT_LISTEN: a port of this test's own, so no test depends on 8080.
    pub listen: String,
    /// Hold the ports above for the test's life.
    _ports: [support::ReservedPort; 2],
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        let ports = [support::ReservedPort::new(), support::ReservedPort::new()];
        let env = Env {
            home: tempfile::tempdir().unwrap(),
            ollama: ports[0].url(),
            listen: ports[1].addr(),
            _ports: ports,
        };
        // Tests run side by side on 2 cores: one llama.cpp thread per
        // process keeps them from oversubscribing the machine.
        env.write_config(BASE_CONFIG);
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("data/convagent/convagent.db")
    }

    pub fn log_text(&self) -> String {
        let dir = self.path("state/convagent/logs");
        let mut text = String::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
        text
    }

    /// `convagent ARGS` in this environment, with the real model and no
    /// Ollama (connection refused) unless the test says otherwise.
    pub fn cmd(&self, args: &[&str]) -> Command {
        Command::from_std(self.std_cmd(args))
    }

    /// The same, as a plain process (for daemons the test stops itself).
    pub fn std_cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("convagent"));
        for var in CONTRACT_VARS {
            cmd.env_remove(var);
        }
        let home = self.home.path();
        cmd.env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("USER", "tester")
            .env("OLLAMA_HOST", &self.ollama)
            .env("CONVAGENT_LISTEN", &self.listen)
            .env("CONVAGENT_MODEL_PATH", support::model_path())
            .current_dir(home)
            .args(args);
        cmd
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path("config/convagent/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// `kill -SIGNAL pid`, asserting it was delivered.
pub fn send_signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

pub fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
