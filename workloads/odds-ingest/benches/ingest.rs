//! Ingest benchmarks.
//!
//! - `contract/parse_validate_serialize`: the per-update CPU cost of ingest's hot path.
//! - `pipeline/simulator_ingest_mock_kafka`: 100k updates offered by the simulator at
//!   `BENCH_INGEST_RATE` updates/s (default 60 000), through ingest to the Kafka mock cluster,
//!   on this machine (everything on the same cores). The time is until the broker acknowledged
//!   the last one, so a throughput close to the offered rate means ingest kept up. If ingest
//!   falls behind, the simulator drops it as a slow client and the run fails loudly.
//!   The mean produce latency (hand-off to broker ack) is printed after the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use odds_contracts::parse_update;
use odds_ingest::{Ingest, IngestConfig};
use odds_testkit::TestKafka;
use std::time::{Duration, Instant};
use supplier_simulator::{SimulatorConfig, SimulatorServer};
use tokio_util::sync::CancellationToken;

const UPDATE: &str = r#"{"event_id":"MATCH_002","home_team":"Liverpool","away_team":"Everton","market":"1X2","odds":{"home":1.85,"draw":3.6,"away":4.2},"updated_at":"2026-11-28T10:00:00.123Z","source":"supplier-simulator","version":7}"#;
const PIPELINE_UPDATES: u64 = 100_000;

fn contract(c: &mut Criterion) {
    let mut group = c.benchmark_group("contract");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_validate_serialize", |b| {
        b.iter(|| {
            let update = parse_update(std::hint::black_box(UPDATE.as_bytes())).unwrap();
            std::hint::black_box(update.to_json())
        })
    });
    group.finish();
}

/// One run: returns the time from ingest start until Kafka acknowledged every update.
async fn pipeline_run(latencies: &mut Vec<f64>) -> Duration {
    let kafka = TestKafka::start(1, 6).unwrap();
    let shutdown = CancellationToken::new();
    let mut sim = SimulatorConfig::local();
    sim.rate = std::env::var("BENCH_INGEST_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(60_000);
    sim.events = 1_000;
    sim.total = PIPELINE_UPDATES;
    let sim = SimulatorServer::start(sim, shutdown.clone()).await.unwrap();
    let started = Instant::now();
    let ingest = Ingest::start(
        IngestConfig::local(&sim.url(), kafka.bootstrap_servers()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    while ingest.metrics.updates_produced.get() < PIPELINE_UPDATES {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "ingest fell behind the offered rate: {} of {PIPELINE_UPDATES} produced, {} reconnects",
            ingest.metrics.updates_produced.get(),
            ingest.metrics.reconnects.get()
        );
    }
    let elapsed = started.elapsed();
    let h = ingest.metrics.produce_latency.clone();
    latencies.push(h.get_sample_sum() / h.get_sample_count().max(1) as f64);
    shutdown.cancel();
    ingest.wait().await;
    elapsed
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(PIPELINE_UPDATES));
    let mut mean_latencies = Vec::new();
    group.bench_function("simulator_ingest_mock_kafka", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(pipeline_run(&mut mean_latencies));
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
