//! Store adapters. SQLite is the default; every backend passes the same
//! conformance suite (`tests/engine/store.rs`).

pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::{OpenMode, SqliteStore};
