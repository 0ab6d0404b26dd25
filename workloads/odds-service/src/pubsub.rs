//! The one Redis pub/sub subscription of this process, the resync that follows it, and the
//! [`Feed`] state: whether live updates flow.
//!
//! Pub/sub is fire-and-forget: whatever is published while we are disconnected is lost to us.
//! So every time the subscription is (re-)established, each followed event is re-read from
//! Postgres (the cache may have missed writes meanwhile) and pushed through the hub, whose
//! per-client version guard sends only what is newer than what each client already has. The
//! subscription is pinged periodically so a half-open connection is noticed, not waited on
//! forever.
//!
//! Live updates also stop while Redis is up but refuses the processor's writes (out of
//! memory, read-only): the processor says so on the cache-status channel, which still works.
//! Either way the feed goes down with a reason: REST stops trusting the cache, readiness
//! fails, and every WebSocket client gets a `status` message; when the feed comes back the
//! clients are resynced from Postgres.

use crate::hub::{EncodedUpdate, Hub};
use crate::metrics::Metrics;
use crate::store::OddsStore;
use futures_util::StreamExt;
use odds_contracts::cache_status::{CacheStatus, CACHE_STATUS_LEASE_MS};
use odds_contracts::names::{REDIS_CACHE_STATUS_CHANNEL, REDIS_UPDATES_CHANNEL};
use odds_runtime::regressions::LatestVersions;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most events re-read for clients following `*`.
const RESYNC_ALL_LIMIT: u32 = 10_000;
const PING_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an expired cache-failure report is noticed.
const LEASE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Whether live updates flow: `None` while they do, else why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    pub down: Option<String>,
}

impl FeedStatus {
    pub fn is_live(&self) -> bool {
        self.down.is_none()
    }
}

#[derive(Debug)]
struct FeedState {
    /// `Err(reason)` while this process has no pub/sub subscription.
    link: Result<(), String>,
    /// A processor's report that cache writes fail, honoured until the instant given.
    cache_failing: Option<(String, Instant)>,
}

/// The live feed's state, set by the subscriber and read by REST, WebSockets and readiness.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<FeedState>,
    status: watch::Sender<FeedStatus>,
}

impl Feed {
    /// A feed that is down until the first subscription.
    pub fn new() -> Arc<Feed> {
        let reason = "not yet subscribed to Redis pub/sub".to_owned();
        Arc::new(Feed {
            state: Mutex::new(FeedState {
                link: Err(reason.clone()),
                cache_failing: None,
            }),
            status: watch::channel(FeedStatus { down: Some(reason) }).0,
        })
    }

    pub fn is_live(&self) -> bool {
        self.status.borrow().is_live()
    }

    pub fn status(&self) -> FeedStatus {
        self.status.borrow().clone()
    }

    /// Changes of the status, for connections and readiness.
    pub fn watch(&self) -> watch::Receiver<FeedStatus> {
        self.status.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut FeedState)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        let down = match (&state.link, &state.cache_failing) {
            (Err(reason), _) => Some(reason.clone()),
            (Ok(()), Some((reason, _))) => Some(format!("cache writes fail: {reason}")),
            (Ok(()), None) => None,
        };
        self.status.send_if_modified(|status| {
            if status.down == down {
                return false;
            }
            match &down {
                Some(reason) => tracing::warn!(%reason, "live updates stopped"),
                None => tracing::info!("live updates flowing"),
            }
            status.down = down;
            true
        });
    }

    fn link(&self, link: Result<(), String>) {
        self.update(|state| state.link = link);
    }

    /// Applies a processor's report; true when it ends a failure (clients need a resync).
    fn cache_report(&self, report: CacheStatus) -> bool {
        let mut recovered = false;
        self.update(|state| {
            if report.healthy {
                recovered = state.cache_failing.take().is_some();
            } else {
                let reason = report.reason.unwrap_or_else(|| "unknown".to_owned());
                let until = Instant::now() + Duration::from_millis(CACHE_STATUS_LEASE_MS);
                state.cache_failing = Some((reason, until));
            }
        });
        recovered
    }

    /// Ends a failure whose reports stopped coming (the processor went away); true if so.
    fn expire(&self, now: Instant) -> bool {
        let mut expired = false;
        self.update(|state| {
            if matches!(&state.cache_failing, Some((_, until)) if *until <= now) {
                state.cache_failing = None;
                expired = true;
                tracing::info!("no cache failure reported lately; trusting the cache again");
            }
        });
        expired
    }
}

/// Everything the subscriber needs.
pub struct Subscriber {
    pub redis_url: String,
    pub timeout: Duration,
    pub hub: Arc<Hub>,
    pub store: Arc<OddsStore>,
    pub metrics: Metrics,
    pub feed: Arc<Feed>,
}

