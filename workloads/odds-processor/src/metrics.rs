//! Prometheus metrics of the processor, served as `odds_proc_*`: names below are registered
//! without that prefix in the processor's [`PrefixedRegistry`] (see [`odds_runtime::metrics`]).
//!
//! They answer the operator's questions: is it keeping up (lag, batch latency, update age),
//! is it writing (db writes, cache sets), and what goes wrong where (errors by phase, DLQ by
//! reason, stale updates skipped).

use odds_runtime::hops::{self, HopHistogram};
use odds_runtime::metrics::{component, ComponentMetrics, PrefixedRegistry};
use odds_runtime::regressions::RegressionLog;
use prometheus::{
    exponential_buckets, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Where an error happened: the `phase` label of `odds_proc_errors_total{phase}`. A type
/// rather than strings, so a call site cannot count under a label no dashboard knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Consume,
    Decode,
    Dlq,
    Db,
    Cache,
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Consume,
        Phase::Decode,
        Phase::Dlq,
        Phase::Db,
        Phase::Cache,
        Phase::Commit,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Consume => "consume",
            Phase::Decode => "decode",
            Phase::Dlq => "dlq",
            Phase::Db => "db",
            Phase::Cache => "cache",
            Phase::Commit => "commit",
        }
    }
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

/// Served as `odds_proc_<name>`.
impl ComponentMetrics for Metrics {
    const COMPONENT: &'static str = component::PROCESSOR;

    /// One declaration per metric, its name and help beside the field it fills.
    fn register(registry: &PrefixedRegistry) -> Result<Metrics, prometheus::Error> {
        let hop = HopHistogram::for_component(registry, component::PROCESSOR)?;
        let r = registry;
        let version_regressions = r.counter_vec(
            "version_regressions_total",
            "Updates not newer than the version Postgres held for their event and market \
             (or an earlier record of the batch had), by reason (repeated: a redelivery \
             or a supplier's image; older: something upstream went back).",
            &["reason"],
        )?;
        let metrics = Metrics {
            kafka_to_processor: hop.hop(hops::KAFKA_TO_PROCESSOR),
            batch_wait: hop.hop(hops::BATCH_WAIT),
            postgres_commit: hop.hop(hops::POSTGRES_COMMIT),
            redis_publish: hop.hop(hops::REDIS_PUBLISH),
            messages_consumed: r.counter(
                "messages_consumed_total",
                "Records read from Kafka, valid or not.",
            )?,
            db_writes: r.counter(
                "db_writes_total",
                "Batches committed to Postgres (one transaction each).",
            )?,
            db_rows: r.counter_vec(
                "db_rows_total",
                "Rows changed in Postgres, by table.",
                &["table"],
            )?,
            cache_sets: r.counter(
                "cache_sets_total",
                "Cache keys advanced to a newer version (each also published).",
            )?,
            errors: r.counter_vec("errors_total", "Errors by processing phase.", &["phase"])?,
            dead_lettered: r.counter_vec(
                "dead_lettered_total",
                "Records sent to the DLQ, by reason code.",
                &["reason"],
            )?,
            stale_skipped: r.counter(
                "stale_updates_skipped_total",
                "Updates not newer than the stored version: not cached, not published.",
            )?,
            regressions: RegressionLog::new(version_regressions.clone(), "odds-processor"),
            version_regressions,
            batch_size: r.histogram(
                "batch_size",
                "Records per batch.",
                exponential_buckets(1.0, 4.0, 9)?,
            )?,
            batch_seconds: r.histogram(
                "batch_seconds",
                "Batch latency: first record received to offsets committed.",
                exponential_buckets(0.0005, 2.0, 16)?,
            )?,
            update_age_seconds: r.histogram(
                "update_age_seconds",
                "End-to-end age of applied updates (now - updated_at).",
                exponential_buckets(0.001, 2.0, 18)?,
            )?,
            consumer_lag: r.gauge_vec(
                "consumer_lag",
                "Messages behind the high watermark, by partition.",
                &["topic", "partition"],
            )?,
            cache_stale: r.gauge(
                "cache_stale",
                "1 while the Redis cache awaits repair from Postgres.",
            )?,
            cache_repairs: r.counter(
                "cache_repairs_total",
                "Completed repairs of the Redis cache from Postgres.",
            )?,
            offset_resets: r.counter(
                "offset_resets_total",
                "Consumer positions reset because they fell out of the log: records skipped.",
            )?,
        };
        metrics.precreate_series();
        Ok(metrics)
    }
}

impl Metrics {
    /// Pre-creates the labelled series so dashboards show zeros instead of gaps.
    fn precreate_series(&self) {
        for phase in Phase::ALL {
            self.errors.with_label_values(&[phase.label()]);
        }
        for code in odds_contracts::RejectReason::CODES {
            self.dead_lettered.with_label_values(&[code]);
        }
        self.db_rows.with_label_values(&["odds_current"]);
        self.db_rows.with_label_values(&["odds_history"]);
    }

    /// Metrics in a registry of their own, for embedding (tests, bench).
    pub fn unregistered() -> Result<Metrics, prometheus::Error> {
        Metrics::register(&Metrics::registry()?)
    }

    pub fn error(&self, phase: Phase) {
        self.errors.with_label_values(&[phase.label()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;
    use odds_runtime::metrics::ComponentMetrics;

    #[test]
    fn every_processor_metric_the_dashboards_query_is_registered() {
        let (registry, _) = Metrics::registered().unwrap();
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
