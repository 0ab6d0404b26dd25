//! Prometheus metrics of odds-ingest (`odds_ingest_*`).

use odds_contracts::RejectReason;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct IngestMetrics {
    pub frames_received: IntCounter,
    pub updates_produced: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub produce_errors: IntCounter,
    pub reconnects: IntCounter,
    pub in_flight: IntGauge,
    pub produce_latency: Histogram,
    pub shutdown_undelivered: IntCounter,
    pub version_gaps: IntCounter,
    pub versions_skipped: IntCounter,
    pub version_regressions: IntCounterVec,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> Result<IngestMetrics, prometheus::Error> {
        let m = IngestMetrics {
            frames_received: IntCounter::new(
                "odds_ingest_frames_received_total",
                "WebSocket frames received from the supplier",
            )?,
            updates_produced: IntCounter::new(
                "odds_ingest_updates_produced_total",
                "Valid updates acknowledged by Kafka",
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "odds_ingest_dlq_total",
                    "Rejected frames acknowledged on the DLQ, by reason",
                ),
                &["reason"],
            )?,
            produce_errors: IntCounter::new(
                "odds_ingest_produce_errors_total",
                "Records Kafka refused for good (logged, and dead-lettered when possible)",
            )?,
            reconnects: IntCounter::new(
                "odds_ingest_reconnects_total",
                "Supplier connection attempts after the first",
            )?,
            in_flight: IntGauge::new(
                "odds_ingest_in_flight",
                "Records sent to Kafka and not yet acknowledged",
            )?,
            produce_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "odds_ingest_produce_latency_seconds",
                    "Time from handing a record to the producer to Kafka's acknowledgement",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
            )?,
            shutdown_undelivered: IntCounter::new(
                "odds_ingest_shutdown_undelivered_total",
                "Records read from the supplier that shutdown's deadline left undelivered to Kafka",
            )?,
            version_gaps: IntCounter::new(
                "odds_ingest_version_gaps_total",
                "Updates whose version skipped versions of their event (missed updates)",
            )?,
            versions_skipped: IntCounter::new(
                "odds_ingest_versions_skipped_total",
                "Versions never seen, summed over the gaps",
            )?,
            version_regressions: IntCounterVec::new(
                Opts::new(
                    "odds_ingest_version_regressions_total",
                    "Updates not newer than their event's last version, by reason \
                     (repeated: expected after a reconnect's image; older: the supplier went back)",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(m.shutdown_undelivered.clone()))?;
        registry.register(Box::new(m.version_gaps.clone()))?;
        registry.register(Box::new(m.versions_skipped.clone()))?;
        registry.register(Box::new(m.version_regressions.clone()))?;
        for reason in ["repeated", "older"] {
            m.version_regressions.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.frames_received.clone()))?;
        registry.register(Box::new(m.updates_produced.clone()))?;
        registry.register(Box::new(m.dead_lettered.clone()))?;
        registry.register(Box::new(m.produce_errors.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.produce_latency.clone()))?;
        for code in RejectReason::CODES.iter().chain(&["produce_failed"]) {
            m.dead_lettered.with_label_values(&[code]);
        }
        Ok(m)
    }
}
