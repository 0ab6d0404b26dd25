//! The cache phase of a batch, apart from the rest of the processor so that it can run while
//! the next batch is made durable (see [`super::Processor::run`]): Redis' set-if-newer and
//! publish of what a durable batch advanced, and the repair of a stale cache from Postgres.
//!
//! A Redis failure never fails a batch: it marks the cache stale, fails the `redis` check,
//! tells readers on the cache-status channel, and a repair from Postgres (which holds
//! everything committed) brings the cache back.

use super::{DurableBatch, CHECK_REDIS};
use crate::cache::{Cache, CacheError, StatusReporter};
use crate::metrics::{Metrics, Phase};
use crate::store::Store;
use crate::trace::REDIS_SPAN;
use odds_contracts::OddsUpdate;
use odds_runtime::otel::{self, SpanApi as _};
use odds_runtime::Readiness;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// How often an idle processor checks that Redis still answers (a restart empties it).
const CACHE_CHECK_EVERY: Duration = Duration::from_secs(5);
const REPAIR_FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A repair retry costs a PING while Redis is down, so recovery is noticed within seconds.
const REPAIR_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The Redis side of the processor.
pub(super) struct CacheWriter {
    cache: Cache,
    /// Tells readers (on Redis' cache-status channel) while cache writes fail.
    status: StatusReporter,
    /// What a repair reads.
    store: Store,
    metrics: Metrics,
    readiness: Readiness,
    next_repair: Instant,
    repair_backoff: Duration,
    next_check: Instant,
}

impl CacheWriter {
    pub(super) fn new(
        cache: Cache,
        store: Store,
        metrics: Metrics,
        readiness: Readiness,
    ) -> CacheWriter {
        let now = Instant::now();
        CacheWriter {
            status: cache.status_reporter(),
            cache,
            store,
            metrics,
            readiness,
            next_repair: now,
            repair_backoff: REPAIR_FIRST_BACKOFF,
            next_check: now + CACHE_CHECK_EVERY,
        }
    }

    pub(super) fn is_stale(&self) -> bool {
        self.cache.is_stale()
    }

    /// Sets and publishes the batch's current updates in Redis; a Redis failure is counted
    /// and leaves the cache stale (repaired later), it never fails the batch. Returns how
    /// many keys advanced.
    pub(super) async fn publish(&mut self, durable: &DurableBatch) -> usize {
        if self.cache.is_stale() {
            // A repair reads Postgres after this batch committed, so it covers the batch.
            return self.repair_if_due().await.unwrap_or(0);
        }
        let current: Vec<&OddsUpdate> = durable.current.iter().collect();
        let write = Instant::now();
        let Some(trace) = &durable.trace else {
            let written = self.cache.set_newest(&current).await;
            return self.written(written, write);
        };
        let mut step = trace.child(REDIS_SPAN);
        let step_context = step.as_ref().map(|span| span.span_context().clone());
        let written = self
            .cache
            .set_newest_traced(&current, |update| {
                trace.publish_suffix(update, step_context.as_ref())
            })
            .instrument(trace.log_span())
            .await;
        if let (Some(span), Err(error)) = (step.as_mut(), &written) {
            otel::fail(span, error.to_string());
        }
        let _logs = trace.log_span().entered();
        self.written(written, write)
    }

    /// Accounts for a cache write of the batch's current updates; returns how many advanced.
    fn written(&mut self, written: Result<Vec<OddsUpdate>, CacheError>, write: Instant) -> usize {
        match written {
            Ok(advanced) => {
                self.metrics
                    .redis_publish
                    .observe(write.elapsed().as_secs_f64());
                self.metrics.cache_sets.inc_by(advanced.len() as u64);
                advanced.len()
            }
            Err(error) => {
                tracing::warn!(%error, "cache update failed; cache will be repaired from Postgres");
                self.failed(&error);
                0
            }
        }
    }

    /// Repairs the cache when a retry is due; `None` if not attempted or failed.
    async fn repair_if_due(&mut self) -> Option<usize> {
        let now = Instant::now();
        if now < self.next_repair {
            return None;
        }
        match self.cache.repair_from(&self.store).await {
            Ok(advanced) => {
                self.metrics.cache_repairs.inc();
                self.metrics.cache_sets.inc_by(advanced as u64);
                self.metrics.cache_stale.set(0);
                self.readiness.set(CHECK_REDIS, true);
                self.status.healthy();
                self.repair_backoff = REPAIR_FIRST_BACKOFF;
                tracing::info!(advanced, "cache repaired from Postgres");
                Some(advanced)
            }
            Err(error) => {
                self.failed(&error);
                self.next_repair = now + self.repair_backoff;
                self.repair_backoff = (self.repair_backoff * 2).min(REPAIR_MAX_BACKOFF);
                tracing::warn!(%error, retry_in = ?self.repair_backoff, "cache repair failed");
                None
            }
        }
    }

    /// A cache write, check or repair failed: count it, fail readiness and tell readers. Only
    /// a successful repair clears this (the cache may have missed writes meanwhile).
    fn failed(&mut self, error: &CacheError) {
        self.metrics.error(Phase::Cache);
        self.metrics.cache_stale.set(1);
        self.readiness.set(CHECK_REDIS, false);
        self.status.failing(error.to_string());
    }

    /// Idle-time upkeep: checks that Redis still answers, and repairs a stale cache when due.
    pub(super) async fn maintain(&mut self) {
        if !self.cache.is_stale() && Instant::now() >= self.next_check {
            self.next_check = Instant::now() + CACHE_CHECK_EVERY;
            if let Err(error) = self.cache.check().await {
                tracing::warn!(%error, "Redis does not answer; cache will be repaired from Postgres");
                self.failed(&error);
            }
        }
        if self.cache.is_stale() {
            self.repair_if_due().await;
        }
    }
}
