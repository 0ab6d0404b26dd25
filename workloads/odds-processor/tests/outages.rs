//! Dependency outages: Postgres down mid-stream (nothing lost, nothing committed early) and
//! Redis down (Postgres and offsets keep going; the cache is repaired from Postgres).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use odds_processor::processor::CHECK_POSTGRES;
use odds_testkit::{TestDatabase, TestKafka, TestRedis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_pauses_without_losing_or_committing_early() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let mut db = TestDatabase::on_own_server().await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    let redis = TestRedis::start().await.unwrap();
    let config = config(&kafka, &db, &redis);
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (readiness, metrics, shutdown) = (h.readiness.clone(), h.metrics.clone(), h.shutdown);
    let task = tokio::spawn(h.processor.run());
    let producer = producer(&kafka);
    let first: Vec<_> = (1..=5).map(|e| update(&format!("E{e}"), 1)).collect();
    produce(&producer, &first).await;
    wait_until("first five committed", || async {
        committed_total(&kafka, &group, 1) == 5
    })
    .await;
    assert!(readiness.is_ready());

    db.server_mut().unwrap().stop().unwrap();
    let second: Vec<_> = (1..=5).map(|e| update(&format!("E{e}"), 2)).collect();
    produce(&producer, &second).await;
    wait_until("readiness reports Postgres down", || async {
        readiness.snapshot().get(CHECK_POSTGRES) == Some(&false)
    })
    .await;
    // Retries continue and nothing is committed meanwhile (one attempt may take up to the
    // pool's 5 s acquire timeout).
    let errors_at_outage = metrics.errors.with_label_values(&["db"]).get();
    wait_until("the batch is retried", || async {
        metrics.errors.with_label_values(&["db"]).get() > errors_at_outage
    })
    .await;
    assert_eq!(
        committed_total(&kafka, &group, 1),
        5,
        "no offset committed early"
    );
    assert!(!readiness.is_ready());

    db.server_mut().unwrap().start_again().await.unwrap();
    wait_until("all ten committed", || async {
        committed_total(&kafka, &group, 1) == 10
    })
    .await;
    assert!(readiness.is_ready(), "ready again once Postgres is back");
    assert_eq!(
        count(&db, "SELECT count(*) FROM odds_history").await,
        10,
        "nothing lost"
    );
    for e in 1..=5 {
        assert_eq!(current_version(&db, &format!("E{e}")).await, Some(2));
        assert_eq!(cached(&redis, &format!("E{e}")).await.unwrap().version, 2);
    }
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_postgres_and_commits_then_repairs_the_cache() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let db = migrated_database().await;
    let mut redis = TestRedis::start().await.unwrap();
    let config = config(&kafka, &db, &redis);
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (metrics, shutdown) = (h.metrics.clone(), h.shutdown);
    let task = tokio::spawn(h.processor.run());
    let producer = producer(&kafka);
    produce(
        &producer,
        &[update("E1", 1), update("E2", 1), update("E3", 1)],
    )
    .await;
    wait_until("cached before the outage", || async {
        cached(&redis, "E3").await.map(|u| u.version) == Some(1)
    })
    .await;

    redis.stop();
    produce(
        &producer,
        &[update("E1", 2), update("E2", 2), update("E4", 1)],
    )
    .await;
    wait_until("offsets committed while Redis is down", || async {
        committed_total(&kafka, &group, 1) == 6
    })
    .await;
    assert_eq!(
        current_version(&db, "E1").await,
        Some(2),
        "Postgres is complete"
    );
    assert_eq!(current_version(&db, "E4").await, Some(1));
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, 6);
    assert!(metrics.errors.with_label_values(&["cache"]).get() >= 1);
    assert_eq!(
        metrics.cache_stale.get(),
        1,
        "the cache is known to be stale"
    );

    redis.start_again().await.unwrap(); // empty, like a restarted cache
    let subscriber = Subscriber::start(&redis).await;
    wait_until("cache repaired from Postgres", || async {
        let mut versions = Vec::new();
        for e in ["E1", "E2", "E3", "E4"] {
            versions.push(cached(&redis, e).await.map(|u| u.version));
        }
        versions == vec![Some(2), Some(2), Some(1), Some(1)]
    })
    .await;
    // E3 had no update after the outage: only the repair can have restored it.
    assert_eq!(metrics.cache_stale.get(), 0);
    assert!(
        metrics.cache_repairs.get() >= 2,
        "startup repair and outage repair"
    );
    wait_until("repair published what subscribers missed", || async {
        subscriber.versions_of("E4") == vec![1]
    })
    .await;
    let repaired = cached(&redis, "E1").await.unwrap();
    assert_eq!(repaired.home_team, "E1 home");
    assert_eq!(repaired.odds, update("E1", 2).odds);

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}
