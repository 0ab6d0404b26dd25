use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A socket that takes up to `room` bytes and then would block, keeping what it took.
#[derive(Default)]
pub(crate) struct FakeSocket {
    taken: Mutex<Vec<u8>>,
    room: AtomicUsize,
    broken: AtomicBool,
    pub(crate) writes: AtomicUsize,
    /// The name of the thread of each write, for tests of who writes.
    writer_threads: Mutex<Vec<String>>,
}

impl FakeSocket {
    pub(crate) fn with_room(room: usize) -> Arc<FakeSocket> {
        let socket = FakeSocket::default();
        socket.room.store(room, Ordering::Relaxed);
        Arc::new(socket)
    }

    pub(crate) fn set_room(&self, room: usize) {
        self.room.store(room, Ordering::Relaxed);
    }

    /// The threads that wrote since last asked, one entry per write.
    pub(crate) fn writer_threads(&self) -> Vec<String> {
        std::mem::take(&mut *self.writer_threads.lock().unwrap())
    }

    /// The frames taken so far as (type, event, version), emptying what was taken.
    pub(crate) fn frames(&self) -> Vec<(String, String, u64)> {
        let bytes = std::mem::take(&mut *self.taken.lock().unwrap());
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (len, header) = match bytes[at + 1] {
                126 => (
                    usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                    4,
                ),
                127 => panic!("no test frame is that large"),
                n => (usize::from(n), 2),
            };
            let payload = &bytes[at + header..at + header + len];
            at += header + len;
            if bytes[at - header - len] & 0x0F != frames::OP_TEXT {
                frames.push(("control".into(), String::new(), 0));
                continue;
            }
            let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
            frames.push((
                value["type"].as_str().unwrap().to_owned(),
                value["data"]["event_id"].as_str().unwrap_or("").to_owned(),
                value["data"]["version"].as_u64().unwrap_or(0),
            ));
        }
        frames
    }
}

