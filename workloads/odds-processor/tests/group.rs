//! Two processors in one consumer group over a multi-partition topic: every update applied
//! exactly once in effect, and each event's versions published in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use odds_testkit::{TestKafka, TestRedis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_split_partitions_and_keep_per_event_order() {
    const PARTITIONS: i32 = 4;
    const EVENTS: u64 = 20;
    const VERSIONS: u64 = 10;
    let kafka = TestKafka::start(1, PARTITIONS).unwrap();
    let db = migrated_database().await;
    let redis = TestRedis::start().await.unwrap();
    let subscriber = Subscriber::start(&redis).await;
    let config = config(&kafka, &db, &redis);
    let group = config.kafka_group.clone();
    let mut a = processor(&config);
    let mut b = processor(&config);
    // Join both before producing, so the work is actually split.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (na, nb) = (
            a.processor.assigned_partitions(),
            b.processor.assigned_partitions(),
        );
        if na > 0 && nb > 0 && na + nb == PARTITIONS as usize {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group never balanced"
        );
        a.processor.step().await;
        b.processor.step().await;
    }
    let task_a = tokio::spawn(a.processor.run());
    let task_b = tokio::spawn(b.processor.run());

    let producer = producer(&kafka);
    for version in 1..=VERSIONS {
        let round: Vec<_> = (0..EVENTS)
            .map(|e| update(&format!("EV{e:02}"), version))
            .collect();
        produce(&producer, &round).await;
    }
    let total = (EVENTS * VERSIONS) as i64;
    wait_until("every update committed", || async {
        committed_total(&kafka, &group, PARTITIONS) == total
    })
    .await;

    let consumed = (
        a.metrics.messages_consumed.get(),
        b.metrics.messages_consumed.get(),
    );
    let present: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_id, version FROM odds_history ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let missing: Vec<(String, u64)> = (0..EVENTS)
        .flat_map(|e| (1..=VERSIONS).map(move |v| (format!("EV{e:02}"), v)))
        .filter(|(e, v)| !present.contains(&(e.clone(), *v as i64)))
        .collect();
    eprintln!("MISSING {missing:?}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    eprintln!(
        "LATER {}",
        count(&db, "SELECT count(*) FROM odds_history").await
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM odds_history").await,
        total,
        "consumed {consumed:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM odds_current WHERE version = 10").await,
        EVENTS as i64
    );
    let consumed = (
        a.metrics.messages_consumed.get(),
        b.metrics.messages_consumed.get(),
    );
    assert!(
        consumed.0 > 0 && consumed.1 > 0,
        "both processors worked: {consumed:?}"
    );
    assert_eq!(
        consumed.0 + consumed.1,
        total as u64,
        "each update read once"
    );
    for e in 0..EVENTS {
        let event = format!("EV{e:02}");
        assert_eq!(cached(&redis, &event).await.unwrap().version, VERSIONS);
    }
    wait_until("newest versions published", || async {
        (0..EVENTS).all(|e| subscriber.versions_of(&format!("EV{e:02}")).last() == Some(&VERSIONS))
    })
    .await;
    for e in 0..EVENTS {
        let seen = subscriber.versions_of(&format!("EV{e:02}"));
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "EV{e:02} published out of order or twice: {seen:?}"
        );
    }
    a.shutdown.cancel();
    b.shutdown.cancel();
    tokio::time::timeout(PATIENCE, task_a)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, task_b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed_total(&kafka, &group, PARTITIONS), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_mid_stream_lose_nothing() {
    const PARTITIONS: i32 = 4;
    const EVENTS: u64 = 40;
    const VERSIONS: u64 = 25;
    let kafka = TestKafka::start(1, PARTITIONS).unwrap();
    let db = migrated_database().await;
    let redis = TestRedis::start().await.unwrap();
    let mut config = config(&kafka, &db, &redis);
    config.batch_max = 20; // many small batches, so rebalances land mid-batch
    let group = config.kafka_group.clone();
    let producer = producer(&kafka);
    let a = processor(&config);
    let (a_stop, task_a) = (a.shutdown.clone(), tokio::spawn(a.processor.run()));
    let total = (EVENTS * VERSIONS) as i64;
    let mut b = None;
    for version in 1..=VERSIONS {
        let round: Vec<_> = (0..EVENTS)
            .map(|e| update(&format!("EV{e:02}"), version))
            .collect();
        produce(&producer, &round).await;
        if version == 5 {
            let joined = processor(&config); // rebalance while A is busy
            b = Some((
                joined.shutdown.clone(),
                tokio::spawn(joined.processor.run()),
            ));
        }
        if version == 15 {
            a_stop.cancel(); // A leaves mid-stream: its partitions move to B
        }
    }
    tokio::time::timeout(PATIENCE, task_a)
        .await
        .unwrap()
        .unwrap();
    wait_until("every update committed", || async {
        committed_total(&kafka, &group, PARTITIONS) == total
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, total);
    assert_eq!(
        count(&db, "SELECT count(*) FROM odds_current WHERE version = 25").await,
        EVENTS as i64
    );
    let (b_stop, task_b) = b.unwrap();
    b_stop.cancel();
    tokio::time::timeout(PATIENCE, task_b)
        .await
        .unwrap()
        .unwrap();
}
