//! The real processor in front of the service, followed through to WebSocket clients: what
//! the processor decides about versions (ties go to the first read; versions compare exactly
//! up to 2^63 - 1) is what every client sees.

use crate::common::*;
use odds_contracts::names::TOPIC_ODDS_UPDATES;
use odds_contracts::{OddsUpdate, MAX_VERSION};
use odds_processor::{Metrics, Processor, ProcessorConfig};
use odds_runtime::Readiness;
use odds_testkit::TestKafka;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(90);

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), odds_processor::ProcessorError>>,
    producer: FutureProducer,
}

fn start_processor(env: &Env, kafka: &TestKafka) -> Running {
    let mut config =
        ProcessorConfig::new(kafka.bootstrap_servers(), env.db.url(), &env.redis.url());
    config.batch_max = 2_000;
    let stop = CancellationToken::new();
    let processor = Processor::new(
        &config,
        Metrics::unregistered().unwrap(),
        Readiness::default(),
        stop.clone(),
    )
    .unwrap();
    Running {
        stop,
        task: tokio::spawn(processor.run()),
        producer: kafka.client_config().create().unwrap(),
    }
}

impl Running {
    async fn produce(&self, updates: &[OddsUpdate]) {
        for u in updates {
            let json = u.to_json();
            let record = FutureRecord::to(TOPIC_ODDS_UPDATES)
                .key(&u.event_id)
                .payload(&json);
            self.producer.send(record, PATIENCE).await.unwrap();
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn stored_at_version(env: &Env, version: u64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM odds_current WHERE version = $1")
        .bind(i64::try_from(version).unwrap())
        .fetch_one(env.db.pool())
        .await
        .unwrap()
}

/// Reads `odds` frames until every event of `events` has one at `version`; returns them by
/// event (the first such frame of each).
async fn odds_at(client: &mut Client, events: &[String], version: u64) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got.len() < events.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frames = frames_until(client, left, "odds frames", |f| f["type"] == "odds").await;
        let frame = frames.last().unwrap();
        if frame["data"]["version"] == version {
            let event = frame["data"]["event_id"].as_str().unwrap().to_owned();
            got.entry(event).or_insert_with(|| frame.clone());
        }
    }
    got
}

/// Two contents at one version for each of 500 events, interleaved so ties fall inside and
/// across the processor's batches: every WebSocket client gets each event once at that
/// version, with the content read first, as Postgres and Redis keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_read_wins_on_websocket_clients_too() {
    const EVENTS: usize = 500;
    let env = Env::start(&["--ws-max-subscriptions=250"]).await;
    let kafka = TestKafka::start(1, 1).unwrap();
    let processor = start_processor(&env, &kafka);
    let events: Vec<String> = (0..EVENTS).map(|i| format!("T{i}")).collect();
    let seeds: Vec<_> = events.iter().map(|e| update(e, 6, 2.0)).collect();
    processor.produce(&seeds).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stored_at_version(&env, 6).await < EVENTS as i64 {
        assert!(tokio::time::Instant::now() < deadline, "seeds never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let halves: Vec<&[String]> = events.chunks(EVENTS / 2).collect();
    let mut clients = Vec::new();
    for half in &halves {
        let mut client = connect(env.addr()).await;
        for event in half.iter() {
            assert_eq!(subscribe(&mut client, event).await["data"]["version"], 6);
        }
        clients.push(client);
    }

    let variant = |event: &str, draw: f64| {
        let mut u = update(event, 7, 2.0);
        u.odds.draw = draw;
        u
    };
    let mut ties = Vec::with_capacity(2 * EVENTS);
    for event in &events {
        ties.push(variant(event, 3.0));
        ties.push(variant(event, 9.0));
    }
    processor.produce(&ties).await;
    for (client, half) in clients.iter_mut().zip(&halves) {
        let got = odds_at(client, half, 7).await;
        let second: Vec<_> = got
            .values()
            .filter(|f| f["data"]["odds"]["draw"] != 3.0)
            .collect();
        assert!(
            second.is_empty(),
            "a client got the later content: {second:?}"
        );
    }
    assert_eq!(stored_at_version(&env, 7).await, EVENTS as i64);
    for event in &events {
        let cached: OddsUpdate = serde_json::from_str(&env.cached(event).await.unwrap()).unwrap();
        assert_eq!((cached.version, cached.odds.draw), (7, 3.0), "{event}");
    }
    processor.stop().await;
    env.stop().await;
}

/// Versions above 2^53 (where doubles skip every other integer) up to the contract's largest
/// each reach a subscribed client, in order, none dropped as "not newer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_above_two_to_the_53_reach_websocket_clients() {
    let env = Env::start(&[]).await;
    let kafka = TestKafka::start(1, 1).unwrap();
    let processor = start_processor(&env, &kafka);
    let exact = 1u64 << 53;
    processor.produce(&[update("BIG", exact, 2.0)]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stored_at_version(&env, exact).await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "seed never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = connect(env.addr()).await;
    assert_eq!(
        subscribe(&mut client, "BIG").await["data"]["version"],
        exact
    );
    let later = [exact + 1, exact + 2, MAX_VERSION - 1, MAX_VERSION];
    for version in later {
        // One at a time: each must advance the cache on its own, not by conflation.
        processor.produce(&[update("BIG", version, 2.0)]).await;
        let frames = frames_until(&mut client, PATIENCE, "the next version", |f| {
            f["type"] == "odds"
        })
        .await;
        assert_eq!(frames.last().unwrap()["data"]["version"], version);
    }
    processor.stop().await;
    env.stop().await;
}
