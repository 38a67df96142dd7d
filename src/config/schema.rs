//! The configuration's shape: every key, its type and its default.
//! `config.example.toml` documents the same, and a test keeps them equal.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::core::agent::{
    Burst, DEFAULT_FALLBACK_REPLY, DEFAULT_MAX_INPUT_CHARS, DEFAULT_SYSTEM_PROMPT,
};
use crate::core::limits::Limits;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub log: LogConfig,
    pub agent: AgentConfig,
    pub llm: LlmConfig,
    pub guardrails: GuardrailsConfig,
    pub server: ServerConfig,
    pub tunnel: TunnelConfig,
    pub channels: ChannelsConfig,
    pub retention: RetentionConfig,
    /// Checked before the LLM is called (`core::limits`).
    pub limits: Limits,
    /// The Model Context Protocol: what outside agents get from
    /// `convagent mcp` and `/mcp`, and the tool servers the agent uses.
    pub mcp: McpConfig,
    /// Voice notes, photos and files (`core::media`): what a person is told
    /// for what the agent cannot take in.
    pub media: crate::core::media::MediaConfig,
    /// When a person takes over a conversation, or is asked for.
    pub handoff: crate::core::handoff::HandoffConfig,
    /// Speech to text for voice notes: an OpenAI-compatible
    /// `/v1/audio/transcriptions` (whisper.cpp's server, faster-whisper-server,
    /// OpenAI). Unset: voice notes get the `[media]` voice notice.
    pub stt: SttConfig,
    /// Documents the agent answers from (`core::knowledge`).
    pub knowledge: crate::core::knowledge::KnowledgeConfig,
    /// What a turn remembers of the person's other conversations.
    pub memory: crate::core::knowledge::MemoryConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SttConfig {
    /// `http://127.0.0.1:8080` (the path `/v1/audio/transcriptions` is
    /// added); env `CONVAGENT_STT_BASE_URL`.
    pub base_url: Option<String>,
    /// Env `CONVAGENT_STT_MODEL`.
    pub model: String,
    /// A secret: masked in logs and output; env `CONVAGENT_STT_API_KEY`.
    pub api_key: Option<String>,
    /// The longest one transcription may take.
    pub timeout_secs: u64,
    /// Decode voice notes and audio to 16 kHz mono WAV before sending them
    /// (what whisper.cpp's server takes); false: send them as they came.
    pub convert: bool,
}

impl Default for SttConfig {
    fn default() -> Self {
        SttConfig {
            base_url: None,
            model: "whisper-1".into(),
            api_key: None,
            timeout_secs: 60,
            convert: true,
        }
    }
}

/// Who answers inbound messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// The built-in agent (the configured LLM chain).
    #[default]
    Agent,
    /// An outside agent over MCP: messages are stored and handed to
    /// `wait_for_message`; its `send_message` is the reply.
    External,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// How long a message taken with `wait_for_message` stays with its
    /// consumer; unanswered after that, the next consumer gets it.
    pub take_secs: u64,
    /// The longest one tool call of the agent may take.
    pub call_timeout_secs: u64,
    /// Tool calls the agent may make in one turn.
    pub max_calls_per_turn: usize,
    /// MCP servers whose tools the agent may call.
    pub servers: Vec<McpServerConfig>,
    /// How the servers' commands are confined.
    pub sandbox: SandboxConfig,
    /// Browser origins allowed to call `/mcp` (`https://app.example.com`,
    /// with a port when it is not the scheme's default), besides pages of
    /// this machine (`localhost`, `127.0.0.1`, `[::1]`). A request with any
    /// other `Origin` header gets 403, as the Streamable HTTP transport
    /// requires (DNS rebinding); requests without one (agents, not
    /// browsers) are served.
    pub allowed_origins: Vec<String>,
    /// A `send_message` into a conversation the agent answers takes it over
    /// for a person (the client is an operator's), and answers what waits.
    pub send_takes_over: bool,
    /// How long a tool call marked `approve` waits for an operator's answer;
    /// none by then means no.
    pub approve_timeout_secs: u64,
    /// `agent.mode = "external"`: a message no MCP consumer took this long
    /// after it came gets `voicemail` (once while the person waits; the
    /// message stays for the consumer). 0: never.
    pub voicemail_after_secs: u64,
    pub voicemail: String,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            take_secs: 300,
            call_timeout_secs: 15,
            max_calls_per_turn: 4,
            servers: Vec::new(),
            sandbox: SandboxConfig::default(),
            allowed_origins: Vec::new(),
            send_takes_over: false,
            approve_timeout_secs: 300,
            voicemail_after_secs: 60,
            voicemail: "Thanks for your message. Nobody can answer right now; we will reply \
                        here as soon as we can."
                .into(),
        }
    }
}

