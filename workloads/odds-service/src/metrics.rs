//! Prometheus metrics of the service, registered once and shared by every part.
//!
//! The service has two components, each with its prefixed registry (see
//! [`odds_runtime::metrics`]): `odds_ws_*` describe the WebSocket fan-out (how many clients,
//! how far behind they fall, how fast updates reach them); `odds_api_*` describe the REST API
//! by route and status. Names below are registered without those prefixes.

use odds_runtime::hops::{self, HopHistogram};
use odds_runtime::metrics::{component, PrefixedRegistry};
use odds_runtime::regressions::RegressionLog;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
};

/// Frame types counted in `odds_ws_messages_sent_total{type}`.
const MESSAGE_TYPES: [&str; 6] = ["odds", "snapshot", "status", "error", "pong", "control"];
/// Reasons counted in `odds_ws_connections_rejected_total{reason}`.
const REJECT_REASONS: [&str; 2] = ["origin", "limit"];

/// Every metric of the service.
#[derive(Clone)]
pub struct Metrics {
    /// `odds_ws_*`
    pub ws_registry: PrefixedRegistry,
    /// `odds_api_*`
    pub api_registry: PrefixedRegistry,
    pub ws_connections: IntGauge,
    pub ws_connections_rejected: IntCounterVec,
    pub ws_subscriptions: IntGauge,
    pub ws_messages_sent: IntCounterVec,
    /// `ws_messages_sent{type="odds"}` and `{type="snapshot"}`, resolved once: bumped per delivery.
    pub ws_odds_sent: IntCounter,
    pub ws_snapshots_sent: IntCounter,
    pub ws_conflated: IntCounter,
    pub ws_stale_skipped: IntCounter,
    pub ws_slow_client_closes: IntCounter,
    /// Pub/sub receive → frame written to a client: the service's hop of the latency budget
    /// (`odds_ws_hop_seconds{hop="service_to_client_write"}`, see [`odds_runtime::hops`]),
    /// with the buckets every stage shares. The dashboards' fan-out latency reads it.
    pub ws_hop_to_client_write: Histogram,
    pub ws_updates_received: IntCounter,
    pub ws_updates_invalid: IntCounter,
    /// `version_regressions_total{reason}`: pub/sub updates not newer than one received
    /// before for their event and market (see [`odds_runtime::regressions`]).
    pub ws_version_regressions: IntCounterVec,
    pub ws_regressions: RegressionLog,
    pub ws_pubsub_reconnects: IntCounter,
    pub ws_resynced_events: IntCounter,
    pub ws_resync_retries: IntCounter,
    pub api_requests: IntCounterVec,
    pub api_latency: HistogramVec,
    pub store_fallbacks: IntCounter,
    /// 1 while Postgres was found unreachable and reads skip it until a probe gets through.
    pub store_postgres_unreachable: IntGauge,
    pub store_postgres_skipped: IntCounter,
}

/// Why a metric could not be created or registered (only on a programming error).
pub type MetricsError = odds_runtime::RuntimeError;

/// The REST API's and the store's metrics (`odds_api_*`), created apart from the fan-out's.
struct ApiMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    store_fallbacks: IntCounter,
    store_postgres_unreachable: IntGauge,
    store_postgres_skipped: IntCounter,
}

