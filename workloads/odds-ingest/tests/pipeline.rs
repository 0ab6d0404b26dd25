//! simulator → ingest → Kafka (mock cluster): every update arrives once, keyed, in order;
//! bad input is dead-lettered with its reason; broker outages and supplier drops lose nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use odds_contracts::names::{dlq_headers, TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use odds_ingest::ingest::{READY_DLQ, READY_PRODUCER};
use odds_ingest::{IngestConfig, IngestError};
use odds_testkit::{http_get, TestKafka};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;
use supplier_simulator::{SimulatorConfig, SimulatorServer};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

async fn simulator(
    rate: u32,
    total: u64,
    events: u32,
    shutdown: &CancellationToken,
) -> SimulatorServer {
    let mut config = SimulatorConfig::local();
    config.rate = rate;
    config.total = total;
    config.events = events;
    SimulatorServer::start(config, shutdown.clone())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_update_lands_once_keyed_and_in_order() {
    let kafka = TestKafka::start(1, 4).unwrap();
    let shutdown = CancellationToken::new();
    let sim = simulator(2_000, 3_000, 12, &shutdown).await;
    let ingest = start_ingest(&sim.url(), &kafka, &shutdown).await;

    // The simulator's image (each event at version 1), then its 3000 deltas.
    let records = kafka
        .read_topic(TOPIC_ODDS_UPDATES, 3_012, QUIET, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(records.len(), 3_012, "exactly N records");
    let updates = decode_keyed(&records);
    let last = assert_complete_in_order(&updates);
    assert_eq!(last.len(), 12);
    assert_eq!(last.values().sum::<u64>(), 3_012);

    let ready = http_get(ingest.ops_addr, "/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    let metrics = http_get(ingest.ops_addr, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("odds_ingest_updates_produced_total 3012"),
        "{metrics}"
    );
    // Every produced update was timed on both of ingest's hops, and nothing else was.
    for hop in ["supplier_to_ingest", "ingest_to_kafka_ack"] {
        let count = format!("odds_ingest_hop_seconds_count{{hop=\"{hop}\"}} 3012\n");
        assert!(metrics.contains(&count), "{count} in {metrics}");
    }
    shutdown.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), ingest.finish())
        .await
        .unwrap();
    assert!(
        outcome.is_ok(),
        "a requested stop is not an error: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_dead_lettered_with_reasons_and_good_ones_pass() {
    let kafka = TestKafka::start(1, 2).unwrap();
    let mut low_odds = update("E1", 9);
    low_odds.odds.home = 0.5;
    let mut empty_id = update("E1", 9);
    empty_id.event_id.clear();
    let nan = update("E1", 9).to_json().replace("2.1", "NaN");
    let huge = "x".repeat(10 * 1024 * 1024);
    let script = vec![
        text(&update("E1", 1)),
        Message::text("this is not json"),
        Message::binary(vec![0u8, 159, 146, 150]),
        text(&low_odds),
        Message::text(nan),
        text(&empty_id),
        Message::text(huge.clone()),
        text(&update("E1", 2)),
        text(&update("E2", 1)),
    ];
    let addr = scripted_supplier(vec![script]).await;
    let shutdown = CancellationToken::new();
    let ingest = start_ingest(&format!("ws://{addr}/"), &kafka, &shutdown).await;

    let good = kafka
        .read_topic(TOPIC_ODDS_UPDATES, 3, QUIET, TIMEOUT)
        .await
        .unwrap();
    let good = decode_keyed(&good);
    let mut ids: Vec<_> = good
        .iter()
        .map(|u| (u.event_id.as_str(), u.version))
        .collect();
    ids.sort();
    assert_eq!(ids, vec![("E1", 1), ("E1", 2), ("E2", 1)]);

    let dlq = kafka
        .read_topic(TOPIC_ODDS_UPDATES_DLQ, 6, QUIET, TIMEOUT)
        .await
        .unwrap();
    let reasons: Vec<_> = dlq
        .iter()
        .map(|r| r.header(dlq_headers::REASON).unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "invalid_json",
            "binary_frame",
            "invalid_update",
            "invalid_json",
            "invalid_update",
            "oversize"
        ]
    );
    let detail = |i: usize| dlq[i].header(dlq_headers::DETAIL).unwrap();
    assert!(detail(2).contains("odds.home"), "{}", detail(2));
    assert!(detail(4).contains("event_id"), "{}", detail(4));
    assert_eq!(
        dlq[0].payload.as_deref(),
        Some(&b"this is not json"[..]),
        "raw payload kept"
    );
    assert_eq!(
        dlq[5].header(dlq_headers::ORIGINAL_BYTES).as_deref(),
        Some("10485760")
    );
    assert!(
        dlq[5].payload.as_ref().unwrap().len() <= 64 * 1024,
        "oversize payload truncated"
    );
    assert_eq!(
        dlq[0].header(dlq_headers::ORIGINAL_SHA256),
        Some(odds_contracts::dead_letter::sha256_hex(b"this is not json")),
        "the digest of the whole input"
    );
    assert_eq!(
        dlq[5].header(dlq_headers::ORIGINAL_SHA256),
        Some(odds_contracts::dead_letter::sha256_hex(huge.as_bytes())),
        "the digest covers the whole input, not the part kept"
    );
    assert!(dlq
        .iter()
        .all(|r| r.header(dlq_headers::REJECTED_AT).is_some()
            && r.header(dlq_headers::STAGE).as_deref() == Some("odds-ingest")));

    let metrics = http_get(ingest.ops_addr, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains(r#"odds_ingest_dlq_total{reason="invalid_json"} 2"#),
        "{metrics}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_and_request_errors_lose_and_duplicate_nothing() {
    let kafka = TestKafka::start(1, 3).unwrap();
    // Retriable produce errors first: the idempotent producer retries without duplicating.
    kafka.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4],
    );
    let shutdown = CancellationToken::new();
    let sim = simulator(500, 3_000, 6, &shutdown).await;
    let mut config = IngestConfig::local(&sim.url(), kafka.bootstrap_servers());
    // librdkafka's mock broker checks an idempotent producer's sequence numbers only for
    // transactional producers. With requests R1..R5 pipelined and R1..R4 failed by the injected
    // errors, it appends R5 out of order where a real broker answers OUT_OF_ORDER_SEQUENCE;
    // librdkafka then (rightly, for a real broker) takes R5's ack as proof that R1..R4 were
    // persisted, and the mock has lost them. One request in flight keeps the mock faithful.
    config.kafka.props = vec![("max.in.flight.requests.per.connection".into(), "1".into())];
    let _ingest = start_ingest_with(config, &shutdown).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outage_from = chrono::Utc::now().timestamp_millis() - IN_FLIGHT_BEFORE_OUTAGE_MS;
    kafka.cluster().broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.cluster().broker_up(1).unwrap();
    let outage_to = chrono::Utc::now().timestamp_millis();

    let records = kafka
        .read_topic(TOPIC_ODDS_UPDATES, 3_006, QUIET, TIMEOUT)
        .await
        .unwrap();
    let (records, reappended) = without_mock_reappends(&records, outage_from..=outage_to);
    let updates = decode_keyed(&records);
    assert_eq!(
        updates.len(),
        3_006,
        "every update once (image included; {reappended} re-appended by the mock removed)"
    );
    let last = assert_complete_in_order(&updates);
    assert_eq!(last.values().sum::<u64>(), 3_006);
    shutdown.cancel();
}

