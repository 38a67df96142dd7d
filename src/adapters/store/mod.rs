//! Store adapters. SQLite is the default and passes the conformance suite
//! (`tests/engine/store.rs`); Postgres (issue 11) has its pool and schema so
//! far, and will run the same suite once its ports exist.

pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::{OpenMode, SqliteStore};
