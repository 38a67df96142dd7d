//! `convagent serve` end to end in-process: the daemon on 127.0.0.1:0 with
//! the real SQLite store, an echoing LLM, and fake Telegram, Slack and
//! Twilio APIs speaking their documented wire formats.

#[path = "support/mod.rs"]
mod support;

#[path = "daemon/alerts.rs"]
mod alerts;
#[path = "daemon/approvals.rs"]
mod approvals;
#[path = "daemon/delivery.rs"]
mod delivery;
#[path = "daemon/durability.rs"]
mod durability;
#[path = "daemon/handoff.rs"]
mod handoff;
#[path = "daemon/ingress.rs"]
mod ingress;
#[path = "daemon/limits.rs"]
mod limits;
#[path = "daemon/media.rs"]
mod media;
#[path = "daemon/people.rs"]
mod people;
#[path = "daemon/rotation.rs"]
mod rotation;

use std::path::Path;
use std::sync::Arc;

use convagent::adapters::channels;
use convagent::adapters::clock::SystemClock;
use convagent::adapters::store::SqliteStore;
use convagent::config::Config;
use convagent::core::{Agent, AgentSettings, Guardrails, LlmProvider};
use convagent::daemon::{self, Daemon, DaemonSettings, Live, Metrics, Tracer};
use convagent::golden::{Golden, SignedRequest};
use serde_json::json;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const TELEGRAM_TOKEN: &str = "123456:TEST-bot-token";
pub const TELEGRAM_SECRET: &str = "tg-webhook-secret";
pub const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const TWILIO_TOKEN: &str = "twilio-auth-token";

/// A running daemon and the fakes around it.
pub struct Harness {
    pub url: String,
    pub store: Arc<SqliteStore>,
    pub config: Config,
    pub telegram: MockServer,
    pub slack: MockServer,
    pub twilio: MockServer,
    pub daemon: Arc<Daemon>,
    pub dir: tempfile::TempDir,
    pub clock: Option<Arc<support::FakeClock>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub struct Options {
    pub llm: Arc<dyn LlmProvider>,
    pub settings: DaemonSettings,
    pub public_url: Option<String>,
    /// Changes to the configuration, after the fakes' URLs and secrets.
    pub configure: fn(&mut Config),
    /// A clock the test moves by hand (default: the system clock).
    pub clock: Option<Arc<support::FakeClock>>,
    /// Tools the model may call.
    pub tools: Option<Arc<dyn convagent::core::tools::Tools>>,
    /// `[handoff] notify_url` (a fake's address, known only at run time).
    pub notify_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            llm: Arc::new(support::EchoLlm::new()),
            settings: DaemonSettings {
                send_backoff: vec![std::time::Duration::from_millis(200); 2],
                // Show typing at once, so turns of a few hundred ms show it.
                typing_after: std::time::Duration::ZERO,
                ..DaemonSettings::default()
            },
            public_url: None,
            configure: |_| {},
            clock: None,
            tools: None,
            notify_url: None,
        }
    }
}

/// `Basic base64(AccountSid:AuthToken)`, as Twilio's API requires.
pub fn twilio_basic_auth() -> String {
    use base64::Engine;
    let pair = format!("ACtest:{TWILIO_TOKEN}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Fakes that answer every send with success, as each API documents it.
pub async fn mount_success(h: &Harness) {
    Mock::given(method("POST"))
        .and(path_regex(r"^/bot[^/]+/sendChatAction$"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "ok": true, "result": true })),
        )
        .mount(&h.telegram)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v2/Indicators/Typing\.json$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "success": true })))
        .mount(&h.twilio)
        .await;
    // Each fake answers only requests that authenticate as the real API
    // requires: the bot token in the path, the bearer token, basic auth.
    Mock::given(method("POST"))
        .and(path(format!("/bot{TELEGRAM_TOKEN}/sendMessage")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true,
            "result": { "message_id": 555, "date": 1763712000, "chat": { "id": 111222333, "type": "private" }, "text": "..." }
        })))
        .mount(&h.telegram)
        .await;
    Mock::given(method("POST"))
        .and(path("/chat.postMessage"))
        .and(header("authorization", "Bearer xoxb-test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true, "channel": "C123ABC456", "ts": "1503435956.000247", "message": { "text": "..." }
        })))
        .mount(&h.slack)
        .await;
    Mock::given(method("POST"))
        .and(path("/2010-04-01/Accounts/ACtest/Messages.json"))
        .and(header("authorization", twilio_basic_auth().as_str()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sid": "SM1234567890abcdef1234567890abcdef", "status": "queued", "body": "..."
        })))
        .mount(&h.twilio)
        .await;
}

