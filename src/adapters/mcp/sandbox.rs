//! The confinement of `[[mcp.servers]]` commands. A tool server is code
//! someone else wrote, run beside a daemon that holds every channel's
//! secrets and every conversation, so it gets only what it needs:
//!
//! - an environment of its own: `PATH` and `LANG`, `HOME` and `TMPDIR` set to
//!   its directory, what its `env` sets and the names of `env_passthrough`;
//!   never convagent's secrets;
//! - a working directory of its own, `<state>/tools/<name>` (0700);
//! - resource limits (`[mcp.sandbox]`): CPU seconds, writable memory, open
//!   files, processes, set hard so that it cannot raise them;
//! - no new privileges (no setuid escape);
//! - where the kernel has Landlock: reads (and runs) only under the system's
//!   paths, its command's own install, the files its arguments name by
//!   absolute path, and `read_paths`; writes only in its directory. The store, the configuration and the environment file
//!   are out of its reach.
//!
//! Everything that allocates happens in the parent (the Landlock ruleset is
//! built before the fork); the child only makes system calls between fork
//! and exec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{McpServerConfig, SandboxConfig};

/// Paths every server may read and run from: the system's programs,
/// libraries and configuration (not `/proc`: a process of the same user
/// could read the daemon's environment there; not `/tmp`: it has its own).
const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt",
];
/// Devices every server may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];
/// convagent's variables a server gets without asking.
const INHERITED: &[&str] = &["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

/// What one server gets, decided before it starts (and shown by `doctor`).
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Its working directory, `HOME` and (below it) `TMPDIR`.
    pub dir: PathBuf,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    pub limits: SandboxConfig,
    /// What Landlock lets it read and run from (none when it is off).
    pub read_only: Vec<PathBuf>,
}

/// Where servers' directories live, and the limits they run under.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// `<state>/tools`: each server's directory is `<name>` below it.
    pub tools_dir: PathBuf,
    pub limits: SandboxConfig,
}