/// How long before the broker goes down a produce request may have been sent and still be
/// waiting for the response the outage cuts off (ingest's request timeout is 2.5 s).
const IN_FLIGHT_BEFORE_OUTAGE_MS: i64 = 10_000;

/// `records` without the mock broker's re-appends, and how many records those held.
///
/// librdkafka's mock checks an idempotent producer's sequence numbers only for transactional
/// producers, so a produce request whose response the broker outage cut off is appended again
/// when librdkafka retries it, where a real broker drops the retry (seen as one extra record
/// in 2 of 39 stress runs). With one request in flight the retry lands right after the original
/// in its partition: a run of records repeated at once, byte for byte and with the original's
/// timestamps, which the producer set when the records were first produced, within `outage`
/// (ms since the epoch). Only such a run is removed: an application re-send would carry new
/// timestamps, and a repeat anywhere else stays for the assertions to catch.
fn without_mock_reappends(
    records: &[odds_testkit::ReadRecord],
    outage: std::ops::RangeInclusive<i64>,
) -> (Vec<odds_testkit::ReadRecord>, usize) {
    let retried = |a: &odds_testkit::ReadRecord, b: &odds_testkit::ReadRecord| {
        a.payload == b.payload
            && a.timestamp_ms == b.timestamp_ms
            && a.timestamp_ms.is_some_and(|t| outage.contains(&t))
    };
    let mut partitions: std::collections::BTreeMap<i32, Vec<&odds_testkit::ReadRecord>> =
        std::collections::BTreeMap::new();
    for record in records {
        partitions.entry(record.partition).or_default().push(record);
    }
    let (mut kept, mut removed) = (Vec::new(), 0);
    for (_, mut log) in partitions {
        log.sort_by_key(|r| r.offset);
        let mut i = 0;
        while i < log.len() {
            let repeated = (1..=(log.len() - i) / 2)
                .find(|&k| (0..k).all(|j| retried(log[i + j], log[i + k + j])));
            let run = repeated.unwrap_or(1);
            kept.extend(log[i..i + run].iter().map(|r| (*r).clone()));
            if repeated.is_some() {
                removed += run;
                i += run; // the copy
            }
            i += run;
        }
    }
    (kept, removed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplier_drop_is_followed_by_reconnect_and_resume() {
    let kafka = TestKafka::start(1, 2).unwrap();
    let first: Vec<_> = (1..=50).map(|v| text(&update("E1", v))).collect();
    let second: Vec<_> = (51..=100).map(|v| text(&update("E1", v))).collect();
    let addr = scripted_supplier(vec![first, second]).await;
    let started = Started::reading(addr, &kafka).await;

    let updates = read_updates(&kafka, 100).await;
    assert_eq!(updates.len(), 100);
    assert_complete_in_order(&updates);
    let metrics = http_get(started.ingest.ops_addr, "/metrics")
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("odds_ingest_reconnects_total 1"),
        "{metrics}"
    );
    started.stop().await;
}

/// `ingested_at` is ingest's clock: set on every update, and a supplier's own value (here a
/// day old) is replaced, so a client's age of a price never trusts the supplier's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stamps_its_own_accept_time_over_any_the_supplier_sends() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let forged = chrono::Utc::now() - chrono::Duration::days(1);
    let plain = update("E1", 1);
    let claimed = update("E1", 2).accepted_at(forged);
    let addr = scripted_supplier(vec![vec![text(&plain), text(&claimed)]]).await;
    let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    let started = Started::reading(addr, &kafka).await;
    let updates = read_updates(&kafka, 2).await;
    let after = chrono::Utc::now();
    assert_eq!(updates.len(), 2);
    for stamped in &updates {
        let at = stamped.ingested_at.expect("ingest stamps every update");
        assert!(
            before <= at && at <= after,
            "{at} outside {before}..{after}"
        );
    }
    started.stop().await;
}

