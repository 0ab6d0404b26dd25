//! Fan-out of updates to WebSocket clients: who follows what, and each client's queue.
//!
//! An update is encoded once ([`EncodedUpdate`]) and the same bytes are handed to every
//! subscriber. Clients follow events; current odds are per (event, market), so each
//! connection has a [`ClientQueue`] (see [`crate::queue`]) that holds at most one pending
//! update per (event, market) and never goes back in version.

use crate::metrics::Metrics;
pub use crate::queue::{ClientQueue, Pending, PushOutcome};
use axum::extract::ws::Utf8Bytes;
use odds_contracts::ws::ServerMessage;
use odds_contracts::OddsUpdate;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

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

pub(crate) type KeyMap<V> = HashMap<MarketKey, V, BuildHasherDefault<KeyHasher>>;

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

    fn drain_versions(queue: &ClientQueue) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        assert!(!queue.drain(usize::MAX, &mut out));
        out.into_iter()
            .map(|p| (p.update.key.event_id.to_string(), p.update.version))
            .collect()
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
        assert_eq!(drain_versions(&a), vec![("E1".into(), 1)]);
        assert_eq!(drain_versions(&c), vec![("E1".into(), 1)]);
        let (events, any_all) = hub.followed_events();
        assert_eq!(events, vec![Arc::<str>::from("E2")]);
        assert!(!any_all);
    }
}
