//! Configuration: defaults < `config.toml` (XDG config dir, or `--config` /
//! `CONVAGENT_CONFIG`) < environment < flags. The environment names are a
//! contract (SPEC.md); `config.example.toml` documents every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::guardrails::Guardrails;

mod schema;

pub use schema::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}{}: key `{key}`: {message}", .path.display(), .line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
    #[error("config: `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error(
        "cannot find a home directory to keep convagent's files in (set HOME or XDG_DATA_HOME)"
    )]
    NoHome,
}

/// Where a loaded configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// No file: defaults (and environment). `looked_at` is the default path.
    Defaults {
        looked_at: PathBuf,
    },
}

/// The file `install.sh` fetches for the embedded provider (SPEC.md): the
/// configuration decides where it lives, the embedded adapter checks it.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The directory `install.sh` puts the local embedding model in.
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-MiniLM-L6-v2";

/// The XDG directories convagent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    pub config: PathBuf,
    pub data: PathBuf,
    pub state: PathBuf,
}

impl Dirs {
    pub fn from_env() -> Result<Self, ConfigError> {
        let dirs =
            directories::ProjectDirs::from("", "", "convagent").ok_or(ConfigError::NoHome)?;
        Ok(Dirs {
            config: dirs.config_dir().to_path_buf(),
            data: dirs.data_dir().to_path_buf(),
            state: dirs
                .state_dir()
                .unwrap_or_else(|| dirs.data_local_dir())
                .to_path_buf(),
        })
    }

    /// Where `install.sh` puts the default embedded model.
    pub fn default_model_path(&self) -> PathBuf {
        self.data.join("models").join(DEFAULT_MODEL_FILE)
    }

    /// Where `install.sh` puts the local embedding model (a directory).
    pub fn default_embedding_model(&self) -> PathBuf {
        self.data.join("models").join(DEFAULT_EMBEDDING_MODEL)
    }
}

/// A configuration with its resolved locations.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub source: ConfigSource,
    pub dirs: Dirs,
}

impl Settings {
    /// Loads the configuration: `explicit` is `--config`/`CONVAGENT_CONFIG`
    /// (which must exist); otherwise the default file is read if present.
    /// `env` looks up environment variables (injectable for tests).
    pub fn load(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let dirs = Dirs::from_env()?;
        let (mut config, source) = match explicit {
            Some(path) => (read_file(path)?, ConfigSource::File(path.to_path_buf())),
            None => {
                let path = dirs.config.join("config.toml");
                if path.is_file() {
                    (read_file(&path)?, ConfigSource::File(path))
                } else {
                    (
                        Config::default(),
                        ConfigSource::Defaults { looked_at: path },
                    )
                }
            }
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(Settings {
            config,
            source,
            dirs,
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.config
            .store
            .path
            .clone()
            .unwrap_or_else(|| self.dirs.data.join("convagent.db"))
    }

    pub fn log_dir(&self) -> PathBuf {
        self.config
            .log
            .dir
            .clone()
            .unwrap_or_else(|| self.dirs.state.join("logs"))
    }

    /// Where fetched media files are kept: `[media] dir`, else the data
    /// directory's `media/`.
    pub fn media_dir(&self) -> PathBuf {
        match self.config.media.dir.trim() {
            "" => self.dirs.data.join("media"),
            dir => PathBuf::from(dir),
        }
    }

    pub fn model_path(&self) -> PathBuf {
        self.config
            .llm
            .embedded
            .model_path
            .clone()
            .unwrap_or_else(|| self.dirs.default_model_path())
    }
}

/// Parses a config file, naming the file, the key and the line on error.
pub fn read_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|ParseError { key, line, message }| ConfigError::Parse {
        path: path.to_path_buf(),
        key,
        line,
        message,
    })
}

struct ParseError {
    key: String,
    line: Option<usize>,
    message: String,
}

fn parse(text: &str) -> Result<Config, ParseError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ParseError {
        key: "(syntax)".into(),
        line: line_of(e.span()),
        message: e.message().trim().to_string(),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ParseError {
            key,
            line: line_of(inner.span()),
            message: inner.message().trim().to_string(),
        }
    })
}

