//! Prometheus metrics of the reconciler: how often it runs, how often it fails, how long
//! it takes. Registered on the registry the ops server exposes at `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            reconciles: IntCounter::new("odds_operator_reconciles_total", "Reconciles started")?,
            failures: IntCounterVec::new(
                Opts::new(
                    "odds_operator_reconcile_errors_total",
                    "Reconciles that failed",
                ),
                &["error"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "odds_operator_reconcile_duration_seconds",
                    "Reconcile duration",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
        };
        registry.register(Box::new(metrics.reconciles.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        Ok(metrics)
    }
}
