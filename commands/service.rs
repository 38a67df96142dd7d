//! `convagent service install|uninstall`: `serve` as a systemd service —
//! a unit with readiness (`Type=notify`), a watchdog, restart on failure,
//! reload by SIGHUP and sandboxing, and an environment file (mode 0600)
//! for the secrets, which `serve` reads itself (`--env-file`) so that a
//! reload picks up a rotated secret. Also the daemon's side of systemd's
//! notification protocol (ready, reloading, stopping, watchdog pings).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;

use crate::context::{Context, UserError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Write the systemd unit and the environment file for the secrets
    Install(Where),
    /// Remove the unit and the environment file
    Uninstall(Where),
}

#[derive(Debug, clap::Args)]
struct Where {
    /// A unit of your own systemd user manager (no root needed), running
    /// with your config and store; without it a system unit (as root)
    #[arg(long)]
    user: bool,
    /// Write under this directory instead of / (system units; for packaging
    /// and checking the result)
    #[arg(long, value_name = "DIR", conflicts_with = "user")]
    root: Option<PathBuf>,
}

/// The unit's name.
const UNIT: &str = "convagent.service";
/// The account a system unit runs as.
const SYSTEM_USER: &str = "convagent";
/// Seconds without a watchdog ping before systemd restarts the daemon.
const WATCHDOG_SECS: u64 = 30;

/// Where a unit and its files go.
struct Layout {
    unit: PathBuf,
    env_file: PathBuf,
    /// Directories the sandbox lets the daemon write (created here).
    writable: Vec<PathBuf>,
    user: bool,
}

impl Layout {
    fn of(ctx: &Context, w: &Where) -> Result<Layout> {
        if w.user {
            let settings = ctx.settings()?;
            let config_home = settings
                .dirs
                .config
                .parent()
                .map(Path::to_path_buf)
                .context("the config directory has no parent")?;
            Ok(Layout {
                unit: config_home.join("systemd/user").join(UNIT),
                env_file: settings.dirs.config.join("convagent.env"),
                writable: vec![
                    settings
                        .store_path()
                        .parent()
                        .map_or_else(|| settings.dirs.data.clone(), Path::to_path_buf),
                    settings.dirs.state.clone(),
                ],
                user: true,
            })
        } else {
            let root = w.root.clone().unwrap_or_else(|| PathBuf::from("/"));
            Ok(Layout {
                unit: root.join("etc/systemd/system").join(UNIT),
                env_file: root.join("etc/convagent/convagent.env"),
                // StateDirectory= makes /var/lib/convagent, owned by the user.
                writable: Vec::new(),
                user: false,
            })
        }
    }

    fn unit_text(&self, binary: &Path) -> String {
        let mut u = String::new();
        let env_file = if self.user {
            self.env_file.clone()
        } else {
            PathBuf::from("/etc/convagent/convagent.env")
        };
        u.push_str(&format!(
            "# Written by `convagent service install{}`; `convagent service uninstall` removes it.\n",
            if self.user { " --user" } else { "" }
        ));
        u.push_str(
            "[Unit]\nDescription=convagent: an LLM agent behind WhatsApp, Telegram and Slack\n",
        );
        if !self.user {
            // A user manager cannot order itself after the system's targets.
            u.push_str("Wants=network-online.target\nAfter=network-online.target\n");
        }
        u.push_str("\n[Service]\nType=notify\nNotifyAccess=main\n");
        u.push_str(&format!(
            "ExecStart={} serve --env-file {}\n",
            binary.display(),
            env_file.display()
        ));
        u.push_str(&format!(
            "ExecReload=/bin/kill -HUP $MAINPID\n\
             WatchdogSec={WATCHDOG_SECS}\n\
             Restart=on-failure\n\
             RestartSec=2\n\
             # serve lets in-flight work finish for 10 s, then stops.\n\
             TimeoutStopSec=30\n"
        ));
        if !self.user {
            u.push_str(&format!(
                "User={SYSTEM_USER}\n\
                 Group={SYSTEM_USER}\n\
                 StateDirectory=convagent\n\
                 StateDirectoryMode=0700\n\
                 Environment=HOME=/var/lib/convagent\n\
                 Environment=XDG_CONFIG_HOME=/etc\n\
                 Environment=XDG_DATA_HOME=/var/lib/convagent/data\n\
                 Environment=XDG_STATE_HOME=/var/lib/convagent/state\n"
            ));
        }
        u.push_str(
            "\n# Sandbox: the daemon writes only its store and logs.\n\
             NoNewPrivileges=yes\n\
             ProtectSystem=strict\n\
             PrivateTmp=yes\n\
             RestrictSUIDSGID=yes\n\
             LockPersonality=yes\n\
             RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
        );
        if self.user {
            for dir in &self.writable {
                u.push_str(&format!("ReadWritePaths={}\n", dir.display()));
            }
        } else {
            u.push_str(
                "ProtectHome=yes\n\
                 PrivateDevices=yes\n\
                 ProtectKernelTunables=yes\n\
                 ProtectKernelModules=yes\n\
                 ProtectKernelLogs=yes\n\
                 ProtectControlGroups=yes\n\
                 ProtectClock=yes\n\
                 ProtectHostname=yes\n\
                 RestrictNamespaces=yes\n\
                 RestrictRealtime=yes\n\
                 MemoryDenyWriteExecute=yes\n\
                 SystemCallArchitectures=native\n\
                 UMask=0077\n",
            );
        }
        u.push_str(&format!(
            "\n[Install]\nWantedBy={}\n",
            if self.user {
                "default.target"
            } else {
                "multi-user.target"
            }
        ));
        u
    }
}

