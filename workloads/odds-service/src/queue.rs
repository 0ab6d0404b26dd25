//! One connection's outgoing side: the frames waiting to be written, the socket they are
//! written to, and the rules that keep them in order, never going back in version, and
//! bounded.
//!
//! While the client keeps up, every version reaches it: the fan-out appends each update's
//! pre-built frame to the client's write buffer and, once per pub/sub batch, writes the buffer
//! with one non-blocking syscall. Only when that would block (the socket's send buffer is full)
//! does the client become *deferred*: further updates wait in a queue that keeps the newest
//! version per (event, market) (conflation), the connection's task writes when the socket
//! drains, and a client with more pending markets than its limit is closed as a slow consumer.
//! A client that asked for a conflation interval, or that the connection holds back (a feed
//! `status` it must get first), is deferred the same way.
//!
//! The queue remembers the highest version it accepted per (event, market) for the life of the
//! connection, so a client never receives an older or equal version of a market after a newer
//! one, whatever order pub/sub, resyncs and snapshot reads deliver them in, and across
//! unsubscribing and subscribing again. Every (event, market) remembers whether the client was
//! given a frame for it since it (re)subscribed ("shown"). While one event's subscribe waits for
//! its snapshot, that event's updates are held back (its `subscribed` reply must come first);
//! while a `*` snapshot is paged out, an update of a market not shown yet goes out as that
//! market's `snapshot`, and the page that brings the same or an older version later adds
//! nothing. So no `odds` frame ever precedes its market's `snapshot`.

use crate::encoded::{EncodedUpdate, KeyMap, MarketKey};
use crate::frames;
use odds_contracts::Market;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// Write-buffer capacity a client keeps between writes; a larger one (after a burst or a
/// snapshot page) is given back, so an idle connection stays small.
const KEEP_CAPACITY: usize = 4 * 1024;

/// Where a client's bytes go: a socket written without blocking.
pub trait SocketWrite: Send + Sync {
    /// Writes what the socket accepts now; `WouldBlock` when it accepts nothing. For the
    /// connection task, which then waits for the socket to drain: a `WouldBlock` here must
    /// make that wait real.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;

    /// The fan-out's write: as [`try_write`](SocketWrite::try_write), but free to skip the
    /// runtime's readiness bookkeeping, since a socket that would block is handed to the
    /// connection task, whose next `try_write` does that bookkeeping.
    fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

impl SocketWrite for tokio::net::TcpStream {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write(self, buf)
    }

    /// A plain non-blocking `send(2)`: tokio's `try_write` checks and updates the
    /// registration's readiness around every call, a few percent of the fan-out's CPU in a
    /// profile at 200 000 deliveries/s, for a readiness only the blocked path waits on.
    fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(self).send(buf)
    }
}

/// What [`ClientQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Framed for the next write, or queued as a new pending (event, market).
    Queued,
    /// Replaced an older pending version of the same (event, market).
    Conflated,
    /// Not newer than what the client has or will get: dropped.
    Stale,
    /// The client is too far behind; its connection must close.
    Overflow,
}

/// How the client's writing stands (for its connection task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteState {
    /// Bytes are waiting for the socket to drain: the connection writes them when it can.
    pub blocked: bool,
    /// Too many markets pending while deferred: close as a slow consumer.
    pub overflowed: bool,
    /// A write failed: the client is gone.
    pub failed: bool,
}

/// Frames written since last asked, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framed {
    pub odds: u64,
    pub snapshots: u64,
}

/// The newest version of a market this client was given or has pending.
struct Held {
    update: Arc<EncodedUpdate>,
    /// A frame of this market was queued since the client (re)subscribed to its event.
    shown: bool,
    /// Sequence number of this market's slot in the deferred queue, if it may still be there.
    slot: Option<u64>,
}

/// An update waiting in the deferred queue or the held-back area; `None` once forgotten.
struct Slot {
    update: Option<Arc<EncodedUpdate>>,
    as_snapshot: bool,
}