fn parse_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(ConfigError::Env {
            var,
            message: format!("`{other}` is not a boolean (use 1 or 0)"),
        }),
    }
}

/// Ollama accepts `OLLAMA_HOST=host:port` without a scheme.
fn normalize_host(value: &str) -> String {
    if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    }
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message,
    }
}

impl Config {
    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.store.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "store.url",
                "expected postgres://user:password@host/database".into(),
            ));
        }
        if self.store.connections == 0 {
            return Err(invalid("store.connections", "at least 1".into()));
        }
        if self.store.lease_secs < 3 {
            return Err(invalid(
                "store.lease_secs",
                "at least 3 (a lease is renewed every third of it)".into(),
            ));
        }
        let guardrails = self
            .guardrails()
            .map_err(|e| invalid("guardrails.patterns", e.to_string()))?;
        if let Some(unknown) = self
            .guardrails
            .refusals
            .keys()
            .find(|name| !guardrails.rule_names().any(|r| r == name.as_str()))
        {
            return Err(invalid(
                "guardrails.refusals",
                format!(
                    "no rule is named `{unknown}` (rules: {})",
                    guardrails.rule_names().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let a = &self.agent;
        if a.reply_reserve >= a.context_budget {
            return Err(invalid(
                "agent.reply_reserve",
                format!(
                    "must be less than agent.context_budget ({})",
                    a.context_budget
                ),
            ));
        }
        if !(0.0..=1.0).contains(&a.summary_threshold) {
            return Err(invalid(
                "agent.summary_threshold",
                "must be between 0 and 1".into(),
            ));
        }
        if self.llm.breaker_failures == 0 {
            return Err(invalid("llm.breaker_failures", "must be at least 1".into()));
        }
        self.retention()?;
        for (key, text) in [
            ("limits.notice", &self.limits.notice),
            ("limits.tokens_notice", &self.limits.tokens_notice),
        ] {
            if text.trim().is_empty() {
                return Err(invalid(
                    key,
                    "must not be empty: it is what the sender reads".into(),
                ));
            }
        }
        Ok(())
    }

    /// `retention.messages` and `retention.traces` as durations (`None`:
    /// kept for ever).
    pub fn retention(&self) -> Result<(Option<Duration>, Option<Duration>), ConfigError> {
        let parse = |key: &str, value: &Option<String>| -> Result<Option<Duration>, ConfigError> {
            let Some(text) = value.as_deref() else {
                return Ok(None);
            };
            match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => Ok(Some(d)),
                Ok(_) => Err(invalid(key, "must be longer than zero".into())),
                Err(e) => Err(invalid(
                    key,
                    format!("`{text}` is not a duration ({e}); write e.g. 90d, 12h, 30m"),
                )),
            }
        };
        Ok((
            parse("retention.messages", &self.retention.messages)?,
            parse("retention.traces", &self.retention.traces)?,
        ))
    }

    /// The built-in guardrails plus the configured patterns.
    pub fn guardrails(&self) -> Result<Guardrails, crate::core::guardrails::PatternError> {
        let patterns: Vec<(String, String)> = self
            .guardrails
            .patterns
            .iter()
            .map(|p| (p.name.clone(), p.pattern.clone()))
            .collect();
        let g = &self.guardrails;
        Ok(Guardrails::new(&patterns)?.with_refusals(g.refusal.as_deref(), &g.refusals))
    }

    /// Applies the environment variables of SPEC.md over this config.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        let set = |target: &mut Option<String>, name: &str| {
            if let Some(v) = get(name) {
                *target = Some(v);
            }
        };
        if let Some(v) = get("CONVAGENT_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = get("CONVAGENT_LISTEN") {
            self.server.listen = v;
        }
        set(&mut self.store.url, "CONVAGENT_DATABASE_URL");
        set(&mut self.stt.base_url, "CONVAGENT_STT_BASE_URL");
        set(&mut self.stt.api_key, "CONVAGENT_STT_API_KEY");
        if let Some(v) = get("CONVAGENT_STT_MODEL") {
            self.stt.model = v;
        }
        set(&mut self.server.public_url, "CONVAGENT_PUBLIC_URL");
        set(&mut self.server.metrics_token, "CONVAGENT_METRICS_TOKEN");
        if let Some(v) = env("CONVAGENT_DRY_RUN") {
            self.server.dry_run = parse_bool("CONVAGENT_DRY_RUN", &v)?;
        }
        if let Some(v) = get("OLLAMA_HOST") {
            self.llm.ollama.host = normalize_host(&v);
        }
        if let Some(v) = get("CONVAGENT_OLLAMA_MODEL") {
            self.llm.ollama.model = v;
        }
        if let Some(v) = get("OPENAI_BASE_URL") {
            self.llm.openai.base_url = v;
        }
        set(&mut self.llm.openai.api_key, "OPENAI_API_KEY");
        if let Some(v) = get("CONVAGENT_OPENAI_MODEL") {
            self.llm.openai.model = v;
        }
        if let Some(v) = get("CONVAGENT_MODEL_PATH") {
            self.llm.embedded.model_path = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CONVAGENT_LLM_CHAIN") {
            self.llm.chain = parse_chain(&v).map_err(|message| ConfigError::Env {
                var: "CONVAGENT_LLM_CHAIN",
                message,
            })?;
        }
        let c = &mut self.channels;
        set(&mut c.twilio.account_sid, "TWILIO_ACCOUNT_SID");
        set(&mut c.twilio.auth_token, "TWILIO_AUTH_TOKEN");
        set(
            &mut c.twilio.auth_token_previous,
            "TWILIO_AUTH_TOKEN_PREVIOUS",
        );
        set(&mut c.twilio.whatsapp_from, "TWILIO_WHATSAPP_FROM");
        set(&mut c.twilio.sms_from, "TWILIO_SMS_FROM");
        set(&mut c.twilio.api_base, "CONVAGENT_TWILIO_API_BASE");
        set(
            &mut c.twilio.phone_number_sid,
            "CONVAGENT_TWILIO_PHONE_NUMBER_SID",
        );
        set(&mut c.telegram.bot_token, "TELEGRAM_BOT_TOKEN");
        set(&mut c.telegram.webhook_secret, "TELEGRAM_WEBHOOK_SECRET");
        set(
            &mut c.telegram.webhook_secret_previous,
            "TELEGRAM_WEBHOOK_SECRET_PREVIOUS",
        );
        set(&mut c.telegram.api_base, "CONVAGENT_TELEGRAM_API_BASE");
        set(&mut c.slack.bot_token, "SLACK_BOT_TOKEN");
        set(&mut c.slack.signing_secret, "SLACK_SIGNING_SECRET");
        set(
            &mut c.slack.signing_secret_previous,
            "SLACK_SIGNING_SECRET_PREVIOUS",
        );
        set(&mut c.slack.api_base, "CONVAGENT_SLACK_API_BASE");
        Ok(())
    }

    /// Every configured secret value, for masking in logs and output.
    pub fn secrets(&self) -> Vec<String> {
        let c = &self.channels;
        [
            &self.llm.openai.api_key,
            &self.stt.api_key,
            &self.server.metrics_token,
            &c.twilio.auth_token,
            &c.twilio.auth_token_previous,
            &c.telegram.bot_token,
            &c.telegram.webhook_secret,
            &c.telegram.webhook_secret_previous,
            &c.slack.bot_token,
            &c.slack.signing_secret,
            &c.slack.signing_secret_previous,
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .cloned()
        .chain(self.store.url.as_deref().and_then(url_password))
        .chain(
            self.handoff
                .notify_url
                .clone()
                .filter(|u| !u.trim().is_empty()),
        )
        .chain(self.mcp.servers.iter().flat_map(|server| {
            // A tool server's token, and what its environment names as one.
            let secret_named = |k: &str| {
                let k = k.to_ascii_uppercase();
                ["TOKEN", "KEY", "SECRET", "PASSWORD"]
                    .iter()
                    .any(|w| k.contains(w))
            };
            std::iter::once(server.token.clone())
                .chain(
                    server
                        .env
                        .iter()
                        .filter(move |(k, _)| secret_named(k))
                        .map(|(_, v)| v.clone()),
                )
                .filter(|s| !s.trim().is_empty())
        }))
        .collect()
    }
}

