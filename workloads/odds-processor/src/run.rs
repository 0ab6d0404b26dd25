//! The service around the processor: ops server, readiness, graceful shutdown, `migrate`.
//!
//! SIGTERM cancels the token; the processor finishes or abandons (uncommitted) the batch in
//! flight, commits what is durable and leaves the group, then the ops server stops.

use crate::checks::{CHECK_DLQ, CHECK_KAFKA, CHECK_POSTGRES, CHECK_REDIS};
use crate::config::{MigrateArgs, RunArgs};
use crate::metrics::Metrics;
use crate::processor::Processor;
use crate::ProcessorError;
use odds_runtime::metrics::ComponentMetrics;
use odds_runtime::ops::serve_ops;
use odds_runtime::Readiness;
use odds_schema::pool::PoolSettings;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the processor until `shutdown` is cancelled, or until it stops by itself for a reason
/// no retry can change (then with that error, after readiness said so).
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<(), ProcessorError> {
    let (registry, metrics) = Metrics::registered()?;
    let readiness = Readiness::new(&[CHECK_KAFKA, CHECK_POSTGRES, CHECK_REDIS, CHECK_DLQ]);
    let ops_stop = CancellationToken::new();
    let (addr, ops_task) =
        serve_ops(args.ops.http_addr, &readiness, &registry, ops_stop.clone()).await?;
    tracing::info!(%addr, "ops server listening");
    let config = args.processor;
    // Its own token: the beat must also stop (with its last, `leaving` beat) when the
    // processor stops by itself for good, not only on SIGTERM, or the process never exits.
    let beat_stop = shutdown.child_token();
    let heartbeat = crate::heartbeat::spawn(
        &config,
        metrics.clone(),
        readiness.clone(),
        beat_stop.clone(),
    )
    .map_err(crate::cache::CacheError::from)?;
    let processor = Processor::new(&config, metrics, readiness, shutdown)?;
    tracing::info!(
        topic = %config.kafka.topic,
        group = %config.kafka_group,
        batch_max = config.batch_max,
        batch_max_wait_ms = config.batch_max_wait_ms.0,
        "processor started"
    );
    let stopped = processor.run().await;
    beat_stop.cancel();
    let _ = heartbeat.await;
    ops_stop.cancel();
    let _ = ops_task.await;
    stopped
}

/// Applies the migrations and returns; the operator runs this as a Job.
pub async fn migrate(args: &MigrateArgs) -> Result<(), ProcessorError> {
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(30),
        // A migration takes as long as it takes, but a DDL statement waiting on a lock queues
        // every reader and writer of its table behind it: that wait is bounded.
        statement_timeout: Duration::ZERO,
        lock_timeout: args.lock_timeout_ms.duration(),
    };
    let pool = odds_schema::pool::connect_lazy(&args.database_url, &settings)?;
    odds_schema::migrate_waiting_for_others(
        &pool,
        Duration::from_secs(1),
        |error| tracing::info!(%error, "another migration is in progress; waiting for it"),
    )
    .await?;
    tracing::info!(version = odds_schema::latest_version(), "database migrated");
    pool.close().await;
    Ok(())
}
