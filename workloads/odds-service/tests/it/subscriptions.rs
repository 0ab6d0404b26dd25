//! Subscriptions while store reads are slow or failing, and the `*` subscription under live
//! traffic: no read holds a connection, a healthy client is never taken for a slow one, no
//! `odds` frame precedes its market's `snapshot`, and nothing owed to a client is dropped.
//!
//! A store read is made to wait, deterministically, by locking `odds_current` (the statement
//! timeout is raised far above the tests' own deadlines): whatever a test expects while the
//! lock is held can only happen if the read does not hold the connection.

use crate::common::{connect, frames_until, next_json, send, subscribe, update, Client, Env};
use odds_testkit::TestDatabase;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(30);
const SLOW_READS: &str = "--database-statement-timeout-ms=120000";

async fn lock_current(env: &Env) -> sqlx::Transaction<'static, sqlx::Postgres> {
    env.db
        .lock_table("odds_current", "ACCESS EXCLUSIVE")
        .await
        .unwrap()
}

/// What the processor does, minus Postgres (locked in these tests): the cache and PUBLISH.
async fn publish_live(env: &Env, event: &str, version: u64) {
    let u = update(event, version, 2.0 + version as f64 / 100.0);
    env.write_cache(&u).await;
    env.publish(&u).await;
}

