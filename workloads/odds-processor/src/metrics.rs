//! Prometheus metrics of the processor, served as `odds_proc_*`: names below are registered
//! without that prefix in the processor's [`PrefixedRegistry`] (see [`odds_runtime::metrics`]).
//!
//! They answer the operator's questions: is it keeping up (lag, batch latency, update age),
//! is it writing (db writes, cache sets), and what goes wrong where (errors by phase, DLQ by
//! reason, stale updates skipped).

use odds_runtime::hops::{self, HopHistogram};
use odds_runtime::metrics::{component, PrefixedRegistry};
use odds_runtime::regressions::RegressionLog;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

/// Phases that count errors in `odds_proc_errors_total{phase}`.
pub mod phase {
    pub const CONSUME: &str = "consume";
    pub const DECODE: &str = "decode";
    pub const DLQ: &str = "dlq";
    pub const DB: &str = "db";
    pub const CACHE: &str = "cache";
    pub const COMMIT: &str = "commit";
    pub const ALL: [&str; 6] = [CONSUME, DECODE, DLQ, DB, CACHE, COMMIT];
}

#[derive(Clone)]
pub struct Metrics {
    /// Records read from Kafka (valid or not).
    pub messages_consumed: IntCounter,
    /// Postgres batch statements committed.
    pub db_writes: IntCounter,
    /// Rows that changed, by table (`odds_current` advanced, `odds_history` inserted).
    pub db_rows: IntCounterVec,
    /// Cache keys advanced (each one also published on the updates channel).
    pub cache_sets: IntCounter,
    pub errors: IntCounterVec,
    /// Records sent to the DLQ, by reason code.
    pub dead_lettered: IntCounterVec,
    /// Updates not newer than what Postgres holds: stored in history only, never cached/published.
    pub stale_skipped: IntCounter,
    /// `version_regressions_total{reason}`: updates not newer than what Postgres held or an
    /// earlier record of the batch had, by reason (see [`odds_runtime::regressions`]).
    pub version_regressions: IntCounterVec,
    pub regressions: RegressionLog,
    pub batch_size: Histogram,
    /// Time from the first record of a batch to its offsets being committed.
    pub batch_seconds: Histogram,
    /// `now - updated_at` of each applied update: supplier to Postgres delay.
    pub update_age_seconds: Histogram,
    /// Consumer lag by partition, from librdkafka statistics.
    pub consumer_lag: IntGaugeVec,
    /// 1 while the cache is known to miss updates (Redis was unreachable) and awaits repair.
    pub cache_stale: IntGauge,
    pub cache_repairs: IntCounter,
    /// Times librdkafka moved the consumer to the earliest retained record because its
    /// position was no longer in the log (retention passed it): the records between were
    /// never read. Also counted as a `consume` error.
    pub offset_resets: IntCounter,
    /// The processor's hops of the latency budget (`odds_proc_hop_seconds{hop}`, see
    /// [`odds_runtime::hops`]): Kafka record timestamp → received, first record → batch
    /// closed, the Postgres statement and commit, the Redis script and publish.
    pub kafka_to_processor: Histogram,
    pub batch_wait: Histogram,
    pub postgres_commit: Histogram,
    pub redis_publish: Histogram,
}

