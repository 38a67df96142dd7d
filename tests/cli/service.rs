//! `convagent service`: the systemd units it writes pass `systemd-analyze
//! verify` (Debian's `systemd`), the environment file is private, and
//! `serve` speaks systemd's notification protocol (ready, reloading,
//! stopping, watchdog) on a real datagram socket.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Env, stderr_of, stdout_of};

/// `systemd-analyze verify`: success, and not a word of warning.
fn verify(unit: &Path, user: bool, runtime: &Path) {
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user");
    }
    let out = cmd
        .arg("verify")
        .arg(unit)
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "systemd-analyze is needed to check the unit ({e}): install Debian's `systemd` \
                 package (`./install.sh --deps-only` does)"
            )
        });
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify {}:\n{}{}\n{}",
        unit.display(),
        stdout_of(&out),
        stderr_of(&out),
        std::fs::read_to_string(unit).unwrap()
    );
}

fn runtime_dir(env: &Env) -> std::path::PathBuf {
    let dir = env.home.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_user_unit_verifies_and_keeps_its_secrets_private() {
    let env = Env::new();
    let out = env.cmd(&["service", "install", "--user"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let unit = env
        .home
        .path()
        .join("config/systemd/user/convagent.service");
    let env_file = env.home.path().join("config/convagent/convagent.env");
    assert!(stdout_of(&out).contains("systemctl --user enable --now convagent"));
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        &format!(
            "ReadWritePaths={}",
            env.home.path().join("data/convagent").display()
        ),
        &format!(
            "ReadWritePaths={}",
            env.home.path().join("state/convagent").display()
        ),
        &format!("--env-file {}", env_file.display()),
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    verify(&unit, true, &runtime_dir(&env));
    assert_eq!(mode(&env_file), 0o600);

    // Installing again keeps the secrets someone wrote there.
    std::fs::write(&env_file, "TELEGRAM_BOT_TOKEN=42:kept\n").unwrap();
    let out = env.cmd(&["service", "install", "--user"]).output().unwrap();
    assert!(stdout_of(&out).contains("kept"), "{}", stdout_of(&out));
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "TELEGRAM_BOT_TOKEN=42:kept\n"
    );

    let out = env
        .cmd(&["service", "uninstall", "--user"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!unit.exists() && !env_file.exists());
    let out = env
        .cmd(&["service", "uninstall", "--user"])
        .output()
        .unwrap();
    assert!(stdout_of(&out).contains("nothing to remove"));
}

#[test]
fn a_system_unit_verifies_with_its_sandbox() {
    let env = Env::new();
    let root = env.home.path().join("root");
    let out = env
        .cmd(&["service", "install", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let unit = root.join("etc/systemd/system/convagent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "User=convagent",
        "StateDirectory=convagent",
        "ProtectHome=yes",
        "ExecStart=",
        "serve --env-file /etc/convagent/convagent.env",
        "WantedBy=multi-user.target",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    verify(&unit, false, &runtime_dir(&env));
    assert_eq!(mode(&root.join("etc/convagent/convagent.env")), 0o600);
}

/// Datagrams `serve` sent to the notification socket, until `until` is
/// among them or the deadline passes.
fn received(socket: &UnixDatagram, seen: &mut Vec<String>, until: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if seen.iter().any(|m| m.contains(until)) {
            return true;
        }
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    false
}

#[test]
fn serve_tells_systemd_it_is_ready_reloading_alive_and_stopping() {
    let env = Env::new();
    let path = env.home.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = env
        .std_cmd(&["serve", "--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        // A watchdog of 400 ms: pings every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env("CONVAGENT_LLM_CHAIN", "ollama")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    assert!(received(&socket, &mut seen, "READY=1"), "{seen:?}");
    assert!(received(&socket, &mut seen, "WATCHDOG=1"), "{seen:?}");
    let kill = |signal: &str| crate::send_signal(child.id(), signal);
    kill("-HUP");
    assert!(received(&socket, &mut seen, "RELOADING=1"), "{seen:?}");
    let reloading = seen.iter().position(|m| m.contains("RELOADING=1")).unwrap();
    assert!(
        seen[reloading].contains("MONOTONIC_USEC="),
        "systemd 253+ needs the reload's time: {seen:?}"
    );
    seen.drain(..=reloading);
    assert!(
        received(&socket, &mut seen, "READY=1"),
        "ready again: {seen:?}"
    );
    assert!(
        received(&socket, &mut seen, "WATCHDOG=1"),
        "it keeps pinging"
    );
    kill("-TERM");
    assert!(received(&socket, &mut seen, "STOPPING=1"), "{seen:?}");
    assert!(child.wait().unwrap().success());
}
