//! Throughput of the processor: N pre-produced updates through the Kafka mock cluster into
//! real Postgres and Redis, at several batch sizes. Prints updates/s and the p50/p99 latency
//! of a batch (durable write + cache + commit, i.e. excluding the wait for records).
//!
//! `cargo bench -p odds-processor --bench throughput` (`BENCH_UPDATES`, `BENCH_EVENTS`,
//! `BENCH_BATCH_SIZES` override the defaults; Postgres is ODDS_TEST_DATABASE_URL's server, or
//! a throwaway one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use odds_contracts::names::TOPIC_ODDS_UPDATES;
use odds_contracts::{Odds, OddsUpdate};
use odds_processor::processor::{CHECK_KAFKA, CHECK_POSTGRES};
use odds_processor::{Metrics, Processor, ProcessorConfig};
use odds_runtime::Readiness;
use odds_testkit::{TestDatabase, TestKafka, TestRedis};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let updates: u64 = env_or("BENCH_UPDATES", 100_000);
    let events: u64 = env_or("BENCH_EVENTS", 1_000);
    let sizes: String = env_or("BENCH_BATCH_SIZES", "250,1000,2000,5000".to_owned());
    let sizes: Vec<u32> = sizes
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let kafka = TestKafka::start(1, 4).unwrap();
        let redis = TestRedis::start().await.unwrap();
        let started = Instant::now();
        produce_all(&kafka, updates, events).await;
        println!(
            "produced {updates} updates over {events} events in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        println!("| batch max | updates/s | batch p50 | batch p99 | batches |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        for size in sizes {
            let db = TestDatabase::create().await.unwrap();
            odds_schema::migrate(db.pool()).await.unwrap();
            let mut conn = redis.connection().await.unwrap();
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            let mut config =
                ProcessorConfig::new(kafka.bootstrap_servers(), db.url(), &redis.url());
            config.kafka_group = format!("bench-{size}");
            config.batch_max = size;
            let (rate, p50, p99, batches) = run_once(&config, updates).await;
            println!(
                "| {size} | {rate:.0} | {:.1} ms | {:.1} ms | {batches} |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM odds_history")
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert_eq!(n as u64, updates, "every update in history");
        }
    });
}

async fn produce_all(kafka: &TestKafka, updates: u64, events: u64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..updates {
        let event = format!("EV{:05}", i % events);
        let update = OddsUpdate {
            event_id: event.clone(),
            home_team: format!("{event} home"),
            away_team: format!("{event} away"),
            market: "1X2".into(),
            odds: Odds {
                home: 1.5 + (i % 100) as f64 / 100.0,
                draw: 3.2,
                away: 4.1,
            },
            updated_at: Utc::now(),
            source: "bench".into(),
            version: i / events + 1,
        };
        let json = update.to_json();
        let record = FutureRecord::to(TOPIC_ODDS_UPDATES)
            .key(&event)
            .payload(&json);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        if pending.len() == 10_000 {
            for delivery in pending.drain(..) {
                delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for delivery in pending {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Processes `updates` records; returns updates/s and the batch latency p50, p99 and count.
async fn run_once(config: &ProcessorConfig, updates: u64) -> (f64, Duration, Duration, usize) {
    let readiness = Readiness::new(&[CHECK_KAFKA, CHECK_POSTGRES]);
    let metrics = Metrics::unregistered().unwrap();
    let mut processor =
        Processor::new(config, metrics.clone(), readiness, CancellationToken::new()).unwrap();
    // Repair the (empty) cache first; the clock starts with the first batch (after the join).
    processor.maintain().await;
    assert!(!processor.cache_is_stale());
    let mut latencies = Vec::new();
    let mut done = 0u64;
    let mut started = None;
    while done < updates {
        let Some(batch) = processor.next_batch().await else {
            continue;
        };
        let t = Instant::now();
        started.get_or_insert(t);
        let durable = processor.make_durable(batch).await.unwrap();
        processor.update_cache(&durable).await;
        processor.commit(&durable);
        latencies.push(t.elapsed());
        done += durable.records as u64;
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    processor.close();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (
        updates as f64 / elapsed.as_secs_f64(),
        pick(0.5),
        pick(0.99),
        latencies.len(),
    )
}
