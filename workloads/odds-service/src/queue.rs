//! One connection's queue of updates: bounded, conflating, never going back in version, and
//! putting each market's `snapshot` before its `odds`.
//!
//! It holds at most one pending update per (event, market): the newest (conflation). It
//! remembers the highest version it accepted per (event, market) for the life of the
//! connection, so a client never receives an older or equal version of a market after a newer
//! one, whatever order pub/sub, resyncs and snapshot reads deliver them in, and across
//! unsubscribing and subscribing again. A queue that would hold more than its limit of pending
//! markets is marked overflowed and its connection is closed as a slow consumer.
//!
//! Snapshot reads run beside the connection's writes, so the queue also keeps the protocol's
//! order. Every (event, market) remembers whether the client was given a frame for it since it
//! (re)subscribed ("shown"). While one event's subscribe waits for its snapshot, that event's
//! updates are held back (its `subscribed` reply must come first); while a `*` snapshot is
//! paged out, an update of a market not shown yet goes out as that market's `snapshot`, and the
//! page that brings the same or an older version later adds nothing. So no `odds` frame ever
//! precedes its market's `snapshot`, and live updates keep flowing during the reads.

use crate::hub::{EncodedUpdate, KeyMap, MarketKey};
use odds_contracts::Market;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

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

/// The newest version of a market this client was given or has pending.
struct Held {
    update: Arc<EncodedUpdate>,
    /// A frame of this market was queued since the client (re)subscribed to its event.
    shown: bool,
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<MarketKey>,
    pending: KeyMap<Pending>,
    /// Kept after an unsubscribe, so that a later subscribe never shows anything older.
    newest: KeyMap<Held>,
    overflowed: bool,
    /// The event whose subscribe is reading its snapshot: its updates wait for the answer.
    held_back: Option<Arc<str>>,
    /// A `*` snapshot is being paged out.
    all_snapshot: bool,
}

impl QueueState {
    fn awaits_snapshot(&self, event_id: &str) -> bool {
        self.all_snapshot || self.held_back.as_deref() == Some(event_id)
    }

    /// Marks an event's markets as not shown: its next frame of each is a snapshot.
    fn unshow(&mut self, event_id: &str) {
        for market in Market::ALL {
            if let Some(held) = self
                .newest
                .get_mut(&MarketKey::new(event_id, market.as_str()))
            {
                held.shown = false;
            }
        }
    }
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
        let awaiting = state.awaits_snapshot(&update.key.event_id);
        // The hot path (one call per client per update): replace in place, no key clone.
        let snapshot = match state.newest.get_mut(&update.key) {
            Some(held) if update.version <= held.update.version => {
                if !as_snapshot {
                    return PushOutcome::Stale;
                }
                if let Some(pending) = state.pending.get_mut(&update.key) {
                    // Something at least as new is pending: deliver that as the snapshot.
                    pending.as_snapshot = true;
                    held.shown = true;
                    return PushOutcome::Stale;
                }
                if held.shown {
                    // This subscription already has this market (a live update was its
                    // snapshot): a page read later adds nothing.
                    return PushOutcome::Stale;
                }
                held.shown = true;
                let newest = held.update.clone();
                return self.enqueue(state, &newest, true);
            }
            Some(held) => {
                let first = !held.shown;
                held.update = update.clone();
                held.shown = true;
                first && (as_snapshot || awaiting)
            }
            None => {
                let held = Held {
                    update: update.clone(),
                    shown: true,
                };
                state.newest.insert(update.key.clone(), held);
                as_snapshot || awaiting
            }
        };
        if let Some(pending) = state.pending.get_mut(&update.key) {
            pending.update = update.clone();
            pending.as_snapshot |= snapshot;
            return PushOutcome::Conflated;
        }
        self.enqueue(state, update, snapshot)
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

    /// Moves up to `max` pending updates, oldest first, into `out`, leaving those of a
    /// held-back event in place. Returns true when the queue overflowed (the connection must
    /// be closed instead).
    pub fn drain(&self, max: usize, out: &mut Vec<Pending>) -> bool {
        let mut state = self.lock();
        if state.overflowed {
            return true;
        }
        let mut held_back = Vec::new();
        while out.len() < max {
            let Some(key) = state.order.pop_front() else {
                break;
            };
            if state.held_back.as_deref() == Some(&*key.event_id) {
                held_back.push(key);
            } else if let Some(pending) = state.pending.remove(&key) {
                out.push(pending);
            }
        }
        let more = !state.order.is_empty();
        for key in held_back.into_iter().rev() {
            state.order.push_front(key);
        }
        if more {
            // More is waiting: make sure the writer comes back for it.
            self.notify.notify_one();
        }
        false
    }