impl Metrics {
    /// The processor's registry: every name gets the `odds_proc_` prefix.
    pub fn registry() -> Result<PrefixedRegistry, prometheus::Error> {
        PrefixedRegistry::new(component::PROCESSOR)
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &PrefixedRegistry) -> Result<Metrics, prometheus::Error> {
        let hop = HopHistogram::for_component(registry, component::PROCESSOR)?;
        let version_regressions = IntCounterVec::new(
            Opts::new(
                "version_regressions_total",
                "Updates not newer than the version Postgres held for their event and market \
                 (or an earlier record of the batch had), by reason (repeated: a redelivery \
                 or a supplier's image; older: something upstream went back).",
            ),
            &["reason"],
        )?;
        let metrics = Metrics {
            kafka_to_processor: hop.hop(hops::KAFKA_TO_PROCESSOR),
            batch_wait: hop.hop(hops::BATCH_WAIT),
            postgres_commit: hop.hop(hops::POSTGRES_COMMIT),
            redis_publish: hop.hop(hops::REDIS_PUBLISH),
            messages_consumed: IntCounter::new(
                "messages_consumed_total",
                "Records read from Kafka, valid or not.",
            )?,
            db_writes: IntCounter::new(
                "db_writes_total",
                "Batches committed to Postgres (one transaction each).",
            )?,
            db_rows: IntCounterVec::new(
                Opts::new("db_rows_total", "Rows changed in Postgres, by table."),
                &["table"],
            )?,
            cache_sets: IntCounter::new(
                "cache_sets_total",
                "Cache keys advanced to a newer version (each also published).",
            )?,
            errors: IntCounterVec::new(
                Opts::new("errors_total", "Errors by processing phase."),
                &["phase"],
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "dead_lettered_total",
                    "Records sent to the DLQ, by reason code.",
                ),
                &["reason"],
            )?,
            stale_skipped: IntCounter::new(
                "stale_updates_skipped_total",
                "Updates not newer than the stored version: not cached, not published.",
            )?,
            version_regressions: version_regressions.clone(),
            regressions: RegressionLog::new(version_regressions, "odds-processor"),
            batch_size: Histogram::with_opts(
                HistogramOpts::new("batch_size", "Records per batch.")
                    .buckets(exponential_buckets(1.0, 4.0, 9)?),
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "batch_seconds",
                    "Batch latency: first record received to offsets committed.",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            )?,
            update_age_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "update_age_seconds",
                    "End-to-end age of applied updates (now - updated_at).",
                )
                .buckets(exponential_buckets(0.001, 2.0, 18)?),
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "consumer_lag",
                    "Messages behind the high watermark, by partition.",
                ),
                &["topic", "partition"],
            )?,
            cache_stale: IntGauge::new(
                "cache_stale",
                "1 while the Redis cache awaits repair from Postgres.",
            )?,
            cache_repairs: IntCounter::new(
                "cache_repairs_total",
                "Completed repairs of the Redis cache from Postgres.",
            )?,
            offset_resets: IntCounter::new(
                "offset_resets_total",
                "Consumer positions reset because they fell out of the log: records skipped.",
            )?,
        };
        registry.register(metrics.messages_consumed.clone())?;
        registry.register(metrics.db_writes.clone())?;
        registry.register(metrics.db_rows.clone())?;
        registry.register(metrics.cache_sets.clone())?;
        registry.register(metrics.errors.clone())?;
        registry.register(metrics.dead_lettered.clone())?;
        registry.register(metrics.stale_skipped.clone())?;
        registry.register(metrics.version_regressions.clone())?;
        registry.register(metrics.batch_size.clone())?;
        registry.register(metrics.batch_seconds.clone())?;
        registry.register(metrics.update_age_seconds.clone())?;
        registry.register(metrics.consumer_lag.clone())?;
        registry.register(metrics.cache_stale.clone())?;
        registry.register(metrics.cache_repairs.clone())?;
        registry.register(metrics.offset_resets.clone())?;
        // Pre-create the labelled series so dashboards show zeros instead of gaps.
        for p in phase::ALL {
            metrics.errors.with_label_values(&[p]);
        }
        for code in odds_contracts::RejectReason::CODES {
            metrics.dead_lettered.with_label_values(&[code]);
        }
        metrics.db_rows.with_label_values(&["odds_current"]);
        metrics.db_rows.with_label_values(&["odds_history"]);
        Ok(metrics)
    }

    /// Metrics in a registry of their own, for embedding (tests, bench).
    pub fn unregistered() -> Result<Metrics, prometheus::Error> {
        Metrics::register(&Metrics::registry()?)
    }

    pub fn error(&self, phase: &str) {
        self.errors.with_label_values(&[phase]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn every_processor_metric_the_dashboards_query_is_registered() {
        let registry = Metrics::registry().unwrap();
        Metrics::register(&registry).unwrap();
        let missing = odds_runtime::metrics::missing_queried(
            odds_runtime::metrics::QUERIED_METRICS,
            odds_runtime::metrics::component::PROCESSOR,
            &[&registry],
        );
        assert!(
            missing.is_empty(),
            "queried but not registered: {missing:?}"
        );
        assert!(registry.names().contains("odds_proc_consumer_lag"));
    }
}
