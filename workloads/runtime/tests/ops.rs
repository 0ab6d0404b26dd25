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

/// A connection that sent half a request head never finishes: the drain stops waiting for it
/// once the grace has passed, and a server without such connections drains fully.
#[tokio::test]
async fn a_half_sent_request_holds_the_drain_only_for_its_grace() {
    use odds_runtime::ops::serve_until_drained;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    for half_sent in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = ops_router(Readiness::new(&[]), Registry::new());
        let server = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let drain = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // Long enough for a loaded machine to drain when nothing holds it.
                let grace = if half_sent {
                    Duration::from_millis(200)
                } else {
                    Duration::from_secs(20)
                };
                serve_until_drained(server, &shutdown, grace, "test").await
            })
        };
        assert_eq!(http_get(addr, "/healthz").await.unwrap().status, 200);
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        if half_sent {
            client
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        // The server holds the connection (it answered a request after accepting it).
        assert_eq!(http_get(addr, "/healthz").await.unwrap().status, 200);

        shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .expect("the drain outlived its grace")
            .unwrap();
        assert_eq!(drained, !half_sent, "half_sent={half_sent}");
        drop(client);
    }
}