/// What a fresh environment file says: the variables, all commented out.
const ENV_TEMPLATE: &str = "\
# Secrets for `convagent serve`, read at start and again on reload
# (`systemctl reload convagent`). KEY=VALUE lines; keep this file 0600.
#
# TELEGRAM_BOT_TOKEN=
# TELEGRAM_WEBHOOK_SECRET=
# SLACK_BOT_TOKEN=
# SLACK_SIGNING_SECRET=
# TWILIO_ACCOUNT_SID=
# TWILIO_AUTH_TOKEN=
# OPENAI_API_KEY=
# CONVAGENT_METRICS_TOKEN=
#
# Rotating a secret: put the new value above and the old one here, then
# reload. Webhooks signed with the old one are accepted for
# server.previous_secret_grace_secs (a day), and the log says which matched.
# TELEGRAM_WEBHOOK_SECRET_PREVIOUS=
# SLACK_SIGNING_SECRET_PREVIOUS=
# TWILIO_AUTH_TOKEN_PREVIOUS=
";

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    match args.action {
        Action::Install(w) => install(ctx, &w),
        Action::Uninstall(w) => uninstall(ctx, &w),
    }
}

fn install(ctx: &Context, w: &Where) -> Result<ExitCode> {
    let system = !w.user && w.root.is_none();
    if system && !rustix::process::geteuid().is_root() {
        return Err(UserError::new(
            "a system unit is installed as root",
            "run it with sudo, or install a unit of your own with `convagent service install --user`",
        )
        .into());
    }
    let layout = Layout::of(ctx, w)?;
    let binary = std::env::current_exe().context("finding this program's path")?;
    let binary = binary.canonicalize().unwrap_or(binary);
    if system {
        ensure_system_user()?;
    }
    for dir in &layout.writable {
        create_private_dir(dir)?;
    }
    write_file(&layout.unit, &layout.unit_text(&binary), 0o644)?;
    outln!("wrote {}", layout.unit.display());
    if layout.env_file.exists() {
        outln!("kept {} (it holds your secrets)", layout.env_file.display());
    } else {
        write_file(&layout.env_file, ENV_TEMPLATE, 0o600)?;
        outln!("wrote {} (mode 0600)", layout.env_file.display());
    }
    if system {
        chown_to_service_user(&layout.env_file)?;
    }
    let systemctl = if w.user {
        "systemctl --user"
    } else {
        "systemctl"
    };
    outln!(
        "next: put your secrets in {}, then\n  {systemctl} daemon-reload && {systemctl} enable --now convagent\n\
         reload after editing the config or secrets: {systemctl} reload convagent",
        layout.env_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn uninstall(ctx: &Context, w: &Where) -> Result<ExitCode> {
    let layout = Layout::of(ctx, w)?;
    let mut removed = 0;
    for path in [&layout.unit, &layout.env_file] {
        match std::fs::remove_file(path) {
            Ok(()) => {
                outln!("removed {}", path.display());
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(UserError::new(
                    format!("cannot remove {}: {e}", path.display()),
                    "run it as the user (or root) that installed the service",
                )
                .into());
            }
        }
    }
    if removed == 0 {
        outln!("nothing to remove: no {} installed", layout.unit.display());
    } else {
        outln!(
            "the store and logs are kept; stop a running service with `systemctl{} disable --now convagent`",
            if w.user { " --user" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let hint = "run it as root for a system unit, or use --user";
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| UserError::new(format!("cannot write {}: {e}", path.display()), hint))?;
    // The mode of an existing file is not changed by `open`.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The system account the unit runs as, created when missing.
fn ensure_system_user() -> Result<()> {
    let exists = std::process::Command::new("id")
        .arg(SYSTEM_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return Ok(());
    }
    let status = std::process::Command::new("useradd")
        .args([
            "--system",
            "--home-dir",
            "/var/lib/convagent",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SYSTEM_USER,
        ])
        .status()
        .context("running useradd")?;
    if !status.success() {
        return Err(UserError::new(
            format!("useradd could not create the `{SYSTEM_USER}` account"),
            "create it yourself (useradd --system convagent) and run this again",
        )
        .into());
    }
    Ok(())
}

/// The environment file is read by the service itself: its account owns it.
fn chown_to_service_user(path: &Path) -> Result<()> {
    let status = std::process::Command::new("chown")
        .arg(format!("{SYSTEM_USER}:{SYSTEM_USER}"))
        .arg(path)
        .status()
        .context("running chown")?;
    if !status.success() {
        return Err(UserError::new(
            format!("cannot give {} to {SYSTEM_USER}", path.display()),
            "chown it to the convagent account yourself",
        )
        .into());
    }
    Ok(())
}

/// systemd's notification protocol, for `serve` under `Type=notify`;
/// outside systemd (no `NOTIFY_SOCKET`) each call does nothing.
pub fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// systemd 253 and later want the moment of the reload with it.
pub fn notify_reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
}

pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval for as long
/// as `alive` says the daemon is well; a daemon that stops answering is
/// restarted by systemd.
pub async fn watchdog(alive: impl Fn() -> bool) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) else {
        return;
    };
    let every = interval / 2;
    loop {
        if alive() {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::warn!("not pinging the watchdog: the store does not answer");
        }
        tokio::time::sleep(every).await;
    }
}
