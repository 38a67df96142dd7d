//! The store on Postgres (issue 11, in progress): a pool of connections,
//! each owned by a thread of its own, and the schema in
//! `migrations/postgres/`, applied under an advisory lock.
//!
//! Why threads and the synchronous `postgres` client rather than an async
//! pool: the store ports are synchronous (SQLite answers them in
//! microseconds), and they are called from tokio tasks. The `postgres`
//! client blocks on a runtime of its own, which may not run inside another
//! runtime's thread, so each connection lives on a plain thread and a call
//! waits for its answer on a channel — the shape of the SQLite adapter's
//! writer and readers.
//!
//! Built so far: storing an inbound message once across processes, a
//! turn's reply once per message, and claims with leases (`work.rs`). Not yet built: the port implementations,
//! the daemon's use of claims, `store migrate`, and selecting this store
//! from `CONVAGENT_DATABASE_URL`; the daemon and commands still use SQLite.

mod work;

use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::core::message::InboundMessage;
use crate::core::ports::{Accepted, StoreError};

pub use work::ClaimKind;

/// The schema, in order; a file's number is its version.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    include_str!("../../../../migrations/postgres/0001_init.sql"),
)];

/// Any number, the same in every convagent: the lock migrations hold.
const MIGRATION_LOCK: i64 = 0x636f_6e76_6167;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
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
        let config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("not a Postgres URL: {e}")))?;
        let (tasks, queue) = mpsc::channel::<Task>();
        let queue = Arc::new(Mutex::new(queue));
        let size = size.max(1);
        // Each thread opens its own connection (connecting blocks on the
        // client's runtime, which may not happen on the caller's thread).
        let (opened, results) = mpsc::channel::<Result<(), StoreError>>();
        for n in 0..size {
            let (queue, config, opened) = (queue.clone(), config.clone(), opened.clone());
            std::thread::Builder::new()
                .name(format!("convagent-pg-{n}"))
                .spawn(move || match config.connect(postgres::NoTls) {
                    Ok(client) => {
                        let _ = opened.send(Ok(()));
                        serve(client, &queue);
                    }
                    Err(e) => {
                        let _ = opened.send(Err(StoreError::Backend(format!(
                            "cannot connect to Postgres: {e}"
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
}

impl PostgresStore {
    /// Connects and brings the schema up to date: several processes
    /// starting together apply each migration once, one after another.
    pub fn open(url: &str, connections: usize) -> Result<PostgresStore, StoreError> {
        let pool = Pool::connect(url, connections)?;
        pool.run(migrate)?;
        Ok(PostgresStore { pool })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Stores an inbound message once, whichever process receives it (the
    /// `Write::Accept` of the ports to come).
    pub fn accept(&self, message: &InboundMessage) -> Result<Accepted, StoreError> {
        let message = message.clone();
        self.pool.run(move |c| work::accept(c, &message))
    }

    /// Records a turn's reply, once per message across processes: its id,
    /// and whether this call stored it.
    pub fn record_turn(
        &self,
        turn: &crate::core::ports::TurnRecord,
    ) -> Result<(i64, bool), StoreError> {
        let turn = turn.clone();
        self.pool.run(move |c| work::record_turn(c, &turn))
    }

    /// Takes or renews a claim until `until`, unless another owner holds it
    /// past `now`; whether `owner` holds it now.
    pub fn claim(
        &self,
        kind: ClaimKind,
        key: i64,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        self.pool
            .run(move |c| work::claim(c, kind, key, &owner, now, until))
    }

    pub fn release(&self, kind: ClaimKind, key: i64, owner: &str) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.pool.run(move |c| work::release(c, kind, key, &owner))
    }

    /// The schema version applied, and the newest this build knows.
    pub fn schema_version(&self) -> Result<(i64, i64), StoreError> {
        let applied = self.pool.run(|c| {
            Ok(c.query_one(
                "SELECT coalesce(max(version), 0) FROM convagent_migrations",
                &[],
            )?
            .get::<_, i64>(0))
        })?;
        Ok((applied, latest_migration()))
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
