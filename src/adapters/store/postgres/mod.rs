//! The store on Postgres, for several daemons on one database: a pool of
//! connections, each owned by a thread of its own, and the schema in
//! `migrations/postgres/`, applied under an advisory lock.
//!
//! Why threads and the synchronous `postgres` client rather than an async
//! pool: the store ports are synchronous (SQLite answers them in
//! microseconds), and they are called from tokio tasks. The `postgres`
//! client blocks on a runtime of its own, which may not run inside another
//! runtime's thread, so each connection lives on a plain thread and a call
//! waits for its answer on a channel — the shape of the SQLite adapter's
//! writer and readers. `Writes::write` waits on a tokio channel instead,
//! so a webhook's accept never blocks a runtime thread.
//!
//! Every write is one transaction (a batch: one, with a savepoint per
//! write). Trace events nobody waits for go through one connection of
//! their own, in order, merged per round. Work shared between daemons is
//! claimed with leases by the database's clock (`work.rs`).

mod import;
mod knowledge;
mod monitor;
mod outbox;
mod people;
mod port;
mod relay;
mod rows;
mod work;

use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

pub use import::Copied;

use crate::core::llm::BoxFuture;
use crate::core::ports::{StoreError, Write, Writes, Written};

/// The schema, in order; a file's number is its version.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../../migrations/postgres/0002_unaccent.sql"),
    ),
    (
        3,
        include_str!("../../../../migrations/postgres/0003_accept.sql"),
    ),
    (
        4,
        include_str!("../../../../migrations/postgres/0004_mcp.sql"),
    ),
    (
        5,
        include_str!("../../../../migrations/postgres/0005_handoff.sql"),
    ),
    (
        6,
        include_str!("../../../../migrations/postgres/0006_approvals.sql"),
    ),
    (
        7,
        include_str!("../../../../migrations/postgres/0007_people.sql"),
    ),
    (
        8,
        include_str!("../../../../migrations/postgres/0008_knowledge.sql"),
    ),
    (
        9,
        include_str!("../../../../migrations/postgres/0009_knowledge_vectors.sql"),
    ),
];

/// Any number, the same in every convagent: the lock migrations hold.
const MIGRATION_LOCK: i64 = 0x636f_6e76_6167;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if retryable(&e) {
            StoreError::Conflict(describe(&e))
        } else {
            StoreError::Backend(describe(&e))
        }
    }
}

/// The error with what caused it (a TLS handshake says why it failed).
fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

type Task = Box<dyn FnOnce(&mut postgres::Client) + Send>;

/// Connections on threads of their own; a call runs on whichever is free.
pub struct Pool {
    tasks: mpsc::Sender<Task>,
    size: usize,
}