impl Sandbox {
    /// The sandbox of `server` (named `name`), from convagent's own
    /// environment `parent`.
    pub fn plan(
        server: &McpServerConfig,
        name: &str,
        settings: &SandboxSettings,
        parent: impl Fn(&str) -> Option<String>,
    ) -> Sandbox {
        let dir = settings.tools_dir.join(dir_name(name));
        let mut env = BTreeMap::new();
        for var in INHERITED
            .iter()
            .copied()
            .chain(server.env_passthrough.iter().map(String::as_str))
        {
            if let Some(value) = parent(var) {
                env.insert(var.to_string(), value);
            }
        }
        env.insert("HOME".into(), dir.display().to_string());
        env.insert("TMPDIR".into(), dir.join("tmp").display().to_string());
        env.extend(server.env.clone());
        let mut read_only: Vec<PathBuf> = Vec::new();
        if settings.limits.landlock {
            read_only.extend(SYSTEM_READ.iter().map(PathBuf::from));
            let path = env.get("PATH").cloned().unwrap_or_default();
            read_only.extend(install_of(&server.command, &path));
            // A script or file it is handed by path (`python3 server.py`).
            read_only.extend(
                server
                    .args
                    .iter()
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute() && p.exists()),
            );
            read_only.extend(server.read_paths.iter().cloned());
            read_only.retain(|p| p.exists());
            read_only.sort();
            read_only.dedup();
        }
        Sandbox {
            dir,
            env,
            limits: settings.limits.clone(),
            read_only,
        }
    }

    /// One line for `doctor`: the variables it gets (names only), its
    /// directory, limits and filesystem.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.env.keys().map(String::as_str).collect();
        let l = &self.limits;
        let fs = match landlock_abi() {
            _ if !l.landlock => {
                "filesystem unrestricted (mcp.sandbox.landlock = false)".to_string()
            }
            Some(abi) => format!(
                "Landlock (ABI {abi}): writes {}, reads {}",
                self.dir.display(),
                self.read_only
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => "filesystem unrestricted (this kernel has no Landlock)".to_string(),
        };
        format!(
            "env {}; dir {}; limits {} CPU s, {} MiB, {} files, {} processes; no new privileges; {fs}",
            names.join(" "),
            self.dir.display(),
            l.cpu_secs,
            l.memory_mb,
            l.open_files,
            l.processes,
        )
    }

    /// `program args` confined: its directory made, its environment
    /// replaced, and (run in the child between fork and exec) the limits,
    /// no new privileges and the Landlock ruleset.
    pub fn command(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<tokio::process::Command, String> {
        std::fs::create_dir_all(self.dir.join("tmp"))
            .map_err(|e| format!("cannot make its directory {}: {e}", self.dir.display()))?;
        restrict_mode(&self.dir);
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.dir);
        self.confine(&mut command)?;
        Ok(command)
    }

    #[cfg(target_os = "linux")]
    fn confine(&self, command: &mut tokio::process::Command) -> Result<(), String> {
        use rustix::process::{Resource, Rlimit, setrlimit};
        let mut ruleset = if self.limits.landlock {
            landlock_ruleset(&self.dir, &self.read_only)?
        } else {
            None
        };
        let mib = 1024 * 1024;
        let limits = [
            (Resource::Cpu, self.limits.cpu_secs),
            (Resource::Data, self.limits.memory_mb.saturating_mul(mib)),
            (Resource::Nofile, self.limits.open_files),
            (Resource::Nproc, self.limits.processes),
        ];
        let child = move || -> std::io::Result<()> {
            for (resource, value) in limits {
                setrlimit(
                    resource,
                    Rlimit {
                        current: Some(value),
                        maximum: Some(value),
                    },
                )?;
            }
            rustix::thread::set_no_new_privs(true)?;
            if let Some(ruleset) = ruleset.take() {
                ruleset
                    .restrict_self()
                    .map_err(|_| std::io::Error::from_raw_os_error(1))?;
            }
            Ok(())
        };
        // SAFETY: the closure only makes system calls (setrlimit, prctl,
        // landlock_restrict_self) and allocates nothing on success: safe
        // between fork and exec.
        unsafe {
            command.pre_exec(child);
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn confine(&self, _command: &mut tokio::process::Command) -> Result<(), String> {
        Ok(())
    }
}

/// A directory name for a server's name (its letters, digits, `-`, `_`).
fn dir_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "server".into()
    } else {
        clean
    }
}

fn restrict_mode(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
}

/// The install a command runs from: the program, and for a program in a
/// `bin` directory the directory above it (`<venv>/bin/python` → `<venv>`,
/// `/usr/bin/node` → `/usr`), as named and with its links followed (a
/// virtualenv's interpreter lives elsewhere).
fn install_of(command: &str, path: &str) -> Vec<PathBuf> {
    let found = if command.contains('/') {
        Some(PathBuf::from(command))
    } else {
        std::env::split_paths(path)
            .map(|dir| dir.join(command))
            .find(|p| p.is_file())
    };
    let Some(found) = found else {
        return Vec::new();
    };
    let mut installs = Vec::new();
    for program in [Some(found.clone()), found.canonicalize().ok()]
        .into_iter()
        .flatten()
    {
        // The program itself, wherever it lies (`/srv/server` has no
        // install above it but `/`, which is never given).
        installs.push(program.clone());
        // Only a `bin` directory's parent is an install (`~/tools/server`
        // must not open all of `~`, where the store lives).
        let holder = program.parent();
        let in_bin = holder
            .and_then(Path::file_name)
            .is_some_and(|n| n == "bin" || n == "sbin");
        if let Some(install) = holder.and_then(Path::parent)
            && in_bin
            && install.parent().is_some()
        {
            installs.push(install.to_path_buf());
        }
    }
    installs
}

/// The Landlock ABI this kernel offers (`None`: no Landlock).
pub fn landlock_abi() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        static ABI: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
        let abi = *ABI.get_or_init(probe_landlock);
        (abi > 0).then_some(abi)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(target_os = "linux")]