#[derive(Default)]
struct QueueState {
    /// Bytes framed and not yet written, in the order the client gets them.
    out: Vec<u8>,
    /// Updates waiting while the client is deferred, oldest first, one per market.
    deferred: VecDeque<Slot>,
    /// Sequence number of `deferred`'s front slot.
    head: u64,
    /// Slots of `deferred` not forgotten.
    pending: usize,
    /// The held-back event's updates, one per market.
    held: Vec<Slot>,
    newest: KeyMap<Held>,
    /// The event whose subscribe is reading its snapshot: its updates wait for the answer.
    held_back: Option<Arc<str>>,
    /// A `*` snapshot is being paged out.
    all_snapshot: bool,
    /// The socket took less than `out` (it would block).
    blocked: bool,
    /// The connection holds updates back until it has told the client something first.
    paused: bool,
    /// The client asked for a conflation interval: its connection writes on a timer.
    conflating: bool,
    overflowed: bool,
    failed: bool,
    /// In the fan-out's list of clients to write at the end of its batch.
    touched: bool,
    framed: Framed,
}

impl QueueState {
    fn awaits_snapshot(&self, event_id: &str) -> bool {
        self.all_snapshot || self.held_back.as_deref() == Some(event_id)
    }

    fn is_deferred(&self) -> bool {
        self.blocked || self.paused || self.conflating
    }

    /// Marks an event's markets as not shown: its next frame of each is a snapshot.
    fn unshow(&mut self, event_id: &str) {
        for market in Market::ALL {
            let key = MarketKey::new(event_id, market.as_str());
            if let Some(held) = self.newest.get_mut(&key) {
                held.shown = false;
            }
        }
    }

    fn render(&mut self, update: &EncodedUpdate, as_snapshot: bool) {
        if as_snapshot {
            frames::append_update(&mut self.out, "snapshot", &update.data_json);
            self.framed.snapshots += 1;
        } else {
            self.out.extend_from_slice(&update.odds_frame);
            self.framed.odds += 1;
        }
    }

    /// The deferred slot `seq` if it still holds an update of `key`.
    fn slot_mut(&mut self, seq: Option<u64>, key: &MarketKey) -> Option<&mut Slot> {
        let index = usize::try_from(seq?.checked_sub(self.head)?).ok()?;
        self.deferred
            .get_mut(index)
            .filter(|s| s.update.as_ref().is_some_and(|u| u.key == *key))
    }

    /// Frames up to `max` deferred updates into `out`.
    fn drain_deferred(&mut self, max: usize) {
        let mut moved = 0;
        while moved < max {
            let Some(slot) = self.deferred.pop_front() else {
                break;
            };
            self.head += 1;
            if let Some(update) = slot.update {
                self.pending -= 1;
                moved += 1;
                self.render(&update, slot.as_snapshot);
            }
        }
    }

    /// Writes `out` until the socket would block (with the fan-out's write when `fanout`).
    /// Returns true when everything was written.
    fn write_out(&mut self, socket: &dyn SocketWrite, fanout: bool) -> bool {
        let mut sent = 0;
        while sent < self.out.len() {
            let rest = &self.out[sent..];
            let written = if fanout {
                socket.send_now(rest)
            } else {
                socket.try_write(rest)
            };
            match written {
                Ok(0) => {
                    self.failed = true;
                    break;
                }
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    break;
                }
                Err(_) => {
                    self.failed = true;
                    break;
                }
            }
        }
        if sent == self.out.len() {
            self.out.clear();
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
            true
        } else {
            self.out.drain(..sent);
            false
        }
    }

    /// Drops everything queued; `out` stays, so the close frame follows whole frames.
    fn overflow(&mut self) -> PushOutcome {
        self.overflowed = true;
        self.head += self.deferred.len() as u64;
        self.deferred = VecDeque::new();
        self.held = Vec::new();
        self.pending = 0;
        PushOutcome::Overflow
    }

    fn write_state(&self) -> WriteState {
        WriteState {
            blocked: self.blocked,
            overflowed: self.overflowed,
            failed: self.failed,
        }
    }
}

/// A connection's outgoing frames: written at once while the client keeps up, queued with
/// conflation (bounded) while it does not.
pub struct ClientQueue {
    state: Mutex<QueueState>,
    socket: Arc<dyn SocketWrite>,
    /// Wakes the connection task: the client blocked, overflowed or failed.
    notify: Notify,
    max_pending: usize,
}

