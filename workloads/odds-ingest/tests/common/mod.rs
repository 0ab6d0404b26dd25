//! Helpers shared by ingest's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use odds_contracts::names::TOPIC_ODDS_UPDATES;
use odds_contracts::OddsUpdate;
use odds_testkit::ReadRecord;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// How long a topic read waits for more records once it has what it asked for.
pub const QUIET: Duration = Duration::from_secs(2);
/// How long a test waits for what it expects.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// A supplier that plays one script per connection, closing each connection after its script
/// except the last, which stays open (reading, so ingest's pings are answered) until the test
/// ends.
pub async fn scripted_supplier(scripts: Vec<Vec<Message>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let last = scripts.len().saturating_sub(1);
        for (i, script) in scripts.into_iter().enumerate() {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async_with_config(
                tcp,
                Some(
                    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .max_message_size(None)
                        .max_frame_size(None),
                ),
            )
            .await
            .unwrap();
            for msg in script {
                ws.send(msg).await.unwrap();
            }
            if i == last {
                while let Some(Ok(_)) = ws.next().await {}
                std::future::pending::<()>().await;
            }
            ws.close(None).await.unwrap();
        }
    });
    addr
}

/// A supplier that completes the WebSocket handshake and then neither sends nor reads (so
/// pings go unanswered): a frozen supplier, or a half-open connection. Counts connections.
pub async fn mute_supplier() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(ws);
            }
        }
    });
    (addr, connections)
}

pub use odds_testkit::sample_update as update;

/// Ingest with the test defaults, reading `supplier_url` and producing to `kafka`.
pub async fn start_ingest(
    supplier_url: &str,
    kafka: &odds_testkit::TestKafka,
    shutdown: &tokio_util::sync::CancellationToken,
) -> odds_ingest::Ingest {
    start_ingest_with(
        odds_ingest::IngestConfig::local(supplier_url, kafka.bootstrap_servers()),
        shutdown,
    )
    .await
}

/// Ingest started by a test, with the token that stops it.
pub struct Started {
    pub ingest: odds_ingest::Ingest,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Started {
    /// Ingest with the test defaults, reading the supplier at `addr` and producing to `kafka`.
    pub async fn reading(addr: SocketAddr, kafka: &odds_testkit::TestKafka) -> Started {
        let config =
            odds_ingest::IngestConfig::local(&format!("ws://{addr}/"), kafka.bootstrap_servers());
        Started::with(config).await
    }

    /// Ingest with a configuration the test adjusted.
    pub async fn with(config: odds_ingest::IngestConfig) -> Started {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let ingest = start_ingest_with(config, &shutdown).await;
        Started { ingest, shutdown }
    }

    /// Stops ingest and waits for it, at most Kubernetes' grace period (30 s).
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.ingest.wait())
            .await
            .expect("ingest stops within the grace period");
    }
}

/// The next `count` records of `odds_updates`, decoded (see [`decode_keyed`]).
pub async fn read_updates(kafka: &odds_testkit::TestKafka, count: usize) -> Vec<OddsUpdate> {
    let records = kafka
        .read_topic(TOPIC_ODDS_UPDATES, count, QUIET, TIMEOUT)
        .await
        .unwrap();
    decode_keyed(&records)
}

/// Ingest with a configuration the test adjusted.
pub async fn start_ingest_with(
    config: odds_ingest::IngestConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> odds_ingest::Ingest {
    odds_ingest::Ingest::start(config, shutdown.clone())
        .await
        .unwrap()
}

/// The value of an unlabelled counter or gauge in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

pub fn text(update: &OddsUpdate) -> Message {
    Message::text(update.to_json())
}

/// Decodes the records of `odds_updates`, checking each is keyed by its event id.
pub fn decode_keyed(records: &[ReadRecord]) -> Vec<OddsUpdate> {
    records
        .iter()
        .map(|r| {
            let u: OddsUpdate = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            assert_eq!(
                r.key_str().as_deref(),
                Some(u.event_id.as_str()),
                "keyed by event id"
            );
            u
        })
        .collect()
}

/// Asserts that every event's versions appear exactly once each, 1..=n, in order.
pub fn assert_complete_in_order(updates: &[OddsUpdate]) -> HashMap<String, u64> {
    let mut last: HashMap<String, u64> = HashMap::new();
    for u in updates {
        let prev = last.insert(u.event_id.clone(), u.version).unwrap_or(0);
        assert_eq!(
            u.version,
            prev + 1,
            "event {} jumped from {prev} to {}",
            u.event_id,
            u.version
        );
    }
    last
}
