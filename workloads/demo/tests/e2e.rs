//! End to end: the real stages, started by the demo's launcher, at a small rate.
//!
//! The supplier quotes every event in both markets. A WebSocket client gets a snapshot of
//! each market and then strictly newer versions per market; once the supplier has sent its
//! last update and the pipeline drained, Postgres, Redis and REST `/markets` hold exactly the
//! last update the supplier sent for every (event, market), and `odds_history` holds every
//! version once. The supplier's stream is deterministic, so the test regenerates it to know
//! what was sent.
//!
//! The browser test ([`browser`]), the fault run ([`chaos`]) and the trace test ([`traces`])
//! live in this binary too, so the demo's tests link the stages' dependencies once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use odds_contracts::names::redis_current_key;
use odds_contracts::ws::ServerMessage;
use odds_contracts::{Market, OddsUpdate};
use odds_demo::{Launcher, LauncherOptions};
use odds_testkit::http_get;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use supplier_simulator::OddsFeed;
use tokio_tungstenite::tungstenite::Message;

#[path = "e2e/browser.rs"]
mod browser;
#[path = "e2e/chaos.rs"]
mod chaos;
#[path = "e2e/tracing.rs"]
mod traces;

const EVENTS: u32 = 4;
const TOTAL: u64 = 800;

