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
    /// The TCP port, for a cluster that listens on 127.0.0.1 (with TLS):
    /// held bound by the test for the cluster's life (Postgres binds it
    /// beside, with SO_REUSEADDR), never released and hoped free.
    port: Option<super::ReservedPort>,
}

/// Test clusters write nothing to disk that they do not have to.
const FAST: &str = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off";

/// A CA and a server certificate for IP 127.0.0.1 it signed, in `dir`,
/// by Debian's `openssl`; the key readable by the server only.
fn make_certificates(dir: &std::path::Path, as_postgres: bool) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS test (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=convagent test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if as_postgres {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&key)
            .arg(dir.join("server.crt"))
            .status()
            .unwrap();
        assert!(status.success());
    }
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
        Cluster::start_with(FAST, false)
    }

    /// [`Cluster::start`] also listening on 127.0.0.1 with TLS only, its
    /// certificate (for IP 127.0.0.1) signed by a CA of its own made with
    /// `openssl`: see [`Cluster::tcp_url`] and [`Cluster::ca`].
    pub fn start_tls() -> Cluster {
        Cluster::start_with(FAST, true)
    }

    /// A cluster with Postgres's own durability settings (for benchmarks:
    /// what a user runs).
    pub fn start_durable() -> Cluster {
        Cluster::start_with("", false)
    }

    fn start_with(settings: &str, tls: bool) -> Cluster {
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
        let (listen, port) = if tls {
            make_certificates(dir.path(), as_postgres);
            let reserved = super::ReservedPort::new();
            let port = reserved.port;
            let key = dir.path().join("server.key");
            let crt = dir.path().join("server.crt");
            (
                format!(
                    "-c listen_addresses=127.0.0.1 -c port={port} -c ssl=on \
                     -c ssl_cert_file={} -c ssl_key_file={}",
                    crt.display(),
                    key.display()
                ),
                Some(reserved),
            )
        } else {
            ("-c listen_addresses=''".to_string(), None)
        };
        let options = format!(
            "{listen} -c unix_socket_directories={} -c max_connections=100 {settings}",
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
            port,
        }
    }

    /// The TLS cluster's database over TCP, with `query` (`sslmode=…`).
    pub fn tcp_url(&self, database: &str, query: &str) -> String {
        let port = self
            .port
            .as_ref()
            .expect("a cluster started with start_tls")
            .port;
        format!("postgres://postgres@127.0.0.1:{port}/{database}{query}")
    }

    /// The CA that signed the TLS cluster's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
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
        match &self.port {
            Some(reserved) => format!(
                "postgres://postgres@{socket_dir}:{}/{database}",
                reserved.port
            ),
            None => format!("postgres://postgres@{socket_dir}/{database}"),
        }
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
