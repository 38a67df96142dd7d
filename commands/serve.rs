//! `convagent serve`: the daemon. Webhooks for the enabled channels, the
//! workers, the outbox, `/health`, `/health/ready` and `/metrics`, until
//! SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use convagent::adapters::channels;
use convagent::adapters::clock::SystemClock;
use convagent::daemon::{self, Daemon, DaemonSettings, Metrics, Tracer};

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
    let providers = ctx.providers()?;
    let metrics = Metrics::new();
    let tracer = Tracer::start(store.clone(), metrics.clone());
    let agent = ctx
        .agent(&providers, true)?
        .with_stages(Arc::new(tracer.clone()));
    let channels = channels::enabled(config);
    let daemon_settings = DaemonSettings {
        public_url: args.public_url.or_else(|| config.server.public_url.clone()),
        recorded_public_url: Some(daemon::public_url::recorded_path(&settings.dirs.state)),
        dry_run: args.dry_run || config.server.dry_run,
        providers: providers
            .iter()
            .map(|p| p.provider().name().to_string())
            .collect(),
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
        ..DaemonSettings::default()
    };

    let mut stop = Stop::register().context("installing signal handlers")?;
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| {
        UserError::new(
            format!("cannot listen on {listen}: {e}"),
            "another process may hold the port: pick another with --listen or CONVAGENT_LISTEN",
        )
    })?;
    let address = listener.local_addr().context("reading the bound address")?;
    let names: Vec<&str> = channels.iter().map(|c| c.channel().as_str()).collect();
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
    tracing::info!(%address, channels = ?names, dry_run = daemon_settings.dry_run, "serving");

    let daemon = Daemon::new(
        store,
        Arc::new(agent),
        channels,
        Arc::new(SystemClock),
        daemon_settings,
        metrics,
        tracer,
    );
    daemon::serve(listener, daemon, async move { stop.wait().await }).await?;
    eprintln!("convagent serve: stopped");
    Ok(ExitCode::SUCCESS)
}
