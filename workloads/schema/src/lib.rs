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
use std::time::Duration;

/// Every migration in `migrations/`, in order.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Applies all pending migrations. Safe to run concurrently from several processes (sqlx takes
/// an advisory lock; on a pool with `lock_timeout` use [`migrate_waiting_for_others`]) and
/// again after success (a no-op).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// [`migrate`] for a pool whose connections set `lock_timeout`, so that a migration's DDL
/// gives up on a lock instead of queueing every reader and writer of its table behind it.
///
/// `lock_timeout` also limits the wait for the advisory lock that serialises migrations, and
/// for the bookkeeping table another migration holds: those waits are for a migration in
/// progress, which must be waited out, not failed. They are retried every `retry_every` (each
/// reported to `on_wait`) as long as it takes; only a migration statement's own lock wait
/// ends the run, as `MigrateError::ExecuteMigration`. Every attempt runs on one session, so an
/// attempt that failed while holding the advisory lock does not block the next one.
pub async fn migrate_waiting_for_others(
    pool: &PgPool,
    retry_every: Duration,
    mut on_wait: impl FnMut(&sqlx::Error),
) -> Result<(), MigrateError> {
    let mut conn = pool.acquire().await?;
    let result = loop {
        // `run_direct`: `run` on a connection is not `Send` (sqlx's "Acquire is not general
        // enough"), which a spawned migration needs.
        match MIGRATOR.run_direct(&mut *conn).await {
            Err(MigrateError::Execute(error)) if is_lock_timeout(&error) => {
                on_wait(&error);
                tokio::time::sleep(retry_every).await;
            }
            result => break result,
        }
    };
    // Failed attempts may have left the session's advisory lock taken (it stacks).
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *conn)
        .await?;
    result
}

/// Whether Postgres gave up waiting for a lock (`lock_not_available`, `lock_timeout`).
fn is_lock_timeout(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

/// The newest migration version compiled in; the operator names its migration Job after it.
pub fn latest_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}