/// The password in a connection URL (`scheme://user:password@host/…`).
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let (auth, _) = rest.rsplit_once('@')?;
    let (_, password) = auth.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

impl Config {
    /// This config with each channel's previous webhook secret in place of
    /// its current one, for the channels being rotated (`None`: none is).
    /// Adapters built from it verify what providers still sign the old way.
    pub fn with_previous_secrets(&self) -> Option<Config> {
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let (old, mut previous) = (&self.channels, self.clone());
        // A channel without a previous secret has nothing to accept twice.
        let c = &mut previous.channels;
        c.twilio.auth_token = set(&old.twilio.auth_token_previous);
        c.telegram.webhook_secret = set(&old.telegram.webhook_secret_previous);
        c.slack.signing_secret = set(&old.slack.signing_secret_previous);
        let any = [
            &c.twilio.auth_token,
            &c.telegram.webhook_secret,
            &c.slack.signing_secret,
        ]
        .iter()
        .any(|s| s.is_some());
        any.then_some(previous)
    }
}

/// Parses a comma list of provider names (`ollama,embedded`).
pub fn parse_chain(value: &str) -> Result<Vec<ProviderKind>, String> {
    let chain = value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            ProviderKind::parse(s).ok_or_else(|| {
                format!(
                    "unknown provider `{}` (expected a comma list of ollama, openai, embedded)",
                    s.trim()
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err("the chain is empty (expected e.g. `ollama,embedded`)".into());
    }
    Ok(chain)
}

/// Seconds from config as a [`Duration`].
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../config.example.toml");
        let parsed = parse(text).map_err(|e| e.message).unwrap();
        // The example documents the defaults: uncommented keys hold them.
        assert_eq!(parsed, Config::default());
        // Every commented-out key is valid too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = ") || r.starts_with('['))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let full = parse(&uncommented)
            .map_err(|e| format!("{}: {}", e.key, e.message))
            .unwrap();
        full.validate().unwrap();
        assert_eq!(full.guardrails.patterns.len(), 1);
        let refused = full
            .guardrails()
            .unwrap()
            .check("is ACME corp better")
            .unwrap();
        assert_eq!(refused.refusal, "I can only talk about our own products.");
    }

    #[test]
    fn errors_name_the_key_the_line_and_what_was_expected() {
        let text = "[agent]\nsystem_prompt = \"hi\"\ncontext_budget = \"big\"\n";
        let e = parse(text).err().unwrap();
        assert_eq!(e.key, "agent.context_budget");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("expected"), "{}", e.message);

        let e = parse("[llm]\nchian = [\"ollama\"]\n").err().unwrap();
        assert_eq!(e.key, "llm.chian");
        assert!(e.message.contains("unknown field `chian`"), "{}", e.message);

        let e = parse("[llm]\nchain = [\"gpt\"]\n").err().unwrap();
        assert!(e.key.starts_with("llm.chain"), "{}", e.key);
        assert!(e.message.contains("ollama"), "{}", e.message);

        let e = parse("[agent\n").err().unwrap();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = parse("[llm.ollama]\nmodel = \"llama3\"\nhost = \"http://a:1\"\n")
            .map_err(|e| e.message)
            .unwrap();
        config
            .apply_env(&env_of(&[
                ("OLLAMA_HOST", "10.0.0.5:11434"),
                ("CONVAGENT_LLM_CHAIN", "embedded, ollama"),
                ("CONVAGENT_DRY_RUN", "1"),
                ("TELEGRAM_BOT_TOKEN", "123:abc"),
                ("CONVAGENT_METRICS_TOKEN", "scrape-me"),
            ]))
            .unwrap();
        assert_eq!(config.llm.ollama.host, "http://10.0.0.5:11434");
        assert_eq!(config.llm.ollama.model, "llama3");
        assert_eq!(
            config.llm.chain,
            vec![ProviderKind::Embedded, ProviderKind::Ollama]
        );
        assert!(config.server.dry_run);
        assert_eq!(config.server.metrics_token.as_deref(), Some("scrape-me"));
        assert_eq!(
            config.secrets(),
            vec!["scrape-me".to_string(), "123:abc".to_string()],
            "masked wherever it could show"
        );
    }

    #[test]
    fn the_database_password_is_a_secret_to_mask() {
        let mut config = Config::default();
        config
            .apply_env(&env_of(&[(
                "CONVAGENT_DATABASE_URL",
                "postgres://bot:hunter2-db@db.example/convagent",
            )]))
            .unwrap();
        assert!(config.secrets().contains(&"hunter2-db".to_string()));
        config.store.url = Some("mysql://x".into());
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("store.url") && !e.contains("mysql"), "{e}");
    }

    #[test]
    fn invalid_values_are_caught_with_their_key() {
        let mut config = parse("[[guardrails.patterns]]\nname = \"x\"\npattern = \"(\"\n")
            .map_err(|e| e.message)
            .unwrap();
        let e = config.validate().unwrap_err().to_string();
        assert!(
            e.contains("guardrails.patterns") && e.contains("`x`"),
            "{e}"
        );
        config.guardrails.patterns.clear();
        config.agent.reply_reserve = 5000;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("agent.reply_reserve")
        );
    }

    #[test]
    fn first_week_keys_parse_with_their_spec_names() {
        let config = parse(
            "[agent]\nburst = \"each\"\npatience = 5\nmax_input_chars = 100\n\
             [channels.telegram]\nmax_body_bytes = 4096\n",
        )
        .map_err(|e| e.message)
        .unwrap();
        assert_eq!(config.agent.burst, crate::core::Burst::Each);
        assert_eq!(config.agent.patience_secs, 5);
        assert_eq!(config.agent.max_input_chars, 100);
        assert_eq!(config.channels.telegram.max_body_bytes, 4096);
        let e = parse("[agent]\nburst = \"sometimes\"\n").err().unwrap();
        assert_eq!(e.key, "agent.burst");
        let mut config = Config::default();
        config
            .apply_env(&env_of(&[("TWILIO_SMS_FROM", "+15017122661")]))
            .unwrap();
        assert_eq!(
            config.channels.twilio.sms_from.as_deref(),
            Some("+15017122661")
        );
        config.guardrails.refusals.insert("nope".into(), "x".into());
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("no rule is named `nope`"), "{e}");
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let mut config = Config::default();
        let e = config
            .apply_env(&env_of(&[("CONVAGENT_LLM_CHAIN", "ollama,gpt4")]))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment variable CONVAGENT_LLM_CHAIN")
        );
        assert!(e.to_string().contains("`gpt4`"));
        let e = config
            .apply_env(&env_of(&[("CONVAGENT_DRY_RUN", "maybe")]))
            .unwrap_err();
        assert!(e.to_string().contains("CONVAGENT_DRY_RUN"));
    }
}