impl ClientQueue {
    pub fn new(max_pending: usize, socket: Arc<dyn SocketWrite>) -> ClientQueue {
        ClientQueue {
            state: Mutex::new(QueueState::default()),
            socket,
            notify: Notify::new(),
            max_pending: max_pending.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers an update; only a version newer than any this client accepted is kept. A
    /// snapshot older than what the client already saw (a cache or replica behind, after an
    /// unsubscribe and subscribe) is answered with the newest it saw instead. What is framed
    /// is written by the next [`write`](ClientQueue::write).
    pub fn push(&self, update: &Arc<EncodedUpdate>, as_snapshot: bool) -> PushOutcome {
        let mut state = self.lock();
        let outcome = self.push_locked(&mut state, update, as_snapshot);
        if outcome == PushOutcome::Overflow {
            drop(state);
            self.notify.notify_one();
        }
        outcome
    }

    /// [`push`](ClientQueue::push) for the fan-out: also says whether this client was not yet
    /// on the fan-out's list of clients to write (it is now).
    pub fn push_live(&self, update: &Arc<EncodedUpdate>) -> (PushOutcome, bool) {
        let mut state = self.lock();
        let outcome = self.push_locked(&mut state, update, false);
        if outcome == PushOutcome::Overflow {
            drop(state);
            self.notify.notify_one();
            return (outcome, false);
        }
        let first = !state.out.is_empty() && !state.blocked && !state.touched;
        state.touched |= first;
        (outcome, first)
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
                let slot = held.slot;
                let shown = held.shown;
                held.shown = true;
                let held_newest = held.update.clone();
                if let Some(pending) = state.slot_mut(slot, &update.key) {
                    // Something at least as new is pending: deliver that as the snapshot.
                    pending.as_snapshot = true;
                    return PushOutcome::Stale;
                }
                if let Some(pending) = state
                    .held
                    .iter_mut()
                    .find(|s| s.update.as_ref().is_some_and(|u| u.key == update.key))
                {
                    pending.as_snapshot = true;
                    return PushOutcome::Stale;
                }
                if shown {
                    // This subscription already has this market (a live update was its
                    // snapshot): a page read later adds nothing.
                    return PushOutcome::Stale;
                }
                return self.place(state, &held_newest, true);
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
                    slot: None,
                };
                state.newest.insert(update.key.clone(), held);
                as_snapshot || awaiting
            }
        };
        self.place(state, update, snapshot)
    }

    /// Puts an accepted update where it waits: the held-back area, the deferred queue
    /// (conflating per market), or straight into the write buffer.
    fn place(
        &self,
        state: &mut QueueState,
        update: &Arc<EncodedUpdate>,
        as_snapshot: bool,
    ) -> PushOutcome {
        if state.held_back.as_deref() == Some(&*update.key.event_id) {
            let same = |s: &&mut Slot| s.update.as_ref().is_some_and(|u| u.key == update.key);
            if let Some(slot) = state.held.iter_mut().find(same) {
                slot.update = Some(update.clone());
                slot.as_snapshot |= as_snapshot;
                return PushOutcome::Conflated;
            }
            state.held.push(Slot {
                update: Some(update.clone()),
                as_snapshot,
            });
            return PushOutcome::Queued;
        }
        if !state.is_deferred() {
            state.render(update, as_snapshot);
            return PushOutcome::Queued;
        }
        let seq = state.newest.get(&update.key).and_then(|h| h.slot);
        if let Some(slot) = state.slot_mut(seq, &update.key) {
            slot.update = Some(update.clone());
            slot.as_snapshot |= as_snapshot;
            return PushOutcome::Conflated;
        }
        if state.pending >= self.max_pending {
            return state.overflow();
        }
        let seq = state.head + state.deferred.len() as u64;
        state.deferred.push_back(Slot {
            update: Some(update.clone()),
            as_snapshot,
        });
        state.pending += 1;
        if let Some(held) = state.newest.get_mut(&update.key) {
            held.slot = Some(seq);
        }
        PushOutcome::Queued
    }

    /// Writes what is framed, without blocking; for the fan-out at the end of its batch.
    /// Returns the frames written (or left to the connection) since the last call. A socket
    /// that would block or fails hands the client to its connection task.
    pub fn write(&self) -> Framed {
        let mut state = self.lock();
        state.touched = false;
        let before = state.write_state();
        if !state.blocked && !state.failed {
            state.write_out(&*self.socket, true);
        }
        let framed = std::mem::take(&mut state.framed);
        let changed = state.write_state() != before;
        drop(state);
        if changed {
            self.notify.notify_one();
        }
        framed
    }

    /// The connection's write: writes what is framed and the deferred updates too (unless
    /// paused, or conflating and this is not the interval's `tick`), until the socket would
    /// block. A client whose buffer is written and whose queue is empty or not due is no
    /// longer blocked.
    pub fn flush(&self, tick: bool) -> (WriteState, Framed) {
        let mut state = self.lock();
        let drain = !state.paused && (tick || !state.conflating);
        while !state.failed {
            if !state.out.is_empty() {
                state.blocked = false;
                if !state.write_out(&*self.socket, false) {
                    break;
                }
            }
            if !drain || state.pending == 0 {
                state.blocked = false;
                if state.pending == 0 {
                    // Only forgotten slots are left: drop them, keeping sequence numbers unique.
                    state.head += state.deferred.len() as u64;
                    state.deferred.clear();
                }
                break;
            }
            state.drain_deferred(self.max_pending.min(256));
        }
        (state.write_state(), std::mem::take(&mut state.framed))
    }

    /// Frames a message of the connection's own (a reply, a status, a pong, a close) after
    /// everything framed so far, and writes if the socket is not blocked.
    pub fn send_control(&self, frame: &[u8]) -> WriteState {
        let mut state = self.lock();
        if state.failed {
            return state.write_state();
        }
        state.out.extend_from_slice(frame);
        if !state.blocked {
            state.write_out(&*self.socket, false);
        }
        state.write_state()
    }

    pub fn write_state(&self) -> WriteState {
        self.lock().write_state()
    }

    /// Holds updates back in the (conflating) deferred queue until [`resume`], e.g. until the
    /// client has been told that live updates are flowing again.
    ///
    /// [`resume`]: ClientQueue::resume
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Ends [`pause`](ClientQueue::pause); the caller flushes.
    pub fn resume(&self) {
        self.lock().paused = false;
    }

    /// The client asked for (or stopped asking for) a conflation interval: updates then wait
    /// in the conflating queue and the connection flushes them on its timer.
    pub fn set_conflating(&self, conflating: bool) {
        self.lock().conflating = conflating;
    }

    /// An event's subscribe reads its snapshot: hold its updates back until [`release`], and
    /// make its next frame per market a snapshot.
    ///
    /// [`release`]: ClientQueue::release
    pub fn hold_back(&self, event_id: &Arc<str>) {
        let mut state = self.lock();
        state.unshow(event_id);
        state.held_back = Some(event_id.clone());
        // What the deferred queue already holds of the event waits with what comes next.
        let QueueState {
            deferred,
            held,
            pending,
            ..
        } = &mut *state;
        for slot in deferred.iter_mut() {
            let Some(update) = slot.update.take_if(|u| *u.key.event_id == **event_id) else {
                continue;
            };
            *pending -= 1;
            let same = |s: &&mut Slot| s.update.as_ref().is_some_and(|u| u.key == update.key);
            match held.iter_mut().find(same) {
                Some(existing) => {
                    existing.as_snapshot |= slot.as_snapshot;
                    existing.update = Some(update);
                }
                None => held.push(Slot {
                    update: Some(update),
                    as_snapshot: slot.as_snapshot,
                }),
            }
        }
    }

    /// The subscribe was answered: what was held back goes out (the caller flushes).
    pub fn release(&self) {
        let mut state = self.lock();
        state.held_back = None;
        for slot in std::mem::take(&mut state.held) {
            if let Some(update) = slot.update {
                if self.place(&mut state, &update, slot.as_snapshot) == PushOutcome::Overflow {
                    drop(state);
                    self.notify.notify_one();
                    return;
                }
            }
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
        let mut forgotten = 0;
        for slot in state.deferred.iter_mut() {
            if slot
                .update
                .as_ref()
                .is_some_and(|u| unfollowed(&u.key.event_id))
            {
                slot.update = None;
                forgotten += 1;
            }
        }
        state.pending -= forgotten;
        state.held.retain(|s| {
            s.update
                .as_ref()
                .is_some_and(|u| !unfollowed(&u.key.event_id))
        });
        for (key, held) in state.newest.iter_mut() {
            if unfollowed(&key.event_id) {
                held.shown = false;
            }
        }
    }

    /// Number of (event, market) updates waiting in the deferred queue and the held-back area.
    pub fn pending_len(&self) -> usize {
        let state = self.lock();
        state.pending + state.held.len()
    }

    /// Bytes framed and not yet written (for tests and the memory bound).
    pub fn unwritten_bytes(&self) -> usize {
        self.lock().out.len()
    }

    /// Completes when the client blocked, overflowed or failed since the last wait.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
pub(crate) mod tests;
