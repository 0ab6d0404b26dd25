use super::*;
use crate::queue::tests::FakeSocket;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

fn update(event: &str, version: u64) -> Arc<EncodedUpdate> {
    EncodedUpdate::new(&odds_testkit::sample_update(event, version))
}

fn client() -> (Arc<ClientQueue>, Arc<FakeSocket>) {
    let socket = FakeSocket::with_room(usize::MAX);
    (Arc::new(ClientQueue::new(10, socket.clone())), socket)
}

fn versions(socket: &FakeSocket) -> Vec<(String, u64)> {
    socket
        .frames()
        .into_iter()
        .map(|(_, event, version)| (event, version))
        .collect()
}

#[test]
fn publish_reaches_only_followers_of_the_event_and_all_event_clients() {
    let hub = Hub::new(Metrics::new().unwrap());
    let ((a, sa), (b, sb), (c, sc)) = (client(), client(), client());
    hub.subscribe(1, &a, "E1".into());
    hub.subscribe(2, &b, "E2".into());
    hub.subscribe_all(3, &c);
    hub.publish(&update("E1", 1));
    hub.unsubscribe(1, "E1");
    hub.unsubscribe_all(3);
    hub.publish(&update("E1", 2));
    assert_eq!(versions(&sa), vec![("E1".into(), 1)]);
    assert!(versions(&sb).is_empty());
    assert_eq!(versions(&sc), vec![("E1".into(), 1)]);
    let (events, any_all) = hub.followed_events();
    assert_eq!(events, vec![Arc::<str>::from("E2")]);
    assert!(!any_all);
}

#[test]
fn a_batch_reaching_many_clients_is_written_from_two_threads_each_client_once_in_order() {
    let mut hub = Hub::new(Metrics::new().unwrap());
    // Set directly: a one-core machine would not split (`split_writes_at`).
    hub.split_writes_at = Some(4);
    let event = |i: usize| if i % 3 == 0 { "E1" } else { "E2" };
    let clients: Vec<_> = (0..9).map(|_| client()).collect();
    for (i, (queue, _)) in clients.iter().enumerate() {
        hub.subscribe(i as u64, queue, event(i).into());
    }
    let batch: Vec<_> = (1..=5)
        .flat_map(|v| [update("E1", v), update("E2", v)])
        .collect();
    let report = hub.publish_batch(&batch);
    assert_eq!((report.clients_reached, report.frames), (9, 45));
    assert_eq!(hub.metrics.ws_odds_sent.get(), 45);
    let mut threads = Vec::new();
    for (i, (_, socket)) in clients.iter().enumerate() {
        let expected: Vec<(String, u64)> = (1..=5).map(|v| (event(i).into(), v)).collect();
        assert_eq!(versions(socket), expected, "client {i}");
        let writers = socket.writer_threads();
        assert_eq!(writers.len(), 1, "client {i} is written once");
        threads.extend(writers);
    }
    // The first half (4 clients) on the calling thread, the other 5 on the helper.
    let helper = threads.iter().filter(|t| *t == "fanout-write").count();
    assert_eq!((threads.len() - helper, helper), (4, 5), "{threads:?}");

    // Under the threshold (3 clients follow E1), the batch stays on the calling thread.
    hub.publish(&update("E1", 6));
    for (_, socket) in clients.iter().step_by(3) {
        assert_eq!(versions(socket), vec![("E1".into(), 6)]);
        assert!(socket.writer_threads().iter().all(|t| t != "fanout-write"));
    }
}

#[test]
fn a_batch_reaches_each_client_with_every_version_in_one_write() {
    let hub = Hub::new(Metrics::new().unwrap());
    let ((a, sa), (b, sb)) = (client(), client());
    hub.subscribe(1, &a, "E1".into());
    hub.subscribe(2, &b, "E2".into());
    let batch: Vec<_> = (1..=4)
        .flat_map(|v| [update("E1", v), update("E2", v)])
        .collect();
    let report = hub.publish_batch(&batch);
    assert_eq!(
        (report.updates, report.clients_reached, report.frames),
        (8, 2, 8)
    );
    assert_eq!(sa.writes.load(Ordering::Relaxed), 1);
    assert_eq!(sb.writes.load(Ordering::Relaxed), 1);
    let expected: Vec<(String, u64)> = (1..=4).map(|v| ("E1".into(), v)).collect();
    assert_eq!(versions(&sa), expected);
    assert_eq!(versions(&sb).len(), 4);
    assert_eq!(hub.metrics.ws_conflated.get(), 0, "nothing conflated");
}

#[test]
fn encoded_keys_share_the_followed_event_id_and_known_markets() {
    let hub = Hub::new(Metrics::new().unwrap());
    let (a, _) = client();
    let followed: Arc<str> = "E1".into();
    hub.subscribe(1, &a, followed.clone());
    let first = hub.encode(&odds_testkit::sample_update("E1", 1));
    let second = hub.encode(&odds_testkit::sample_update("E1", 2));
    assert!(Arc::ptr_eq(&first.key.event_id, &followed));
    assert!(Arc::ptr_eq(&first.key.market, &second.key.market));
    // Shared or not, a key equals (and hashes as) the one built from the same strings.
    let unfollowed = hub.encode(&odds_testkit::sample_update("E2", 1));
    assert!(!Arc::ptr_eq(&unfollowed.key.event_id, &followed));
    for encoded in [&first, &unfollowed] {
        let fresh = crate::encoded::MarketKey::new(&encoded.key.event_id, &encoded.key.market);
        assert_eq!(encoded.key, fresh);
        let hash = |key: &crate::encoded::MarketKey| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            hasher.finish()
        };
        assert_eq!(hash(&encoded.key), hash(&fresh));
    }
}

#[test]
fn a_published_update_is_framed_as_the_encoder_framed_it_without_its_trace_context() {
    let hub = Hub::new(Metrics::new().unwrap());
    let (queue, _socket) = client();
    hub.subscribe(1, &queue, "E1".into());
    let mut update = odds_testkit::sample_update("E1", 7).accepted_at(chrono::Utc::now());
    update.home_team = "Atlético \"B\"".into();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for suffix in [
        String::new(),
        odds_contracts::traced::pubsub_suffix(traceparent),
    ] {
        // As the processor publishes it (odds-processor's cache: the JSON, then the suffix).
        let message = format!("{}{suffix}", update.to_json());
        let (json, _) = odds_contracts::traced::split_pubsub(message.as_bytes());
        let spliced = hub.encode_published(odds_contracts::check_published(json).unwrap());
        let encoded = hub.encode(&update);
        assert_eq!(spliced.odds_frame, encoded.odds_frame);
        assert_eq!(spliced.data_json, encoded.data_json);
        assert_eq!(spliced.key, encoded.key);
        assert!(Arc::ptr_eq(&spliced.key.event_id, &encoded.key.event_id));
        assert_eq!(spliced.version, 7);
        let frame = String::from_utf8_lossy(&spliced.odds_frame);
        assert!(!frame.contains(traceparent) && !frame.contains('\n'));
    }
}

#[test]
fn writes_split_only_from_a_positive_threshold_on_more_than_one_core() {
    assert_eq!(split_threshold(0, 8), None);
    assert_eq!(split_threshold(128, 1), None);
    assert_eq!(split_threshold(128, 2), Some(128));
    assert_eq!(split_threshold(1, 2), Some(2), "each half has a client");
}