/// The settings of a daemon whose XDG directories are all in `dir`.
pub fn settings_in(dir: &std::path::Path, config: &Config) -> convagent::config::Settings {
    convagent::config::Settings {
        config: config.clone(),
        source: convagent::config::ConfigSource::Defaults {
            looked_at: dir.join("config/config.toml"),
        },
        dirs: convagent::config::Dirs {
            config: dir.join("config"),
            data: dir.join("data"),
            state: dir.join("state"),
        },
    }
}

impl Harness {
    pub async fn start(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, options).await
    }

    pub async fn start_in(dir: tempfile::TempDir, options: Options) -> Harness {
        let (telegram, slack, twilio) = (
            MockServer::start().await,
            MockServer::start().await,
            MockServer::start().await,
        );
        let mut config = Config::default();
        let c = &mut config.channels;
        c.telegram.bot_token = Some(TELEGRAM_TOKEN.into());
        c.telegram.webhook_secret = Some(TELEGRAM_SECRET.into());
        c.telegram.api_base = Some(telegram.uri());
        c.slack.bot_token = Some("xoxb-test".into());
        c.slack.signing_secret = Some(SLACK_SECRET.into());
        c.slack.api_base = Some(slack.uri());
        c.twilio.account_sid = Some("ACtest".into());
        c.twilio.auth_token = Some(TWILIO_TOKEN.into());
        c.twilio.whatsapp_from = Some("whatsapp:+14155238886".into());
        c.twilio.api_base = Some(twilio.uri());
        (options.configure)(&mut config);
        if options.notify_url.is_some() {
            config.handoff.notify_url = options.notify_url.clone();
        }

        let store = Arc::new(SqliteStore::open(&dir.path().join("convagent.db")).unwrap());
        let clock: Arc<dyn convagent::core::Clock> = match &options.clock {
            Some(fake) => fake.clone(),
            None => Arc::new(SystemClock),
        };
        let metrics = Metrics::new();
        let masker = convagent::telemetry::Masker::new(&config.secrets());
        let tracer = Tracer::start(store.clone(), metrics.clone()).masking(masker);
        let agent = Agent::new(
            store.clone(),
            options.llm,
            clock.clone(),
            Guardrails::new(&[]).unwrap(),
            AgentSettings {
                limits: config.limits.clone(),
                media: config.media.clone(),
                handoff: config.handoff.clone(),
                max_tool_calls: config.mcp.max_calls_per_turn,
                approve_timeout_ms: config.mcp.approve_timeout_secs as i64 * 1000,
                knowledge: config.knowledge.clone(),
                memory: config.memory.clone(),
                ..AgentSettings::default()
            },
        )
        .with_files(Arc::new(convagent::adapters::media_files::DiskFiles::new(
            settings_in(dir.path(), &config).media_dir(),
        )))
        .with_stages(Arc::new(tracer.clone()))
        // As `serve` does: approvals asked in the chat, events to the notify URL.
        .with_operators(Arc::new(
            convagent::daemon::Desk::new(
                store.clone(),
                clock.clone(),
                channels::enabled(&config),
                config.handoff.notify_url.clone(),
            )
            .with_stages(Arc::new(tracer.clone())),
        ));
        let agent = match options.tools {
            Some(tools) => agent.with_tools(tools),
            None => agent,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let settings = DaemonSettings {
            public_url: options.public_url,
            ..options.settings
        };
        let live = Live::new(
            Arc::new(agent),
            channels::enabled(&config),
            vec!["echo".into()],
        )
        .rotating(&config, clock.now_ms());
        // As `serve` does: attachments fetched and kept in the data
        // directory's media/, voice notes heard where `[stt]` names a server.
        let live = live.media(Arc::new(convagent::daemon::Media::from_settings(
            &settings_in(dir.path(), &config),
        )));
        let daemon = Daemon::new(store.clone(), live, clock, settings, metrics, tracer);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(daemon::serve(listener, daemon.clone(), async {
            let _ = stopped.await;
        }));
        Harness {
            url,
            store,
            config,
            telegram,
            slack,
            twilio,
            daemon,
            dir,
            clock: options.clock,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A golden payload, its media URLs moved from the providers' hosts to
    /// this harness's fakes: a test never reaches the internet, and the
    /// media stage fetches from the fakes.
    pub fn golden(&self, rel: &str) -> Golden {
        let mut golden = Golden::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(rel),
        )
        .unwrap();
        let local = |text: &str| {
            text.replace("https://api.twilio.com", &self.twilio.uri())
                .replace("https://files.slack.com", &self.slack.uri())
        };
        if let Some(json) = &mut golden.json {
            *json = serde_json::from_str(&local(&json.to_string())).unwrap();
        }
        if let Some(form) = &mut golden.form {
            for (_, value) in form.0.iter_mut() {
                *value = local(value);
            }
        }
        golden
    }

    /// The request as its provider would send it to this daemon, signed
    /// with the test support's own implementation of each provider's
    /// documented algorithm (never the adapters').
    pub fn sign(&self, golden: &Golden) -> SignedRequest {
        sign_to(&self.url, golden, None)
    }

    /// Like [`Harness::sign`], for a daemon that believes it is reached at
    /// `public` (Twilio signs the URL it calls).
    pub fn sign_for(&self, golden: &Golden, public: Option<&str>) -> SignedRequest {
        sign_to(&self.url, golden, public)
    }

    pub async fn post(&self, request: &SignedRequest) -> (u16, String, Option<String>) {
        post(request).await
    }

    /// Waits until the pipeline is idle: no message waits for an answer and
    /// no reply waits to be sent (a send in flight is still queued until its
    /// outcome is recorded). Then nothing more can go out: counting sends
    /// after this needs no "long enough" sleep.
    pub async fn drained(&self) {
        use convagent::core::OutboxStore;
        // Pending first: a message answered by then has its reply queued in
        // the same commit, so an empty outbox read after means it was sent.
        // (The other order could read the outbox before the reply was
        // stored, and the pending messages after it was.)
        let idle = || {
            self.store.conversations_with_pending(1).unwrap().is_empty()
                && self.store.outbox_stats().unwrap().queued == 0
        };
        assert!(
            support::eventually(15, idle).await,
            "the pipeline did not drain"
        );
    }

    /// The daemon's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The fake clock's time.
    pub fn now_ms(&self) -> i64 {
        use convagent::core::Clock;
        self.clock.as_ref().expect("Options::clock").now_ms()
    }

    /// Moves the fake clock on by `ms` and has the outbox look at once.
    pub fn advance(&self, ms: i64) {
        self.clock.as_ref().expect("Options::clock").advance(ms);
        self.daemon.wake_outbox();
    }

    /// Stops the daemon gracefully and waits for it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.dir
    }
}