impl ApiMetrics {
    fn register(r: &PrefixedRegistry) -> Result<ApiMetrics, MetricsError> {
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Ok(ApiMetrics {
            requests: r.counter_vec(
                "requests_total",
                "REST requests by route and status",
                &["route", "status"],
            )?,
            latency: r.registered(HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "REST request latency by route and status",
                )
                .buckets(latency_buckets),
                &["route", "status"],
            )?)?,
            store_fallbacks: r.counter(
                "store_fallbacks_total",
                "Reads answered by Postgres because Redis failed or the cache was not trusted \
                 (live feed down)",
            )?,
            store_postgres_unreachable: r.gauge(
                "store_postgres_unreachable",
                "1 while Postgres was found unreachable: reads go to the cache (or fail) at once \
                 until a background probe reaches it",
            )?,
            store_postgres_skipped: r.counter(
                "store_postgres_skipped_total",
                "Reads that did not try Postgres because it was found unreachable moments ago",
            )?,
        })
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let ws_registry = PrefixedRegistry::new(component::WEBSOCKET)?;
        let api_registry = PrefixedRegistry::new(component::API)?;
        let api = ApiMetrics::register(&api_registry)?;
        let w = &ws_registry;
        let ws_messages_sent = w.counter_vec(
            "messages_sent_total",
            "Frames sent to clients, by type",
            &["type"],
        )?;
        let hop = HopHistogram::for_component(w, component::WEBSOCKET)?;
        let ws_version_regressions = w.counter_vec(
            "version_regressions_total",
            "Updates received on pub/sub not newer than one received before for their \
             event and market, by reason (repeated, older)",
            &["reason"],
        )?;
        let metrics = Metrics {
            ws_hop_to_client_write: hop.hop(hops::SERVICE_TO_CLIENT_WRITE),
            ws_connections: w.gauge("connections", "Open WebSocket connections")?,
            ws_connections_rejected: w.counter_vec(
                "connections_rejected_total",
                "WebSocket upgrades refused, by reason",
                &["reason"],
            )?,
            ws_subscriptions: w.gauge(
                "subscriptions",
                "Event subscriptions over all connections (`*` counts once)",
            )?,
            ws_odds_sent: ws_messages_sent.with_label_values(&["odds"]),
            ws_snapshots_sent: ws_messages_sent.with_label_values(&["snapshot"]),
            ws_messages_sent,
            ws_conflated: w.counter(
                "conflated_total",
                "Updates replaced by a newer version before a slow client received them",
            )?,
            ws_stale_skipped: w.counter(
                "stale_skipped_total",
                "Updates not sent because the client already had that version or a newer one",
            )?,
            ws_slow_client_closes: w.counter(
                "slow_client_closes_total",
                "Connections closed because the client could not keep up",
            )?,
            ws_updates_received: w.counter(
                "updates_received_total",
                "Updates received on the Redis pub/sub channel",
            )?,
            ws_updates_invalid: w.counter(
                "updates_invalid_total",
                "Pub/sub messages that were not valid updates (dropped and logged)",
            )?,
            ws_regressions: RegressionLog::new(ws_version_regressions.clone(), "odds-service"),
            ws_version_regressions,
            ws_pubsub_reconnects: w.counter(
                "pubsub_reconnects_total",
                "Times the Redis pub/sub subscription was re-established",
            )?,
            ws_resynced_events: w.counter(
                "resynced_events_total",
                "Events re-read from the cache/Postgres after a pub/sub reconnect",
            )?,
            ws_resync_retries: w.counter(
                "resync_retries_total",
                "Resync rounds retried because Postgres could not answer every read",
            )?,
            api_requests: api.requests,
            api_latency: api.latency,
            store_fallbacks: api.store_fallbacks,
            store_postgres_unreachable: api.store_postgres_unreachable,
            store_postgres_skipped: api.store_postgres_skipped,
            ws_registry,
            api_registry,
        };
        metrics.precreate_labels();
        Ok(metrics)
    }

    /// Pre-creates the label values so dashboards show zeros instead of gaps.
    fn precreate_labels(&self) {
        for kind in MESSAGE_TYPES {
            self.ws_messages_sent.with_label_values(&[kind]);
        }
        for reason in REJECT_REASONS {
            self.ws_connections_rejected.with_label_values(&[reason]);
        }
    }

    /// Every registry, for `/metrics`.
    pub fn registries(&self) -> Vec<Registry> {
        vec![
            self.ws_registry.registry().clone(),
            self.api_registry.registry().clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;
    use odds_runtime::metrics::{component, missing_queried};

    #[test]
    fn every_service_metric_the_dashboards_query_is_registered() {
        let metrics = Metrics::new().unwrap();
        let list = odds_runtime::metrics::QUERIED_METRICS;
        for c in [component::WEBSOCKET, component::API] {
            let missing = missing_queried(list, c, &[&metrics.ws_registry, &metrics.api_registry]);
            assert!(
                missing.is_empty(),
                "queried but not registered: {missing:?}"
            );
        }
        // Each component's names carry its own prefix only.
        assert!(metrics
            .ws_registry
            .names()
            .iter()
            .all(|n| n.starts_with("odds_ws_")));
        assert!(metrics
            .api_registry
            .names()
            .iter()
            .all(|n| n.starts_with("odds_api_")));
    }
}
