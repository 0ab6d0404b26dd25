//! Ingest benchmarks.
//!
//! - `contract/accept`: what ingest does per frame to turn it into a record (decode with
//!   borrowed strings, contract checks, the frame's bytes plus `ingested_at` into a reused
//!   buffer); `contract/parse_validate` and `contract/serialize`: the two halves of the way it
//!   did it before and of what the processor still does (decode into an `OddsUpdate`,
//!   re-encode).
//! - `pipeline/simulator_ingest_<broker>`: `BENCH_INGEST_UPDATES` updates (default 300 000)
//!   offered by the simulator at `BENCH_INGEST_RATE` updates/s (default 60 000) over one
//!   WebSocket connection, through ingest to Kafka: the hosted mock, or the broker
//!   `KAFKA_BROKERS` names (`bash scripts/tansu.sh run cargo bench -p odds-ingest` starts a
//!   fresh Tansu with the topics; `make bench-ingest BROKER=tansu`). Simulator and ingest share
//!   this process and its two runtime threads; the broker is beside them. The time is until
//!   Kafka acknowledged the last update, so a throughput close to the offered rate means
//!   ingest kept up; a run in which the simulator dropped ingest as a slow consumer (or any
//!   version never reached it) fails loudly instead of counting. The mean produce latency
//!   (hand-off to broker ack) is printed after the runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use odds_contracts::{accept_update, parse_update};
use odds_ingest::{Ingest, IngestConfig};
use odds_testkit::TestKafka;
use std::time::{Duration, Instant};
use supplier_simulator::{SimulatorConfig, SimulatorServer};
use tokio_util::sync::CancellationToken;

const UPDATE: &str = r#"{"event_id":"MATCH_002","home_team":"Liverpool","away_team":"Everton","market":"1X2","odds":{"home":1.85,"draw":3.6,"away":4.2},"updated_at":"2026-11-28T10:00:00.123Z","source":"supplier-simulator","version":7}"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn contract(c: &mut Criterion) {
    let mut group = c.benchmark_group("contract");
    group.throughput(Throughput::Elements(1));
    let at = chrono::Utc::now();
    let mut record = Vec::new();
    group.bench_function("accept", |b| {
        b.iter(|| {
            accept_update(std::hint::black_box(UPDATE), at, &mut record)
                .unwrap()
                .version
        })
    });
    group.bench_function("parse_validate", |b| {
        b.iter(|| parse_update(std::hint::black_box(UPDATE.as_bytes())).unwrap())
    });
    let update = parse_update(UPDATE.as_bytes()).unwrap();
    group.bench_function("serialize", |b| {
        b.iter(|| std::hint::black_box(&update).to_json())
    });
    group.finish();
}

/// One run: returns the time from ingest start until Kafka acknowledged every update.
async fn pipeline_run(brokers: &str, updates: u64, latencies: &mut Vec<f64>) -> Duration {
    let shutdown = CancellationToken::new();
    let mut sim = SimulatorConfig::local();
    sim.rate = env_or("BENCH_INGEST_RATE", 60_000);
    sim.events = 1_000;
    sim.total = updates;
    let sim = SimulatorServer::start(sim, shutdown.clone()).await.unwrap();
    let started = Instant::now();
    let ingest = Ingest::start(IngestConfig::local(&sim.url(), brokers), shutdown.clone())
        .await
        .unwrap();
    let metrics = ingest.metrics.clone();
    // The image (one update per event) comes first, then `updates` deltas.
    let expected = updates + 1_000;
    while metrics.updates_produced.get() < expected {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let skipped = metrics.versions_skipped.get();
        assert!(
            skipped == 0 && metrics.reconnects.get() == 0,
            "ingest fell behind the offered rate: the simulator dropped it ({} reconnects, {skipped} \
             versions never received, {} of {expected} produced)",
            metrics.reconnects.get(),
            metrics.updates_produced.get()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {expected} updates produced in 300 s",
            metrics.updates_produced.get()
        );
    }
    let elapsed = started.elapsed();
    let h = ingest.metrics.produce_latency.clone();
    latencies.push(h.get_sample_sum() / h.get_sample_count().max(1) as f64);
    shutdown.cancel();
    ingest.wait().await;
    sim.wait().await;
    elapsed
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let updates: u64 = env_or("BENCH_INGEST_UPDATES", 300_000);
    let external = std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty());
    // The mock lives as long as the benchmark; a real broker keeps the records of every run.
    let mock = external.is_none().then(|| TestKafka::start(1, 6).unwrap());
    let (brokers, name) = match (external, &mock) {
        (Some(brokers), _) => (brokers, "simulator_ingest_kafka_brokers"),
        (None, mock) => (
            mock.as_ref()
                .map(|m| m.bootstrap_servers().to_owned())
                .unwrap(),
            "simulator_ingest_mock_kafka",
        ),
    };
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(updates));
    let mut mean_latencies = Vec::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(pipeline_run(&brokers, updates, &mut mean_latencies));
            }
            total
        })
    });
    group.finish();
    mean_latencies.sort_by(f64::total_cmp);
    if let Some(median) = mean_latencies.get(mean_latencies.len() / 2) {
        println!(
            "pipeline: mean produce latency (hand-off to broker ack), median over {} runs: {:.2} ms",
            mean_latencies.len(),
            median * 1000.0
        );
    }
}

criterion_group!(benches, contract, pipeline);
criterion_main!(benches);
