//! Dependency outages: Postgres down mid-stream (nothing lost, nothing committed early), a
//! statement waiting on a lock (the same, and shutdown is not held), and Redis down (Postgres
//! and offsets keep going; the cache is repaired from Postgres).

use crate::common::*;
use futures_util::StreamExt;
use odds_contracts::cache_status::CacheStatus;
use odds_contracts::names::REDIS_CACHE_STATUS_CHANNEL;
use odds_contracts::JsonMessage;
use odds_processor::processor::{CHECK_POSTGRES, CHECK_REDIS};
use odds_runtime::cli::Millis;
use odds_testkit::{TestDatabase, TestKafka, TestRedis};
use std::sync::{Arc, Mutex};

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
    stop_cleanly(&shutdown, task).await;
}

/// A batch whose statement waits on a lock (a migration's DDL, a long transaction) is treated
/// like an outage once `statement_timeout` passes: retried, reported, nothing committed early;
/// it goes through when the lock is released, and shutdown is not held while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_on_a_lock_is_retried_and_does_not_hold_shutdown() {
    let (kafka, db, _redis, mut config) = start_stack(1, 1).await;
    config.database_statement_timeout_ms = Millis(300);
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (readiness, metrics, shutdown) = (h.readiness.clone(), h.metrics.clone(), h.shutdown);
    let task = tokio::spawn(h.processor.run());
    let producer = producer(&kafka);

    let lock = || async {
        db.lock_table("odds_history", "ACCESS EXCLUSIVE")
            .await
            .unwrap()
    };
    let locker = lock().await;
    let first: Vec<_> = (1..=5).map(|e| update(&format!("L{e}"), 1)).collect();
    produce(&producer, &first).await;
    let db_errors = || metrics.errors.with_label_values(&["db"]).get();
    wait_until("the batch fails on the lock", || async { db_errors() > 0 }).await;
    wait_until("readiness reports Postgres failing", || async {
        readiness.snapshot().get(CHECK_POSTGRES) == Some(&false)
    })
    .await;
    assert_eq!(
        committed_total(&kafka, &group, 1),
        0,
        "nothing committed early"
    );

    locker.rollback().await.unwrap();
    wait_until("all five committed", || async {
        committed_total(&kafka, &group, 1) == 5
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, 5);
    wait_until("ready again", || async { readiness.is_ready() }).await;

    // Locked again, with a batch waiting: SIGTERM ends the processor, the batch uncommitted.
    let locker = lock().await;
    let errors_before = db_errors();
    produce(&producer, &[update("L1", 2)]).await;
    wait_until("the new batch fails on the lock", || async {
        db_errors() > errors_before
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("shutdown waited on the lock")
        .unwrap()
        .unwrap();
    assert_eq!(
        committed_total(&kafka, &group, 1),
        5,
        "the abandoned batch stays uncommitted"
    );
    locker.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_postgres_and_commits_then_repairs_the_cache() {
    let (kafka, db, mut redis, config) = start_stack(1, 1).await;
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (metrics, readiness, shutdown) = (h.metrics.clone(), h.readiness.clone(), h.shutdown);
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
    assert_eq!(readiness.snapshot().get(CHECK_REDIS), Some(&true));

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
    assert_eq!(
        readiness.snapshot().get(CHECK_REDIS),
        Some(&false),
        "readiness says cache writes fail"
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
    assert_eq!(readiness.snapshot().get(CHECK_REDIS), Some(&true));
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

    stop_cleanly(&shutdown, task).await;
}

/// Every report on the cache-status channel, collected in the background.
async fn status_reports(redis: &TestRedis) -> Arc<Mutex<Vec<CacheStatus>>> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(REDIS_CACHE_STATUS_CHANNEL).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let status = CacheStatus::parse(message.get_payload_bytes()).unwrap();
            sink.lock().unwrap().push(status);
        }
    });
    seen
}

/// Redis that answers but refuses writes (out of memory under `noeviction`): Postgres and
/// commits go on, readiness fails its `redis` check, readers are told on the status channel
/// (PUBLISH still works), and once Redis takes writes again the cache is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_fails_readiness_and_is_reported_until_repaired() {
    let (kafka, db, redis, config) = start_stack(1, 1).await;
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (readiness, shutdown) = (h.readiness.clone(), h.shutdown);
    let task = tokio::spawn(h.processor.run());
    let producer = producer(&kafka);
    produce(&producer, &[update("E1", 1)]).await;
    wait_until("cached before the refusal", || async {
        cached(&redis, "E1").await.map(|u| u.version) == Some(1)
    })
    .await;
    let reports = status_reports(&redis).await;
    redis.refuse_writes().await.unwrap();

    produce(&producer, &[update("E1", 2)]).await;
    wait_until("committed although the cache refuses writes", || async {
        committed_total(&kafka, &group, 1) == 2
    })
    .await;
    assert_eq!(current_version(&db, "E1").await, Some(2));
    wait_until("readiness fails its redis check", || async {
        readiness.snapshot().get(CHECK_REDIS) == Some(&false)
    })
    .await;
    assert!(!readiness.is_ready());
    wait_until("readers are told why", || async {
        reports
            .lock()
            .unwrap()
            .iter()
            .any(|r| !r.healthy && r.reason.as_deref().unwrap_or("").contains("OOM"))
    })
    .await;
    assert_eq!(
        cached(&redis, "E1").await.unwrap().version,
        1,
        "still stale"
    );

    redis.accept_writes().await.unwrap();
    wait_until("cache repaired once Redis takes writes", || async {
        cached(&redis, "E1").await.map(|u| u.version) == Some(2)
    })
    .await;
    wait_until("ready again", || async { readiness.is_ready() }).await;
    wait_until("readers are told it is healthy again", || async {
        reports.lock().unwrap().last().map(|r| r.healthy) == Some(true)
    })
    .await;
    stop_cleanly(&shutdown, task).await;
}

/// Every broker gone: readiness says `kafka` is down (it was set once, at start, and never
/// changed before), and says it is back once a broker answers again; records produced after
/// the outage are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_readiness_follows_the_brokers_down_and_back() {
    use odds_processor::processor::CHECK_KAFKA;
    let (kafka, db, _redis, mut config) = start_stack(2, 2).await;
    // Broker states come with the statistics: report them often so recovery shows soon.
    report_statistics_every(&mut config, 500);
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let (readiness, shutdown) = (h.readiness.clone(), h.shutdown);
    let task = tokio::spawn(h.processor.run());
    let producer = producer(&kafka);
    produce(&producer, &[update("K1", 1), update("K2", 1)]).await;
    wait_until("both committed", || async {
        committed_total(&kafka, &group, 2) == 2
    })
    .await;
    let kafka_ready = || readiness.snapshot().get(CHECK_KAFKA).copied();
    assert_eq!(kafka_ready(), Some(true));

    for broker in [1, 2] {
        kafka.cluster().broker_down(broker).unwrap();
    }
    wait_until("readiness reports Kafka down", || async {
        kafka_ready() == Some(false)
    })
    .await;
    assert!(!readiness.is_ready());

    for broker in [1, 2] {
        kafka.cluster().broker_up(broker).unwrap();
    }
    wait_until("readiness reports Kafka back", || async {
        kafka_ready() == Some(true)
    })
    .await;
    produce(&producer, &[update("K1", 2), update("K2", 2)]).await;
    wait_until("the later records committed", || async {
        committed_total(&kafka, &group, 2) == 4
    })
    .await;
    assert_eq!(current_version(&db, "K2").await, Some(2));
    stop_cleanly(&shutdown, task).await;
}