fn probe_landlock() -> i32 {
    use landlock::{ABI, Access, AccessFs, Compatible, Ruleset, RulesetAttr};
    // The crate says which ABI it could enforce: probe from the newest
    // down, each a ruleset that must be enforced whole.
    for (abi, n) in [
        (ABI::V5, 5),
        (ABI::V4, 4),
        (ABI::V3, 3),
        (ABI::V2, 2),
        (ABI::V1, 1),
    ] {
        let created = Ruleset::default()
            .set_compatibility(landlock::CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create());
        if created.is_ok() {
            return n;
        }
    }
    0
}

#[cfg(target_os = "linux")]
fn landlock_ruleset(
    dir: &Path,
    read_only: &[PathBuf],
) -> Result<Option<landlock::RulesetCreated>, String> {
    use landlock::{
        ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, path_beneath_rules,
    };
    if landlock_abi().is_none() {
        return Ok(None);
    }
    let abi = ABI::V5;
    let failed = |e: landlock::RulesetError| format!("cannot build the Landlock ruleset: {e}");
    let devices: Vec<&str> = DEVICES
        .iter()
        .copied()
        .filter(|d| Path::new(d).exists())
        .collect();
    let ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(failed)?
        .create()
        .map_err(failed)?
        .add_rules(path_beneath_rules(read_only, AccessFs::from_read(abi)))
        .map_err(failed)?
        .add_rules(path_beneath_rules(&devices, AccessFs::from_all(abi)))
        .map_err(failed)?
        .add_rules(path_beneath_rules([dir], AccessFs::from_all(abi)))
        .map_err(failed)?;
    Ok(Some(ruleset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(var: &str) -> Option<String> {
        match var {
            "PATH" => Some("/usr/bin:/bin".into()),
            "LANG" => Some("C.UTF-8".into()),
            "TELEGRAM_BOT_TOKEN" => Some("123:secret".into()),
            "GITHUB_TOKEN" => Some("ghp_x".into()),
            _ => None,
        }
    }

    #[test]
    fn a_server_gets_only_the_variables_it_is_given() {
        let server = McpServerConfig {
            name: "crm tools".into(),
            command: "sh".into(),
            env: [("API_URL".to_string(), "http://127.0.0.1:9".to_string())].into(),
            env_passthrough: vec!["GITHUB_TOKEN".into()],
            ..McpServerConfig::default()
        };
        let settings = SandboxSettings {
            tools_dir: PathBuf::from("/state/tools"),
            limits: SandboxConfig::default(),
        };
        let sandbox = Sandbox::plan(&server, "crm tools", &settings, parent);
        let names: Vec<&str> = sandbox.env.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["API_URL", "GITHUB_TOKEN", "HOME", "LANG", "PATH", "TMPDIR"]
        );
        assert_eq!(sandbox.dir, PathBuf::from("/state/tools/crm_tools"));
        assert_eq!(sandbox.env["HOME"], "/state/tools/crm_tools");
        assert!(!sandbox.describe().contains("secret"));
        assert!(sandbox.read_only.contains(&PathBuf::from("/usr")));
    }

    #[test]
    fn a_program_and_its_script_are_readable_wherever_they_lie() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("server");
        let script = dir.path().join("tools.py");
        std::fs::write(&program, "").unwrap();
        std::fs::write(&script, "").unwrap();
        let server = McpServerConfig {
            command: program.display().to_string(),
            args: vec![script.display().to_string(), "relative.py".into()],
            ..McpServerConfig::default()
        };
        let settings = SandboxSettings {
            tools_dir: dir.path().join("tools"),
            limits: SandboxConfig::default(),
        };
        let sandbox = Sandbox::plan(&server, "s", &settings, parent);
        assert!(
            sandbox.read_only.contains(&program),
            "{:?}",
            sandbox.read_only
        );
        assert!(
            sandbox.read_only.contains(&script),
            "{:?}",
            sandbox.read_only
        );
        // Not the directories holding them (where a store could lie too).
        assert!(!sandbox.read_only.contains(&dir.path().to_path_buf()));
        assert!(
            !sandbox
                .read_only
                .iter()
                .any(|p| dir.path().starts_with(p) && p != Path::new("/usr")),
            "{:?}",
            sandbox.read_only
        );
    }
}
