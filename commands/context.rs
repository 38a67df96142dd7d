//! What commands share, opened once and only when asked for: settings (and
//! with them telemetry), the store, the LLM providers.

use std::cell::{Cell, OnceCell};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use convagent::adapters::clock::SystemClock;
use convagent::adapters::llm::{self, Configured};
use convagent::adapters::mcp::{McpTools, SandboxSettings, ServerStatus, client};
use convagent::adapters::store::{OpenMode, PostgresStore, SqliteStore};
use convagent::config::{ConfigError, Settings};
use convagent::core::embeddings::Embedder;
use convagent::core::ports::AnyStore;
use convagent::core::tools::Tools;
use convagent::core::{Agent, AgentSettings};
use convagent::telemetry::{self, Masker, TelemetryGuard, TelemetryOptions};

/// Where `[[mcp.servers]]` commands get their directories, and their limits.
pub fn tool_sandbox(settings: &Settings) -> SandboxSettings {
    SandboxSettings {
        tools_dir: settings.dirs.state.join("tools"),
        limits: settings.config.mcp.sandbox.clone(),
    }
}

/// An error with a hint for the user.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
}

impl UserError {
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        UserError {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

pub struct Context {
    config_flag: Option<PathBuf>,
    env_file: Option<PathBuf>,
    verbose: u8,
    file_logs_only: Cell<bool>,
    settings: OnceCell<Settings>,
    telemetry: OnceCell<Option<TelemetryGuard>>,
    store: OnceCell<Arc<dyn AnyStore>>,
    /// The tools of `[[mcp.servers]]`, once started (`start_tools`).
    tools: OnceCell<Option<Arc<dyn Tools>>>,
    /// `[knowledge.embeddings]`'s embedder, once made.
    embedder: OnceCell<Option<Arc<dyn Embedder>>>,
}

impl Context {
    pub fn new(config_flag: Option<PathBuf>, env_file: Option<PathBuf>, verbose: u8) -> Self {
        Context {
            config_flag,
            env_file,
            verbose,
            file_logs_only: Cell::new(false),
            settings: OnceCell::new(),
            telemetry: OnceCell::new(),
            store: OnceCell::new(),
            tools: OnceCell::new(),
            embedder: OnceCell::new(),
        }
    }

    /// The embedder `[knowledge.embeddings]` names (none when off); made
    /// once (the local model is read from disk).
    pub fn embedder(&self) -> Result<Option<Arc<dyn Embedder>>> {
        if let Some(e) = self.embedder.get() {
            return Ok(e.clone());
        }
        let settings = self.settings()?;
        let made = convagent::adapters::embeddings::from_config(
            &settings.config.knowledge.embeddings,
            &settings.config.llm,
            &settings.dirs.default_embedding_model(),
        )
        .map_err(|why| {
            UserError::new(
                format!("cannot make the embedder: {why}"),
                "fix [knowledge.embeddings], or set its provider to \"none\"",
            )
        })?;
        Ok(self.embedder.get_or_init(|| made).clone())
    }

    /// Keeps log lines off the terminal (for the TUI); call before
    /// anything loads the settings.
    pub fn logs_to_file_only(&self) {
        self.file_logs_only.set(true);
    }

    /// Loads the configuration (once) and starts telemetry with it.
    pub fn settings(&self) -> Result<&Settings> {
        if let Some(s) = self.settings.get() {
            return Ok(s);
        }
        let loaded = self.load_settings()?;
        let settings = self.settings.get_or_init(|| loaded);
        self.telemetry.get_or_init(|| {
            let stderr_filter = match self.verbose {
                0 => "warn".to_string(),
                1 => settings.config.log.filter.clone(),
                _ => "debug".to_string(),
            };
            let options = TelemetryOptions {
                log_dir: Some(settings.log_dir()),
                filter: settings.config.log.filter.clone(),
                stderr_filter: (!self.file_logs_only.get()).then_some(stderr_filter),
                secrets: settings.config.secrets(),
            };
            match telemetry::init(&options) {
                Ok(guard) => Some(guard),
                Err(e) => {
                    eprintln!("warning: {e}; continuing without a log file");
                    None
                }
            }
        });
        Ok(settings)
    }

    /// Reads the configuration afresh (`serve` on SIGHUP): the file, then
    /// the environment file (`--env-file`), then the environment, which
    /// wins over the file as with dotenv.
    pub fn load_settings(&self) -> Result<Settings> {
        let mut from_file = std::collections::HashMap::new();
        if let Some(path) = &self.env_file {
            let hint = "check --env-file / CONVAGENT_ENV_FILE: KEY=VALUE lines";
            let lines = dotenvy::from_path_iter(path).map_err(|e| {
                UserError::new(format!("cannot read {}: {e}", path.display()), hint)
            })?;
            for line in lines {
                let (key, value) =
                    line.map_err(|e| UserError::new(format!("{}: {e}", path.display()), hint))?;
                from_file.insert(key, value);
            }
        }
        Settings::load(self.config_flag.as_deref(), &|k| {
            std::env::var(k).ok().or_else(|| from_file.get(k).cloned())
        })
        .map_err(config_error)
    }

    /// The masker of the log (configured secrets, and those a reload adds),
    /// for what else must not hold them: stored traces.
    pub fn log_masker(&self) -> convagent::telemetry::Masker {
        match self.telemetry.get() {
            Some(Some(guard)) => guard.masker.clone(),
            _ => self.masker(),
        }
    }

    /// Masks these secrets in every log line from now on, as well as the
    /// ones configured at start.
    pub fn mask_also(&self, secrets: &[String]) {
        if let Some(Some(guard)) = self.telemetry.get() {
            guard.masker.add(secrets);
        }
    }

    /// The store, opened for writing (creating it and migrating as needed):
    /// Postgres when `store.url` (`CONVAGENT_DATABASE_URL`) is set, else
    /// the SQLite file.
    pub fn store(&self) -> Result<Arc<dyn AnyStore>> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        let settings = self.settings()?;
        let store: Arc<dyn AnyStore> = match &settings.config.store.url {
            Some(url) => Arc::new(
                PostgresStore::open(url, settings.config.store.connections)
                    .map_err(|e| postgres_error(&e))?,
            ),
            None => {
                let path = settings.store_path();
                Arc::new(SqliteStore::open(&path).with_context(|| {
                    UserError::new(
                        format!("cannot open the store at {}", path.display()),
                        "check the directory is writable, or set `store.path` in the config",
                    )
                })?)
            }
        };
        Ok(self.store.get_or_init(|| store).clone())
    }

    /// The store for reading only, or `None` when it was never created. On
    /// Postgres: connected without migrating (a few connections).
    pub fn store_read_only(&self) -> Result<Option<Box<dyn AnyStore>>> {
        let settings = self.settings()?;
        if let Some(url) = &settings.config.store.url {
            let store = PostgresStore::connect(url, 2).map_err(|e| postgres_error(&e))?;
            return Ok(Some(Box::new(store)));
        }
        let path = settings.store_path();
        if !path.exists() {
            return Ok(None);
        }
        let store = SqliteStore::open_with(&path, OpenMode::ReadOnly)
            .with_context(|| format!("cannot open the store at {}", path.display()))?;
        Ok(Some(Box::new(store)))
    }

    pub fn providers(&self) -> Result<Vec<Configured>> {
        Ok(llm::configured(self.settings()?))
    }

    /// Starts the MCP servers of `[[mcp.servers]]` (once) for every agent
    /// made after, and says on stderr what became of each (`who`: the
    /// command).
    pub async fn start_tools(&self, who: &str) -> Result<()> {
        let config = &self.settings()?.config;
        if self.tools.get().is_some() {
            return Ok(());
        }
        let timeout = std::time::Duration::from_secs(config.mcp.call_timeout_secs);
        let sandbox = tool_sandbox(self.settings()?);
        let (tools, statuses) = McpTools::start(&config.mcp.servers, timeout, &sandbox).await;
        let _ = self.tools.set(client::shared(tools));
        tell_tools(who, &statuses);
        Ok(())
    }

    /// The agent over the store and the configured LLM chain (or
    /// `providers`). `patient`: turns fail over after `agent.patience_secs`
    /// without a first token (the daemon, where nobody watches).
    pub fn agent(&self, providers: &[Configured], patient: bool) -> Result<Agent> {
        self.agent_for(self.settings()?, providers, patient)
    }

    /// [`Context::agent`] for `settings` (a reloaded configuration).
    pub fn agent_for(
        &self,
        settings: &Settings,
        providers: &[Configured],
        patient: bool,
    ) -> Result<Agent> {
        let config = &settings.config;
        let store = self.store()?;
        let clock = Arc::new(SystemClock);
        let chain = llm::chain(providers, settings, store.clone(), clock.clone(), patient);
        let agent_settings = AgentSettings {
            default_system_prompt: config.agent.system_prompt.clone(),
            context_budget: config.agent.context_budget,
            reply_reserve: config.agent.reply_reserve,
            fallback_reply: config.agent.fallback_reply.clone(),
            summary_min_turns: config.agent.summary_min_turns,
            summary_threshold: config.agent.summary_threshold,
            secrets: config.secrets(),
            max_input_chars: config.agent.max_input_chars,
            limits: config.limits.clone(),
            max_tool_calls: config.mcp.max_calls_per_turn,
            media: config.media.clone(),
            handoff: config.handoff.clone(),
            approve_timeout_ms: (config.mcp.approve_timeout_secs as i64).saturating_mul(1000),
            knowledge: config.knowledge.clone(),
            memory: config.memory.clone(),
            ..AgentSettings::default()
        };
        // A prompt edited in the config since it was last taken becomes
        // the next version now, not never.
        store
            .sync_configured_prompt(&config.agent.system_prompt, crate::output::now_ms())
            .context("storing the configured system prompt")?;
        // Patterns were checked when the config loaded.
        let guardrails = config.guardrails()?;
        let files = convagent::adapters::media_files::DiskFiles::new(settings.media_dir());
        // Approvals are answered through the store (`convagent approvals`,
        // the TUI); `serve` adds the chat's buttons.
        let desk = convagent::daemon::Desk::new(
            store.clone(),
            clock.clone(),
            Vec::new(),
            config.handoff.notify_url.clone(),
        );
        let mut agent = Agent::new(store, Arc::new(chain), clock, guardrails, agent_settings)
            .with_files(Arc::new(files))
            .with_operators(Arc::new(desk));
        if let Some(embedder) = self.embedder()? {
            agent = agent.with_embedder(embedder);
        }
        Ok(match self.tools.get().cloned().flatten() {
            Some(tools) => agent.with_tools(tools),
            None => agent,
        })
    }

    /// Masks configured secrets; masks nothing if the config did not load.
    pub fn masker(&self) -> Masker {
        self.settings
            .get()
            .map(|s| Masker::new(&s.config.secrets()))
            .unwrap_or_default()
    }
}

/// A Postgres store that cannot be opened, with what to check (the error
/// names the database without its password).
fn postgres_error(e: &convagent::core::StoreError) -> anyhow::Error {
    anyhow::Error::new(UserError::new(
        format!("cannot open the Postgres store: {e}"),
        "check store.url / CONVAGENT_DATABASE_URL, that Postgres runs and accepts this user",
    ))
}

fn config_error(e: ConfigError) -> anyhow::Error {
    let hint = match &e {
        ConfigError::Parse { .. } => {
            "fix the key in the file; config.example.toml lists every key with its type"
        }
        ConfigError::Read { .. } => "check the path given by --config or CONVAGENT_CONFIG",
        ConfigError::Env { .. } => "fix or unset the environment variable",
        ConfigError::Invalid { .. } => "fix the value in the config file",
        ConfigError::NoHome => "set HOME (or the XDG_* variables)",
    };
    anyhow::Error::new(UserError::new(e.to_string(), hint))
}

/// Says on stderr what became of each MCP server (`who`: the command).
fn tell_tools(who: &str, statuses: &[ServerStatus]) {
    for status in statuses {
        match &status.tools {
            Ok(tools) => eprintln!(
                "convagent {who}: MCP server {}: {} tool(s) offered to the model ({})",
                status.name,
                tools.len(),
                tools.join(", ")
            ),
            Err(why) => eprintln!(
                "convagent {who}: MCP server {} left out: {why} (`convagent doctor` checks it)",
                status.name
            ),
        }
    }
}
