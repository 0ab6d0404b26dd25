//! Per-hop latency: where an update's time goes between the supplier and a client's socket.
//!
//! End-to-end latency alone cannot say which stage to fix. Each stage therefore observes the
//! hops it can see into one histogram family, `odds_<component>_hop_seconds{hop="..."}`, with
//! the same fine buckets everywhere (sub-millisecond to seconds), so `odds-demo bench` can
//! take p50/p99 per hop from bucket deltas and lay them side by side. The hop names, which
//! component observes each, and the buckets are defined once here.
//!
//! ```
//! use odds_runtime::hops::{self, HopHistogram};
//! use odds_runtime::metrics::{component, PrefixedRegistry};
//!
//! let registry = PrefixedRegistry::new(component::INGEST).unwrap();
//! let hops = HopHistogram::register(&registry, &[hops::SUPPLIER_TO_INGEST]).unwrap();
//! hops.observe_since(hops::SUPPLIER_TO_INGEST, chrono::Utc::now());
//! assert!(registry.names().contains("odds_ingest_hop_seconds"));
//! ```

use crate::metrics::{component, prefix, PrefixedRegistry};
use chrono::{DateTime, Utc};
use prometheus::{Histogram, HistogramOpts, HistogramVec};

/// The family's name without the component prefix.
pub const METRIC: &str = "hop_seconds";
/// The label carrying the hop's name.
pub const LABEL: &str = "hop";

/// now − the update's `updated_at` when ingest receives its frame (includes supplier↔ingest
/// clock skew when they run on different machines).
pub const SUPPLIER_TO_INGEST: &str = "supplier_to_ingest";
/// Ingest receives the frame → Kafka's delivery report for its record.
pub const INGEST_TO_KAFKA_ACK: &str = "ingest_to_kafka_ack";
/// now − the Kafka record's timestamp when the processor receives the record.
pub const KAFKA_TO_PROCESSOR: &str = "kafka_to_processor";
/// The processor receives the first record of a batch → the batch is closed.
pub const BATCH_WAIT: &str = "batch_wait";
/// The processor's Postgres write of a batch, up to its commit.
pub const POSTGRES_COMMIT: &str = "postgres_commit";
/// The processor's Redis script and publish of a batch.
pub const REDIS_PUBLISH: &str = "redis_publish";
/// odds-service receives an update from pub/sub → the frame is written to a client's socket.
pub const SERVICE_TO_CLIENT_WRITE: &str = "service_to_client_write";

/// Every hop in pipeline order, with the component whose registry observes it.
pub const ALL: [(&str, &str); 7] = [
    (SUPPLIER_TO_INGEST, component::INGEST),
    (INGEST_TO_KAFKA_ACK, component::INGEST),
    (KAFKA_TO_PROCESSOR, component::PROCESSOR),
    (BATCH_WAIT, component::PROCESSOR),
    (POSTGRES_COMMIT, component::PROCESSOR),
    (REDIS_PUBLISH, component::PROCESSOR),
    (SERVICE_TO_CLIENT_WRITE, component::WEBSOCKET),
];

/// Bucket bounds in seconds: fine below 10 ms, where the latency targets are, and up to 10 s
/// so an overloaded run still lands in a bucket rather than in `+Inf`.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0,
];

/// The full served name of `component`'s hop family, e.g. `odds_ingest_hop_seconds`.
pub fn metric_name(component: &str) -> String {
    format!("{}_{METRIC}", prefix(component))
}

/// The component that observes `hop`, if it is one of [`ALL`].
pub fn component_of(hop: &str) -> Option<&'static str> {
    ALL.iter().find(|(h, _)| *h == hop).map(|(_, c)| *c)
}

/// Seconds from `then` until now, 0 when `then` is in the future (clock skew between hosts
/// must not produce negative observations, which a histogram cannot hold).
pub fn seconds_since(then: DateTime<Utc>) -> f64 {
    seconds_between(then, Utc::now())
}

/// Seconds from `from` to `to`, 0 when `to` is earlier: for a hop whose end was stamped
/// before it could be observed (ingest stamps a frame on receipt, parses it later).
pub fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let micros = (to - from).num_microseconds().unwrap_or(i64::MAX);
    micros.max(0) as f64 / 1e6
}

/// [`seconds_since`] for a time given as milliseconds since the Unix epoch (a Kafka record
/// timestamp).
pub fn seconds_since_millis(epoch_millis: i64) -> f64 {
    let now = Utc::now().timestamp_millis();
    now.saturating_sub(epoch_millis).max(0) as f64 / 1e3
}

/// One component's hop histograms.
#[derive(Clone, Debug)]
pub struct HopHistogram {
    family: HistogramVec,
}

