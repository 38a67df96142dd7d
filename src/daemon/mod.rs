//! The daemon (`convagent serve`): webhooks in, durable accept, per-
//! conversation workers, the outbox out, health and metrics. `router` and
//! `serve` take their parts injected, so tests bind 127.0.0.1:0 with fakes.

mod handoff;
mod health;
pub mod knowledge;
mod leases;
pub mod mcp;
mod media;
pub mod metrics;
pub mod operators;
mod outbox;
pub mod public_url;
mod retention;
mod tracer;
mod typing;
mod voicemail;
mod webhook;
mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::core::channel::ChannelAdapter;
use crate::core::{Agent, Burst, Clock};

pub use media::{Media, Source};
pub use metrics::Metrics;
pub use operators::Desk;
pub use tracer::Tracer;

/// Everything the daemon needs from its store: every port (the same
/// store that commands open).
pub use crate::core::ports::AnyStore as DaemonStore;

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// The public base URL providers call (for Twilio signatures); without
    /// it the one `convagent tunnel` recorded, or the request's Host header.
    pub public_url: Option<String>,
    /// Where `convagent tunnel` records the public URL.
    pub recorded_public_url: Option<std::path::PathBuf>,
    /// Record sends instead of calling the channel APIs.
    pub dry_run: bool,
    /// Conversations processed at the same time.
    pub max_parallel_conversations: usize,
    /// How long shutdown waits for in-flight turns and sends.
    pub shutdown_grace: Duration,
    /// Waits between retries of a failed send (then dead letter).
    pub send_backoff: Vec<Duration>,
    /// The longest a reply waits in all while a channel answers 429; then
    /// it is dead-lettered with code `rate_limited`.
    pub rate_limited_max_wait: Duration,
    /// `retention.messages` and `retention.traces` (`None`: kept).
    pub retention: (Option<Duration>, Option<Duration>),
    /// The bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// How often retention runs in the background.
    pub prune_every: Duration,
    /// When to retry conversations whose messages got the fallback reply.
    pub fallback_retry: Duration,
    /// One turn for every pending message of a conversation, or one each.
    pub burst: Burst,
    /// How long a turn runs before the channel's typing signal is shown.
    pub typing_after: Duration,
    /// How long a claim on a conversation lasts unless renewed, on a store
    /// several daemons share (`store.lease_secs`).
    pub lease: Duration,
    /// `agent.mode = "external"`: the built-in agent answers nothing;
    /// messages wait for MCP consumers (`wait_for_message`).
    pub external: bool,
    /// How long a message taken by an MCP consumer stays its own.
    pub mcp_take: Duration,
    /// `mcp.send_takes_over`: an MCP client's `send_message` takes the
    /// conversation over for a person.
    pub mcp_send_takes_over: bool,
    /// Browser origins `/mcp` serves (`mcp.allowed_origins`); a request
    /// with any other `Origin` gets 403, one without an `Origin` is served.
    pub mcp_origins: Vec<String>,
    /// External mode: how long a message may wait untaken before the
    /// person gets the voicemail text, and that text (`None`: never).
    pub voicemail: Option<(Duration, String)>,
    /// `[knowledge]` files to keep indexed (`None`: `serve` does not look).
    pub knowledge: Option<knowledge::Rescan>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            public_url: None,
            recorded_public_url: None,
            dry_run: false,
            max_parallel_conversations: 16,
            shutdown_grace: Duration::from_secs(10),
            send_backoff: [1, 2, 4, 8, 16].map(Duration::from_secs).to_vec(),
            fallback_retry: Duration::from_secs(30),
            rate_limited_max_wait: Duration::from_secs(3600),
            retention: (None, None),
            prune_every: Duration::from_secs(3600),
            metrics_token: None,
            burst: Burst::Collect,
            typing_after: Duration::from_secs(1),
            lease: Duration::from_secs(15),
            external: false,
            mcp_take: Duration::from_secs(300),
            mcp_send_takes_over: false,
            mcp_origins: Vec::new(),
            voicemail: None,
            knowledge: None,
        }
    }
}

