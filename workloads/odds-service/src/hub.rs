//! Fan-out of updates to WebSocket clients: who follows what, and the fan-out itself.
//!
//! An update is encoded once ([`EncodedUpdate`]: its JSON and its complete WebSocket frame)
//! and the same bytes are appended to every subscriber's write buffer. The pub/sub reader
//! hands over what it read in one go as a batch ([`Hub::publish_batch`]); each client reached
//! by the batch is then written once, with one non-blocking syscall, from the fan-out itself:
//! no task is woken per delivery, and a burst leaves as several frames per write, as
//! uWebSockets' corked topic publishing does. A client whose socket would block is left to its
//! connection task (see [`crate::queue`]).

use crate::frames;
use crate::metrics::Metrics;
pub use crate::queue::{ClientQueue, PushOutcome};
use odds_contracts::OddsUpdate;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

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
    pub data_json: Box<str>,
    /// The complete `odds` WebSocket frame (header included), copied to every subscriber.
    pub odds_frame: Box<[u8]>,
    /// When this process received it, for the fan-out latency histogram.
    pub received_at: Instant,
}

impl EncodedUpdate {
    pub fn new(update: &OddsUpdate) -> Arc<EncodedUpdate> {
        let json = update.to_json();
        let mut odds_frame = Vec::new();
        frames::append_update(&mut odds_frame, "odds", &json);
        Arc::new(EncodedUpdate {
            key: MarketKey::new(&update.event_id, &update.market),
            version: update.version,
            odds_frame: odds_frame.into_boxed_slice(),
            data_json: json.into_boxed_str(),
            received_at: Instant::now(),
        })
    }
}

type Subscribers = Vec<(u64, Arc<ClientQueue>)>;

/// What one batch's fan-out did (for tracing and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutReport {
    pub updates: usize,
    /// Clients written to (each once).
    pub clients_reached: usize,
    /// `odds` frames framed for clients (written, or left to a blocked client's task).
    pub frames: u64,
    /// The longest single client write of the batch.
    pub slowest_write: Duration,
}

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
    pub fn publish(&self, update: &Arc<EncodedUpdate>) -> FanoutReport {
        self.publish_batch(std::slice::from_ref(update))
    }

    /// Fans a batch of updates out: appends each update's frame to the write buffer of every
    /// client following its event (or all events), in order, then writes each client reached
    /// once. The one place where a batch is fanned out.
    pub fn publish_batch(&self, batch: &[Arc<EncodedUpdate>]) -> FanoutReport {
        let mut touched = Vec::new();
        let (mut conflated, mut stale) = (0, 0);
        let mut offer = |queue: &Arc<ClientQueue>, update: &Arc<EncodedUpdate>| {
            let (outcome, first) = queue.push_live(update);
            match outcome {
                PushOutcome::Conflated => conflated += 1,
                PushOutcome::Stale => stale += 1,
                PushOutcome::Queued | PushOutcome::Overflow => {}
            }
            if first {
                touched.push(queue.clone());
            }
        };
        {
            let map = self.by_event.read().unwrap_or_else(PoisonError::into_inner);
            let all = self
                .all_events
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for update in batch {
                for (_, queue) in map.get(&update.key.event_id).into_iter().flatten() {
                    offer(queue, update);
                }
                for (_, queue) in all.iter() {
                    offer(queue, update);
                }
            }
        }
        self.metrics.ws_conflated.inc_by(conflated);
        self.metrics.ws_stale_skipped.inc_by(stale);
        let oldest = batch.iter().map(|u| u.received_at).min();
        let mut report = FanoutReport {
            updates: batch.len(),
            clients_reached: touched.len(),
            ..FanoutReport::default()
        };
        let (mut odds, mut snapshots) = (0, 0);
        // Observed locally, added to the shared histogram once per batch (no atomics per write).
        let hop_histogram = self.metrics.ws_hop_to_client_write.local();
        // One clock read per write: each write starts where the previous one ended.
        let mut started = Instant::now();
        for queue in &touched {
            let framed = queue.write();
            let done = Instant::now();
            report.slowest_write = report.slowest_write.max(done - started);
            started = done;
            odds += framed.odds;
            snapshots += framed.snapshots;
            if let Some(oldest) = oldest {
                // One observation per client write: the batch's oldest update's wait.
                let hop = done.saturating_duration_since(oldest);
                hop_histogram.observe(hop.as_secs_f64());
            }
        }
        hop_histogram.flush();
        report.frames = odds;
        self.metrics.ws_odds_sent.inc_by(odds);
        self.metrics.ws_snapshots_sent.inc_by(snapshots);
        report
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
mod tests;