/// One MCP server the agent uses: a command convagent starts and speaks
/// to on its stdin and stdout, or a Streamable HTTP endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpServerConfig {
    /// The name the trace and `doctor` show (also the tools' prefix when two
    /// servers offer a tool of one name).
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// Set in the command's environment. Nothing else of convagent's
    /// environment reaches it but `PATH`, `LANG` and the names in
    /// `env_passthrough` (`HOME` and `TMPDIR` are its own directory).
    pub env: std::collections::BTreeMap<String, String>,
    /// Names of convagent's environment variables the command gets too.
    pub env_passthrough: Vec<String>,
    /// More paths the command may read (and run from) under Landlock, beyond
    /// the system's (`/usr`, `/etc`, ...), the command's own install and the
    /// files its `args` name by absolute path.
    pub read_paths: Vec<std::path::PathBuf>,
    /// A Streamable HTTP server instead of a command (`https://host/mcp`).
    pub url: String,
    /// Its bearer token (a secret: masked in logs and output).
    pub token: String,
    /// The tools of this server offered to the model; empty: every one.
    pub tools: Vec<String>,
    /// Calls that wait for an operator's yes or no: `true` for every tool
    /// of this server, or a list of tool names.
    pub approve: Approve,
    /// Ask for the approval in the chat itself too, with buttons (Telegram,
    /// Slack): the person talking to the agent answers.
    pub approve_in_chat: bool,
}

/// `approve = true`, or `approve = ["tool", ...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Approve {
    All(bool),
    Tools(Vec<String>),
}

impl Default for Approve {
    fn default() -> Self {
        Approve::All(false)
    }
}

impl Approve {
    /// Whether a call of `tool` (its name on the server) waits for an answer.
    pub fn covers(&self, tool: &str) -> bool {
        match self {
            Approve::All(all) => *all,
            Approve::Tools(tools) => tools.iter().any(|t| t == tool),
        }
    }
}

/// The confinement of `[[mcp.servers]]` commands: each runs in a directory of
/// its own (under the state directory), with no new privileges, these
/// resource limits, and (where the kernel has Landlock) a filesystem cut
/// down to that directory and read-only system paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// CPU seconds over the server's whole life (then the kernel stops it).
    pub cpu_secs: u64,
    /// Heap and other writable memory (RLIMIT_DATA), in MiB.
    pub memory_mb: u64,
    /// Open files at once.
    pub open_files: u64,
    /// Processes and threads of the user at once (the kernel counts them
    /// for the whole user, everything else it runs included, and not for
    /// root): a backstop against a fork bomb, set well above normal use.
    pub processes: u64,
    /// Restrict the filesystem with Landlock where the kernel has it.
    pub landlock: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cpu_secs: 3600,
            memory_mb: 1024,
            open_files: 256,
            processes: 4096,
            landlock: true,
        }
    }
}

