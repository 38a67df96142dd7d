//! A throwaway Postgres cluster for a test: Debian's `postgresql` binaries,
//! `initdb` into a temp dir, listening only on a Unix socket in that dir
//! (no TCP port to find or to collide on), stopped at drop. `initdb` refuses to run as
//! root: as root the cluster belongs to Debian's `postgres` account.
//! Without Postgres the test fails and says what to install; it is never
//! skipped.

use std::path::PathBuf;
use std::process::Command;

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "Postgres is needed for this test: install Debian's `postgresql` package \
             (`./install.sh --deps-only` does)"
        )
    })
}

impl Cluster {
    /// A cluster for tests: nothing is flushed to disk (a test's data
    /// dies with it).
    pub fn start() -> Cluster {
        Cluster::start_with("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    }

    /// A cluster with Postgres's own durability settings (for benchmarks:
    /// what a user runs).
    pub fn start_durable() -> Cluster {
        Cluster::start_with("")
    }

    fn start_with(settings: &str) -> Cluster {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = rustix_is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown the cluster's directory to postgres"
            );
        }
        let data = dir.path().join("data");
        let run = |program: &str, args: &[&str]| {
            let mut cmd = if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            let out = cmd.args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{program} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let data_arg = data.to_str().unwrap();
        run(
            "initdb",
            &[
                "-D",
                data_arg,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories={} -c max_connections=100 {settings}",
            dir.path().display()
        );
        let log = dir.path().join("postgres.log");
        run(
            "pg_ctl",
            &[
                "-D",
                data_arg,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        Cluster {
            dir,
            bin,
            as_postgres,
        }
    }

    /// A new, empty database of this cluster, as a connection URL.
    /// (On a thread of its own: the client blocks on a runtime, which may
    /// not happen inside an async test's.)
    pub fn database(&self, name: &str) -> String {
        let admin_url = self.url("postgres");
        let create = format!("CREATE DATABASE \"{name}\"");
        std::thread::spawn(move || {
            let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
                .expect("connecting to the test cluster");
            admin
                .batch_execute(&create)
                .expect("creating a test database");
        })
        .join()
        .unwrap();
        self.url(name)
    }

    /// `postgres://postgres@<socket dir, percent-encoded>/<database>`.
    pub fn url(&self, database: &str) -> String {
        let socket_dir: String = self
            .dir
            .path()
            .to_str()
            .unwrap()
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_string(),
                b => (b as char).to_string(),
            })
            .collect();
        format!("postgres://postgres@{socket_dir}/{database}")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
