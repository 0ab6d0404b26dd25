//! Fan-out of updates to WebSocket clients: who follows what, and each client's queue.
//!
//! An update is encoded once ([`EncodedUpdate`]) and the same bytes are handed to every
//! subscriber. Clients follow events; current odds are per (event, market), so each
//! connection has a [`ClientQueue`] that holds at most one pending update per (event, market)
//! (the newest: conflation) and remembers the highest version it accepted per (event,
//! market), so a client never receives an older or equal version of a market after a newer
//! one, whatever order pub/sub and resync deliver them in. A queue that would hold more than
//! its limit of pending markets is marked overflowed and its connection is closed as a slow
//! consumer.

use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use odds_contracts::ws::ServerMessage;
use odds_contracts::OddsUpdate;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;
use tokio::sync::Notify;

/// What a client's queue keeps one of: an event's odds in one market.
///
/// Hashed once, when the update is encoded: each delivery looks the key up several times in
/// its client's maps, and hashing two strings each time was a visible share of the fan-out's
/// CPU. The maps use [`KeyHasher`], which passes the stored hash through.
#[derive(Debug, Clone, Eq)]
pub struct MarketKey {
    pub event_id: Arc<str>,
    pub market: Arc<str>,
    hash: u64,
}

impl MarketKey {
    pub fn new(event_id: &str, market: &str) -> MarketKey {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (event_id, market).hash(&mut hasher);
        MarketKey {
            event_id: Arc::from(event_id),
            market: Arc::from(market),
            hash: hasher.finish(),
        }
    }
}

impl PartialEq for MarketKey {
    fn eq(&self, other: &MarketKey) -> bool {
        self.hash == other.hash && self.event_id == other.event_id && self.market == other.market
    }
}

impl Hash for MarketKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes a [`MarketKey`]'s precomputed hash through (it is already a good 64-bit hash).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `MarketKey`; fold anything else in, never ignore it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<MarketKey, V, BuildHasherDefault<KeyHasher>>;

/// An update encoded once for all subscribers.
#[derive(Debug)]
pub struct EncodedUpdate {
    pub key: MarketKey,
    pub version: u64,
    /// The update's JSON, for the rarer `snapshot` frames.
    pub data_json: Arc<str>,
    /// The complete `odds` frame, shared (reference-counted) by every subscriber.
    pub odds_frame: Utf8Bytes,
    /// When this process received it, for the fan-out latency histogram.
    pub received_at: Instant,
}

impl EncodedUpdate {
    pub fn new(update: &OddsUpdate) -> Arc<EncodedUpdate> {
        let json = update.to_json();
        Arc::new(EncodedUpdate {
            key: MarketKey::new(&update.event_id, &update.market),
            version: update.version,
            odds_frame: Utf8Bytes::from(ServerMessage::odds_frame(&json)),
            data_json: Arc::from(json),
            received_at: Instant::now(),
        })
    }

    /// The frame to send: the shared `odds` frame, or a `snapshot` frame built for this client.
    pub fn frame(&self, as_snapshot: bool) -> Utf8Bytes {
        if as_snapshot {
            Utf8Bytes::from(ServerMessage::snapshot_frame(&self.data_json))
        } else {
            self.odds_frame.clone()
        }
    }
}

/// One update waiting to be written to a client.
#[derive(Debug)]
pub struct Pending {
    pub update: Arc<EncodedUpdate>,
    /// Send as `snapshot` (answer to subscribe) rather than `odds`.
    pub as_snapshot: bool,
}

/// What [`ClientQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued as a new pending (event, market).
    Queued,
    /// Replaced an older pending version of the same (event, market).
    Conflated,
    /// Not newer than what the client has or will get: dropped.
    Stale,
    /// The client is too far behind; its connection must close.
    Overflow,
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<MarketKey>,
    pending: KeyMap<Pending>,
    /// The newest update this client was given (or has pending) per (event, market), kept
    /// after an unsubscribe so that a later subscribe never shows it anything older.
    newest: KeyMap<Arc<EncodedUpdate>>,
    overflowed: bool,
}

