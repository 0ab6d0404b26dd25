//! Connection pools whose statements end.
//!
//! sqlx bounds acquiring a connection, not a statement once sent. A statement waiting on a lock
//! (a migration's DDL, a long transaction) or on a server that stopped answering (a freeze, a
//! partition, a failover that left the socket open) would otherwise hold a stage forever: the
//! processor's batch, a REST request, a graceful shutdown. Postgres cancels a statement past
//! `statement_timeout` with a clear error; the client-side deadline a little later catches the
//! server that cannot cancel anything because it does not answer at all.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// How much longer than the server's `statement_timeout` the client waits: the server's own
/// cancellation, with its precise message, normally comes first.
pub const CLIENT_MARGIN: Duration = Duration::from_secs(1);

/// How a stage's pool connects and how long its statements may run.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Longest wait for a connection (a new one included: connect and authenticate).
    pub acquire_timeout: Duration,
    /// Longest a statement may run, server side; the client gives up [`CLIENT_MARGIN`] later.
    /// Zero: no limit (Postgres' meaning), for work as long as it takes, like a migration.
    pub statement_timeout: Duration,
    /// Longest a statement waits for a lock; zero: no limit. A DDL statement waiting on a
    /// lock also queues every later reader and writer of the table behind it.
    pub lock_timeout: Duration,
}

/// A pool that connects on first use (a stage starts, and reports not ready, while Postgres is
/// down) and sets `statement_timeout` and `lock_timeout` on every connection.
pub fn connect_lazy(database_url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(database_url)?.options([
        (
            "statement_timeout",
            settings.statement_timeout.as_millis().to_string(),
        ),
        (
            "lock_timeout",
            settings.lock_timeout.as_millis().to_string(),
        ),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

/// A pool whose statements the client also gives up on: see [`DeadlinePool::run`].
#[derive(Debug, Clone)]
pub struct DeadlinePool {
    pool: PgPool,
    statement_timeout: Duration,
}

impl DeadlinePool {
    /// [`connect_lazy`], with the client-side deadline following `settings.statement_timeout`.
    pub fn connect_lazy(
        database_url: &str,
        settings: &PoolSettings,
    ) -> Result<DeadlinePool, sqlx::Error> {
        Ok(DeadlinePool::new(
            connect_lazy(database_url, settings)?,
            settings.statement_timeout,
        ))
    }

    /// Wraps a pool made elsewhere (tests); `statement_timeout` should match the server's.
    pub fn new(pool: PgPool, statement_timeout: Duration) -> DeadlinePool {
        DeadlinePool {
            pool,
            statement_timeout,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `statement` on a connection of the pool, failing with a timeout error when no
    /// answer came within `statement_timeout` + [`CLIENT_MARGIN`] (no client deadline when the
    /// timeout is zero). The error is an I/O error: callers treat it as an outage (retry,
    /// report unavailable), never as Postgres refusing the data.
    ///
    /// A connection given up on is closed, not returned: it may still be waiting for the
    /// abandoned statement's answer, and back in the pool it would hold its slot while the
    /// server stays silent, starving the statements that follow.
    pub async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if self.statement_timeout.is_zero() {
            return statement(&mut conn).await;
        }
        let deadline = self.statement_timeout + CLIENT_MARGIN;
        match tokio::time::timeout(deadline, statement(&mut conn)).await {
            Ok(result) => result,
            Err(_) => {
                conn.close_on_drop();
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("Postgres did not answer within {deadline:?}"),
                )))
            }
        }
    }
}
