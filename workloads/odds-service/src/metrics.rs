//! Prometheus metrics of the service, registered once and shared by every part.
//!
//! `odds_ws_*` describe the WebSocket fan-out (how many clients, how far behind they fall,
//! how fast updates reach them); `odds_api_*` describe the REST API by route and status.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every metric of the service.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
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
    pub ws_fanout_latency: Histogram,
    pub ws_updates_received: IntCounter,
    pub ws_updates_invalid: IntCounter,
    pub ws_pubsub_reconnects: IntCounter,
    pub ws_resynced_events: IntCounter,
    pub api_requests: IntCounterVec,
    pub api_latency: HistogramVec,
    pub store_fallbacks: IntCounter,
}

/// Why a metric could not be created or registered (only on a programming error).
pub type MetricsError = prometheus::Error;

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let ws_messages_sent = IntCounterVec::new(
            Opts::new(
                "odds_ws_messages_sent_total",
                "Frames sent to clients, by type",
            ),
            &["type"],
        )?;
        let metrics = Metrics {
            ws_connections: IntGauge::new("odds_ws_connections", "Open WebSocket connections")?,
            ws_connections_rejected: IntCounterVec::new(
                Opts::new(
                    "odds_ws_connections_rejected_total",
                    "WebSocket upgrades refused, by reason",
                ),
                &["reason"],
            )?,
            ws_subscriptions: IntGauge::new(
                "odds_ws_subscriptions",
                "Event subscriptions over all connections (`*` counts once)",
            )?,
            ws_odds_sent: ws_messages_sent.with_label_values(&["odds"]),
            ws_snapshots_sent: ws_messages_sent.with_label_values(&["snapshot"]),
            ws_messages_sent,
            ws_conflated: IntCounter::new(
                "odds_ws_conflated_total",
                "Updates replaced by a newer version before a slow client received them",
            )?,
            ws_stale_skipped: IntCounter::new(
                "odds_ws_stale_skipped_total",
                "Updates not sent because the client already had that version or a newer one",
            )?,
            ws_slow_client_closes: IntCounter::new(
                "odds_ws_slow_client_closes_total",
                "Connections closed because the client could not keep up",
            )?,
            ws_fanout_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "odds_ws_fanout_latency_seconds",
                    "Time from receiving an update on pub/sub to writing it to a client",
                )
                .buckets(latency_buckets.clone()),
            )?,
            ws_updates_received: IntCounter::new(
                "odds_ws_updates_received_total",
                "Updates received on the Redis pub/sub channel",
            )?,
            ws_updates_invalid: IntCounter::new(
                "odds_ws_updates_invalid_total",
                "Pub/sub messages that were not valid updates (dropped and logged)",
            )?,
            ws_pubsub_reconnects: IntCounter::new(
                "odds_ws_pubsub_reconnects_total",
                "Times the Redis pub/sub subscription was re-established",
            )?,
            ws_resynced_events: IntCounter::new(
                "odds_ws_resynced_events_total",
                "Events re-read from the cache/Postgres after a pub/sub reconnect",
            )?,
            api_requests: IntCounterVec::new(
                Opts::new(
                    "odds_api_requests_total",
                    "REST requests by route and status",
                ),
                &["route", "status"],
            )?,
            api_latency: HistogramVec::new(
                HistogramOpts::new(
                    "odds_api_request_duration_seconds",
                    "REST request latency by route and status",
                )
                .buckets(latency_buckets),
                &["route", "status"],
            )?,
            store_fallbacks: IntCounter::new(
                "odds_api_store_fallbacks_total",
                "Reads answered by Postgres because Redis failed",
            )?,
            registry,
        };
        metrics.register_all()?;
        Ok(metrics)
    }

    fn register_all(&self) -> Result<(), MetricsError> {
        let r = &self.registry;
        r.register(Box::new(self.ws_connections.clone()))?;
        r.register(Box::new(self.ws_connections_rejected.clone()))?;
        r.register(Box::new(self.ws_subscriptions.clone()))?;
        r.register(Box::new(self.ws_messages_sent.clone()))?;
        r.register(Box::new(self.ws_conflated.clone()))?;
        r.register(Box::new(self.ws_stale_skipped.clone()))?;
        r.register(Box::new(self.ws_slow_client_closes.clone()))?;
        r.register(Box::new(self.ws_fanout_latency.clone()))?;
        r.register(Box::new(self.ws_updates_received.clone()))?;
        r.register(Box::new(self.ws_updates_invalid.clone()))?;
        r.register(Box::new(self.ws_pubsub_reconnects.clone()))?;
        r.register(Box::new(self.ws_resynced_events.clone()))?;
        r.register(Box::new(self.api_requests.clone()))?;
        r.register(Box::new(self.api_latency.clone()))?;
        r.register(Box::new(self.store_fallbacks.clone()))?;
        Ok(())
    }
}