impl SocketWrite for FakeSocket {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        self.writer_threads.lock().unwrap().push(thread);
        if self.broken.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = self.room.load(Ordering::Relaxed);
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(room);
        self.room.store(room - n, Ordering::Relaxed);
        self.taken.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn update(event: &str, version: u64) -> Arc<EncodedUpdate> {
    EncodedUpdate::new(&odds_testkit::sample_update(event, version))
}

fn half_time(event: &str, version: u64) -> Arc<EncodedUpdate> {
    EncodedUpdate::new(&odds_testkit::sample_update_in(event, "HT_1X2", version))
}

fn queue(max: usize) -> (ClientQueue, Arc<FakeSocket>) {
    let socket = FakeSocket::with_room(usize::MAX);
    (ClientQueue::new(max, socket.clone()), socket)
}

/// Writes what waits (deferred updates too) and returns the frames as (event, version,
/// snapshot).
fn sent(queue: &ClientQueue, socket: &FakeSocket) -> Vec<(String, u64, bool)> {
    queue.flush(true);
    socket
        .frames()
        .into_iter()
        .filter(|(kind, _, _)| kind == "odds" || kind == "snapshot")
        .map(|(kind, event, version)| (event, version, kind == "snapshot"))
        .collect()
}

fn odds(event: &str, version: u64) -> (String, u64, bool) {
    (event.into(), version, false)
}

#[test]
fn a_client_that_keeps_up_gets_every_version_in_one_write_per_batch() {
    // Fewer pending markets allowed than versions in the batch: framing at once is not
    // pending, so a burst never makes a reading client look slow.
    let (queue, socket) = queue(2);
    for version in 1..=5 {
        assert_eq!(
            queue.push_live(&update("E1", version)).0,
            PushOutcome::Queued
        );
    }
    assert_eq!(queue.push(&update("E1", 3), false), PushOutcome::Stale);
    assert_eq!(
        queue.write(),
        Framed {
            odds: 5,
            snapshots: 0
        }
    );
    assert_eq!(
        socket.writes.load(Ordering::Relaxed),
        1,
        "one write per batch"
    );
    assert_eq!(
        sent(&queue, &socket),
        (1..=5).map(|v| odds("E1", v)).collect::<Vec<_>>()
    );
    assert_eq!(queue.write_state(), WriteState::default());
}

#[test]
fn the_first_push_of_a_batch_puts_the_client_on_the_write_list_once() {
    let (queue, _socket) = queue(10);
    assert!(queue.push_live(&update("E1", 1)).1);
    assert!(!queue.push_live(&update("E1", 2)).1);
    queue.write();
    assert!(queue.push_live(&update("E1", 3)).1);
}

#[test]
fn a_blocked_client_conflates_per_market_and_catches_up_in_order() {
    let (queue, socket) = queue(10);
    socket.set_room(0);
    queue.push_live(&update("E1", 1));
    queue.write();
    assert!(queue.write_state().blocked, "the socket took nothing");
    assert_eq!(
        queue.push_live(&update("E1", 2)),
        (PushOutcome::Queued, false)
    );
    assert_eq!(queue.push(&update("E1", 3), false), PushOutcome::Conflated);
    assert_eq!(queue.push(&update("E2", 1), false), PushOutcome::Queued);
    assert_eq!(queue.push(&half_time("E1", 4), false), PushOutcome::Queued);
    assert_eq!(
        queue.push(&half_time("E1", 5), false),
        PushOutcome::Conflated
    );
    assert_eq!(queue.pending_len(), 3);
    socket.set_room(usize::MAX);
    let (state, framed) = queue.flush(false);
    assert_eq!(state, WriteState::default(), "caught up: direct again");
    assert_eq!(framed.odds, 3);
    assert_eq!(
        sent(&queue, &socket),
        vec![odds("E1", 1), odds("E1", 3), odds("E2", 1), odds("E1", 5)]
    );
    queue.push_live(&update("E1", 6));
    queue.write();
    assert_eq!(sent(&queue, &socket), vec![odds("E1", 6)]);
}

#[test]
fn a_partial_write_keeps_the_rest_of_the_bytes_in_order() {
    let (queue, socket) = queue(10);
    socket.set_room(10);
    queue.push_live(&update("E1", 1));
    queue.push_live(&update("E1", 2));
    queue.write();
    assert!(queue.write_state().blocked);
    assert!(queue.unwritten_bytes() > 0);
    socket.set_room(usize::MAX);
    queue.flush(false);
    assert_eq!(sent(&queue, &socket), vec![odds("E1", 1), odds("E1", 2)]);
}

#[test]
fn a_slow_client_with_too_many_pending_markets_overflows_and_holds_nothing() {
    let (queue, socket) = queue(2);
    socket.set_room(0);
    queue.push_live(&update("E0", 1));
    queue.write();
    queue.push(&update("E1", 1), false);
    queue.push(&update("E2", 1), false);
    // Versions of pending markets conflate: no growth, no overflow.
    for version in 2..100 {
        assert_eq!(
            queue.push(&update("E2", version), false),
            PushOutcome::Conflated
        );
    }
    assert_eq!(queue.push(&update("E3", 1), false), PushOutcome::Overflow);
    assert!(queue.write_state().overflowed);
    assert_eq!(queue.pending_len(), 0);
}

#[test]
fn memory_stays_bounded_for_a_stuck_client_under_a_long_burst() {
    let (queue, socket) = queue(64);
    socket.set_room(0);
    for version in 1..=10_000 {
        let event = format!("E{}", version % 20);
        queue.push_live(&update(&event, version));
        queue.write();
    }
    // One frame went into the buffer before the socket was found full; the rest wait as
    // one pending update per market.
    assert!(
        queue.unwritten_bytes() < 1024,
        "{}",
        queue.unwritten_bytes()
    );
    assert_eq!(queue.pending_len(), 20);
    assert!(!queue.write_state().overflowed);
}

#[test]
fn a_failed_write_tells_the_connection() {
    let (queue, socket) = queue(10);
    socket.broken.store(true, Ordering::Relaxed);
    queue.push_live(&update("E1", 1));
    queue.write();
    assert!(queue.write_state().failed);
}

#[test]
fn a_conflating_client_gets_the_newest_per_market_only_on_its_tick() {
    let (queue, socket) = queue(10);
    queue.set_conflating(true);
    for version in 1..=5 {
        assert!(
            !queue.push_live(&update("E1", version)).1,
            "not written by the fan-out"
        );
    }
    queue.push_live(&update("E2", 1));
    queue.write();
    queue.flush(false);
    assert!(
        socket.frames().is_empty(),
        "nothing before the interval's tick"
    );
    assert_eq!(queue.flush(true).1.odds, 2);
    assert_eq!(sent(&queue, &socket), vec![odds("E1", 5), odds("E2", 1)]);
    queue.set_conflating(false);
    queue.push_live(&update("E1", 6));
    queue.push_live(&update("E1", 7));
    queue.write();
    assert_eq!(sent(&queue, &socket), vec![odds("E1", 6), odds("E1", 7)]);
}

#[test]
fn while_paused_updates_wait_behind_the_connections_own_message() {
    let (queue, socket) = queue(10);
    queue.pause();
    queue.push_live(&update("E1", 1));
    queue.write();
    queue.send_control(&frames::text(r#"{"type":"status","live":true}"#));
    queue.resume();
    queue.flush(false);
    let frames: Vec<String> = socket.frames().into_iter().map(|f| f.0).collect();
    assert_eq!(frames, ["status", "odds"]);
}

#[test]
fn markets_of_one_event_are_kept_apart_and_unsubscribe_drops_every_market() {
    let (queue, socket) = queue(10);
    queue.pause();
    assert_eq!(queue.push(&update("E1", 1), false), PushOutcome::Queued);
    // A newer version of another market neither replaces nor makes stale the first.
    assert_eq!(queue.push(&half_time("E1", 2), false), PushOutcome::Queued);
    assert_eq!(
        queue.push(&half_time("E1", 3), false),
        PushOutcome::Conflated
    );
    queue.resume();
    assert_eq!(sent(&queue, &socket), vec![odds("E1", 1), odds("E1", 3)]);
    assert_eq!(queue.push(&half_time("E1", 3), false), PushOutcome::Stale);
    queue.pause();
    assert_eq!(queue.push(&update("E1", 2), false), PushOutcome::Queued);
    assert_eq!(queue.push(&half_time("E1", 4), false), PushOutcome::Queued);
    queue.forget("E1");
    assert_eq!(queue.pending_len(), 0, "unsubscribe drops every market");
    queue.resume();
    assert!(sent(&queue, &socket).is_empty());
    // Forgotten slots do not confuse later conflation.
    queue.pause();
    assert_eq!(queue.push(&update("E2", 1), false), PushOutcome::Queued);
    assert_eq!(queue.push(&update("E2", 2), false), PushOutcome::Conflated);
    queue.resume();
    assert_eq!(sent(&queue, &socket), vec![odds("E2", 2)]);
}

#[test]
fn stale_snapshot_marks_the_newer_pending_update_as_snapshot() {
    let (queue, socket) = queue(10);
    queue.pause();
    queue.push(&update("E1", 7), false);
    assert_eq!(queue.push(&update("E1", 5), true), PushOutcome::Stale);
    queue.resume();
    assert_eq!(sent(&queue, &socket), vec![("E1".into(), 7, true)]);
}

#[test]
fn a_resubscribe_gets_a_snapshot_never_older_than_what_was_seen() {
    let (queue, socket) = queue(10);
    queue.push(&update("E1", 4), false);
    assert_eq!(sent(&queue, &socket), vec![odds("E1", 4)]);
    queue.forget("E1");
    // The store answers with an older version (a lagging replica or cache): the client
    // gets the version it already saw as its snapshot, not the older one.
    assert_eq!(queue.push(&update("E1", 2), true), PushOutcome::Queued);
    assert_eq!(sent(&queue, &socket), vec![("E1".into(), 4, true)]);
    queue.forget("E1");
    assert_eq!(queue.push(&update("E1", 6), true), PushOutcome::Queued);
    assert_eq!(sent(&queue, &socket), vec![("E1".into(), 6, true)]);
}

#[test]
fn a_held_back_event_waits_for_its_answer_and_starts_with_a_snapshot() {
    let (queue, socket) = queue(10);
    let event: Arc<str> = Arc::from("E1");
    queue.hold_back(&event);
    queue.push(&update("E1", 5), false);
    queue.push(&update("E2", 1), false);
    assert_eq!(sent(&queue, &socket), vec![odds("E2", 1)]);
    // The snapshot read returns an older version: the live one is the snapshot.
    assert_eq!(queue.push(&update("E1", 4), true), PushOutcome::Stale);
    assert!(sent(&queue, &socket).is_empty());
    queue.release();
    assert_eq!(sent(&queue, &socket), vec![("E1".into(), 5, true)]);
    assert_eq!(queue.push(&update("E1", 6), false), PushOutcome::Queued);
    assert_eq!(sent(&queue, &socket), vec![odds("E1", 6)]);
}

#[test]
fn holding_back_takes_what_a_blocked_client_had_pending_for_the_event() {
    let (queue, socket) = queue(10);
    socket.set_room(0);
    queue.push_live(&update("E0", 1));
    queue.write();
    queue.push(&update("E1", 3), false);
    queue.push(&update("E2", 1), false);
    queue.hold_back(&Arc::from("E1"));
    assert_eq!(queue.push(&update("E1", 2), true), PushOutcome::Stale);
    socket.set_room(usize::MAX);
    assert_eq!(sent(&queue, &socket), vec![odds("E0", 1), odds("E2", 1)]);
    queue.release();
    assert_eq!(sent(&queue, &socket), vec![("E1".into(), 3, true)]);
}

#[test]
fn during_a_star_snapshot_a_live_update_is_the_snapshot_and_the_page_adds_nothing() {
    let (queue, socket) = queue(10);
    queue.push(&update("OLD", 1), false);
    sent(&queue, &socket);
    queue.begin_all_snapshot();
    queue.push(&update("LATE", 6), false);
    queue.push(&update("OLD", 2), false);
    assert_eq!(
        sent(&queue, &socket),
        vec![("LATE".into(), 6, true), ("OLD".into(), 2, true)]
    );
    // The page read before those updates were written brings older versions.
    assert_eq!(queue.push(&update("LATE", 5), true), PushOutcome::Stale);
    assert_eq!(queue.push(&update("OLD", 2), true), PushOutcome::Stale);
    assert_eq!(queue.push(&update("NEW", 1), true), PushOutcome::Queued);
    queue.end_all_snapshot();
    assert_eq!(sent(&queue, &socket), vec![("NEW".into(), 1, true)]);
    // An event first seen after the snapshot gets `odds`, as before.
    queue.push(&update("BRAND_NEW", 1), false);
    assert_eq!(sent(&queue, &socket), vec![odds("BRAND_NEW", 1)]);
}