/// A connection's bounded, conflating queue of updates.
pub struct ClientQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    max_pending: usize,
}

impl ClientQueue {
    pub fn new(max_pending: usize) -> ClientQueue {
        ClientQueue {
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            max_pending: max_pending.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers an update; only a version newer than any this client accepted is kept. A
    /// snapshot older than what the client already saw (a cache or replica behind, after an
    /// unsubscribe and subscribe) is answered with the newest it saw instead.
    pub fn push(&self, update: &Arc<EncodedUpdate>, as_snapshot: bool) -> PushOutcome {
        let mut state = self.lock();
        let outcome = self.push_locked(&mut state, update, as_snapshot);
        drop(state);
        if matches!(outcome, PushOutcome::Queued | PushOutcome::Overflow) {
            self.notify.notify_one();
        }
        outcome
    }

    fn push_locked(
        &self,
        state: &mut QueueState,
        update: &Arc<EncodedUpdate>,
        as_snapshot: bool,
    ) -> PushOutcome {
        if state.overflowed {
            return PushOutcome::Overflow;
        }
        let held = state.newest.get(&update.key);
        if let Some(held) = held.filter(|held| update.version <= held.version) {
            if !as_snapshot {
                return PushOutcome::Stale;
            }
            match state.pending.get_mut(&update.key) {
                // Something at least as new is already pending: deliver that as the snapshot.
                Some(pending) => pending.as_snapshot = true,
                None => {
                    let held = held.clone();
                    return self.enqueue(state, &held, true);
                }
            }
            return PushOutcome::Stale;
        }
        // The hot path (one call per client per update): replace in place, no key clone.
        match state.newest.get_mut(&update.key) {
            Some(newest) => *newest = update.clone(),
            None => {
                state.newest.insert(update.key.clone(), update.clone());
            }
        }
        if let Some(pending) = state.pending.get_mut(&update.key) {
            pending.update = update.clone();
            pending.as_snapshot |= as_snapshot;
            return PushOutcome::Conflated;
        }
        self.enqueue(state, update, as_snapshot)
    }

    /// Adds a pending entry for an (event, market) that has none, or overflows.
    fn enqueue(
        &self,
        state: &mut QueueState,
        update: &Arc<EncodedUpdate>,
        as_snapshot: bool,
    ) -> PushOutcome {
        if state.pending.len() >= self.max_pending {
            state.overflowed = true;
            state.pending.clear();
            state.order.clear();
            return PushOutcome::Overflow;
        }
        state.order.push_back(update.key.clone());
        state.pending.insert(
            update.key.clone(),
            Pending {
                update: update.clone(),
                as_snapshot,
            },
        );
        PushOutcome::Queued
    }

    /// Moves up to `max` pending updates, oldest first, into `out`. Returns true when
    /// the queue overflowed (the connection must be closed instead).
    pub fn drain(&self, max: usize, out: &mut Vec<Pending>) -> bool {
        let mut state = self.lock();
        if state.overflowed {
            return true;
        }
        while out.len() < max {
            let Some(key) = state.order.pop_front() else {
                break;
            };
            if let Some(pending) = state.pending.remove(&key) {
                out.push(pending);
            }
        }
        if !state.order.is_empty() {
            // More is waiting: make sure the writer comes back for it.
            self.notify.notify_one();
        }
        false
    }

    /// Drops what is pending for every market of an event (after unsubscribe). The newest
    /// versions the client saw are kept: subscribing again must never show it older ones.
    pub fn forget(&self, event_id: &str) {
        let mut state = self.lock();
        state.pending.retain(|key, _| &*key.event_id != event_id);
        state.order.retain(|key| &*key.event_id != event_id);
    }

    /// Number of (event, market) updates waiting (for tests and diagnostics).
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Completes when something was pushed since the last drain.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

type Subscribers = Vec<(u64, Arc<ClientQueue>)>;

/// Who follows which event, and the fan-out itself.
pub struct Hub {
    by_event: RwLock<HashMap<Arc<str>, Subscribers>>,
    all_events: RwLock<Subscribers>,
    next_client: AtomicU64,
    metrics: Metrics,
}

impl Hub {
    pub fn new(metrics: Metrics) -> Hub {
        Hub {
            by_event: RwLock::new(HashMap::new()),
            all_events: RwLock::new(Vec::new()),
            next_client: AtomicU64::new(1),
            metrics,
        }
    }

    /// A new client id.
    pub fn client_id(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    pub fn subscribe(&self, client: u64, queue: &Arc<ClientQueue>, event_id: Arc<str>) {
        let mut map = self
            .by_event
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let subscribers = map.entry(event_id).or_default();
        if !subscribers.iter().any(|(id, _)| *id == client) {
            subscribers.push((client, queue.clone()));
        }
    }

    pub fn unsubscribe(&self, client: u64, event_id: &str) {
        let mut map = self
            .by_event
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(subscribers) = map.get_mut(event_id) {
            subscribers.retain(|(id, _)| *id != client);
            if subscribers.is_empty() {
                map.remove(event_id);
            }
        }
    }

    pub fn subscribe_all(&self, client: u64, queue: &Arc<ClientQueue>) {
        let mut all = self
            .all_events
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !all.iter().any(|(id, _)| *id == client) {
            all.push((client, queue.clone()));
        }
    }

    pub fn unsubscribe_all(&self, client: u64) {
        self.all_events
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| *id != client);
    }

    /// Hands one update to every client following its event (or all events).
    pub fn publish(&self, update: &Arc<EncodedUpdate>) {
        let map = self.by_event.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(subscribers) = map.get(&update.key.event_id) {
            for (_, queue) in subscribers {
                self.count(queue.push(update, false));
            }
        }
        drop(map);
        let all = self
            .all_events
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, queue) in all.iter() {
            self.count(queue.push(update, false));
        }
    }

    fn count(&self, outcome: PushOutcome) {
        match outcome {
            PushOutcome::Conflated => self.metrics.ws_conflated.inc(),
            PushOutcome::Stale => self.metrics.ws_stale_skipped.inc(),
            PushOutcome::Queued | PushOutcome::Overflow => {}
        }
    }

    /// Events some client follows, and whether any client follows all events (for resync).
    pub fn followed_events(&self) -> (Vec<Arc<str>>, bool) {
        let events = self
            .by_event
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let any_all = !self
            .all_events
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        (events, any_all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(event: &str, version: u64) -> Arc<EncodedUpdate> {
        EncodedUpdate::new(&odds_testkit::sample_update(event, version))
    }

    fn half_time(event: &str, version: u64) -> Arc<EncodedUpdate> {
        EncodedUpdate::new(&odds_testkit::sample_update_in(event, "HT_1X2", version))
    }

    fn drain_versions(queue: &ClientQueue) -> Vec<(String, u64, bool)> {
        let mut out = Vec::new();
        assert!(!queue.drain(usize::MAX, &mut out));
        out.into_iter()
            .map(|p| {
                (
                    p.update.key.event_id.to_string(),
                    p.update.version,
                    p.as_snapshot,
                )
            })
            .collect()
    }

    #[test]
    fn keeps_only_the_newest_version_per_event_and_never_goes_back() {
        let queue = ClientQueue::new(10);
        assert_eq!(queue.push(&update("E1", 1), false), PushOutcome::Queued);
        assert_eq!(queue.push(&update("E2", 1), false), PushOutcome::Queued);
        assert_eq!(queue.push(&update("E1", 3), false), PushOutcome::Conflated);
        assert_eq!(queue.push(&update("E1", 2), false), PushOutcome::Stale);
        assert_eq!(
            drain_versions(&queue),
            vec![("E1".into(), 3, false), ("E2".into(), 1, false)]
        );
        // Already delivered: equal and older versions are never queued again.
        assert_eq!(queue.push(&update("E1", 3), false), PushOutcome::Stale);
        assert_eq!(queue.push(&update("E1", 4), false), PushOutcome::Queued);
    }

    #[test]
    fn markets_of_one_event_are_kept_and_conflated_apart() {
        let queue = ClientQueue::new(10);
        assert_eq!(queue.push(&update("E1", 1), false), PushOutcome::Queued);
        // A newer version of another market neither replaces nor makes stale the first.
        assert_eq!(queue.push(&half_time("E1", 2), false), PushOutcome::Queued);
        assert_eq!(
            queue.push(&half_time("E1", 3), false),
            PushOutcome::Conflated
        );
        assert_eq!(
            drain_versions(&queue),
            vec![("E1".into(), 1, false), ("E1".into(), 3, false)]
        );
        assert_eq!(queue.push(&half_time("E1", 3), false), PushOutcome::Stale);
        assert_eq!(queue.push(&update("E1", 2), false), PushOutcome::Queued);
        assert_eq!(queue.push(&half_time("E1", 4), false), PushOutcome::Queued);
        queue.forget("E1");
        assert_eq!(queue.pending_len(), 0, "unsubscribe drops every market");
    }

    #[test]
    fn stale_snapshot_marks_the_newer_pending_update_as_snapshot() {
        let queue = ClientQueue::new(10);
        queue.push(&update("E1", 7), false);
        assert_eq!(queue.push(&update("E1", 5), true), PushOutcome::Stale);
        assert_eq!(drain_versions(&queue), vec![("E1".into(), 7, true)]);
    }

    #[test]
    fn overflow_when_too_many_events_are_pending() {
        let queue = ClientQueue::new(2);
        queue.push(&update("E1", 1), false);
        queue.push(&update("E2", 1), false);
        assert_eq!(queue.push(&update("E3", 1), false), PushOutcome::Overflow);
        let mut out = Vec::new();
        assert!(queue.drain(10, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_resubscribe_gets_a_snapshot_never_older_than_what_was_seen() {
        let queue = ClientQueue::new(10);
        queue.push(&update("E1", 4), false);
        assert_eq!(drain_versions(&queue), vec![("E1".into(), 4, false)]);
        queue.forget("E1");
        assert_eq!(queue.pending_len(), 0);
        // The store answers with an older version (a lagging replica or cache): the client
        // gets the version it already saw as its snapshot, not the older one.
        assert_eq!(queue.push(&update("E1", 2), true), PushOutcome::Queued);
        assert_eq!(drain_versions(&queue), vec![("E1".into(), 4, true)]);
        queue.forget("E1");
        assert_eq!(queue.push(&update("E1", 6), true), PushOutcome::Queued);
        assert_eq!(drain_versions(&queue), vec![("E1".into(), 6, true)]);
    }

    #[test]
    fn publish_reaches_only_followers_of_the_event_and_all_event_clients() {
        let hub = Hub::new(Metrics::new().unwrap());
        let (a, b, c) = (
            Arc::new(ClientQueue::new(10)),
            Arc::new(ClientQueue::new(10)),
            Arc::new(ClientQueue::new(10)),
        );
        hub.subscribe(1, &a, "E1".into());
        hub.subscribe(2, &b, "E2".into());
        hub.subscribe_all(3, &c);
        hub.publish(&update("E1", 1));
        assert_eq!(
            (a.pending_len(), b.pending_len(), c.pending_len()),
            (1, 0, 1)
        );
        hub.unsubscribe(1, "E1");
        hub.unsubscribe_all(3);
        hub.publish(&update("E1", 2));
        assert_eq!(drain_versions(&a), vec![("E1".into(), 1, false)]);
        assert_eq!(drain_versions(&c), vec![("E1".into(), 1, false)]);
        let (events, any_all) = hub.followed_events();
        assert_eq!(events, vec![Arc::<str>::from("E2")]);
        assert!(!any_all);
    }
}