/// A supplier that goes silent without closing (frozen, or the route to it dropped) is pinged,
/// then left after three ping intervals, and ingest connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_supplier_is_left_and_reconnected() {
    let kafka = TestKafka::start(1, 2).unwrap();
    let (addr, connections) = mute_supplier().await;
    let mut config = IngestConfig::local(&format!("ws://{addr}/"), kafka.bootstrap_servers());
    config.supplier_ping_interval_ms = odds_runtime::cli::Millis(100);
    let started = Started::with(config).await;

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while connections.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest stayed on a silent supplier"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = http_get(started.ingest.ops_addr, "/metrics")
        .await
        .unwrap()
        .body;
    assert!(
        metric(&metrics, "odds_ingest_reconnects_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    // Shutdown does not wait on the silent supplier.
    started.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_gaps_and_regressions_are_counted_and_passed_on() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let script: Vec<_> = [1, 2, 5, 5, 3, 6]
        .into_iter()
        .map(|v| text(&update("E1", v)))
        .collect();
    let addr = scripted_supplier(vec![script]).await;
    let shutdown = CancellationToken::new();
    let ingest = start_ingest(&format!("ws://{addr}/"), &kafka, &shutdown).await;

    // Ingest judges nothing by version: the processor's guard does. Every update goes on.
    let records = kafka
        .read_topic(TOPIC_ODDS_UPDATES, 6, QUIET, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(records.len(), 6);
    let page = http_get(ingest.ops_addr, "/metrics").await.unwrap().body;
    assert_eq!(metric(&page, "odds_ingest_version_gaps_total"), Some(1.0));
    assert_eq!(
        metric(&page, "odds_ingest_versions_skipped_total"),
        Some(2.0)
    );
    for (reason, n) in [("repeated", 1), ("older", 1)] {
        let line = format!(r#"odds_ingest_version_regressions_total{{reason="{reason}"}} {n}"#);
        assert!(page.contains(&line), "{line}\n{page}");
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_read_limit_is_dead_lettered_by_size() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let too_big = Message::text("y".repeat(40_000));
    let addr = scripted_supplier(vec![
        vec![text(&update("E1", 1)), too_big],
        vec![text(&update("E1", 2))],
    ])
    .await;
    let shutdown = CancellationToken::new();
    let mut config = IngestConfig::local(&format!("ws://{addr}/"), kafka.bootstrap_servers());
    config.max_ws_message_bytes = 20_000;
    let _ingest = start_ingest_with(config, &shutdown).await;

    let good = kafka
        .read_topic(TOPIC_ODDS_UPDATES, 2, QUIET, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(good.len(), 2, "reconnected and went on");
    let dlq = kafka
        .read_topic(TOPIC_ODDS_UPDATES_DLQ, 1, QUIET, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].header(dlq_headers::REASON).as_deref(),
        Some("oversize")
    );
    assert_eq!(
        dlq[0].header(dlq_headers::ORIGINAL_BYTES).as_deref(),
        Some("40000")
    );
    shutdown.cancel();
}

/// SIGTERM while every broker is down and the in-flight limit is full: ingest stops within its
/// drain deadline and counts exactly what it had accepted and could not deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_kafka_outage_is_bounded_and_counts_the_undelivered() {
    let kafka = TestKafka::start(1, 2).unwrap();
    kafka.cluster().broker_down(1).unwrap();
    let shutdown = CancellationToken::new();
    let sim = simulator(2_000, 0, 4, &shutdown).await;
    let mut config = IngestConfig::local(&sim.url(), kafka.bootstrap_servers());
    config.max_in_flight = 50;
    config.shutdown_flush_ms = odds_runtime::cli::Millis(1_000);
    let ingest_shutdown = CancellationToken::new();
    let ingest = start_ingest_with(config, &ingest_shutdown).await;

    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let page = http_get(ingest.ops_addr, "/metrics").await.unwrap().body;
        if metric(&page, "odds_ingest_in_flight") == Some(50.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "in-flight never filled: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = ingest.metrics.clone();
    ingest_shutdown.cancel();
    // Bounded by the 1 s deadline; 30 s is Kubernetes' grace period.
    tokio::time::timeout(Duration::from_secs(30), ingest.wait())
        .await
        .expect("ingest stops within its drain deadline although Kafka is down");
    let received = metrics.frames_received.get();
    assert!(received >= 50, "{received}");
    assert_eq!(metrics.updates_produced.get(), 0);
    assert_eq!(
        metrics.shutdown_undelivered.get(),
        received,
        "every frame accepted from the supplier is accounted for as undelivered"
    );
    shutdown.cancel();
}

/// A fatal idempotent-producer error (here: the cluster refuses to hand out a producer id) is
/// not retried forever: readiness names the producer, the stage stops by itself and reports
/// the error (`finish` returns what `run` returns, so the binary exits non-zero and is
/// restarted with a fresh producer), and every record it had accepted is counted as
/// undelivered rather than dead-lettered into the void.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_stops_the_stage_and_is_reported() {
    let kafka = TestKafka::start(1, 1).unwrap();
    // The broker is away at first, so the stage accepts records before the producer has an id.
    kafka.cluster().broker_down(1).unwrap();
    let shutdown = CancellationToken::new();
    let sim = simulator(200, 0, 2, &shutdown).await;
    let ingest = start_ingest(&sim.url(), &kafka, &CancellationToken::new()).await;
    let (metrics, readiness) = (ingest.metrics.clone(), ingest.readiness.clone());
    let deadline = std::time::Instant::now() + TIMEOUT;
    while metrics.in_flight.get() < 10 {
        assert!(std::time::Instant::now() < deadline, "nothing accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(readiness.snapshot().get(READY_PRODUCER), Some(&true));
    kafka.cluster().request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 8],
    );
    kafka.cluster().broker_up(1).unwrap();
    let outcome = tokio::time::timeout(TIMEOUT, ingest.finish())
        .await
        .expect("the stage stops by itself after a fatal producer error");
    let Err(IngestError::FatalProducer(reason)) = outcome else {
        panic!("the stage must end with the fatal error (a non-zero exit): {outcome:?}");
    };
    assert!(reason.to_lowercase().contains("authoriz"), "{reason}");
    assert_eq!(
        readiness.snapshot().get(READY_PRODUCER),
        Some(&false),
        "readiness names the producer: {:?}",
        readiness.snapshot()
    );
    assert_eq!(metrics.updates_produced.get(), 0);
    assert!(metrics.frames_received.get() >= 10);
    assert_eq!(
        metrics.shutdown_undelivered.get(),
        metrics.frames_received.get(),
        "every accepted frame accounted for"
    );
    shutdown.cancel();
}

/// A DLQ that refuses dead letters for good (here: the topic is denied, as an ACL would) or
/// whose size limit is below even a bounded dead letter stops the stage instead of retrying
/// one frame forever: readiness names the DLQ, and `finish` returns the refusal (a non-zero
/// exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_that_refuses_for_good_stops_the_stage_and_is_reported() {
    for case in ["denied", "limit"] {
        let kafka = TestKafka::start(1, 1).unwrap();
        let addr = scripted_supplier(vec![vec![Message::text("x".repeat(4096))]]).await;
        let mut config = IngestConfig::local(&format!("ws://{addr}/"), kafka.bootstrap_servers());
        if case == "denied" {
            kafka.cluster().request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64],
            );
        } else {
            config.kafka.props = vec![("message.max.bytes".into(), "1000".into())];
        }
        let ingest = start_ingest_with(config, &CancellationToken::new()).await;
        let readiness = ingest.readiness.clone();
        let outcome = tokio::time::timeout(TIMEOUT, ingest.finish())
            .await
            .unwrap_or_else(|_| panic!("{case}: the stage stops by itself"));
        assert!(
            matches!(outcome, Err(IngestError::DlqRefused(_))),
            "{case}: {outcome:?}"
        );
        assert_eq!(
            readiness.snapshot().get(READY_DLQ),
            Some(&false),
            "{case}: {:?}",
            readiness.snapshot()
        );
    }
}

