//! Prometheus metrics of odds-ingest, served as `odds_ingest_*`: names below are registered
//! without that prefix in ingest's [`PrefixedRegistry`] (see [`odds_runtime::metrics`]).

use odds_contracts::RejectReason;
use odds_runtime::hops::{self, HopHistogram};
use odds_runtime::metrics::{component, ComponentMetrics, PrefixedRegistry};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

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
    /// `hop_seconds{hop="supplier_to_ingest"}`: now − the update's `updated_at` on receipt.
    pub supplier_to_ingest: Histogram,
    /// `hop_seconds{hop="ingest_to_kafka_ack"}`: receipt of the frame → Kafka's acknowledgement.
    pub ingest_to_kafka_ack: Histogram,
}

/// Served as `odds_ingest_<name>`.
impl ComponentMetrics for IngestMetrics {
    const COMPONENT: &'static str = component::INGEST;

    fn register(registry: &PrefixedRegistry) -> Result<IngestMetrics, prometheus::Error> {
        let hop_family = HopHistogram::for_component(registry, component::INGEST)?;
        let r = registry;
        let m = IngestMetrics {
            frames_received: r.counter(
                "frames_received_total",
                "WebSocket frames received from the supplier",
            )?,
            updates_produced: r.counter(
                "updates_produced_total",
                "Valid updates acknowledged by Kafka",
            )?,
            dead_lettered: r.counter_vec(
                "dlq_total",
                "Rejected frames acknowledged on the DLQ, by reason",
                &["reason"],
            )?,
            produce_errors: r.counter(
                "produce_errors_total",
                "Records Kafka refused for good (logged, and dead-lettered when possible)",
            )?,
            reconnects: r.counter(
                "reconnects_total",
                "Supplier connection attempts after the first",
            )?,
            in_flight: r.gauge(
                "in_flight",
                "Records sent to Kafka and not yet acknowledged",
            )?,
            produce_latency: r.histogram(
                "produce_latency_seconds",
                "Time from handing a record to the producer to Kafka's acknowledgement",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ],
            )?,
            shutdown_undelivered: r.counter(
                "shutdown_undelivered_total",
                "Records accepted from the supplier and never delivered to Kafka: left at the \
                 shutdown deadline, lost with a producer that hit a fatal error, or dead letters \
                 the DLQ refused for good",
            )?,
            version_gaps: r.counter(
                "version_gaps_total",
                "Updates whose version skipped versions of their event (missed updates)",
            )?,
            versions_skipped: r.counter(
                "versions_skipped_total",
                "Versions never seen, summed over the gaps",
            )?,
            version_regressions: r.counter_vec(
                "version_regressions_total",
                "Updates not newer than their event's last version, by reason \
                 (repeated: expected after a reconnect's image; older: the supplier went back)",
                &["reason"],
            )?,
            supplier_to_ingest: hop_family.hop(hops::SUPPLIER_TO_INGEST),
            ingest_to_kafka_ack: hop_family.hop(hops::INGEST_TO_KAFKA_ACK),
        };
        // Pre-create the labelled series so dashboards show zeros instead of gaps.
        for reason in odds_runtime::regressions::REASONS {
            m.version_regressions.with_label_values(&[reason]);
        }
        for code in RejectReason::CODES.iter().chain(&["produce_failed"]) {
            m.dead_lettered.with_label_values(&[code]);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odds_runtime::metrics::missing_queried;

    use odds_runtime::metrics::QUERIED_METRICS as QUERIED;

    #[test]
    fn every_ingest_metric_the_dashboards_query_is_registered() {
        let (registry, _) = IngestMetrics::registered().unwrap();
        assert_eq!(
            missing_queried(QUERIED, component::INGEST, &[&registry]),
            Vec::<String>::new()
        );
        assert!(registry
            .names()
            .contains("odds_ingest_frames_received_total"));
    }

    #[test]
    fn ingest_serves_its_two_hops_before_the_first_update() {
        let (registry, _) = IngestMetrics::registered().unwrap();
        let name = hops::metric_name(component::INGEST);
        let families = registry.registry().gather();
        let family = families.iter().find(|f| f.name() == name).unwrap();
        let mut served: Vec<&str> = family
            .get_metric()
            .iter()
            .flat_map(|m| m.get_label().iter().map(|l| l.value()))
            .collect();
        served.sort_unstable();
        let mut owned: Vec<&str> = hops::ALL
            .iter()
            .filter(|(_, owner)| *owner == component::INGEST)
            .map(|(hop, _)| *hop)
            .collect();
        owned.sort_unstable();
        assert_eq!(served, owned);
    }
}