async fn next_message(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> ServerMessage {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20s")
            .expect("connection open")
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_delivers_live_updates_and_ends_consistent() {
    let options = LauncherOptions::for_tests(100, EVENTS, TOTAL).unwrap();
    let seed = options.seed;
    let mut launcher = Launcher::start(options).await.unwrap();

    // Subscribe once the event is known to the service.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(launcher.service_addr, "/v1/events/MATCH_001/odds").await, Ok(r) if r.status == 200)
    {
        assert!(
            Instant::now() < deadline,
            "MATCH_001 never reached odds-service"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("ws://{}/ws/odds", launcher.service_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(
        r#"{"type":"subscribe","eventId":"MATCH_001"}"#,
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_message(&mut ws).await,
        ServerMessage::Subscribed { .. }
    ));
    // Per market: one snapshot first, then strictly newer versions.
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    let mut odds = 0;
    while odds < 10 {
        let (data, snapshot) = match next_message(&mut ws).await {
            ServerMessage::Snapshot { data } => (data, true),
            ServerMessage::Odds { data } => (data, false),
            other => panic!("expected a snapshot or odds, got {other:?}"),
        };
        assert_eq!(data.event_id, "MATCH_001");
        match newest.get(&data.market) {
            None => assert!(snapshot, "{}: odds before its snapshot", data.market),
            Some(&before) => {
                assert!(!snapshot, "{}: a second snapshot", data.market);
                assert!(data.version > before, "{} after {before}", data.version);
                odds += 1;
            }
        }
        newest.insert(data.market.clone(), data.version);
    }
    assert_eq!(
        newest.len(),
        Market::ALL.len(),
        "both markets reached the client"
    );

    // Let the supplier finish and the pipeline drain.
    odds_demo::bench::wait_sent(&launcher, TOTAL, Instant::now() + Duration::from_secs(120))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&launcher.infra.database_url)
        .await
        .unwrap();
    let images = u64::from(EVENTS) * Market::ALL.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM odds_history")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n as u64 == TOTAL + images {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "odds_history holds {n} of {TOTAL} + {images}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What the supplier sent last per (event, market), and how many versions of each,
    // regenerated from its seed: its image (every event and market at version 1), then TOTAL
    // deltas.
    let mut feed = OddsFeed::new(seed, EVENTS, &Market::ALL, 0);
    let mut last: BTreeMap<(String, String), (OddsUpdate, u64)> = BTreeMap::new();
    let image = feed.image(chrono::Utc::now());
    let deltas = (0..TOTAL).map(|_| feed.next_update(chrono::Utc::now()));
    for u in image.into_iter().chain(deltas.collect::<Vec<_>>()) {
        let entry = last
            .entry((u.event_id.clone(), u.market.clone()))
            .or_insert((u.clone(), 0));
        *entry = (u, entry.1 + 1);
    }
    let client = redis::Client::open(launcher.infra.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for ((event_id, market), (sent, quotes)) in &last {
        let (version, home, draw, away, versions, distinct): (i64, f64, f64, f64, i64, i64) =
            sqlx::query_as(
                "SELECT c.version, c.home_odds::float8, c.draw_odds::float8, c.away_odds::float8,
                        (SELECT count(*) FROM odds_history h
                         WHERE h.event_id = c.event_id AND h.market = c.market),
                        (SELECT count(DISTINCT version) FROM odds_history h
                         WHERE h.event_id = c.event_id AND h.market = c.market)
                 FROM odds_current c WHERE c.event_id = $1 AND c.market = $2",
            )
            .bind(event_id)
            .bind(market)
            .fetch_one(&pool)
            .await
            .unwrap();
        let at = format!("{event_id} {market}");
        assert_eq!(version as u64, sent.version, "{at}: odds_current version");
        assert_eq!(
            (home, draw, away),
            (sent.odds.home, sent.odds.draw, sent.odds.away)
        );
        assert_eq!(versions as u64, *quotes, "{at}: every version in history");
        assert_eq!(distinct, versions, "{at}: each version once");

        let cached: String = redis::cmd("GET")
            .arg(redis_current_key(event_id, market))
            .query_async(&mut redis)
            .await
            .unwrap();
        let cached: OddsUpdate = serde_json::from_str(&cached).unwrap();
        assert_eq!(cached.version, sent.version, "{at}: Redis version");
        assert_eq!(cached.odds, sent.odds, "{at}: Redis odds");

        let rest = http_get(
            launcher.service_addr,
            &format!("/v1/events/{event_id}/markets"),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
        let served = rest["markets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["market"] == market.as_str())
            .unwrap_or_else(|| panic!("{at}: missing from /markets: {rest}"));
        assert_eq!(served["version"], sent.version, "{at}: REST /markets");
    }
    launcher.stop().await;
    for child in &launcher.children {
        let status = child.exited().expect("stopped");
        assert!(status.success(), "{} exited with {status}", child.name);
    }
}

/// A supplier restart (a rollout, a crash, an OOM kill) must not freeze prices: the restarted
/// simulator's versions start above its start time in microseconds, so they are newer than
/// anything the previous run sent, and its image brings every event up to date at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_keep_moving_after_the_supplier_restarts() {
    let mut options = LauncherOptions::for_tests(40, EVENTS, 0).unwrap();
    options.version_base = None; // the default of a real deployment
    let mut launcher = Launcher::start(options).await.unwrap();
    let events: Vec<String> = (1..=EVENTS).map(|i| format!("MATCH_{i:03}")).collect();
    wait_for_versions(&launcher, &events, 0).await;

    let url = format!("ws://{}/ws/odds", launcher.service_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","eventId":"*"}"#))
        .await
        .unwrap();

    // Every version the old process sent is below this instant (its base was its start time).
    let restarted_at = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap();
    launcher.restart("supplier-simulator").await.unwrap();

    wait_for_versions(&launcher, &events, restarted_at).await;
    let mut newer: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while newer.len() < events.len() {
        assert!(
            Instant::now() < deadline,
            "WebSocket saw newer prices only for {newer:?}"
        );
        if let ServerMessage::Odds { data } | ServerMessage::Snapshot { data } =
            next_message(&mut ws).await
        {
            if data.version > restarted_at {
                newer.insert(data.event_id.clone(), data.version);
            }
        }
    }
    launcher.stop().await;
}

/// Waits until REST shows every event at a version above `above`.
async fn wait_for_versions(launcher: &odds_demo::Launcher, events: &[String], above: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for event in events {
        loop {
            let path = format!("/v1/events/{event}/odds");
            if let Ok(r) = http_get(launcher.service_addr, &path).await {
                if r.status == 200 {
                    let current: OddsUpdate = serde_json::from_str(&r.body).unwrap();
                    if current.version > above {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{event}: REST never showed a version above {above}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A stage that dies is reported at once with its name, status and last output (`make demo`
/// and `odds-demo bench` end on it), instead of leaving a run waiting for updates that
/// cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_dies_is_named_with_its_last_output() {
    let mut options = LauncherOptions::for_tests(20, EVENTS, 0).unwrap();
    options.log_filter = "info".into();
    let mut launcher = Launcher::start(options).await.unwrap();
    launcher.child("odds-ingest").unwrap().kill().await;
    let error = tokio::time::timeout(Duration::from_secs(30), launcher.unexpected_exit())
        .await
        .expect("the exit is reported")
        .to_string();
    assert!(
        error.starts_with("odds-ingest exited unexpectedly"),
        "{error}"
    );
    assert!(error.contains("odds-ingest started"), "{error}");
    launcher.stop().await;
}