/// What a reload (SIGHUP) replaces: the agent (prompt, limits, LLM chain)
/// and the channels (secrets, tokens). Work under way keeps what it
/// started with; the next turn, send or webhook takes the new.
pub struct Live {
    pub agent: Arc<Agent>,
    pub channels: Vec<Arc<dyn ChannelAdapter>>,
    /// LLM providers in the chain, for `/health/ready`.
    pub providers: Vec<String>,
    /// The channels being rotated, built with their previous secrets
    /// (`Config::with_previous_secrets`): a webhook the current secret
    /// refuses is verified with these until `previous_until` (unix ms).
    pub previous: Vec<Arc<dyn ChannelAdapter>>,
    pub previous_until: i64,
    /// The media stage: fetched files, speech to text (`[media]`, `[stt]`).
    pub media: Option<Arc<Media>>,
}

impl Live {
    /// No secret being rotated.
    pub fn new(
        agent: Arc<Agent>,
        channels: Vec<Arc<dyn ChannelAdapter>>,
        providers: Vec<String>,
    ) -> Self {
        Live {
            agent,
            channels,
            providers,
            previous: Vec::new(),
            previous_until: 0,
            media: None,
        }
    }

    /// Attachments' files are fetched, kept and read by `media` before
    /// their turn.
    pub fn media(mut self, media: Arc<Media>) -> Self {
        self.media = Some(media);
        self
    }
}

impl Live {
    /// With the previous secrets of the channels `config` rotates, valid
    /// for `server.previous_secret_grace_secs` from `now` (unix ms).
    pub fn rotating(mut self, config: &crate::config::Config, now: i64) -> Self {
        if let Some(previous) = config.with_previous_secrets() {
            self.previous = crate::adapters::channels::enabled(&previous);
            let grace = config
                .server
                .previous_secret_grace_secs
                .saturating_mul(1000);
            self.previous_until = now.saturating_add(i64::try_from(grace).unwrap_or(i64::MAX));
        }
        self
    }
}

/// The daemon's shared state.
pub struct Daemon {
    pub(crate) store: Arc<dyn DaemonStore>,
    live: std::sync::RwLock<Arc<Live>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: DaemonSettings,
    pub(crate) metrics: Metrics,
    pub(crate) tracer: Tracer,
    pub(crate) workers: workers::Workers,
    pub(crate) outbox: outbox::Signals,
    pub(crate) stopping: AtomicBool,
    pub(crate) public_url: public_url::PublicUrl,
    /// Where turns, typing signals and the outbox run: threads of their
    /// own, so that their store reads never hold up a webhook's accept.
    pub(crate) pipeline: Pipeline,
    /// Who this daemon is in the claims it takes (host, process, and a
    /// random part: a restarted process is someone else).
    pub(crate) owner: String,
    /// Counts the inbound messages this process stored: MCP consumers
    /// waiting for one look at the store when it changes.
    pub(crate) arrivals: tokio::sync::watch::Sender<u64>,
    /// Ends the MCP sessions at shutdown (a waiting consumer would hold
    /// its connection open).
    pub(crate) mcp_stop: tokio_util::sync::CancellationToken,
    pub(crate) mcp_uses: mcp::Uses,
}

/// The pipeline's runtime, shut down (without waiting) with the daemon.
pub(crate) struct Pipeline(Option<tokio::runtime::Runtime>);

