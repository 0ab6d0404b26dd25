//! Peers that never finish must not hold shutdown: an address where something answers, but
//! not as Redis (the feed is reported down), and clients that sent half a request.
//!
//! The echo peer ([`odds_testkit::echo_peer`]) is what a client sees when it connects to
//! itself: a dead Redis's port can be handed to a reconnect as its own source port.

use crate::common::Env;
use clap::Parser;
use odds_service::ServiceConfig;
use odds_testkit::TestDatabase;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Generous: the machine is shared and loaded.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_redis_address_that_echoes_is_reported_down_and_does_not_hold_shutdown() {
    let db = TestDatabase::create().await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    let (peer, peer_task) = odds_testkit::echo_peer().await.unwrap();
    let config = ServiceConfig::try_parse_from([
        "odds-service".to_owned(),
        "--listen-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        format!("--redis-url=redis://{peer}"),
        format!("--database-url={}", db.url()),
        "--redis-timeout-ms=200".into(),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let service = odds_service::start(&config, shutdown.clone())
        .await
        .unwrap();

    // The first subscription attempt's deadline passes and the feed says so (before, the
    // subscriber waited forever for a confirmation and the feed kept its start-up reason).
    let mut feed = service.feed.watch();
    let status = tokio::time::timeout(
        PATIENCE,
        feed.wait_for(|s| {
            s.down
                .as_deref()
                .is_some_and(|r| r.starts_with("Redis pub/sub unavailable"))
        }),
    )
    .await
    .expect("the feed never reported the subscription failing")
    .unwrap()
    .clone();
    assert!(!status.is_live(), "{status:?}");
    let readyz = odds_testkit::http_get(service.ops_addr, "/readyz")
        .await
        .unwrap();
    assert_eq!(readyz.status, 503, "{}", readyz.body);

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, service.wait())
        .await
        .expect("shutdown waited on a Redis that never answers");
    peer_task.abort();
}

/// A client that sent half a request head, to the public and to the ops server, does not hold
/// shutdown (before, axum waited for those requests forever).
#[tokio::test]
async fn half_sent_requests_do_not_hold_shutdown() {
    let mut env = Env::start(&[]).await;
    let service = env.service.take().unwrap();
    let mut held = Vec::new();
    for addr in [service.listen_addr, service.ops_addr] {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // A later request answered means the half-sent one was accepted before it.
        let answered = odds_testkit::http_get(addr, "/healthz").await.unwrap();
        assert!(answered.status < 500, "{}", answered.body);
        held.push(client);
    }
    env.shutdown.cancel();
    tokio::time::timeout(PATIENCE, service.wait())
        .await
        .expect("shutdown waited on half-sent requests");
    drop(held);
}