/// How long the store keeps what it holds (durations such as `90d`, `12h`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Conversations idle for longer are deleted whole (unset: kept).
    pub messages: Option<String>,
    /// Trace events older than this are deleted (unset: kept).
    pub traces: Option<String>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            messages: None,
            traces: Some("30d".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file; default `$XDG_DATA_HOME/convagent/convagent.db`.
    pub path: Option<PathBuf>,
    /// A Postgres database (`postgres://user:password@host/db`) instead of
    /// the SQLite file: several daemons may share it. Env
    /// `CONVAGENT_DATABASE_URL`.
    pub url: Option<String>,
    /// Connections each process opens to Postgres.
    pub connections: usize,
    /// How long a daemon's claim on a conversation lasts unless renewed
    /// (it renews every third of it): how soon another daemon takes over
    /// the work of one that died.
    pub lease_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            url: None,
            connections: 8,
            lease_secs: 15,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// tracing env-filter syntax, e.g. `info,convagent=debug`.
    pub filter: String,
    /// Directory of the JSON log files; default `$XDG_STATE_HOME/convagent/logs`.
    pub dir: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Stored as prompt version 1 when the store has no prompt yet.
    pub system_prompt: String,
    pub context_budget: usize,
    pub reply_reserve: usize,
    /// Sent when every LLM provider failed; the message is answered later.
    pub fallback_reply: String,
    /// Older turns are summarised once a conversation has more turns than
    /// this and its window is `summary_threshold` full.
    pub summary_min_turns: u64,
    pub summary_threshold: f32,
    /// `collect`: messages that queued up while a turn ran get one answer
    /// together; `each`: one answer per message.
    pub burst: Burst,
    /// Characters of one message the model sees at most (all are stored).
    pub max_input_chars: usize,
    /// Seconds a person waits for the first token before the turn fails
    /// over to the next provider (or the fallback reply). SPEC.md calls it
    /// `agent.patience`; both names are read.
    #[serde(alias = "patience")]
    pub patience_secs: u64,
    /// `agent`: the built-in agent answers; `external`: an MCP client does.
    pub mode: AgentMode,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            context_budget: 4096,
            reply_reserve: 512,
            fallback_reply: DEFAULT_FALLBACK_REPLY.into(),
            summary_min_turns: 50,
            summary_threshold: 0.8,
            burst: Burst::Collect,
            max_input_chars: DEFAULT_MAX_INPUT_CHARS,
            patience_secs: 20,
            mode: AgentMode::Agent,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Extra rules: messages matching one get the polite refusal.
    pub patterns: Vec<GuardrailPattern>,
    /// The refusal of every rule not named in `refusals` (unset: the
    /// built-in credential rule explains itself, the others are neutral).
    pub refusal: Option<String>,
    /// Refusal per rule name (`credential_request`, `instruction_override`,
    /// or a pattern's name).
    pub refusals: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailPattern {
    /// Recorded with each violation.
    pub name: String,
    /// A regular expression, matched case-insensitively.
    pub pattern: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Ollama,
    Openai,
    Embedded,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::Openai => "openai",
            ProviderKind::Embedded => "embedded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ollama" => Some(ProviderKind::Ollama),
            "openai" => Some(ProviderKind::Openai),
            "embedded" => Some(ProviderKind::Embedded),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Providers in the order they are tried.
    pub chain: Vec<ProviderKind>,
    /// Waits before retrying a connection error, in milliseconds.
    pub retry_backoff_ms: Vec<u64>,
    /// A turn's whole budget: no retry starts past it.
    pub turn_deadline_secs: u64,
    /// Consecutive failures that open a provider's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its provider before one probe.
    pub breaker_cooldown_secs: u64,
    pub ollama: OllamaConfig,
    pub openai: OpenAiConfig,
    pub embedded: EmbeddedConfig,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            chain: vec![ProviderKind::Ollama, ProviderKind::Embedded],
            retry_backoff_ms: vec![1000, 2000, 4000],
            turn_deadline_secs: 600,
            breaker_failures: 3,
            breaker_cooldown_secs: 300,
            ollama: OllamaConfig::default(),
            openai: OpenAiConfig::default(),
            embedded: EmbeddedConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OllamaConfig {
    pub host: String,
    pub model: String,
    pub num_ctx: u32,
    pub keep_alive: String,
    /// Cold model loads can take minutes before the first byte.
    pub first_chunk_timeout_secs: u64,
    pub chunk_timeout_secs: u64,
    /// Whether the model takes images; unset: what Ollama's `/api/show`
    /// reports of it (`"vision"` among its capabilities).
    pub vision: Option<bool>,
}

impl Default for OllamaConfig {
    fn default() -> Self {
        OllamaConfig {
            host: "http://127.0.0.1:11434".into(),
            model: "mistral:7b".into(),
            num_ctx: 4096,
            keep_alive: "5m".into(),
            first_chunk_timeout_secs: 300,
            chunk_timeout_secs: 30,
            vision: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Including the version path, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub first_chunk_timeout_secs: u64,
    pub chunk_timeout_secs: u64,
    /// Whether the model takes images (as `image_url` content parts).
    pub vision: bool,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            model: "gpt-4o-mini".into(),
            first_chunk_timeout_secs: 120,
            chunk_timeout_secs: 30,
            vision: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// GGUF file; default: the model the install step fetched.
    pub model_path: Option<PathBuf>,
    /// CPU threads; 0 = all available cores.
    pub threads: u32,
    pub context_size: u32,
    /// 0 = greedy (deterministic).
    pub temperature: f32,
    pub seed: u32,
    /// Conversations whose KV cache is kept (each `context_size` tokens:
    /// the memory grows with both): a prompt that starts like a cached one
    /// is evaluated from where they differ. The least recently used makes
    /// room.
    pub cached_conversations: u32,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            model_path: None,
            threads: 0,
            context_size: 4096,
            temperature: 0.7,
            seed: 42,
            cached_conversations: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// The public base URL the providers call (what `convagent tunnel` records).
    pub public_url: Option<String>,
    /// Record outbound messages instead of sending them.
    pub dry_run: bool,
    /// The longest a reply waits in all while a channel keeps answering 429
    /// ("too many requests"); then it becomes a dead letter (`rate_limited`).
    pub rate_limited_max_wait_secs: u64,
    /// When set, `/metrics` answers only requests with
    /// `Authorization: Bearer <token>` (env `CONVAGENT_METRICS_TOKEN`).
    pub metrics_token: Option<String>,
    /// How long a channel's previous secret (`*_PREVIOUS`) stays valid
    /// for incoming webhooks after the daemon loads it (start or reload).
    pub previous_secret_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            dry_run: false,
            rate_limited_max_wait_secs: 3600,
            metrics_token: None,
            previous_secret_grace_secs: 86_400,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelConfig {
    /// The cloudflared program (a name on PATH, or a path).
    pub cloudflared: String,
    /// A named tunnel (`cloudflared tunnel run NAME`) instead of a quick one...
    pub name: Option<String>,
    /// ...reached at this public hostname.
    pub hostname: Option<String>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            cloudflared: "cloudflared".into(),
            name: None,
            hostname: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    pub twilio: TwilioConfig,
    pub telegram: TelegramConfig,
    pub slack: SlackConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioConfig {
    pub account_sid: Option<String>,
    pub auth_token: Option<String>,
    /// The token Twilio may still sign with while it is rotated.
    pub auth_token_previous: Option<String>,
    pub whatsapp_from: Option<String>,
    /// The number SMS replies go from; unset: the number each person wrote to.
    pub sms_from: Option<String>,
    /// The phone number's SID (PN...): lets `convagent tunnel` set its inbound URL.
    pub phone_number_sid: Option<String>,
    pub api_base: Option<String>,
    /// Largest webhook body accepted (413 past it).
    pub max_body_bytes: usize,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            account_sid: None,
            auth_token: None,
            auth_token_previous: None,
            whatsapp_from: None,
            sms_from: None,
            phone_number_sid: None,
            api_base: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramConfig {
    pub bot_token: Option<String>,
    pub webhook_secret: Option<String>,
    /// The secret Telegram may still send while it is rotated.
    pub webhook_secret_previous: Option<String>,
    pub api_base: Option<String>,
    pub max_body_bytes: usize,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        TelegramConfig {
            bot_token: None,
            webhook_secret: None,
            webhook_secret_previous: None,
            api_base: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    pub bot_token: Option<String>,
    pub signing_secret: Option<String>,
    /// The secret Slack may still sign with while it is rotated.
    pub signing_secret_previous: Option<String>,
    pub api_base: Option<String>,
    pub max_body_bytes: usize,
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            bot_token: None,
            signing_secret: None,
            signing_secret_previous: None,
            api_base: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A webhook body larger than this is refused (413) unless configured.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
