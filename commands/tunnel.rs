//! `convagent tunnel`: runs cloudflared for the daemon's port, reads the
//! public URL it prints, records it where `serve` reads it (Twilio
//! signatures then use the URL Twilio really calls, with no restart),
//! registers the Telegram webhook (and checks it), sets the Twilio
//! number's inbound URL when it can, and prints what to paste elsewhere.
//! Ctrl-C (or SIGTERM) stops cloudflared; `--cleanup` also removes the
//! Telegram webhook.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use convagent::adapters::channels::registry;
use convagent::config::Settings;
use convagent::core::channel::Registration;
use convagent::daemon::public_url::recorded_path;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::context::{Context, UserError};
use crate::signals::Stop;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Local port of `convagent serve` (default: the port of CONVAGENT_LISTEN)
    #[arg(long)]
    port: Option<u16>,

    /// On exit, also remove the Telegram webhook
    #[arg(long)]
    cleanup: bool,

    /// Restart cloudflared when it dies (and register the new URL)
    #[arg(long)]
    keep_alive: bool,
}

/// How long cloudflared may take to print its public URL.
const URL_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of cloudflared's output kept to explain a failure.
const KEPT_LINES: usize = 15;

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(tunnel(ctx, args))
}

/// Finds `program` as a path or on PATH.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The `https://….trycloudflare.com` URL in a cloudflared log line.
fn quick_tunnel_url(line: &str) -> Option<String> {
    let start = line.find("https://")?;
    let url: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '/'))
        .collect();
    url.trim_end_matches('/')
        .ends_with(".trycloudflare.com")
        .then(|| url.trim_end_matches('/').to_string())
}

struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    recent: VecDeque<String>,
}

impl Running {
    fn spawn(program: &Path, settings: &Settings, port: u16) -> Result<Running> {
        let local = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(program);
        cmd.args(["tunnel", "--no-autoupdate"]);
        match &settings.config.tunnel.name {
            Some(name) => cmd.args(["run", "--url", &local, name]),
            None => cmd.args(["--url", &local]),
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        // cloudflared logs to stderr; read both streams into one channel.
        let (tx, lines) = mpsc::unbounded_channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Running {
            child,
            lines,
            recent: VecDeque::new(),
        })
    }

