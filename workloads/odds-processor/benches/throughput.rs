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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 8;

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
        // 8 partitions: the mock cluster keeps ~5 MB per partition log and drops older
        // segments, which would silently shorten a 100k-update run on fewer partitions.
        let kafka = TestKafka::start(1, PARTITIONS).unwrap();
        let redis = TestRedis::start().await.unwrap();
        let started = Instant::now();
        produce_all(&kafka, updates, events).await;
        println!(
            "produced {updates} updates over {events} events in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        assert_log_complete(&kafka, updates);
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

/// Fails if the mock cluster's retention dropped records (low watermark above 0).
fn assert_log_complete(kafka: &TestKafka, updates: u64) {
    let consumer: BaseConsumer = kafka.client_config().create().unwrap();
    let mut kept = 0;
    for partition in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(TOPIC_ODDS_UPDATES, partition, Duration::from_secs(10))
            .unwrap();
        assert_eq!(low, 0, "partition {partition} lost records to retention");
        kept += high;
    }
    assert_eq!(kept as u64, updates);
}

async fn produce_all(kafka: &TestKafka, updates: u64, events: u64) {
    let producer: FutureProducer = kafka
        .client_config()
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
            ingested_at: None,
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
    let (mut durable_times, mut cache_times) = (Vec::new(), Vec::new());
    let mut done = 0u64;
    let mut started = None;
    let mut last_progress = Instant::now();
    while done < updates {
        let Some(batch) = processor.next_batch().await else {
            assert!(
                last_progress.elapsed() < Duration::from_secs(30),
                "stalled: {done} of {updates} processed, {} consumed",
                metrics.messages_consumed.get()
            );
            continue;
        };
        last_progress = Instant::now();
        let t = Instant::now();
        started.get_or_insert(t);
        let durable = processor.make_durable(batch).await.unwrap();
        let durable_at = t.elapsed();
        processor.update_cache(&durable).await;
        cache_times.push(t.elapsed() - durable_at);
        durable_times.push(durable_at);
        processor.commit(&durable);
        latencies.push(t.elapsed());
        done += durable.records as u64;
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    processor.close();
    let p50 = |v: &mut Vec<Duration>| percentile(v, 0.5).as_secs_f64() * 1e3;
    eprintln!(
        "  batch max {}: durable phase p50 {:.1} ms, cache phase p50 {:.1} ms",
        config.batch_max,
        p50(&mut durable_times),
        p50(&mut cache_times)
    );
    (
        updates as f64 / elapsed.as_secs_f64(),
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
        latencies.len(),
    )
}

fn percentile(values: &mut [Duration], q: f64) -> Duration {
    values.sort();
    values[((values.len() - 1) as f64 * q).round() as usize]
}
