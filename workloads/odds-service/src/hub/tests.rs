use super::*;
use crate::queue::tests::FakeSocket;
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