    fn keep(&mut self, line: String) {
        tracing::debug!(target: "cloudflared", "{line}");
        if self.recent.len() == KEPT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// Waits for the public URL: printed by a quick tunnel, configured for
    /// a named one.
    async fn public_url(&mut self, settings: &Settings) -> Result<String> {
        if let (Some(_), Some(host)) = (
            &settings.config.tunnel.name,
            &settings.config.tunnel.hostname,
        ) {
            return Ok(format!("https://{}", host.trim_start_matches("https://")));
        }
        let deadline = tokio::time::Instant::now() + URL_TIMEOUT;
        loop {
            tokio::select! {
                line = self.lines.recv() => match line {
                    Some(line) => {
                        let url = quick_tunnel_url(&line);
                        self.keep(line);
                        if let Some(url) = url {
                            return Ok(url);
                        }
                    }
                    None => {
                        let status = self.child.wait().await.ok();
                        anyhow::bail!(UserError::new(
                            format!("cloudflared exited ({}) before printing a public URL:\n{}", describe(status), self.tail()),
                            "check the lines above; `cloudflared tunnel --url http://127.0.0.1:8080` run by hand shows the same",
                        ));
                    }
                },
                _ = tokio::time::sleep_until(deadline) => anyhow::bail!(UserError::new(
                    format!("cloudflared printed no public URL within {}s:\n{}", URL_TIMEOUT.as_secs(), self.tail()),
                    "is this machine online? cloudflared needs to reach Cloudflare",
                )),
            }
        }
    }

    fn tail(&self) -> String {
        self.recent
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn describe(status: Option<std::process::ExitStatus>) -> String {
    status.map_or("unknown status".into(), |s| s.to_string())
}

/// Writes the URL where `serve` looks for it, atomically.
fn record(state_dir: &Path, url: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = recorded_path(state_dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{url}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Registers the webhooks for `url`; prints what it did and what to paste.
async fn register(settings: &Settings, url: &str) -> bool {
    let mut ok = true;
    for spec in registry::ALL {
        let name = spec.channel.as_str();
        let Some(adapter) = (spec.build)(&settings.config) else {
            sayln!("· {name:<10} not configured (set {})", spec.secrets_hint());
            continue;
        };
        let hook = format!("{url}/webhook/{name}");
        match adapter.register(&hook).await {
            Registration::Registered(done) => sayln!("✓ {name:<10} {done}"),
            Registration::Manual(todo) => sayln!("→ {name:<10} {todo}"),
            Registration::Failed(why) => {
                ok = false;
                sayln!("✗ {name:<10} {why}");
            }
        }
    }
    ok
}

async fn tunnel(ctx: &Context, args: Args) -> Result<ExitCode> {
    let settings = ctx.settings()?.clone();
    let port = match args.port {
        Some(p) => p,
        None => settings
            .config
            .server
            .listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                UserError::new(
                    format!(
                        "cannot tell the port from listen address `{}`",
                        settings.config.server.listen
                    ),
                    "pass --port",
                )
            })?,
    };
    let program_name = &settings.config.tunnel.cloudflared;
    let Some(program) = find_program(program_name) else {
        anyhow::bail!(UserError::new(
            format!(
                "`{program_name}` was not found (convagent tunnel runs Cloudflare's cloudflared)"
            ),
            "install cloudflared (Debian/Ubuntu: the cloudflared .deb from Cloudflare's downloads page; macOS: brew install cloudflared), or set tunnel.cloudflared to its path",
        ));
    };

    let state_dir = settings.dirs.state.clone();
    let mut stop = Stop::register().context("installing signal handlers")?;
    loop {
        let mut running = Running::spawn(&program, &settings, port)?;
        let url = running.public_url(&settings).await?;
        let recorded = record(&state_dir, &url)?;
        sayln!("✓ tunnel     {url} → http://127.0.0.1:{port}");
        sayln!(
            "             recorded in {} (serve uses it for signatures)",
            recorded.display()
        );
        register(&settings, &url).await;
        sayln!("Press Ctrl-C to stop the tunnel.");

        let exit = loop {
            tokio::select! {
                _ = stop.wait() => break None,
                line = running.lines.recv() => match line {
                    Some(line) => running.keep(line),
                    None => break Some(running.child.wait().await.ok()),
                },
            }
        };
        let _ = std::fs::remove_file(&recorded);
        match exit {
            None => {
                let _ = running.child.kill().await;
                sayln!("tunnel stopped");
                if args.cleanup {
                    for adapter in registry::enabled(&settings.config) {
                        let name = adapter.channel().as_str();
                        if let Some(undo) = adapter.unregister() {
                            match undo.await {
                                Ok(done) => sayln!("✓ {name:<10} {done}"),
                                Err(e) => sayln!("✗ {name:<10} {e}"),
                            }
                        }
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            Some(status) => {
                eprintln!(
                    "cloudflared exited ({}):\n{}",
                    describe(status),
                    running.tail()
                );
                if !args.keep_alive {
                    eprintln!("hint: rerun with --keep-alive to restart it automatically");
                    return Ok(ExitCode::FAILURE);
                }
                eprintln!("restarting cloudflared (--keep-alive)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quick_tunnel_url;

    #[test]
    fn finds_the_quick_tunnel_url_in_cloudflareds_banner() {
        let line = "2024-05-01T10:00:00Z INF |  https://seasonal-deck-organisms-sf.trycloudflare.com                                      |";
        assert_eq!(
            quick_tunnel_url(line).as_deref(),
            Some("https://seasonal-deck-organisms-sf.trycloudflare.com")
        );
        assert_eq!(
            quick_tunnel_url("INF Requesting new quick Tunnel on trycloudflare.com..."),
            None
        );
        assert_eq!(
            quick_tunnel_url("see https://developers.cloudflare.com/x"),
            None
        );
    }
}