impl Pipeline {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("convagent-pipeline")
            .enable_all()
            .build()
            .expect("starting the pipeline's runtime");
        Pipeline(Some(runtime))
    }

    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("the pipeline runs").spawn(task)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Daemon {
    /// `tracer` and `metrics` are made first (with [`Tracer::start`]) so
    /// that the agent can report its stages to them too.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn DaemonStore>,
        live: Live,
        clock: Arc<dyn Clock>,
        settings: DaemonSettings,
        metrics: Metrics,
        tracer: Tracer,
    ) -> Arc<Self> {
        let public_url = public_url::PublicUrl::new(
            settings.public_url.clone(),
            settings.recorded_public_url.clone(),
        );
        Arc::new(Daemon {
            public_url,
            workers: workers::Workers::new(settings.max_parallel_conversations),
            pipeline: Pipeline::start(),
            store,
            live: std::sync::RwLock::new(Arc::new(live)),
            clock,
            settings,
            metrics,
            tracer,
            outbox: outbox::Signals::default(),
            stopping: AtomicBool::new(false),
            owner: owner(),
            arrivals: tokio::sync::watch::Sender::new(0),
            mcp_stop: tokio_util::sync::CancellationToken::new(),
            mcp_uses: mcp::Uses::default(),
        })
    }

    /// Whether the daemon can still do its work: its store answers (for a
    /// service manager's watchdog).
    pub fn alive(&self) -> bool {
        self.store.outbox_stats().is_ok()
    }

    /// The agent and channels in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a reloaded agent and channels in force (see [`Live`]).
    pub fn reload(&self, live: Live) {
        let names = |l: &Live| -> Vec<&'static str> {
            l.channels.iter().map(|c| c.channel().as_str()).collect()
        };
        tracing::info!(
            channels = ?names(&live),
            providers = ?live.providers,
            rotating = ?live.previous.iter().map(|c| c.channel().as_str()).collect::<Vec<_>>(),
            "configuration reloaded"
        );
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes the outbox look for due replies now rather than at its next
    /// poll (after the clock moved, or another process queued work).
    pub fn wake_outbox(&self) {
        self.outbox.look_everywhere();
    }

    /// Resolves once no conversation is being processed (a turn started
    /// for a stored message starts before its webhook's 200).
    pub async fn idle(&self) {
        self.workers.idle().await;
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// This process's name in claims: `host:pid:random`.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &random[random.len() - 8..]
    )
}

/// The HTTP routes.
pub fn router(daemon: Arc<Daemon>) -> Router {
    // Each channel checks its own limit; this one bounds what is read at all.
    let limit = daemon
        .live()
        .channels
        .iter()
        .map(|c| c.max_body_bytes())
        .max()
        .unwrap_or(crate::config::DEFAULT_MAX_BODY_BYTES);
    Router::new()
        .route("/webhook/{channel}", post(webhook::handle))
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .merge(
            Router::new()
                .nest_service("/mcp", mcp::service(&daemon))
                .layer(axum::middleware::from_fn_with_state(
                    daemon.clone(),
                    mcp::authorize,
                )),
        )
        .with_state(daemon)
}

/// Serves until `shutdown` resolves: stops accepting, lets in-flight turns
/// and sends finish within the grace period, leaves the rest (durably
/// stored) for the next start.
pub async fn serve(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Messages accepted before a crash or stop and not yet answered.
    workers::recover(&daemon);
    let dispatcher = daemon.pipeline.spawn(outbox::run(daemon.clone()));
    let pruner = daemon.pipeline.spawn(retention::run(daemon.clone()));
    // Work other daemons sharing the store left (none on SQLite).
    let sweeper = daemon.pipeline.spawn(leases::sweep(daemon.clone()));
    // External mode: a person nobody answers gets the voicemail.
    let voicemail = daemon.pipeline.spawn(voicemail::run(daemon.clone()));
    let indexer = daemon.pipeline.spawn(knowledge::run(daemon.clone()));

    let app = router(daemon.clone());
    let mcp_stop = daemon.mcp_stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            mcp_stop.cancel();
        })
        .await?;

    tracing::info!("shutting down: no new webhooks; finishing in-flight work");
    daemon.stopping.store(true, Ordering::SeqCst);
    // A batch of pruning is one transaction: stopping between two loses nothing.
    pruner.abort();
    sweeper.abort();
    voicemail.abort();
    indexer.abort();
    daemon.outbox.wake();
    let grace = daemon.settings.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        daemon.workers.idle().await;
        let _ = dispatcher.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight work did not finish in time; it resumes at the next start"
        );
    }
    daemon.tracer.flush().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Pipeline;

    /// The last reference to a daemon may go away on one of the pipeline's
    /// own threads (a retry timer finishing last): shutting its runtime
    /// down there must neither panic nor hang.
    #[test]
    fn the_pipeline_can_be_dropped_from_its_own_threads() {
        let pipeline = std::sync::Arc::new(Pipeline::start());
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = std::sync::mpsc::channel();
        let inner = pipeline.clone();
        pipeline.spawn(async move {
            let _ = wait.await;
            let last = std::sync::Arc::strong_count(&inner) == 1;
            drop(inner);
            let _ = done.send(last);
        });
        drop(pipeline);
        go.send(()).unwrap();
        let last = finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the task went on after the runtime's shutdown began");
        assert!(last, "the last reference was the task's");
    }
}
