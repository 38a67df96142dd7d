//! `convagent serve`: the daemon. Webhooks for the enabled channels, the
//! workers, the outbox, `/health`, `/health/ready` and `/metrics`, until
//! SIGINT or SIGTERM; SIGHUP reloads the configuration and secrets.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use convagent::adapters::channels;
use convagent::adapters::clock::SystemClock;
use convagent::adapters::llm;
use convagent::config::{AgentMode, Settings};
use convagent::core::Clock;
use convagent::daemon::{self, Daemon, DaemonSettings, Live, Metrics, Tracer};
use tokio::signal::unix::{SignalKind, signal};

use crate::context::{Context, UserError};
use crate::signals::Stop;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (default: CONVAGENT_LISTEN or 127.0.0.1:8080)
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,

    /// The public base URL providers call, e.g. https://x.trycloudflare.com
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,

    /// Record replies instead of sending them
    #[arg(long)]
    dry_run: bool,
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(ctx, args))
}

async fn serve(ctx: &Context, args: Args) -> Result<ExitCode> {
    let settings = ctx.settings()?;
    let config = &settings.config;
    let listen = args.listen.unwrap_or_else(|| config.server.listen.clone());
    let store = ctx.store()?;
    if config.agent.mode == AgentMode::Agent {
        ctx.start_tools("serve").await?;
    }
    let metrics = Metrics::new();
    let tracer = Tracer::start(store.clone(), metrics.clone()).masking(ctx.log_masker());
    let clock = Arc::new(SystemClock);
    let live = live(ctx, settings, &tracer, clock.now_ms())?;
    let embedder = ctx.embedder()?;
    let daemon_settings = DaemonSettings {
        public_url: args.public_url.or_else(|| config.server.public_url.clone()),
        recorded_public_url: Some(daemon::public_url::recorded_path(&settings.dirs.state)),
        dry_run: args.dry_run || config.server.dry_run,
        burst: config.agent.burst,
        retention: config.retention()?,
        metrics_token: config
            .server
            .metrics_token
            .clone()
            .filter(|t| !t.trim().is_empty()),
        rate_limited_max_wait: std::time::Duration::from_secs(
            config.server.rate_limited_max_wait_secs,
        ),
        lease: std::time::Duration::from_secs(config.store.lease_secs),
        external: config.agent.mode == AgentMode::External,
        mcp_take: std::time::Duration::from_secs(config.mcp.take_secs),
        mcp_send_takes_over: config.mcp.send_takes_over,
        mcp_origins: config.mcp.allowed_origins.clone(),
        voicemail: (config.agent.mode == AgentMode::External
            && config.mcp.voicemail_after_secs > 0
            && !config.mcp.voicemail.trim().is_empty())
        .then(|| {
            (
                std::time::Duration::from_secs(config.mcp.voicemail_after_secs),
                config.mcp.voicemail.clone(),
            )
        }),
        knowledge: (config.knowledge.rescan_secs > 0).then(|| daemon::knowledge::Rescan {
            paths: config.knowledge.paths.clone(),
            chunk_chars: config.knowledge.chunk_chars,
            every: std::time::Duration::from_secs(config.knowledge.rescan_secs),
            embedder: embedder.clone(),
        }),
        ..DaemonSettings::default()
    };

    let mut stop = Stop::register().context("installing signal handlers")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| {
        UserError::new(
            format!("cannot listen on {listen}: {e}"),
            "another process may hold the port: pick another with --listen or CONVAGENT_LISTEN",
        )
    })?;
    let address = listener.local_addr().context("reading the bound address")?;
    let names: Vec<&str> = live.channels.iter().map(|c| c.channel().as_str()).collect();
    eprintln!(
        "convagent serve: listening on http://{address} — channels: {}{}",
        if names.is_empty() {
            "none (set TELEGRAM_BOT_TOKEN, SLACK_BOT_TOKEN, ...)".to_string()
        } else {
            names.join(", ")
        },
        if daemon_settings.dry_run {
            " — dry run: replies are recorded, not sent"
        } else {
            ""
        },
    );
    if daemon_settings.external {
        eprintln!(
            "convagent serve: agent.mode = \"external\": messages wait for an MCP client \
             (`convagent mcp`, or /mcp here) to answer them"
        );
    }
    tracing::info!(%address, channels = ?names, dry_run = daemon_settings.dry_run, "serving");

    let daemon = Daemon::new(
        store.clone(),
        live,
        clock.clone(),
        daemon_settings,
        metrics,
        tracer.clone(),
    );
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(daemon::serve(listener, daemon.clone(), async {
        let _ = stopped.await;
    }));
    crate::service::notify_ready();
    let watched = daemon.clone();
    let watchdog = tokio::spawn(crate::service::watchdog(move || watched.alive()));
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = hangup.recv() => {
                crate::service::notify_reloading();
                match reload(ctx, &daemon, &tracer, clock.now_ms()) {
                    Ok(()) => eprintln!("convagent serve: configuration reloaded"),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "reload failed; the configuration in force is kept");
                        eprintln!("convagent serve: reload failed, keeping the configuration in force: {e:#}");
                    }
                }
                crate::service::notify_ready();
            }
            result = &mut serving => {
                result.context("the daemon stopped")??;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    crate::service::notify_stopping();
    watchdog.abort();
    let _ = shutdown.send(());
    serving.await.context("the daemon stopped")??;
    eprintln!("convagent serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// What a reload replaces, built from `settings` at `now`: the agent (and
/// with it the prompt, the limits, the LLM chain) and the channels, with
/// the previous secrets of those being rotated.
fn live(ctx: &Context, settings: &Settings, tracer: &Tracer, now: i64) -> Result<Live> {
    let config = &settings.config;
    let providers = llm::configured(settings);
    let enabled = channels::enabled(config);
    // Operators are told through the notify URL, and asked in the chat
    // with buttons where a tool server says so.
    let desk = daemon::Desk::new(
        ctx.store()?,
        Arc::new(SystemClock),
        enabled.clone(),
        config.handoff.notify_url.clone(),
    )
    .with_stages(Arc::new(tracer.clone()));
    let agent = ctx
        .agent_for(settings, &providers, true)?
        .with_stages(Arc::new(tracer.clone()))
        .with_operators(Arc::new(desk));
    let names = providers
        .iter()
        .map(|p| p.provider().name().to_string())
        .collect();
    // Attachments are fetched and kept; voice notes heard when `[stt]`
    // names a server.
    let media = Arc::new(daemon::Media::from_settings(settings));
    Ok(Live::new(Arc::new(agent), enabled, names)
        .rotating(config, now)
        .media(media))
}

/// SIGHUP: reads the configuration and the environment file again and
/// puts what it configures in force. The listen address, the store, the
/// dry run, retention and the metrics token stay as they started.
fn reload(ctx: &Context, daemon: &Daemon, tracer: &Tracer, now: i64) -> Result<()> {
    let settings = ctx.load_settings()?;
    ctx.mask_also(&settings.config.secrets());
    let live = live(ctx, &settings, tracer, now)?;
    daemon.reload(live);
    Ok(())
}