impl HopHistogram {
    /// Registers the family in `registry` and creates the series of `hops` (the ones this
    /// component observes), so they are scraped — as zero counts — before the first
    /// observation and a reader can tell "measured, nothing yet" from "not measured".
    pub fn register(
        registry: &PrefixedRegistry,
        hops: &[&str],
    ) -> Result<HopHistogram, prometheus::Error> {
        let family = HistogramVec::new(
            HistogramOpts::new(
                METRIC,
                "Latency of one hop of an update through the pipeline, by hop",
            )
            .buckets(BUCKETS.to_vec()),
            &[LABEL],
        )?;
        registry.register(family.clone())?;
        for hop in hops {
            family.with_label_values(&[*hop]);
        }
        Ok(HopHistogram { family })
    }

    /// Registers the family with the series of every hop `component` observes (see [`ALL`]).
    pub fn for_component(
        registry: &PrefixedRegistry,
        component: &str,
    ) -> Result<HopHistogram, prometheus::Error> {
        let owned: Vec<&str> = ALL
            .iter()
            .filter(|(_, owner)| *owner == component)
            .map(|(hop, _)| *hop)
            .collect();
        HopHistogram::register(registry, &owned)
    }

    /// The histogram of one hop; keep it where a hop is observed per update, to skip the
    /// label lookup.
    pub fn hop(&self, hop: &str) -> Histogram {
        self.family.with_label_values(&[hop])
    }

    /// Records that `hop` took `seconds`.
    pub fn observe(&self, hop: &str, seconds: f64) {
        self.hop(hop).observe(seconds);
    }

    /// Records that `hop` took from `then` until now (0 if `then` is in the future).
    pub fn observe_since(&self, hop: &str, then: DateTime<Utc>) {
        self.observe(hop, seconds_since(then));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_component_serves_exactly_its_own_hops_before_any_observation() {
        for owner in [
            component::INGEST,
            component::PROCESSOR,
            component::WEBSOCKET,
        ] {
            let registry = PrefixedRegistry::new(owner).unwrap();
            HopHistogram::for_component(&registry, owner).unwrap();
            let families = registry.registry().gather();
            let family = families
                .iter()
                .find(|f| f.name() == metric_name(owner))
                .unwrap();
            let served: Vec<&str> = family
                .get_metric()
                .iter()
                .flat_map(|m| m.get_label().iter().map(|l| l.value()))
                .collect();
            let owned: Vec<&str> = ALL
                .iter()
                .filter(|(_, o)| *o == owner)
                .map(|(h, _)| *h)
                .collect();
            assert!(!owned.is_empty());
            assert_eq!(served.len(), owned.len(), "{owner}: {served:?}");
            assert!(
                owned.iter().all(|h| served.contains(h)),
                "{owner}: {served:?}"
            );
        }
    }

    #[test]
    fn every_hop_is_named_once_and_owned_by_a_known_component() {
        let mut names: Vec<&str> = ALL.iter().map(|(h, _)| *h).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for (hop, owner) in ALL {
            assert!(component::ALL.contains(&owner), "{hop}: {owner}");
            assert_eq!(component_of(hop), Some(owner));
        }
        assert_eq!(component_of("nope"), None);
        assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn series_exist_before_observation_and_future_times_count_as_zero() {
        let registry = PrefixedRegistry::new(component::INGEST).unwrap();
        let hops = HopHistogram::register(&registry, &[SUPPLIER_TO_INGEST]).unwrap();
        assert!(registry.names().contains(&metric_name(component::INGEST)));
        let served = |registry: &PrefixedRegistry| {
            let families = registry.registry().gather();
            let family = families
                .iter()
                .find(|f| f.name() == "odds_ingest_hop_seconds")
                .cloned();
            family.map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| {
                        let h = m.get_histogram();
                        (h.get_sample_count(), h.get_sample_sum())
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(served(&registry), Some(vec![(0, 0.0)]));

        hops.observe_since(SUPPLIER_TO_INGEST, Utc::now() + Duration::seconds(5));
        assert_eq!(served(&registry), Some(vec![(1, 0.0)]));
        hops.observe_since(SUPPLIER_TO_INGEST, Utc::now() - Duration::seconds(3));
        let (count, sum) = served(&registry).unwrap()[0];
        assert_eq!(count, 2);
        assert!(sum >= 3.0, "{sum}");
    }

    #[test]
    fn millisecond_timestamps_and_spans_are_clamped_too() {
        let now = Utc::now().timestamp_millis();
        assert_eq!(seconds_since_millis(now + 10_000), 0.0);
        assert!(seconds_since_millis(now - 2_000) >= 2.0);
        let t = Utc::now();
        assert_eq!(seconds_between(t, t - Duration::milliseconds(5)), 0.0);
        assert_eq!(seconds_between(t, t + Duration::milliseconds(1500)), 1.5);
    }
}
