//! The database schema, embedded.
//!
//! The SQL lives in the repository's top-level `migrations/` so operators and DBAs find it
//! without reading Rust; this crate compiles it into whichever binary needs to migrate (the
//! processor's `migrate` command, the demo, tests), so a deployed image always carries the
//! schema it was built against.

pub mod pool;
pub mod read_models;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;

/// Every migration in `migrations/`, in order.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Applies all pending migrations. Safe to run concurrently from several processes (sqlx takes
/// an advisory lock) and again after success (a no-op).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// The newest migration version compiled in; the operator names its migration Job after it.
pub fn latest_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}
