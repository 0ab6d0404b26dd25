//! Delivery guarantees against real Postgres, Redis and the Kafka mock cluster: duplicates,
//! out-of-order versions, poison records, and a crash between the durable write and the commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use odds_contracts::names::{dlq_headers, TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use odds_processor::StepOutcome;
use odds_testkit::{TestKafka, TestRedis};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn duplicates_and_out_of_order_versions_change_nothing() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let db = migrated_database().await;
    let redis = TestRedis::start().await.unwrap();
    let subscriber = Subscriber::start(&redis).await;
    let mut config = config(&kafka, &db, &redis);
    // Two per batch: the duplicates land both inside one batch and across batches.
    config.batch_max = 2;
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let sequence = [update("E1", 5), update("E1", 3), update("E1", 4)];
    produce(&producer, &sequence).await;
    produce(&producer, &sequence).await; // the same updates delivered again

    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "all six records committed", || async {
        committed_total(&kafka, &group, 1) == 6
    })
    .await;

    assert_eq!(current_version(&db, "E1").await, Some(5));
    assert_eq!(history_versions(&db, "E1").await, vec![3, 4, 5]);
    assert_eq!(cached(&redis, "E1").await.unwrap().version, 5);
    // Give the subscriber time to receive anything (wrongly) published late.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        subscriber.versions_of("E1"),
        vec![5],
        "published once, never 3 or 4"
    );
    assert_eq!(h.metrics.cache_sets.get(), 1);
    assert!(
        h.metrics.stale_skipped.get() >= 1,
        "older versions were skipped"
    );
    assert_eq!(h.metrics.messages_consumed.get(), 6);
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_never_block() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let db = migrated_database().await;
    let redis = TestRedis::start().await.unwrap();
    let config = config(&kafka, &db, &redis);
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let mut low_odds = update("E2", 1);
    low_odds.odds.home = 0.5;
    produce(&producer, &[update("E1", 1)]).await; // offset 0
    produce_raw(&producer, "junk", Some(b"\x00\xffnot json")).await; // 1
    produce(&producer, &[low_odds]).await; // 2
    produce(&producer, &[update("E3", 1)]).await; // 3
    produce_raw(&producer, "E4", None).await; // 4: tombstone
    produce(&producer, &[update("E5", 1)]).await; // 5

    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "first six committed", || async {
        committed_total(&kafka, &group, 1) == 6
    })
    .await;
    // Consumption continues after the poison.
    produce(&producer, &[update("E6", 1)]).await;
    step_until(&mut h.processor, "seventh committed", || async {
        committed_total(&kafka, &group, 1) == 7
    })
    .await;

    for event in ["E1", "E3", "E5", "E6"] {
        assert_eq!(
            current_version(&db, event).await,
            Some(1),
            "{event} applied"
        );
        assert_eq!(cached(&redis, event).await.unwrap().version, 1);
    }
    assert_eq!(
        current_version(&db, "E2").await,
        None,
        "invalid update not applied"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, 4);

    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[TOPIC_ODDS_UPDATES_DLQ]).unwrap();
    let mut by_offset = HashMap::new();
    while by_offset.len() < 3 {
        let message = tokio::time::timeout(PATIENCE, dlq.recv())
            .await
            .expect("three DLQ records")
            .unwrap();
        let headers = message.headers().expect("DLQ headers");
        let mut h = HashMap::new();
        for header in headers.iter() {
            let value = String::from_utf8(header.value.unwrap().to_vec()).unwrap();
            h.insert(header.key.to_owned(), value);
        }
        assert_eq!(h[dlq_headers::SOURCE_TOPIC], TOPIC_ODDS_UPDATES);
        assert_eq!(h[dlq_headers::SOURCE_PARTITION], "0");
        assert_eq!(h[dlq_headers::STAGE], "odds-processor");
        assert!(!h[dlq_headers::DETAIL].is_empty());
        assert!(h.contains_key(dlq_headers::REJECTED_AT));
        by_offset.insert(
            h[dlq_headers::SOURCE_OFFSET].clone(),
            (
                h[dlq_headers::REASON].clone(),
                h[dlq_headers::DETAIL].clone(),
                message.payload().map(<[u8]>::to_vec),
            ),
        );
    }
    assert_eq!(by_offset["1"].0, "invalid_json");
    assert_eq!(
        by_offset["1"].2.as_deref(),
        Some(&b"\x00\xffnot json"[..]),
        "original bytes kept"
    );
    assert_eq!(by_offset["2"].0, "invalid_update");
    assert!(
        by_offset["2"].1.contains("odds.home"),
        "{}",
        by_offset["2"].1
    );
    assert_eq!(by_offset["4"].0, "invalid_json");
    assert_eq!(
        h.metrics
            .dead_lettered
            .with_label_values(&["invalid_json"])
            .get(),
        2
    );
}

#[tokio::test]
async fn crash_after_postgres_commit_before_offset_commit_replays_harmlessly() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let db = migrated_database().await;
    let redis = TestRedis::start().await.unwrap();
    let config = config(&kafka, &db, &redis);
    let producer = producer(&kafka);
    let updates: Vec<_> = (1..=5)
        .flat_map(|v| [update("A", v), update("B", v)])
        .collect();
    produce(&producer, &updates).await;

    let mut first = processor(&config);
    let mut durable_records = 0;
    while durable_records < updates.len() {
        let batch = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(batch) = first.processor.next_batch().await {
                    break batch;
                }
            }
        })
        .await
        .expect("a batch");
        let durable = first.processor.make_durable(batch).await.unwrap();
        durable_records += durable.records;
        // Crash: neither the cache phase nor the offset commit happens.
    }
    drop(first);
    let snapshot = "SELECT count(*) FROM odds_history";
    assert_eq!(count(&db, snapshot).await, 10, "the batch reached Postgres");
    let before: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT event_id, version, home_odds::text FROM odds_current ORDER BY event_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        committed_total(&kafka, &config.kafka_group, 1),
        0,
        "nothing committed"
    );

    let mut second = processor(&config);
    let group = config.kafka_group.clone();
    step_until(&mut second.processor, "replay committed", || async {
        committed_total(&kafka, &group, 1) == 10
    })
    .await;
    assert_eq!(
        second.metrics.messages_consumed.get(),
        10,
        "the batch was read again"
    );
    let after: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT event_id, version, home_odds::text FROM odds_current ORDER BY event_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(before, after, "replay left odds_current identical");
    assert_eq!(count(&db, snapshot).await, 10, "no duplicate history rows");
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT (event_id, version)) FROM odds_history"
        )
        .await,
        10
    );
    // The replay still brings the cache up to date (the crash skipped the cache phase).
    assert_eq!(cached(&redis, "A").await.unwrap().version, 5);
    assert_eq!(cached(&redis, "B").await.unwrap().version, 5);
    assert!(matches!(second.processor.step().await, StepOutcome::Idle));
}
