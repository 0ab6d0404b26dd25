//! WebSocket fan-out against real Redis and Postgres with real WebSocket clients.

use crate::common::{
    assert_silent, close_frame, connect, next_json, send, small_buffer_client, subscribe, update,
    Client, Env,
};
use futures_util::{SinkExt, StreamExt};
use odds_contracts::OddsUpdate;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subscribe_snapshot_update_unsubscribe_and_ping() {
    let env = Env::with_written(&[], &[update("E1", 1, 2.0), update("E2", 1, 2.0)]).await;
    let mut client = connect(env.addr()).await;
    let snapshot = subscribe(&mut client, "E1").await;
    assert_eq!(snapshot["data"]["version"], 1);
    assert_eq!(snapshot["data"]["home_team"], "E1 Home");

    env.write(&update("E2", 2, 2.2)).await; // not followed: must not arrive
    env.write(&update("E1", 2, 2.1)).await;
    let odds = next_json(&mut client).await;
    assert_eq!(odds["type"], "odds", "{odds}");
    assert_eq!(odds["data"]["event_id"], "E1");
    assert_eq!(odds["data"]["version"], 2);
    assert_eq!(odds["data"]["odds"]["home"], 2.1);

    send(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "pong");

    send(&mut client, r#"{"type":"unsubscribe","eventId":"E1"}"#).await;
    let reply = next_json(&mut client).await;
    assert_eq!(reply["type"], "unsubscribed");
    assert_eq!(reply["eventId"], "E1");
    env.write(&update("E1", 3, 2.3)).await;
    assert_silent(&mut client, Duration::from_millis(500)).await;
    env.stop().await;
}

/// E1 v1 in `1X2`, then E1 v2 in `HT_1X2`: both markets are current, the subscriber gets a
/// snapshot of each, and versions rise per market, not per event.
#[tokio::test]
async fn each_market_gets_its_snapshot_and_its_own_versions() {
    let env = Env::start(&[]).await;
    let in_market = |version, market: &str| OddsUpdate {
        market: market.into(),
        ..update("E1", version, 2.0 + version as f64 / 10.0)
    };
    env.write(&in_market(1, "1X2")).await;
    env.write(&in_market(2, "HT_1X2")).await;
    env.wait_for_pubsub().await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"E1"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    let snapshots = next_market_versions(&mut client, "snapshot", 2).await;
    assert_eq!(snapshots, [("1X2".into(), 1), ("HT_1X2".into(), 2)]);

    // 1X2 v3 is news for 1X2 even though HT_1X2 is at v4 by then.
    env.write(&in_market(4, "HT_1X2")).await;
    env.write(&in_market(3, "1X2")).await;
    let seen = next_market_versions(&mut client, "odds", 2).await;
    assert_eq!(seen, [("1X2".into(), 3), ("HT_1X2".into(), 4)]);
    env.stop().await;
}

/// The next `count` frames, each of type `kind`, as sorted (market, version) pairs.
async fn next_market_versions(client: &mut Client, kind: &str, count: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::with_capacity(count);
    for _ in 0..count {
        let frame = next_json(client).await;
        assert_eq!(frame["type"], kind, "{frame}");
        let data = &frame["data"];
        seen.push((
            data["market"].as_str().unwrap().into(),
            data["version"].as_u64().unwrap(),
        ));
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn unknown_and_invalid_events_get_errors() {
    let env = Env::start(&[]).await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"NOPE"}"#).await;
    let error = next_json(&mut client).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unknown_event");
    assert_eq!(error["eventId"], "NOPE");
    send(&mut client, r#"{"type":"subscribe","eventId":"has space"}"#).await;
    assert_eq!(next_json(&mut client).await["code"], "invalid_event_id");
    env.stop().await;
}

#[tokio::test]
async fn all_events_subscription_gets_snapshots_and_every_event() {
    let env = Env::with_written(&[], &[update("A1", 4, 2.0), update("A2", 9, 2.0)]).await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"*"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    let mut snapshots = Vec::new();
    for _ in 0..2 {
        let s = next_json(&mut client).await;
        assert_eq!(s["type"], "snapshot");
        snapshots.push((
            s["data"]["event_id"].as_str().unwrap().to_owned(),
            s["data"]["version"].as_u64().unwrap(),
        ));
    }
    snapshots.sort();
    assert_eq!(snapshots, [("A1".to_owned(), 4), ("A2".to_owned(), 9)]);
    env.write(&update("A3", 1, 2.0)).await;
    let odds = next_json(&mut client).await;
    assert_eq!(
        (odds["type"].as_str(), odds["data"]["event_id"].as_str()),
        (Some("odds"), Some("A3"))
    );
    env.stop().await;
}

/// A `*` snapshot larger than the client's queue limit is sent whole, a page at a time, and
/// the client is not closed as a slow consumer.
#[tokio::test]
async fn all_events_snapshot_larger_than_the_queue_is_sent_whole() {
    let env = Env::start(&["--ws-max-pending-events=4"]).await;
    for i in 0..11 {
        env.write_postgres(&update(&format!("B{i:02}"), 3, 2.0))
            .await;
    }
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"*"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    let mut events = std::collections::BTreeSet::new();
    while events.len() < 11 {
        let s = next_json(&mut client).await;
        assert_eq!(s["type"], "snapshot", "{s}");
        events.insert(s["data"]["event_id"].as_str().unwrap().to_owned());
    }
    send(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "pong", "still open");
    env.stop().await;
}

/// Unsubscribing and subscribing again never shows a client an older version than it saw,
/// even when the store answers the new subscribe with an older one: here the cache, rolled
/// back by hand (as a lagging replica or a restored cache would be), and read because
/// Postgres is down, so the snapshot comes from it.
#[tokio::test]
async fn resubscribe_never_shows_an_older_version() {
    let mut env = Env::own_postgres_with_written(&[update("R1", 2, 2.0)]).await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"subscribe","eventId":"R1"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    assert_eq!(next_json(&mut client).await["data"]["version"], 2);
    env.write(&update("R1", 5, 2.5)).await;
    assert_eq!(versions_until(&mut client, 5).await.last(), Some(&5));
    send(&mut client, r#"{"type":"unsubscribe","eventId":"R1"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "unsubscribed");
    env.write_cache(&update("R1", 3, 9.9)).await;
    env.db.server_mut().unwrap().stop().unwrap();
    let from_cache = env.metrics().store_fallbacks.get();
    send(&mut client, r#"{"type":"subscribe","eventId":"R1"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "subscribed");
    let snapshot = next_json(&mut client).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert!(
        env.metrics().store_fallbacks.get() > from_cache,
        "the snapshot was read from the rolled-back cache"
    );
    assert_eq!(snapshot["data"]["version"], 5, "{snapshot}");
    env.stop().await;
}

/// Reads `odds` frames of one event until `last` arrives; returns the versions seen.
async fn versions_until(client: &mut Client, last: u64) -> Vec<u64> {
    let mut versions = Vec::new();
    loop {
        let frame = next_json(client).await;
        assert_eq!(frame["type"], "odds", "{frame}");
        let version = frame["data"]["version"].as_u64().unwrap();
        versions.push(version);
        if version >= last {
            return versions;
        }
    }
}

#[tokio::test]
async fn thousand_versions_fast_client_sees_all_slow_client_sees_increasing_up_to_the_last() {
    let env = Env::with_written(&[], &[update("ORD", 1, 2.0)]).await;
    let mut fast = connect(env.addr()).await;
    subscribe(&mut fast, "ORD").await;
    let mut slow = small_buffer_client(env.addr(), "ORD").await;

    let fast_reader = tokio::spawn(async move { versions_until(&mut fast, 1000).await });
    for v in 2..=1000 {
        let mut u = update("ORD", v, 2.0 + (v % 50) as f64 / 100.0);
        u.source = "x".repeat(64); // bigger frames fill the slow client's buffers sooner
        env.publish(&u).await;
    }
    let fast_versions = tokio::time::timeout(Duration::from_secs(60), fast_reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fast_versions,
        (2..=1000).collect::<Vec<_>>(),
        "fast client must see every version in order"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    // Now the slow client reads: subscribed, snapshot, then strictly increasing versions to 1000.
    let mut slow_versions = Vec::new();
    let mut kinds = Vec::new();
    while slow_versions.last() != Some(&1000) {
        let message = tokio::time::timeout(Duration::from_secs(15), slow.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        kinds.push(frame["type"].as_str().unwrap().to_owned());
        if let Some(v) = frame["data"]["version"].as_u64() {
            slow_versions.push(v);
        }
    }
    assert_eq!(&kinds[..2], ["subscribed", "snapshot"]);
    assert!(
        slow_versions.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {slow_versions:?}"
    );
    let conflated = env.metrics().ws_conflated.get();
    assert!(
        slow_versions.len() < 1000 && conflated > 0,
        "slow client got {} frames, {conflated} conflated: its queue was not conflated",
        slow_versions.len()
    );
    env.stop().await;
}

#[tokio::test]
async fn stuck_client_is_closed_as_slow_while_others_keep_receiving() {
    let env = Env::start(&[
        "--ws-slow-client-timeout-ms=300",
        "--ws-max-pending-events=4",
    ])
    .await;
    for i in 0..20 {
        env.write(&update(&format!("S{i:02}"), 1, 2.0)).await;
    }
    env.wait_for_pubsub().await;
    let mut stuck = small_buffer_client(env.addr(), "*").await;
    let mut healthy = connect(env.addr()).await;
    subscribe(&mut healthy, "S00").await;
    let mut healthy_versions = Vec::new();
    for v in 2..=300 {
        for i in 0..20 {
            let mut u = update(&format!("S{i:02}"), v, 2.0);
            u.source = "y".repeat(64);
            env.publish(&u).await;
        }
    }
    healthy_versions.extend(versions_until(&mut healthy, 300).await);
    assert!(healthy_versions.windows(2).all(|w| w[0] < w[1]));

    // The stuck client's connection ends. The server offers it a 1008 close frame for a
    // second; whether that frame gets past the full socket depends on when the client reads
    // again, so a stream that ends without it is the same outcome. The metric is what
    // always tells.
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), stuck.next())
            .await
            .expect("the stuck client's connection ends within 15 s");
        match next {
            Some(Ok(Message::Close(frame))) => {
                let close = frame.expect("close frame with a reason");
                assert_eq!(close.code, CloseCode::Policy);
                assert!(close.reason.contains("slow consumer"), "{}", close.reason);
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        }
    }
    assert!(env.metrics().ws_slow_client_closes.get() >= 1);
    env.stop().await;
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_survives() {
    let env = Env::start(&["--ws-max-message-bytes=1024", "--ws-max-subscriptions=5"]).await;
    env.write(&update("OK1", 1, 2.0)).await;
    env.wait_for_pubsub().await;
    let mut client = connect(env.addr()).await;
    let mut bystander = connect(env.addr()).await;
    subscribe(&mut bystander, "OK1").await;

    let cases: [(Message, &str); 5] = [
        (Message::text("{not json"), "bad_json"),
        (Message::text(r#"{"type":"dance"}"#), "unknown_type"),
        (Message::text(r#"{"type":"subscribe"}"#), "invalid_message"),
        (Message::binary(vec![1u8, 2, 3]), "binary_not_supported"),
        (
            Message::text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(2000))),
            "message_too_large",
        ),
    ];
    for (message, code) in cases {
        client.send(message).await.unwrap();
        let error = next_json(&mut client).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], code, "{error}");
    }
    // 10 000 subscriptions: the first are answered (unknown events), the rest are refused.
    for i in 0..10_000 {
        client
            .feed(Message::text(format!(
                r#"{{"type":"subscribe","eventId":"N{i}"}}"#
            )))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let mut too_many = 0;
    for _ in 0..10_000 {
        let reply = next_json(&mut client).await;
        assert_eq!(reply["type"], "error");
        if reply["code"] == "too_many_subscriptions" {
            too_many += 1;
        }
    }
    // Unknown events are not kept as subscriptions, so none counted against the limit.
    assert_eq!(too_many, 0);
    for i in 0..5 {
        env.write(&update(&format!("K{i}"), 1, 2.0)).await;
        subscribe(&mut client, &format!("K{i}")).await;
    }
    send(&mut client, r#"{"type":"subscribe","eventId":"OK1"}"#).await;
    assert_eq!(
        next_json(&mut client).await["code"],
        "too_many_subscriptions"
    );
    send(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(
        next_json(&mut client).await["type"],
        "pong",
        "connection survived"
    );

    // A frame over the hard limit (16x the message limit) closes with 1009.
    client
        .send(Message::text("z".repeat(64 * 1024)))
        .await
        .unwrap();
    let close = close_frame(&mut client).await;
    assert_eq!(close.unwrap().code, CloseCode::Size);

    env.write(&update("OK1", 2, 2.5)).await;
    let odds = next_json(&mut bystander).await;
    assert_eq!(odds["data"]["version"], 2, "other clients are unaffected");
    env.stop().await;
}

#[tokio::test]
async fn disallowed_origin_is_refused_and_connection_limit_holds() {
    let env = Env::start(&[
        "--ws-allowed-origins=https://ok.example",
        "--ws-max-connections=2",
    ])
    .await;
    let from = |origin: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/ws/odds", env.addr())
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let err = from("https://evil.example").await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let (_first, _) = from("https://ok.example").await.unwrap();
    let _second = connect(env.addr()).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws/odds", env.addr()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    env.stop().await;
}

#[tokio::test]
async fn shutdown_sends_going_away() {
    let env = Env::start(&[]).await;
    let mut client = connect(env.addr()).await;
    send(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "pong");
    env.shutdown.cancel();
    let close = close_frame(&mut client).await;
    assert_eq!(close.unwrap().code, CloseCode::Away);
    env.stop().await;
}

#[tokio::test]
async fn silent_clients_are_pinged_then_reaped() {
    use tokio::io::AsyncReadExt;
    let env = Env::start(&["--ws-ping-interval-secs=1"]).await;
    let client = connect(env.addr()).await;
    // Read the raw bytes without ever answering a ping: after three intervals the server
    // sends a close frame and hangs up.
    let mut raw = client.into_inner();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), raw.read_to_end(&mut bytes))
        .await
        .expect("server never hung up")
        .unwrap();
    assert_eq!(bytes[0], 0x89, "first frame is a ping");
    let close = bytes
        .windows(2)
        .position(|w| w == [0x88, 19])
        .expect("a close frame");
    assert_eq!(&bytes[close + 2..close + 4], &1008u16.to_be_bytes());
    assert_eq!(&bytes[close + 4..close + 21], b"heartbeat timeout");
    env.stop().await;
}

#[tokio::test]
async fn a_client_that_asks_for_conflation_gets_the_newest_version_per_interval() {
    let env = Env::with_written(&[], &[update("CFL", 1, 2.0)]).await;
    let mut every = connect(env.addr()).await;
    subscribe(&mut every, "CFL").await;
    let mut conflating = connect(env.addr()).await;
    send(
        &mut conflating,
        r#"{"type":"subscribe","eventId":"CFL","conflateMs":2000}"#,
    )
    .await;
    assert_eq!(next_json(&mut conflating).await["type"], "subscribed");
    // The snapshot waits for the first interval like everything else.
    let snapshot = next_json(&mut conflating).await;
    assert_eq!(snapshot["type"], "snapshot");
    for v in 2..=100 {
        env.publish(&update("CFL", v, 2.0)).await;
    }
    // The client that did not ask gets every version; the one that asked gets a few, the
    // newest last, rising.
    assert_eq!(
        versions_until(&mut every, 100).await,
        (2..=100).collect::<Vec<_>>()
    );
    let conflated = versions_until(&mut conflating, 100).await;
    assert!(
        conflated.len() < 99 && conflated.windows(2).all(|w| w[0] < w[1]),
        "{conflated:?}"
    );
    assert!(env.metrics().ws_conflated.get() > 0);
    // `conflateMs: 0` turns it off: every version again.
    send(
        &mut conflating,
        r#"{"type":"subscribe","eventId":"CFL","conflateMs":0}"#,
    )
    .await;
    assert_eq!(next_json(&mut conflating).await["type"], "subscribed");
    let again = next_json(&mut conflating).await;
    assert_eq!(
        (again["type"].as_str(), again["data"]["version"].as_u64()),
        (Some("snapshot"), Some(100))
    );
    for v in 101..=110 {
        env.publish(&update("CFL", v, 2.0)).await;
    }
    assert_eq!(
        versions_until(&mut conflating, 110).await,
        (101..=110).collect::<Vec<_>>()
    );
    env.stop().await;
}