/// librdkafka's own reports (a broker refusing connections, here) reach the stage's `tracing`
/// output: without rdkafka's `tracing` feature they went to the `log` crate, which no stage
/// collects, and a Kafka that refused ingest left no line in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reports_reach_the_tracing_output() {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Keeps the message of every event from librdkafka or rdkafka.
    struct Capture(Arc<Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let target = event.metadata().target();
            if target.starts_with("librdkafka") || target.starts_with("rdkafka") {
                self.0.lock().unwrap().push(format!("{event:?}"));
            }
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Global: librdkafka reports from its own threads. Installed before the clients are
    // made, since rdkafka picks librdkafka's log level from what is enabled then.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::WARN)
        .with(Capture(seen.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (addr, _) = mute_supplier().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing = closed.local_addr().unwrap().to_string();
    drop(closed);
    let started = Started::with(IngestConfig::local(&format!("ws://{addr}/"), &refusing)).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no librdkafka report reached tracing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reports = seen.lock().unwrap().join("\n");
    assert!(reports.contains(&refusing), "{reports}");
    started.stop().await;
}

#[test]
fn only_a_run_repeated_at_once_in_one_partition_counts_as_a_mock_reappend() {
    let stamped =
        |partition: i32, offset: i64, payload: &str, timestamp_ms: i64| odds_testkit::ReadRecord {
            partition,
            offset,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp_ms: Some(timestamp_ms),
        };
    // Produced in the outage window (100..=200) unless stamped otherwise.
    let record =
        |partition: i32, offset: i64, payload: &str| stamped(partition, offset, payload, 150);
    let payloads = |records: &[odds_testkit::ReadRecord]| -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.payload.clone().unwrap()).unwrap())
            .collect()
    };
    // Partition 0: "b c" re-appended at once. Partition 1: "x" again later, after "y".
    let log = [
        record(0, 0, "a"),
        record(0, 1, "b"),
        record(0, 2, "c"),
        record(0, 3, "b"),
        record(0, 4, "c"),
        record(0, 5, "d"),
        record(1, 0, "x"),
        record(1, 1, "y"),
        record(1, 2, "x"),
    ];
    let (kept, removed) = without_mock_reappends(&log, 100..=200);
    assert_eq!(removed, 2);
    assert_eq!(payloads(&kept), ["a", "b", "c", "d", "x", "y", "x"]);

    // A repeat at once with new timestamps is a re-send, not the producer's retry; one of
    // records produced outside the outage was not touched by it: both stay.
    let resent = [
        stamped(0, 0, "a", 150),
        stamped(0, 1, "a", 160),
        stamped(1, 0, "b", 50),
        stamped(1, 1, "b", 50),
    ];
    let (kept, removed) = without_mock_reappends(&resent, 100..=200);
    assert_eq!(removed, 0);
    assert_eq!(payloads(&kept), ["a", "a", "b", "b"]);
}
