//! A Redis restart while clients are subscribed: what was published during the outage reaches
//! them through the resync, and nothing older than what they had.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_silent, connect, next_json, send, subscribe, update, Env};
use std::time::Duration;

#[tokio::test]
async fn redis_restart_is_followed_by_a_resync_of_newer_versions_only() {
    let mut env = Env::start(&[]).await;
    env.write(&update("R1", 1, 2.0)).await;
    env.wait_for_pubsub().await;
    let mut follower = connect(env.addr()).await;
    subscribe(&mut follower, "R1").await;
    let mut everything = connect(env.addr()).await;
    send(&mut everything, r#"{"type":"subscribe","eventId":"*"}"#).await;
    assert_eq!(next_json(&mut everything).await["type"], "subscribed");
    assert_eq!(next_json(&mut everything).await["data"]["version"], 1);

    env.write(&update("R1", 2, 2.2)).await;
    assert_eq!(next_json(&mut follower).await["data"]["version"], 2);
    assert_eq!(next_json(&mut everything).await["data"]["version"], 2);

    // Outage: the processor keeps writing Postgres; its cache writes and PUBLISHes are lost.
    env.redis.stop();
    env.write_postgres(&update("R1", 3, 2.3)).await;
    env.write_postgres(&update("R2", 1, 1.9)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.redis.start_again().await.unwrap();

    let resynced = next_json(&mut follower).await;
    assert_eq!(resynced["type"], "odds", "{resynced}");
    assert_eq!(resynced["data"]["version"], 3);
    assert_eq!(resynced["data"]["odds"]["home"], 2.3);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let frame = next_json(&mut everything).await;
        seen.push((
            frame["data"]["event_id"].as_str().unwrap().to_owned(),
            frame["data"]["version"].as_u64().unwrap(),
        ));
    }
    seen.sort();
    assert_eq!(seen, [("R1".to_owned(), 3), ("R2".to_owned(), 1)]);
    assert!(env.metrics().ws_pubsub_reconnects.get() >= 1);

    // A late replay of old versions (e.g. a lagging replica) changes nothing for the clients.
    env.wait_for_pubsub().await;
    env.publish(&update("R1", 2, 9.9)).await;
    env.publish(&update("R1", 3, 9.9)).await;
    assert_silent(&mut follower, Duration::from_millis(500)).await;
    // Live updates flow again.
    env.write(&update("R1", 4, 2.4)).await;
    assert_eq!(next_json(&mut follower).await["data"]["version"], 4);
    assert_eq!(next_json(&mut everything).await["data"]["version"], 4);
    env.stop().await;
}

#[tokio::test]
async fn healthy_subscription_is_kept_without_reconnects() {
    let env = Env::start(&[]).await;
    env.write(&update("K1", 1, 2.0)).await;
    env.wait_for_pubsub().await;
    let mut client = connect(env.addr()).await;
    subscribe(&mut client, "K1").await;
    // Longer than the subscriber's keep-alive ping interval (5 s).
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert_eq!(
        env.metrics().ws_pubsub_reconnects.get(),
        0,
        "keep-alive ping must not break the subscription"
    );
    env.write(&update("K1", 2, 2.1)).await;
    assert_eq!(next_json(&mut client).await["data"]["version"], 2);
    env.stop().await;
}