impl Pool {
    /// `size` connections to `url`, each opened before this returns.
    pub fn connect(url: &str, size: usize) -> Result<Pool, StoreError> {
        let (config, tls) = parse(url)?;
        let (tasks, queue) = mpsc::channel::<Task>();
        let queue = Arc::new(Mutex::new(queue));
        let size = size.max(1);
        // Each thread opens its own connection (connecting blocks on the
        // client's runtime, which may not happen on the caller's thread).
        let (opened, results) = mpsc::channel::<Result<(), StoreError>>();
        for n in 0..size {
            let (queue, config, opened) = (queue.clone(), config.clone(), opened.clone());
            let tls = tls.clone();
            std::thread::Builder::new()
                .name(format!("convagent-pg-{n}"))
                .spawn(move || match tls.connect(&config) {
                    Ok(client) => {
                        let _ = opened.send(Ok(()));
                        serve(client, &queue);
                    }
                    Err(e) => {
                        let _ = opened.send(Err(StoreError::Backend(format!(
                            "cannot connect to Postgres: {}",
                            describe(&e)
                        ))));
                    }
                })
                .map_err(|e| StoreError::Backend(format!("starting a connection thread: {e}")))?;
        }
        for _ in 0..size {
            results
                .recv()
                .map_err(|_| StoreError::Backend("a connection thread stopped".into()))??;
        }
        Ok(Pool { tasks, size })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` on a pooled connection; its result arrives on the
    /// returned channel (for async callers, which must not block).
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> R + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<R> {
        let (done, result) = tokio::sync::oneshot::channel();
        // A stopped pool drops `done`: the receiver then reports it.
        let _ = self.tasks.send(Box::new(move |client| {
            let _ = done.send(f(client));
        }));
        result
    }

    /// Runs `f` on a pooled connection and waits for its result (from any
    /// thread, async or not: the caller only waits on a channel).
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (done, result) = mpsc::channel();
        self.tasks
            .send(Box::new(move |client| {
                let _ = done.send(f(client));
            }))
            .map_err(|_| StoreError::Backend("the connection pool has stopped".into()))?;
        result
            .recv()
            .map_err(|_| StoreError::Backend("a connection thread stopped".into()))?
    }
}

/// How connections are secured: with TLS when the URL asks for it
/// (`sslmode=require`), the server's certificate verified against the
/// web's roots and the CA in `sslrootcert=FILE` if given (stricter than
/// libpq's `require`, which checks no certificate); otherwise plain (a
/// Unix socket, or a server on the same network).
#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    fn connect(&self, config: &postgres::Config) -> Result<postgres::Client, postgres::Error> {
        match self {
            Tls::Plain => config.connect(postgres::NoTls),
            Tls::Rustls(tls) => config.connect(tls.clone()),
        }
    }
}

/// The connection settings in `url` (a URL or `key=value` words) and how
/// to secure them. `sslrootcert`, which the client does not read itself,
/// is taken out here.
fn parse(url: &str) -> Result<(postgres::Config, Tls), StoreError> {
    let invalid =
        |e: &dyn std::fmt::Display| StoreError::Invalid(format!("not a Postgres URL: {e}"));
    let mut ca = None;
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| match p.strip_prefix("sslrootcert=") {
                        Some(path) => {
                            ca = Some(path.replace("%2F", "/").replace("%2f", "/"));
                            false
                        }
                        None => true,
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter(|w| match w.strip_prefix("sslrootcert=") {
                Some(path) => {
                    ca = Some(path.to_string());
                    false
                }
                None => true,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let config = postgres::Config::from_str(&rest).map_err(|e| invalid(&e))?;
    if config.get_ssl_mode() != postgres::config::SslMode::Require {
        return Ok((config, Tls::Plain));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| StoreError::Invalid(format!("sslrootcert {path}: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| StoreError::Invalid(format!("sslrootcert {path}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| StoreError::Invalid(format!("sslrootcert {path}: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Backend(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((
        config,
        Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
    ))
}

fn serve(mut client: postgres::Client, queue: &Mutex<mpsc::Receiver<Task>>) {
    loop {
        let task = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        match task {
            Ok(task) => task(&mut client),
            Err(_) => return,
        }
    }
}

/// The store on Postgres.
pub struct PostgresStore {
    pool: Pool,
    /// One connection for trace events nobody waits for: they are stored
    /// in the order they were appended, merged while it is busy.
    appender: Appender,
    /// The URL without its password, for `doctor` and errors.
    location: String,
}

impl PostgresStore {
    /// Connects and brings the schema up to date: several processes
    /// starting together apply each migration once, one after another.
    pub fn open(url: &str, connections: usize) -> Result<PostgresStore, StoreError> {
        let location = redact(url);
        let pool = Pool::connect(url, connections).map_err(|e| at(&location, e))?;
        pool.run(migrate)?;
        let appender = Appender::start(Pool::connect(url, 1)?);
        Ok(PostgresStore {
            pool,
            appender,
            location,
        })
    }

    /// Connects without migrating (for `doctor`, which reports an outdated
    /// schema rather than fixing it).
    pub fn connect(url: &str, connections: usize) -> Result<PostgresStore, StoreError> {
        let location = redact(url);
        let pool = Pool::connect(url, connections).map_err(|e| at(&location, e))?;
        let appender = Appender::start(Pool::connect(url, 1)?);
        Ok(PostgresStore {
            pool,
            appender,
            location,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Where the store is, without a password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs `f` on a pooled connection, waiting for it.
    fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.pool.run(f)
    }

    /// The schema version applied, and the newest this build knows.
    pub fn schema_version(&self) -> Result<(i64, i64), StoreError> {
        let applied = self.pool.run(|c| {
            let exists: bool = c
                .query_one(
                    "SELECT to_regclass('convagent_migrations') IS NOT NULL",
                    &[],
                )?
                .get(0);
            if !exists {
                return Ok(0);
            }
            Ok(c.query_one(
                "SELECT coalesce(max(version), 0) FROM convagent_migrations",
                &[],
            )?
            .get::<_, i64>(0))
        })?;
        Ok((applied, latest_migration()))
    }

    /// Connections open to this database (every process's), and how many
    /// the server allows.
    pub fn connections(&self) -> Result<(u64, u64), StoreError> {
        self.pool.run(|c| {
            let r = c.query_one(
                "SELECT (SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database()),
                        current_setting('max_connections')::bigint",
                &[],
            )?;
            Ok((
                r.get::<_, i64>(0).max(0) as u64,
                r.get::<_, i64>(1).max(0) as u64,
            ))
        })
    }

    /// The server's `fsync` and `synchronous_commit`: with either off, a
    /// commit (and so an acknowledged message) may not survive a crash of
    /// the server's machine.
    pub fn durability(&self) -> Result<(String, String), StoreError> {
        self.pool.run(|c| {
            let r = c.query_one(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
                &[],
            )?;
            Ok((r.get::<_, String>(0), r.get::<_, String>(1)))
        })
    }

    /// Claims whose lease is over (their daemon stopped without giving
    /// them up), and claims held now: what `doctor` calls the lease
    /// backlog.
    pub fn leases(&self) -> Result<(u64, u64), StoreError> {
        self.pool.run(|c| {
            let r = c.query_one(
                "SELECT count(*) FILTER (WHERE until <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint),
                        count(*)
                 FROM claims",
                &[],
            )?;
            Ok((r.get::<_, i64>(0).max(0) as u64, r.get::<_, i64>(1).max(0) as u64))
        })
    }
}

/// `e`, saying which database it is about.
fn at(location: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Invalid(m) => StoreError::Invalid(format!("{location}: {m}")),
        StoreError::Backend(m) => StoreError::Backend(format!("{location}: {m}")),
        other => other,
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres (a connection string)".to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    let host = host.split('?').next().unwrap_or(host);
    match auth {
        Some(auth) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{auth}@{host}"),
        },
        None => format!("{scheme}://{host}"),
    }
}

/// Whether a failed write may succeed when run again: Postgres gave up on
/// a deadlock or a serialization conflict between two processes.
fn retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// `writes` in one transaction, a savepoint each when there are several;
/// one result per write.
fn batch(client: &mut postgres::Client, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
    let all_failed = |e: &dyn std::fmt::Display| -> Vec<Result<Written, StoreError>> {
        writes
            .iter()
            .map(|_| Err(StoreError::Backend(e.to_string())))
            .collect()
    };
    // One write that is one statement needs no transaction around it.
    match writes {
        [Write::Accept(message)] => {
            return vec![work::accept(client, message).map(Written::Accepted)];
        }
        [Write::Turn(record)] => return vec![work::turn(client, record).map(Written::Reply)],
        [Write::Outbox { id, update, at }] => {
            return vec![work::outbox(client, *id, update, *at).map(|()| Written::Done)];
        }
        _ => {}
    }
    for attempt in 0.. {
        let mut tx = match client.transaction() {
            Ok(tx) => tx,
            Err(e) => return all_failed(&e),
        };
        let mut results = Vec::with_capacity(writes.len());
        let mut conflict = None;
        for write in writes {
            let result = if writes.len() == 1 {
                work::write_in(&mut tx, write)
            } else {
                tx.transaction()
                    .map_err(StoreError::from)
                    .and_then(|mut sp| {
                        let written = work::write_in(&mut sp, write)?;
                        sp.commit()?;
                        Ok(written)
                    })
            };
            if let Err(StoreError::Conflict(e)) = &result {
                conflict = Some(e.clone());
                break;
            }
            results.push(result);
        }
        if let Some(e) = conflict {
            drop(tx);
            if attempt < 3 {
                continue;
            }
            return all_failed(&e);
        }
        if writes.len() == 1 && results.first().is_some_and(Result::is_err) {
            return results;
        }
        return match tx.commit() {
            Ok(()) => results,
            Err(e) => all_failed(&e),
        };
    }
    unreachable!("the loop returns")
}

impl Writes for PostgresStore {
    fn write_batch(&self, writes: &[Write]) -> Vec<Result<Written, StoreError>> {
        let writes = writes.to_vec();
        let n = writes.len();
        self.pool
            .run(move |c| Ok(batch(c, &writes)))
            .unwrap_or_else(|e| {
                (0..n)
                    .map(|_| Err(StoreError::Backend(e.to_string())))
                    .collect()
            })
    }

    fn write(&self, write: Write) -> BoxFuture<'_, Result<Written, StoreError>> {
        let result = self.pool.spawn(move |c| {
            batch(c, std::slice::from_ref(&write))
                .pop()
                .unwrap_or_else(|| Err(StoreError::Backend("the batch had no result".into())))
        });
        Box::pin(async move {
            result
                .await
                .map_err(|_| StoreError::Backend("a connection thread stopped".into()))?
        })
    }

    fn append(&self, write: Write) {
        self.appender.append(write);
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        let done = self.appender.flush();
        Box::pin(async move {
            let _ = done.await;
        })
    }
}

/// Trace events (and any other write nobody waits for) on one connection,
/// in order: whatever queued while it was busy goes in one transaction.
struct Appender {
    queue: Arc<(Mutex<AppendQueue>, std::sync::Condvar)>,
}

#[derive(Default)]
struct AppendQueue {
    writes: Vec<Write>,
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    closed: bool,
}

impl Appender {
    fn start(pool: Pool) -> Appender {
        let queue: Arc<(Mutex<AppendQueue>, std::sync::Condvar)> = Arc::default();
        let shared = queue.clone();
        std::thread::Builder::new()
            .name("convagent-pg-append".into())
            .spawn(move || {
                loop {
                    let (writes, flushes) = {
                        let (lock, ready) = &*shared;
                        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
                        while q.writes.is_empty() && q.flushes.is_empty() && !q.closed {
                            q = ready.wait(q).unwrap_or_else(|p| p.into_inner());
                        }
                        if q.closed && q.writes.is_empty() && q.flushes.is_empty() {
                            return;
                        }
                        (
                            std::mem::take(&mut q.writes),
                            std::mem::take(&mut q.flushes),
                        )
                    };
                    let mut merged = Vec::new();
                    let mut others = Vec::new();
                    for write in writes {
                        match write {
                            Write::Traces(events) => merged.extend(events),
                            other => others.push(other),
                        }
                    }
                    if !merged.is_empty() {
                        others.push(Write::Traces(merged));
                    }
                    if !others.is_empty() {
                        let results = pool.run(move |c| Ok(batch(c, &others)));
                        for e in results.into_iter().flatten().filter_map(Result::err) {
                            tracing::warn!(error = %e, "cannot store trace events");
                        }
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
            })
            .expect("spawning the store's trace thread");
        Appender { queue }
    }

    fn append(&self, write: Write) {
        let (lock, ready) = &*self.queue;
        lock.lock()
            .unwrap_or_else(|p| p.into_inner())
            .writes
            .push(write);
        ready.notify_one();
    }

    /// Resolves once everything appended before is stored.
    fn flush(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let (lock, ready) = &*self.queue;
        lock.lock()
            .unwrap_or_else(|p| p.into_inner())
            .flushes
            .push(done);
        ready.notify_one();
        wait
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        let (lock, ready) = &*self.queue;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        ready.notify_one();
    }
}

fn latest_migration() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Applies what is missing, each migration in a transaction of its own,
/// holding the migration lock throughout.
fn migrate(client: &mut postgres::Client) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = (|| {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS convagent_migrations (
                 version    BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )?;
        for (version, sql) in MIGRATIONS {
            let applied = client
                .query_opt(
                    "SELECT 1 FROM convagent_migrations WHERE version = $1",
                    &[version],
                )?
                .is_some();
            if applied {
                continue;
            }
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)
                .map_err(|e| StoreError::Backend(format!("Postgres migration {version}: {e}")))?;
            tx.execute(
                "INSERT INTO convagent_migrations (version) VALUES ($1)",
                &[version],
            )?;
            tx.commit()?;
        }
        Ok(())
    })();
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_location_never_shows_the_password() {
        assert_eq!(
            super::redact("postgres://bot:s3cr%40t@db.example:5432/convagent?sslmode=require"),
            "postgres://bot:***@db.example:5432/convagent"
        );
        assert_eq!(
            super::redact("postgresql://bot@%2Frun%2Fpostgresql/convagent"),
            "postgresql://bot@%2Frun%2Fpostgresql/convagent"
        );
        assert_eq!(
            super::redact("host=db password=x"),
            "postgres (a connection string)"
        );
    }
}