impl Subscriber {
    /// Subscribes, dispatches, and on loss reconnects with backoff, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        while !shutdown.is_cancelled() {
            let subscribed = tokio::select! {
                _ = shutdown.cancelled() => return,
                subscribed = self.subscribe() => subscribed,
            };
            match subscribed {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    if connected_before {
                        self.metrics.ws_pubsub_reconnects.inc();
                        tracing::info!("pub/sub re-subscribed; resyncing followed events");
                    }
                    connected_before = true;
                    self.feed.link(Ok(()));
                    // Clients may have subscribed while we were away: always resync.
                    let resync = self.spawn_resync();
                    let lost = self.dispatch(pubsub, &shutdown, resync).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    self.feed.link(Err(lost));
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "pub/sub subscription failed");
                    self.feed
                        .link(Err(format!("Redis pub/sub unavailable: {error}")));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects and subscribes within one deadline: a peer that accepts the connection but
    /// never answers (a hung Redis, or a dead Redis's port taken by something else) must not
    /// hold the subscriber, or the feed would never report the loss.
    async fn subscribe(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[REDIS_UPDATES_CHANNEL, REDIS_CACHE_STATUS_CHANNEL])
                .await?;
            Ok(pubsub)
        };
        tokio::time::timeout(self.timeout * 4, subscribe)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })?
    }

    fn spawn_resync(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(resync(
            self.hub.clone(),
            self.store.clone(),
            self.metrics.clone(),
        ))
    }

    /// Forwards messages to the hub until the connection is lost (returns why) or shutdown.
    /// `resync` is the resync in flight; it is aborted when the connection is lost.
    async fn dispatch(
        &self,
        pubsub: redis::aio::PubSub,
        shutdown: &CancellationToken,
        mut resync: tokio::task::JoinHandle<()>,
    ) -> String {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        let mut lease = tokio::time::interval(LEASE_CHECK_EVERY);
        // Per subscription: a resync after a reconnect re-reads versions on purpose.
        let mut latest = LatestVersions::default();
        let lost = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break "shutting down".to_owned(),
                message = stream.next() => {
                    let Some(message) = message else {
                        tracing::warn!("pub/sub connection lost");
                        break "Redis pub/sub connection lost".to_owned();
                    };
                    if message.get_channel_name() == REDIS_CACHE_STATUS_CHANNEL {
                        match CacheStatus::parse(message.get_payload_bytes()) {
                            Some(report) => {
                                if self.feed.cache_report(report) {
                                    resync.abort();
                                    resync = self.spawn_resync();
                                }
                            }
                            None => tracing::warn!("invalid report on the cache-status channel"),
                        }
                        continue;
                    }
                    self.metrics.ws_updates_received.inc();
                    match odds_contracts::parse_update(message.get_payload_bytes()) {
                        Ok(update) => {
                            let seen = latest.observe(&update.event_id, &update.market, update.version);
                            if let Some(seen) = seen {
                                self.metrics.ws_regressions.record(
                                    &update.event_id,
                                    &update.market,
                                    update.version,
                                    seen,
                                );
                            }
                            self.hub.publish(&EncodedUpdate::new(&update));
                        }
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
                        break "Redis pub/sub does not answer".to_owned();
                    }
                }
                _ = lease.tick() => {
                    if self.feed.expire(Instant::now()) {
                        resync.abort();
                        resync = self.spawn_resync();
                    }
                }
            }
        };
        resync.abort();
        lost
    }
}

/// Re-reads every followed event from Postgres (the cache may have missed writes while the
/// feed was down) and offers it to the hub (only newer versions get through).
pub async fn resync(hub: Arc<Hub>, store: Arc<OddsStore>, metrics: Metrics) {
    let (events, any_all) = hub.followed_events();
    for event_id in events {
        match store.markets_from_database(&event_id).await {
            Ok(markets) => {
                for update in markets {
                    metrics.ws_resynced_events.inc();
                    hub.publish(&EncodedUpdate::new(&update));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn down(feed: &Feed) -> Option<String> {
        feed.status().down
    }

    #[test]
    fn feed_is_live_only_while_subscribed_and_no_cache_failure_holds() {
        let feed = Feed::new();
        assert!(!feed.is_live(), "down until the first subscription");
        feed.link(Ok(()));
        assert!(feed.is_live());

        let changes = feed.watch();
        assert!(!feed.cache_report(CacheStatus::failing("OOM command not allowed")));
        assert_eq!(
            down(&feed).as_deref(),
            Some("cache writes fail: OOM command not allowed")
        );
        assert!(
            changes.has_changed().unwrap_or(false),
            "connections are woken"
        );

        // A lost subscription is the more basic reason while both hold.
        feed.link(Err("Redis pub/sub connection lost".into()));
        assert_eq!(
            down(&feed).as_deref(),
            Some("Redis pub/sub connection lost")
        );
        feed.link(Ok(()));
        assert!(!feed.is_live(), "the failure report still holds");

        // A report is a lease: it ends by itself when no renewal comes.
        let lease = Duration::from_millis(CACHE_STATUS_LEASE_MS);
        assert!(!feed.expire(Instant::now()), "not over yet");
        assert!(!feed.is_live());
        assert!(feed.expire(Instant::now() + lease + Duration::from_millis(1)));
        assert!(feed.is_live());

        // A healthy report ends a failure at once, and asks for a resync.
        feed.cache_report(CacheStatus::failing("READONLY"));
        assert!(!feed.is_live());
        assert!(feed.cache_report(CacheStatus::healthy()));
        assert!(feed.is_live());
        assert!(!feed.cache_report(CacheStatus::healthy()), "nothing to end");
    }
}
