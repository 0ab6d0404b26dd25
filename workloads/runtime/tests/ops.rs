//! The ops server answers liveness always, readiness per checks, and metrics in text format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use odds_runtime::ops::ops_router;
use odds_runtime::{serve_http, Readiness};
use odds_testkit::http_get;
use prometheus::{IntCounter, Registry};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn healthz_readyz_metrics() {
    let readiness = Readiness::new(&["kafka"]);
    let registry = Registry::new();
    let counter = IntCounter::new("odds_test_things_total", "things").unwrap();
    registry.register(Box::new(counter.clone())).unwrap();
    counter.inc_by(3);
    let shutdown = CancellationToken::new();
    let (addr, task) = serve_http(
        "127.0.0.1:0".parse().unwrap(),
        ops_router(readiness.clone(), registry),
        shutdown.clone(),
    )
    .await
    .unwrap();

    assert_eq!(http_get(addr, "/healthz").await.unwrap().status, 200);
    let not_ready = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json().unwrap()["checks"]["kafka"], false);
    readiness.set("kafka", true);
    assert_eq!(http_get(addr, "/readyz").await.unwrap().status, 200);
    let metrics = http_get(addr, "/metrics").await.unwrap();
    assert!(
        metrics.body.contains("odds_test_things_total 3"),
        "{}",
        metrics.body
    );

    shutdown.cancel();
    task.await.unwrap();
    assert!(http_get(addr, "/healthz").await.is_err(), "server stopped");
}