    /// An event's subscribe reads its snapshot: hold its updates back until [`release`], and
    /// make its next frame per market a snapshot.
    ///
    /// [`release`]: ClientQueue::release
    pub fn hold_back(&self, event_id: &Arc<str>) {
        let mut state = self.lock();
        state.unshow(event_id);
        state.held_back = Some(event_id.clone());
    }

    /// The subscribe was answered: what was held back may go out.
    pub fn release(&self) {
        let mut state = self.lock();
        state.held_back = None;
        let waiting = !state.order.is_empty();
        drop(state);
        if waiting {
            self.notify.notify_one();
        }
    }

    /// A `*` snapshot starts: every market's next frame is a snapshot until [`end_all_snapshot`].
    ///
    /// [`end_all_snapshot`]: ClientQueue::end_all_snapshot
    pub fn begin_all_snapshot(&self) {
        let mut state = self.lock();
        state.all_snapshot = true;
        for held in state.newest.values_mut() {
            held.shown = false;
        }
    }

    /// Every page of the `*` snapshot was queued (or reading failed, which was reported).
    pub fn end_all_snapshot(&self) {
        self.lock().all_snapshot = false;
    }

    /// Drops what is pending for every market of an event the client stopped following. The
    /// newest versions it saw are kept: subscribing again must never show it older ones.
    pub fn forget(&self, event_id: &str) {
        self.forget_events(|event| event == event_id);
    }

    /// [`ClientQueue::forget`] for every event `unfollowed` says the client stopped following.
    pub fn forget_events(&self, unfollowed: impl Fn(&str) -> bool) {
        let mut state = self.lock();
        state.pending.retain(|key, _| !unfollowed(&key.event_id));
        state.order.retain(|key| !unfollowed(&key.event_id));
        for (key, held) in state.newest.iter_mut() {
            if unfollowed(&key.event_id) {
                held.shown = false;
            }
        }
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
    fn a_held_back_event_waits_for_its_answer_and_starts_with_a_snapshot() {
        let queue = ClientQueue::new(10);
        let event: Arc<str> = Arc::from("E1");
        queue.hold_back(&event);
        queue.push(&update("E1", 5), false);
        queue.push(&update("E2", 1), false);
        assert_eq!(drain_versions(&queue), vec![("E2".into(), 1, false)]);
        // The snapshot read returns an older version: the live one is the snapshot.
        assert_eq!(queue.push(&update("E1", 4), true), PushOutcome::Stale);
        assert_eq!(drain_versions(&queue), vec![]);
        queue.release();
        assert_eq!(drain_versions(&queue), vec![("E1".into(), 5, true)]);
        assert_eq!(queue.push(&update("E1", 6), false), PushOutcome::Queued);
        assert_eq!(drain_versions(&queue), vec![("E1".into(), 6, false)]);
    }

    #[test]
    fn during_a_star_snapshot_a_live_update_is_the_snapshot_and_the_page_adds_nothing() {
        let queue = ClientQueue::new(10);
        queue.push(&update("OLD", 1), false);
        drain_versions(&queue);
        queue.begin_all_snapshot();
        queue.push(&update("LATE", 6), false);
        queue.push(&update("OLD", 2), false);
        assert_eq!(
            drain_versions(&queue),
            vec![("LATE".into(), 6, true), ("OLD".into(), 2, true)]
        );
        // The page read before those updates were written brings older versions.
        assert_eq!(queue.push(&update("LATE", 5), true), PushOutcome::Stale);
        assert_eq!(queue.push(&update("OLD", 2), true), PushOutcome::Stale);
        assert_eq!(queue.push(&update("NEW", 1), true), PushOutcome::Queued);
        queue.end_all_snapshot();
        assert_eq!(drain_versions(&queue), vec![("NEW".into(), 1, true)]);
        // An event first seen after the snapshot gets `odds`, as before.
        queue.push(&update("BRAND_NEW", 1), false);
        assert_eq!(drain_versions(&queue), vec![("BRAND_NEW".into(), 1, false)]);
    }
}