async fn pong(client: &mut Client) {
    send(client, r#"{"type":"ping"}"#).await;
    let frames = frames_until(client, PATIENCE, "pong", |f| f["type"] == "pong").await;
    assert!(!frames.is_empty());
}

#[tokio::test]
async fn a_store_read_never_holds_the_connection() {
    let env = Env::start(&[SLOW_READS]).await;
    env.write(&update("S1", 1, 2.0)).await;
    env.write(&update("S2", 1, 2.0)).await;
    env.wait_for_pubsub().await;
    let mut client = connect(env.addr()).await;
    subscribe(&mut client, "S2").await;

    let lock = lock_current(&env).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"S1"}"#).await;
    send(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(
        next_json(&mut client).await["type"],
        "pong",
        "answered at once"
    );
    publish_live(&env, "S2", 2).await;
    let odds = next_json(&mut client).await;
    assert_eq!(
        (odds["type"].as_str(), odds["data"]["version"].as_u64()),
        (Some("odds"), Some(2))
    );

    lock.rollback().await.unwrap();
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    let snapshot = next_json(&mut client).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"]["event_id"], "S1");
    env.stop().await;
}

#[tokio::test]
async fn with_postgres_unreachable_snapshots_come_from_the_cache_at_once() {
    let db = TestDatabase::on_own_server().await.unwrap();
    let mut env = Env::start_with(db, &[]).await;
    for event in ["C1", "C2", "C3"] {
        env.write(&update(event, 1, 2.0)).await;
    }
    env.wait_for_pubsub().await;
    env.db.server_mut().unwrap().stop().unwrap();
    let mut client = connect(env.addr()).await;
    // The first read finds Postgres gone (after the pool's wait) and answers from the cache.
    assert_eq!(subscribe(&mut client, "C1").await["data"]["version"], 1);
    let metrics = env.metrics();
    assert_eq!(metrics.store_postgres_unreachable.get(), 1);
    let skipped = metrics.store_postgres_skipped.get();
    // Later ones do not wait for Postgres at all.
    assert_eq!(subscribe(&mut client, "C2").await["data"]["version"], 1);
    assert_eq!(subscribe(&mut client, "C3").await["data"]["version"], 1);
    assert!(
        metrics.store_postgres_skipped.get() >= skipped + 2,
        "the snapshots waited for Postgres"
    );
    pong(&mut client).await;

    env.db.server_mut().unwrap().start_again().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while env.metrics().store_postgres_unreachable.get() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Postgres never probed back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.write(&update("C2", 2, 2.2)).await;
    let odds = next_json(&mut client).await;
    assert_eq!(odds["data"]["version"], 2);
    env.stop().await;
}

/// The first page of a `*` snapshot waits on the lock while more live updates arrive than the
/// client's queue holds: each reaches the client at once (as its market's snapshot), and the
/// client is not taken for a slow one.
#[tokio::test]
async fn live_updates_flow_while_a_star_snapshot_page_is_read() {
    let env = Env::start(&["--ws-max-pending-events=8", SLOW_READS]).await;
    for i in 0..10 {
        env.write_postgres(&update(&format!("P{i:02}"), 1, 2.0))
            .await;
    }
    env.wait_for_pubsub().await;
    let lock = lock_current(&env).await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"*"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    for i in 0..30 {
        let event = format!("L{i:02}");
        publish_live(&env, &event, 1).await;
        let frame = next_json(&mut client).await;
        assert_eq!(frame["type"], "snapshot", "{frame}");
        assert_eq!(frame["data"]["event_id"], event.as_str());
    }
    pong(&mut client).await;
    lock.rollback().await.unwrap();
    let mut paged = BTreeSet::new();
    while paged.len() < 10 {
        let frame = next_json(&mut client).await;
        assert_eq!(frame["type"], "snapshot", "{frame}");
        paged.insert(frame["data"]["event_id"].as_str().unwrap().to_owned());
    }
    pong(&mut client).await;
    env.stop().await;
}

/// An update of an event whose page has not been read yet arrives while the snapshot is in
/// progress: the client's first frame of it is a snapshot, never `odds`, and the page read
/// later (older) adds nothing.
#[tokio::test]
async fn an_odds_frame_never_precedes_its_snapshot() {
    let env = Env::start(&["--ws-max-pending-events=4", SLOW_READS]).await;
    for event in ["A", "B", "C", "D", "E"] {
        env.write(&update(event, 1, 2.0)).await;
    }
    env.wait_for_pubsub().await;
    let lock = lock_current(&env).await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"*"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    publish_live(&env, "E", 2).await;
    lock.rollback().await.unwrap();
    let frames = frames_per_event(&mut client, 5).await;
    for (event, frames) in &frames {
        assert_eq!(frames[0].0, "snapshot", "{event}: {frames:?}");
        assert!(
            frames.windows(2).all(|w| w[0].1 < w[1].1),
            "{event}: {frames:?}"
        );
    }
    assert_eq!(frames["E"], [("snapshot".to_owned(), 2)]);
    env.stop().await;
}

/// Reads frames until `events` events were seen, then a little more (a ping's round trip);
/// returns each event's (type, version) frames in order.
async fn frames_per_event(
    client: &mut Client,
    events: usize,
) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut seen: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let record = |frame: &Value, seen: &mut BTreeMap<String, Vec<(String, u64)>>| {
        if let Some(event) = frame["data"]["event_id"].as_str() {
            seen.entry(event.to_owned()).or_default().push((
                frame["type"].as_str().unwrap().to_owned(),
                frame["data"]["version"].as_u64().unwrap(),
            ));
        }
    };
    while seen.len() < events {
        let frame = next_json(client).await;
        record(&frame, &mut seen);
    }
    send(client, r#"{"type":"ping"}"#).await;
    for frame in frames_until(client, PATIENCE, "pong", |f| f["type"] == "pong").await {
        record(&frame, &mut seen);
    }
    seen
}

/// Live traffic on a sixth of 300 events while a `*` client takes its snapshot, several
/// pages long: the client is never closed, each event's first frame is its snapshot, and its
/// versions only rise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_snapshot_under_live_traffic_keeps_every_promise() {
    let env = Env::start(&["--ws-max-pending-events=256"]).await;
    let events: Vec<String> = (0..300).map(|i| format!("Q{i:03}")).collect();
    env.write_image(&events).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut conn = env.redis.connection().await.unwrap();
    let live: Vec<String> = events.iter().step_by(6).cloned().collect();
    let publisher = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                version += 1;
                for event in &live {
                    let json = update(event, version, 2.0).to_json();
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg(odds_contracts::names::REDIS_UPDATES_CHANNEL)
                        .arg(json)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"*"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    let frames = frames_per_event(&mut client, events.len()).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    for (event, frames) in &frames {
        assert_eq!(frames[0].0, "snapshot", "{event}: {frames:?}");
        assert!(
            frames.windows(2).all(|w| w[0].1 < w[1].1),
            "{event}: {frames:?}"
        );
    }
    assert_eq!(env.metrics().ws_slow_client_closes.get(), 0);
    env.stop().await;
}

/// A client following `*` subscribes to one event and unsubscribes it again while that
/// event's update waits in its queue: the event is still followed through `*`, so the update
/// still reaches it.
#[tokio::test]
async fn unsubscribing_one_event_while_following_all_keeps_what_it_is_owed() {
    let env = Env::start(&[SLOW_READS]).await;
    env.write(&update("U1", 1, 2.0)).await;
    env.wait_for_pubsub().await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"*"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    assert_eq!(next_json(&mut client).await["data"]["version"], 1);

    // The subscribe's read waits on the lock; U1's update waits with it (held back until the
    // subscribe is answered), and the unsubscribe is answered right after.
    let lock = lock_current(&env).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"U1"}"#).await;
    send(&mut client, r#"{"type":"unsubscribe","eventId":"U1"}"#).await;
    let received = env.metrics().ws_updates_received.get();
    publish_live(&env, "U1", 2).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while env.metrics().ws_updates_received.get() == received {
        assert!(
            tokio::time::Instant::now() < deadline,
            "update never received"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.rollback().await.unwrap();
    let frames = frames_until(&mut client, PATIENCE, "U1 v2", |f| {
        f["data"]["version"] == 2
    })
    .await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"subscribed"), "{frames:?}");
    env.write(&update("U1", 3, 2.3)).await;
    let frames = frames_until(&mut client, PATIENCE, "U1 v3", |f| f["type"] == "odds").await;
    assert_eq!(frames.last().unwrap()["data"]["version"], 3);
    env.stop().await;
}
