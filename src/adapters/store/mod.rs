//! Store adapters: SQLite (the default: one file, one daemon) and Postgres
//! (`store.url`: several daemons on one database). Both pass the same
//! conformance suite (`tests/engine/store.rs`).

pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::{OpenMode, SqliteStore};
