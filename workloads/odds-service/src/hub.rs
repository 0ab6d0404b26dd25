//! Fan-out of updates to WebSocket clients: who follows what, and the fan-out itself.
//!
//! An update is encoded once ([`EncodedUpdate`]: its JSON and its complete WebSocket frame)
//! and the same bytes are appended to every subscriber's write buffer. The pub/sub reader
//! hands over what it read in one go as a batch ([`Hub::publish_batch`]); each client reached
//! by the batch is then written once, with one non-blocking syscall, from the fan-out itself:
//! no task is woken per delivery, and a burst leaves as several frames per write, as
//! uWebSockets' corked topic publishing does. A client whose socket would block is left to its
//! connection task (see [`crate::queue`]). A batch that reaches many clients can be written from
//! two threads, half the clients each (`WS_SPLIT_WRITES_AT`): nearly all of a write is the
//! kernel's `send`, so a second core shortens the wait of the last client of a burst, at the cost
//! of smaller bursts (fewer frames per write) and so more CPU per delivery.

use crate::encoded::EncodedUpdate;
use crate::metrics::Metrics;
use crate::queue::{ClientQueue, PushOutcome};
use odds_contracts::{OddsUpdate, PublishedUpdate};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

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
    /// Clients reached by one batch from which its writes are split over two threads; `None`
    /// writes from one.
    split_writes_at: Option<usize>,
    /// The OS refused the second thread once: every batch is written from one from then on.
    split_refused: AtomicBool,
}

/// What the writes of one batch (or half of one) did.
#[derive(Debug, Clone, Copy, Default)]
struct WriteTally {
    odds: u64,
    snapshots: u64,
    slowest: Duration,
}

impl WriteTally {
    fn add(self, other: WriteTally) -> WriteTally {
        WriteTally {
            odds: self.odds + other.odds,
            snapshots: self.snapshots + other.snapshots,
            slowest: self.slowest.max(other.slowest),
        }
    }
}

impl Hub {
    pub fn new(metrics: Metrics) -> Hub {
        Hub {
            by_event: RwLock::new(HashMap::new()),
            all_events: RwLock::new(Vec::new()),
            next_client: AtomicU64::new(1),
            metrics,
            split_writes_at: None,
            split_refused: AtomicBool::new(false),
        }
    }

    /// Splits the writes of a batch that reaches at least `clients` clients over two threads;
    /// 0, or a machine with one core, keeps them on one.
    pub fn split_writes_at(mut self, clients: usize) -> Hub {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.split_writes_at = split_threshold(clients, cores);
        self
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

    /// Encodes an update with its event id shared with the hub's entry for the event, when
    /// some client follows it (see [`crate::encoded`]): every key of the event is then the
    /// same allocation, which the fan-out compares without reading it.
    pub fn encode(&self, update: &OddsUpdate) -> Arc<EncodedUpdate> {
        match self.shared_event(&update.event_id) {
            Some(event) => EncodedUpdate::with_event(update, event),
            None => EncodedUpdate::new(update),
        }
    }

    /// [`Hub::encode`] of an update from pub/sub, whose JSON is used as it is.
    pub fn encode_published(&self, update: PublishedUpdate<'_>) -> Arc<EncodedUpdate> {
        let event = self
            .shared_event(&update.event_id)
            .unwrap_or_else(|| Arc::from(&*update.event_id));
        EncodedUpdate::from_json(event, &update.market, update.version, update.json)
    }

    /// The hub's own allocation of `event_id`, while some client follows it.
    fn shared_event(&self, event_id: &str) -> Option<Arc<str>> {
        self.by_event
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get_key_value(event_id)
            .map(|(event, _)| event.clone())
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
        let tally = match self.split_writes_at {
            Some(at) if touched.len() >= at && !self.split_refused.load(Ordering::Relaxed) => {
                self.write_split(&touched, oldest)
            }
            _ => self.write_clients(&touched, oldest),
        };
        self.metrics.ws_odds_sent.inc_by(tally.odds);
        self.metrics.ws_snapshots_sent.inc_by(tally.snapshots);
        FanoutReport {
            updates: batch.len(),
            clients_reached: touched.len(),
            frames: tally.odds,
            slowest_write: tally.slowest,
        }
    }

    /// Writes the second half of `clients` from a scoped thread while this one writes the
    /// first; both are done when it returns, so the next batch never overtakes this one. Each
    /// client is written by one of the two, so its frames keep their order. A thread the OS
    /// refuses leaves every write to this one, for this batch and every later one (said once:
    /// a host out of threads would otherwise get a warning per batch).
    fn write_split(&self, clients: &[Arc<ClientQueue>], oldest: Option<Instant>) -> WriteTally {
        let (first, second) = clients.split_at(clients.len() / 2);
        std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name("fanout-write".into())
                .spawn_scoped(scope, || self.write_clients(second, oldest));
            match helper {
                Ok(helper) => {
                    let own = self.write_clients(first, oldest);
                    match helper.join() {
                        Ok(theirs) => own.add(theirs),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                Err(error) => {
                    self.split_refused.store(true, Ordering::Relaxed);
                    tracing::warn!(%error, "no second fan-out thread: every batch is written from one from now on");
                    self.write_clients(clients, oldest)
                }
            }
        })
    }

    /// Writes each of `clients` once, in order.
    fn write_clients(&self, clients: &[Arc<ClientQueue>], oldest: Option<Instant>) -> WriteTally {
        let mut tally = WriteTally::default();
        // Observed locally, added to the shared histogram once per batch (no atomics per write).
        let hop_histogram = self.metrics.ws_hop_to_client_write.local();
        // One clock read per write: each write starts where the previous one ended.
        let mut started = Instant::now();
        for queue in clients {
            let framed = queue.write();
            let done = Instant::now();
            tally.slowest = tally.slowest.max(done - started);
            started = done;
            tally.odds += framed.odds;
            tally.snapshots += framed.snapshots;
            if let Some(oldest) = oldest {
                // One observation per client write: the batch's oldest update's wait.
                let hop = done.saturating_duration_since(oldest);
                hop_histogram.observe(hop.as_secs_f64());
            }
        }
        hop_histogram.flush();
        tally
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

/// The batch size from which writes are split, for a threshold of `clients` on `cores` cores:
/// none for 0 or one core, and at least 2, so each half has a client.
fn split_threshold(clients: usize, cores: usize) -> Option<usize> {
    (clients > 0 && cores > 1).then_some(clients.max(2))
}

#[cfg(test)]
mod tests;
