//! The one Redis pub/sub subscription of this process, and the resync that follows it.
//!
//! Pub/sub is fire-and-forget: whatever is published while we are disconnected is lost to us.
//! So every time the subscription is (re-)established, each followed event is re-read from the
//! cache/Postgres and pushed through the hub, whose per-client version guard sends only what
//! is newer than what each client already has. The subscription is pinged periodically so a
//! half-open connection is noticed, not waited on forever.

use crate::hub::{EncodedUpdate, Hub};
use crate::metrics::Metrics;
use crate::store::OddsStore;
use futures_util::StreamExt;
use odds_contracts::names::REDIS_UPDATES_CHANNEL;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most events re-read for clients following `*`.
const RESYNC_ALL_LIMIT: u32 = 10_000;
const PING_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything the subscriber needs.
pub struct Subscriber {
    pub redis_url: String,
    pub timeout: Duration,
    pub hub: Arc<Hub>,
    pub store: Arc<OddsStore>,
    pub metrics: Metrics,
}

impl Subscriber {
    /// Subscribes, dispatches, and on loss reconnects with backoff, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        while !shutdown.is_cancelled() {
            match self.subscribe().await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    if connected_before {
                        self.metrics.ws_pubsub_reconnects.inc();
                        tracing::info!("pub/sub re-subscribed; resyncing followed events");
                    }
                    connected_before = true;
                    // Clients may have subscribed while we were away: always resync.
                    let resync = tokio::spawn(resync(
                        self.hub.clone(),
                        self.store.clone(),
                        self.metrics.clone(),
                    ));
                    self.dispatch(pubsub, &shutdown).await;
                    resync.abort();
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "pub/sub subscription failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let connect = client.get_async_pubsub();
        let mut pubsub = tokio::time::timeout(self.timeout * 4, connect)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        pubsub.subscribe(REDIS_UPDATES_CHANNEL).await?;
        Ok(pubsub)
    }

    /// Forwards messages to the hub until the connection is lost or shutdown.
    async fn dispatch(&self, pubsub: redis::aio::PubSub, shutdown: &CancellationToken) {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = stream.next() => {
                    let Some(message) = message else {
                        tracing::warn!("pub/sub connection lost");
                        return;
                    };
                    self.metrics.ws_updates_received.inc();
                    match odds_contracts::parse_update(message.get_payload_bytes()) {
                        Ok(update) => self.hub.publish(&EncodedUpdate::new(&update)),
                        Err(reason) => {
                            self.metrics.ws_updates_invalid.inc();
                            tracing::warn!(code = reason.code(), %reason, "invalid update on pub/sub");
                        }
                    }
                }
                _ = ping.tick() => {
                    // In subscriber mode PING answers ["pong", ""], not "PONG": any reply will do.
                    let pong = tokio::time::timeout(self.timeout * 4, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("pub/sub ping failed; reconnecting");
                        return;
                    }
                }
            }
        }
    }
}

/// Re-reads every followed event and offers it to the hub (only newer versions get through).
pub async fn resync(hub: Arc<Hub>, store: Arc<OddsStore>, metrics: Metrics) {
    let (events, any_all) = hub.followed_events();
    for event_id in events {
        match store.current(&event_id).await {
            Ok(Some((update, _))) => {
                metrics.ws_resynced_events.inc();
                hub.publish(&EncodedUpdate::new(&update));
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%event_id, %error, "resync read failed"),
        }
    }
    if any_all {
        match store.all_current(RESYNC_ALL_LIMIT).await {
            Ok(updates) => {
                for update in updates {
                    metrics.ws_resynced_events.inc();
                    hub.publish(&EncodedUpdate::new(&update));
                }
            }
            Err(error) => tracing::warn!(%error, "resync of all events failed"),
        }
    }
}
