//! Postgres as the store reads it: a pool whose failure to reach the server marks it
//! unreachable, so reads skip it at once until a probe in the background gets through.
//!
//! Without this, every read while Postgres is down waits the pool's acquire timeout for a
//! connection that will not come; a WebSocket subscribe then answered seconds late, and REST
//! reads that the cache could answer took as long. Only failures to reach the server count
//! (no connection, a connection lost, no answer within the deadline); a statement the server
//! cancels or refuses says nothing about reachability.

use crate::metrics::Metrics;
use odds_schema::pool::DeadlinePool;
use sqlx::PgConnection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Pause between two probes of an unreachable Postgres.
const PROBE_EVERY: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub(super) struct Postgres {
    pool: DeadlinePool,
    unreachable: Arc<AtomicBool>,
    metrics: Metrics,
}

impl Postgres {
    pub(super) fn new(pool: DeadlinePool, metrics: Metrics) -> Postgres {
        Postgres {
            pool,
            unreachable: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    /// [`DeadlinePool::run`], or at once an error while Postgres is known unreachable.
    pub(super) async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        if self.unreachable.load(Ordering::Acquire) {
            self.metrics.store_postgres_skipped.inc();
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "unreachable moments ago; not tried until a probe reaches it",
            )));
        }
        let result = self.pool.run(statement).await;
        if let Err(error) = &result {
            if is_unreachable(error) {
                self.mark_unreachable(error);
            }
        }
        result
    }

    /// Whether a `SELECT 1` gets through (readiness).
    pub(super) async fn ping(&self) -> bool {
        self.run(async |conn| sqlx::query("SELECT 1").execute(conn).await)
            .await
            .is_ok()
    }

    fn mark_unreachable(&self, error: &sqlx::Error) {
        if self.unreachable.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(%error, "Postgres unreachable; reads skip it until a probe reaches it");
        self.metrics.store_postgres_unreachable.set(1);
        let probe = self.clone();
        tokio::spawn(async move { probe.probe_until_reachable().await });
    }

    async fn probe_until_reachable(self) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let select = self
                .pool
                .run(async |conn| sqlx::query("SELECT 1").execute(conn).await)
                .await;
            if select.is_ok() {
                self.unreachable.store(false, Ordering::Release);
                self.metrics.store_postgres_unreachable.set(0);
                tracing::info!("Postgres reachable again");
                return;
            }
        }
    }
}

/// Failures to reach the server, as opposed to a statement it cancelled or refused.
fn is_unreachable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}
