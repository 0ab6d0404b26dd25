//! A DLQ that refuses dead letters: a record larger than the DLQ producer's limit is bounded
//! and goes through; a refusal no retry can change stops the processor, readiness first, and
//! the binary exits non-zero.

use crate::common::*;
use odds_contracts::dead_letter::{sha256_hex, DLQ_MAX_PAYLOAD};
use odds_contracts::names::{dlq_headers, TOPIC_ODDS_UPDATES};
use odds_processor::processor::{CHECK_DLQ, CHECK_KAFKA, CHECK_POSTGRES};
use odds_processor::ProcessorError;
use odds_testkit::{http_get, TestKafka};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::process::Stdio;
use std::time::Duration;

/// Larger than the DLQ producer's default `message.max.bytes` (1 000 000).
const HUGE: usize = 2 * 1024 * 1024;

fn large_record_producer(kafka: &TestKafka) -> FutureProducer {
    kafka
        .client_config()
        .set("message.max.bytes", (4 * HUGE).to_string())
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_the_dlq_limit_is_dead_lettered_bounded() {
    let (kafka, db, _redis, config) = start_stack(1, 1).await;
    let mut h = processor(&config);
    let huge: Vec<u8> = (0..HUGE).map(|i| (i % 251) as u8).collect();
    large_record_producer(&kafka)
        .send(
            FutureRecord::<str, [u8]>::to(TOPIC_ODDS_UPDATES)
                .key("HUGE")
                .payload(&huge),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    produce(&producer(&kafka), &[update("E1", 1)]).await;

    let group = config.kafka_group.clone();
    // Bounded from outside: a step that retries the dead letter forever never returns to
    // `step_until`'s own deadline.
    let committed = step_until(&mut h.processor, "both records committed", || async {
        committed_total(&kafka, &group, 1) == 2
    });
    tokio::time::timeout(PATIENCE, committed)
        .await
        .expect("the oversized record blocked its partition");
    assert_eq!(
        current_version(&db, "E1").await,
        Some(1),
        "the partition moved on"
    );
    let dead = read_dlq(&kafka, 1).await;
    let letter = &dead["0"];
    assert_eq!(letter.reason, "oversize");
    assert_eq!(
        letter.payload.as_deref(),
        Some(&huge[..DLQ_MAX_PAYLOAD]),
        "the payload's beginning"
    );
    assert_eq!(
        letter.headers[dlq_headers::ORIGINAL_BYTES],
        HUGE.to_string()
    );
    assert_eq!(
        letter.headers[dlq_headers::ORIGINAL_SHA256],
        sha256_hex(&huge)
    );
    assert!(h.readiness.is_ready(), "{:?}", h.readiness.snapshot());
}

/// The DLQ topic denied (as an ACL would): no dead letter can ever be written, so a poison
/// record would hold its partition forever. The processor stops instead: readiness says
/// `dlq` first, `run` returns the refusal, and nothing past the poison is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_refusing_for_good_stops_the_processor_after_readiness_says_so() {
    let (kafka, _db, _redis, config) = start_stack(1, 1).await;
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (readiness, shutdown) = (h.readiness.clone(), h.shutdown.clone());
    let producer = producer(&kafka);
    produce(&producer, &[update("E1", 1)]).await;
    produce_raw(&producer, "junk", Some(b"not json")).await;
    // From here on every produce request is denied: only the processor's DLQ producer sends any.
    deny_produce(&kafka);
    let task = tokio::spawn(h.processor.run());
    let stopped = tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the processor stops by itself")
        .unwrap();
    assert!(
        matches!(stopped, Err(ProcessorError::DlqRefused(_))),
        "{stopped:?}"
    );
    assert!(!shutdown.is_cancelled(), "it stopped on its own");
    let checks = readiness.snapshot();
    assert_eq!(checks.get(CHECK_DLQ), Some(&false), "{checks:?}");
    assert_eq!(checks.get(CHECK_KAFKA), Some(&true), "{checks:?}");
    assert_eq!(checks.get(CHECK_POSTGRES), Some(&true), "{checks:?}");
    assert!(
        committed_total(&kafka, &group, 1) <= 1,
        "the poison record stays uncommitted"
    );
}

/// A clean stop leaves the `dlq` check alone: it turns false for a refusal, not on every stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_returns_ok_with_the_dlq_check_still_true() {
    let (kafka, _db, _redis, config) = start_stack(1, 1).await;
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (readiness, shutdown) = (h.readiness.clone(), h.shutdown.clone());
    let task = tokio::spawn(h.processor.run());
    let producer = producer(&kafka);
    produce_raw(&producer, "junk", Some(b"not json")).await;
    wait_until("the poison committed", || async {
        committed_total(&kafka, &group, 1) == 1
    })
    .await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert!(stopped.is_ok(), "{stopped:?}");
    assert_eq!(readiness.snapshot().get(CHECK_DLQ), Some(&true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_non_zero_when_the_dlq_refuses_for_good() {
    let (kafka, db, redis, _) = start_stack(1, 1).await;
    let producer = producer(&kafka);
    produce_raw(&producer, "junk", Some(b"not json")).await;
    deny_produce(&kafka);
    let (mut command, addr) = processor_binary(&kafka, &db, &redis, "dlq-refused");
    let mut child = command
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut child, "the binary never exited").await;
    let output = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "exit status {status:?}: {logs}");
    assert!(logs.contains("dead-letter queue refuses"), "{logs}");
    assert!(
        http_get(addr, "/readyz").await.is_err(),
        "the ops server stopped"
    );
}
