//! The one Redis pub/sub subscription of this process and the resync that follows it; what
//! arrives on it also drives the [`Feed`]: whether live updates flow.
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
//! clients are resynced from Postgres. The processors' heartbeats arrive here too, and tell
//! the feed whether the pipeline upstream of Redis moves at all (see [`crate::upstream`]).
//!
//! A resync that cannot read Postgres is retried, with backoff, until it has read everything
//! it set out to: a client must not stay on a price it missed because Postgres blinked.

use crate::encoded::EncodedUpdate;
use crate::feed::Feed;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::OddsStore;
use futures_util::{FutureExt, StreamExt};
use odds_contracts::cache_status::CacheStatus;
use odds_contracts::heartbeat::Heartbeat;
use odds_contracts::names::{
    REDIS_CACHE_STATUS_CHANNEL, REDIS_HEARTBEAT_CHANNEL, REDIS_UPDATES_CHANNEL,
};
use odds_contracts::traced::split_pubsub;
use odds_contracts::JsonMessage;
use odds_runtime::otel::{self, SpanApi as _, TraceSpan};
use odds_runtime::regressions::LatestVersions;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events re-read per Postgres query for clients following `*` (all of them, page by page).
pub const RESYNC_PAGE: u32 = 1000;
const PING_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often what time decides (a report's lease, the heartbeat timeout) is re-evaluated.
const TICK_EVERY: Duration = Duration::from_millis(250);
const RESYNC_FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A sampled update's span in this process: its hand-off to every subscriber's queue.
const PUBLISH_SPAN: &str = "odds-service publish";
/// Most pub/sub messages fanned out as one batch: bounds what one client's write buffer
/// takes from one batch.
const MAX_BATCH: usize = 256;

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
                .subscribe(&[
                    REDIS_UPDATES_CHANNEL,
                    REDIS_CACHE_STATUS_CHANNEL,
                    REDIS_HEARTBEAT_CHANNEL,
                ])
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
        let mut tick = tokio::time::interval(TICK_EVERY);
        // Per subscription: a resync after a reconnect re-reads versions on purpose.
        let mut latest = LatestVersions::default();
        let lost = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break "shutting down".to_owned(),
                message = stream.next() => {
                    let Some(first) = message else {
                        tracing::warn!("pub/sub connection lost");
                        break "Redis pub/sub connection lost".to_owned();
                    };
                    // What has arrived already is fanned out as one batch: each client
                    // reached gets one write for all of it.
                    let mut batch = Vec::new();
                    // Sampled updates' spans, ended once the batch is fanned out.
                    let mut spans = Vec::new();
                    let mut next = Some(first);
                    let mut read = 0;
                    while let Some(message) = next.take() {
                        if let Some(update) = self.on_message(&message, &mut latest, &mut resync, &mut spans) {
                            batch.push(update);
                        }
                        read += 1;
                        if read < MAX_BATCH {
                            next = stream.next().now_or_never().flatten();
                        }
                    }
                    if !batch.is_empty() {
                        // First, so a client told that updates stopped hears they resumed
                        // before it gets one.
                        self.feed.update_received();
                        let report = self.hub.publish_batch(&batch);
                        for mut span in spans {
                            span.set_attributes(fanout_attributes(&report));
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
                _ = tick.tick() => {
                    if self.feed.tick(Instant::now()) {
                        resync.abort();
                        resync = self.spawn_resync();
                    }
                }
            }
        };
        resync.abort();
        lost
    }

    /// Handles one pub/sub message: a heartbeat or cache report is applied (a report that ends
    /// a failure restarts the resync), an update is checked and encoded for the batch.
    fn on_message(
        &self,
        message: &redis::Msg,
        latest: &mut LatestVersions,
        resync: &mut tokio::task::JoinHandle<()>,
        spans: &mut Vec<TraceSpan>,
    ) -> Option<Arc<EncodedUpdate>> {
        if message.get_channel_name() == REDIS_HEARTBEAT_CHANNEL {
            match Heartbeat::parse(message.get_payload_bytes()) {
                Some(beat) => self.feed.heartbeat(beat),
                None => tracing::warn!("invalid beat on the heartbeat channel"),
            }
            return None;
        }
        if message.get_channel_name() == REDIS_CACHE_STATUS_CHANNEL {
            match CacheStatus::parse(message.get_payload_bytes()) {
                Some(report) => {
                    if self.feed.cache_report(report) {
                        resync.abort();
                        *resync = self.spawn_resync();
                    }
                }
                None => tracing::warn!("invalid report on the cache-status channel"),
            }
            return None;
        }
        self.metrics.ws_updates_received.inc();
        // A sampled update carries its trace context after the JSON: split off here, so
        // clients get exactly the update.
        let (json, traceparent) = split_pubsub(message.get_payload_bytes());
        match odds_contracts::check_published(json) {
            Ok(update) => {
                let (event_id, market, version) =
                    (&*update.event_id, &*update.market, update.version);
                spans.extend(publish_span(traceparent, event_id, market, version));
                if let Some(seen) = latest.observe(event_id, market, version) {
                    self.metrics
                        .ws_regressions
                        .record(event_id, market, version, seen);
                }
                Some(self.hub.encode_published(update))
            }
            Err(reason) => {
                self.metrics.ws_updates_invalid.inc();
                tracing::warn!(code = reason.code(), %reason, "invalid update on pub/sub");
                None
            }
        }
    }
}