/// `golden` signed for the daemon at `base` with the test secrets.
pub fn sign_to(base: &str, golden: &Golden, public: Option<&str>) -> SignedRequest {
    use convagent::core::Channel;
    let path = format!("/webhook/{}", golden.channel);
    let body = golden.body();
    let mut headers: Vec<(String, String)> = golden
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if !headers.iter().any(|(k, _)| k == "content-type") {
        let content_type = match golden.form {
            Some(_) => "application/x-www-form-urlencoded",
            None => "application/json",
        };
        headers.push(("content-type".into(), content_type.into()));
    }
    match golden.channel {
        Channel::Telegram => headers.push((
            "x-telegram-bot-api-secret-token".into(),
            TELEGRAM_SECRET.into(),
        )),
        Channel::Slack => {
            let ts = now_secs().to_string();
            headers.push((
                "x-slack-signature".into(),
                support::signing::slack(SLACK_SECRET, &ts, &body),
            ));
            headers.push(("x-slack-request-timestamp".into(), ts));
        }
        Channel::Whatsapp | Channel::Sms => {
            let url = format!("{}{path}", public.unwrap_or(base).trim_end_matches('/'));
            let params = golden.form.clone().unwrap_or_default().0;
            headers.push((
                "x-twilio-signature".into(),
                support::signing::twilio(TWILIO_TOKEN, &url, &params),
            ));
        }
        Channel::Cli => {}
    }
    SignedRequest {
        url: format!("{}{path}", base.trim_end_matches('/')),
        headers,
        body,
    }
}

/// Posts a signed request as its provider would: (status, body, correlation id).
pub async fn post(request: &SignedRequest) -> (u16, String, Option<String>) {
    let mut b = reqwest::Client::new()
        .post(&request.url)
        .body(request.body.clone());
    for (k, v) in &request.headers {
        b = b.header(k, v);
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    let correlation = r
        .headers()
        .get("x-correlation-id")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.text().await.unwrap(), correlation)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Whether a request to a fake shows typing rather than sends a message.
pub fn is_typing(r: &wiremock::Request) -> bool {
    let path = r.url.path();
    path.ends_with("/sendChatAction") || path == "/v2/Indicators/Typing.json"
}

/// Bodies of the messages a fake was sent, as JSON (or form fields as
/// JSON); typing signals are left out (see [`typing_signals`]).
pub async fn bodies(server: &MockServer) -> Vec<serde_json::Value> {
    requests_to(server, |r| !is_typing(r)).await
}

/// Bodies of the typing signals a fake received.
pub async fn typing_signals(server: &MockServer) -> Vec<serde_json::Value> {
    requests_to(server, is_typing).await
}

async fn requests_to(
    server: &MockServer,
    keep: impl Fn(&wiremock::Request) -> bool,
) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| keep(r))
        .map(|r| {
            serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                let form: std::collections::BTreeMap<String, String> =
                    serde_urlencoded::from_bytes(&r.body).unwrap_or_default();
                json!(form)
            })
        })
        .collect()
}
