//! The simulator streams valid, versioned updates to every client, and a client that stops
//! reading is disconnected without holding up the others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use odds_contracts::{parse_update, OddsUpdate};
use odds_testkit::http_get;
use std::collections::HashMap;
use std::time::Duration;
use supplier_simulator::{SimulatorConfig, SimulatorServer};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

async fn read_updates(url: &str, count: usize) -> Vec<OddsUpdate> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut updates = Vec::new();
    while updates.len() < count {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30s")
            .expect("stream open")
            .unwrap();
        if let Message::Text(text) = msg {
            updates.push(parse_update(text.as_bytes()).unwrap());
        }
    }
    updates
}

/// A local simulator streaming `total` updates at `rate` a second, `adjust`ed, and the token
/// that stops it.
async fn simulator(
    rate: u32,
    total: u64,
    adjust: impl FnOnce(&mut SimulatorConfig),
) -> (SimulatorServer, CancellationToken) {
    let mut config = SimulatorConfig::local();
    config.rate = rate;
    config.total = total;
    adjust(&mut config);
    let shutdown = CancellationToken::new();
    let server = SimulatorServer::start(config, shutdown.clone())
        .await
        .unwrap();
    (server, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_receive_the_whole_versioned_stream() {
    let (server, shutdown) = simulator(5_000, 1_000, |config| config.events = 8).await;

    // The image (every event at version 1) comes first, then the 1000 deltas.
    let updates = read_updates(&server.url(), 8 + 1_000).await;
    assert!(updates[..8].iter().all(|u| u.version == 1), "image first");
    let mut versions: HashMap<String, u64> = HashMap::new();
    for u in &updates {
        let prev = versions.insert(u.event_id.clone(), u.version).unwrap_or(0);
        assert_eq!(u.version, prev + 1, "per-event versions rise by one: {u:?}");
    }
    assert_eq!(versions.len(), 8);

    let metrics = http_get(server.ops_addr, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("odds_sim_updates_sent_total 1000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("odds_sim_image_frames_total 8"),
        "{metrics}"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_is_dropped_and_others_keep_up() {
    let (server, shutdown) =
        simulator(20_000, 100_000, |config| config.client_queue = 16_384).await;

    // Connects and never reads.
    let (_stuck, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    // The fast client only counts frames, so it keeps up even on a loaded machine.
    let (mut fast, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let mut received = 0;
    while received < 80_000 {
        match tokio::time::timeout(Duration::from_secs(30), fast.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => received += 1,
            other => panic!("fast client cut off after {received} frames: {other:?}"),
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http_get(server.ops_addr, "/metrics").await.unwrap().body;
        if metrics.contains("odds_sim_slow_client_disconnects_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck client never dropped: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
}