/// Re-reads every followed event from Postgres (the cache may have missed writes while the
/// feed was down) and offers it to the hub (only newer versions get through). What cannot be
/// read is retried with backoff until everything was read; the task is aborted when a newer
/// resync replaces it or the subscription is lost.
pub async fn resync(hub: Arc<Hub>, store: Arc<OddsStore>, metrics: Metrics) {
    let (mut events, any_all) = hub.followed_events();
    // `Some(cursor)` while clients following `*` still need events after `cursor`.
    let mut all: Option<Option<String>> = any_all.then_some(None);
    let mut backoff = RESYNC_FIRST_BACKOFF;
    loop {
        let mut failed = Vec::new();
        for event_id in events {
            match store.markets_from_database(&event_id).await {
                Ok(markets) => offer(&hub, &metrics, &markets),
                Err(error) => {
                    tracing::warn!(%event_id, %error, "resync read failed; will retry");
                    failed.push(event_id);
                }
            }
        }
        events = failed;
        while let Some(after) = &all {
            match store.list_events(after.as_deref(), RESYNC_PAGE).await {
                Ok(page) => {
                    offer(&hub, &metrics, &page);
                    all = match page.last() {
                        Some(last) if crate::store::event_count(&page) == RESYNC_PAGE as usize => {
                            Some(Some(last.event_id.clone()))
                        }
                        _ => None,
                    };
                }
                Err(error) => {
                    tracing::warn!(%error, "resync of all events failed; will retry");
                    break;
                }
            }
        }
        if events.is_empty() && all.is_none() {
            return;
        }
        metrics.ws_resync_retries.inc();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The span of a sampled update's fan-out, a child of the processor's context in the message;
/// `None` (and nothing parsed) when tracing is off or the update is not sampled.
fn publish_span(
    traceparent: Option<&[u8]>,
    event_id: &str,
    market: &str,
    version: u64,
) -> Option<TraceSpan> {
    if !otel::enabled() {
        return None;
    }
    let parent = otel::parse_traceparent(traceparent?)?;
    let mut span = otel::start_child(PUBLISH_SPAN, otel::SpanKind::Consumer, &parent, Vec::new())?;
    span.set_attributes(otel::update_attributes(event_id, market, version));
    Some(span)
}

/// What a sampled update's fan-out span records of its batch.
fn fanout_attributes(report: &crate::hub::FanoutReport) -> [otel::KeyValue; 3] {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    [
        otel::KeyValue::new("odds.fanout.clients_reached", count(report.clients_reached)),
        otel::KeyValue::new("odds.fanout.batch_updates", count(report.updates)),
        otel::KeyValue::new(
            "odds.fanout.slowest_write_us",
            i64::try_from(report.slowest_write.as_micros()).unwrap_or(i64::MAX),
        ),
    ]
}

fn offer(hub: &Hub, metrics: &Metrics, updates: &[odds_contracts::OddsUpdate]) {
    metrics.ws_resynced_events.inc_by(updates.len() as u64);
    let batch: Vec<_> = updates.iter().map(|u| hub.encode(u)).collect();
    for chunk in batch.chunks(MAX_BATCH) {
        hub.publish_batch(chunk);
    }
}
