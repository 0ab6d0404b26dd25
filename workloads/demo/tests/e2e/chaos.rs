//! The whole pipeline through the faults a live system meets, in one run, with the real
//! binaries: the supplier restarted, the processor killed mid-batch, Redis and Postgres
//! stopped and started, every Kafka broker down and up, and two records no stage should
//! accept. At the end nothing ingest accepted is missing from `odds_history`, Postgres holds
//! the supplier's last update of every (event, market), Redis agrees with Postgres, and no
//! WebSocket client ever saw a version go down but every client saw the final prices.
//!
//! `make chaos` runs this test alone and prints the report (updates lost, regressions, and
//! how long prices took to move again after each fault).

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use odds_contracts::names::{redis_current_key, TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use odds_contracts::OddsUpdate;
use odds_demo::{Launcher, LauncherOptions};
use odds_testkit::http_get;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const EVENTS: u32 = 6;
const RATE: u32 = 60;
/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(2);
/// Longest a fault may keep prices still before the test fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);

/// Current odds are per (event, market).
type Key = (String, String);

fn key(update: &OddsUpdate) -> Key {
    (update.event_id.clone(), update.market.clone())
}

type Versions = Arc<Mutex<BTreeMap<Key, OddsUpdate>>>;

/// What one `/ws/odds` client saw: the newest update per (event, market) and every
/// regression.
#[derive(Default)]
struct ClientLog {
    newest: BTreeMap<Key, u64>,
    regressions: Vec<(Key, u64, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_recovers_from_every_ordinary_fault_losing_nothing() {
    let mut options = LauncherOptions::for_tests(RATE, EVENTS, 0).unwrap();
    options.version_base = None; // restarts must keep versions rising, as in production
    let mut launcher = Launcher::start(options).await.unwrap();
    let events: Vec<String> = (1..=EVENTS).map(|i| format!("MATCH_{i:03}")).collect();

    let sent: Versions = Arc::default();
    let supplier_gone = Arc::new(AtomicBool::new(false));
    let tap = tokio::spawn(tap_supplier(
        launcher.supplier_url().unwrap(),
        sent.clone(),
        supplier_gone.clone(),
    ));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let log = Arc::new(Mutex::new(ClientLog::default()));
            let url = format!("ws://{}/ws/odds", launcher.service_addr);
            (log.clone(), tokio::spawn(follow_all(url, log)))
        })
        .collect();
    recovered(&launcher, &events, Utc::now(), "start").await;

    let mut report: Vec<(&str, Duration)> = Vec::new();

    launcher.restart("supplier-simulator").await.unwrap();
    report.push((
        "supplier restarted",
        recovered(&launcher, &events, Utc::now(), "supplier restart").await,
    ));

    launcher.kill_and_restart("odds-processor").await.unwrap();
    report.push((
        "processor SIGKILLed and restarted",
        recovered(&launcher, &events, Utc::now(), "processor kill").await,
    ));

    launcher
        .infra
        .redis_mut()
        .expect("the fault run starts its own Redis (unset REDIS_URL)")
        .stop();
    tokio::time::sleep(OUTAGE).await;
    launcher
        .infra
        .redis_mut()
        .unwrap()
        .start_again()
        .await
        .unwrap();
    report.push((
        "Redis stopped 2 s (data lost) and started",
        recovered(&launcher, &events, Utc::now(), "Redis restart").await,
    ));

    launcher
        .infra
        .postgres_mut()
        .expect("the fault run starts its own Postgres (unset DATABASE_URL)")
        .stop()
        .unwrap();
    tokio::time::sleep(OUTAGE).await;
    launcher
        .infra
        .postgres_mut()
        .unwrap()
        .start_again()
        .await
        .unwrap();
    report.push((
        "Postgres stopped 2 s (immediate) and started",
        recovered(&launcher, &events, Utc::now(), "Postgres restart").await,
    ));

    let kafka = launcher
        .infra
        .kafka_cluster()
        .expect("the fault run hosts the Kafka mock cluster (unset KAFKA_BROKERS)");
    kafka.broker_down(1).unwrap();
    tokio::time::sleep(OUTAGE).await;
    kafka.broker_up(1).unwrap();
    report.push((
        "every Kafka broker down 2 s",
        recovered(&launcher, &events, Utc::now(), "Kafka outage").await,
    ));

    produce_bad_records(&launcher.infra.kafka_brokers).await;
    report.push((
        "a poison record and a NUL record",
        recovered(&launcher, &events, Utc::now(), "bad records").await,
    ));

    // The end: the supplier stops, and everything it sent must land.
    supplier_gone.store(true, Ordering::SeqCst);
    launcher.stop_stage("supplier-simulator").await.unwrap();
    // The tap reads to the end of the stream, so it knows the supplier's very last updates.
    tokio::time::timeout(Duration::from_secs(30), tap)
        .await
        .expect("the tap ends with the supplier")
        .unwrap();
    let last_sent = sent.lock().unwrap().clone();
    let markets = odds_contracts::Market::ALL.len();
    assert_eq!(
        last_sent.len(),
        events.len() * markets,
        "the tap saw every event in every market"
    );
    let pool = sqlx::PgPool::connect(&launcher.infra.database_url)
        .await
        .unwrap();
    let deadline = Instant::now() + RECOVERY_LIMIT;
    loop {
        let current: Vec<(String, String, i64, f64, f64, f64)> = sqlx::query_as(
            "SELECT event_id, market, version, home_odds::float8, draw_odds::float8,
                    away_odds::float8
             FROM odds_current ORDER BY event_id, market",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let matches = current.len() == last_sent.len()
            && current.iter().all(|(id, market, version, h, d, a)| {
                let s = &last_sent[&(id.clone(), market.clone())];
                *version as u64 == s.version
                    && (*h, *d, *a) == (s.odds.home, s.odds.draw, s.odds.away)
            });
        if matches {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Postgres never reached the supplier's last updates: {current:?} vs {last_sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Redis agrees with Postgres (the cache was repaired after Redis lost its data).
    let client = redis::Client::open(launcher.infra.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + RECOVERY_LIMIT;
    for ((event, market), sent) in &last_sent {
        loop {
            let cached: Option<String> = redis::cmd("GET")
                .arg(redis_current_key(event, market))
                .query_async(&mut redis)
                .await
                .unwrap();
            let cached: Option<OddsUpdate> = cached.map(|c| serde_json::from_str(&c).unwrap());
            if cached.as_ref().map(|c| (c.version, c.odds)) == Some((sent.version, sent.odds)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{event} {market}: Redis holds {cached:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Nothing ingest accepted is missing from history, and history holds each version once.
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (event_id, market, version)) FROM odds_history",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, distinct, "each version once");
    let records = odds_testkit::read_topic(
        &launcher.infra.kafka_brokers,
        TOPIC_ODDS_UPDATES,
        usize::try_from(rows).unwrap(),
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let accepted: BTreeSet<(String, String, i64)> = records
        .iter()
        .filter_map(|r| odds_contracts::parse_update(r.payload.as_deref()?).ok())
        .map(|u| (u.event_id, u.market, u.version as i64))
        .collect();
    let stored: BTreeSet<(String, String, i64)> =
        sqlx::query_as("SELECT event_id, market, version FROM odds_history")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let lost: Vec<_> = accepted.difference(&stored).collect();

    let dlq = odds_testkit::read_topic(
        &launcher.infra.kafka_brokers,
        TOPIC_ODDS_UPDATES_DLQ,
        2,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let reasons: BTreeSet<String> = dlq
        .iter()
        .filter_map(|r| r.header(odds_contracts::names::dlq_headers::REASON))
        .collect();

    // Every client saw the final prices, and never a version going down.
    let deadline = Instant::now() + RECOVERY_LIMIT;
    for (log, _) in &clients {
        loop {
            let seen = log.lock().unwrap().newest.clone();
            if last_sent
                .iter()
                .all(|(e, s)| seen.get(e) == Some(&s.version))
            {
                break;
            }
            assert!(Instant::now() < deadline, "a client saw only {seen:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let regressions: Vec<_> = clients
        .iter()
        .flat_map(|(log, _)| log.lock().unwrap().regressions.clone())
        .collect();

    println!(
        "chaos report: {} updates accepted by ingest, {} lost, {} client regressions",
        accepted.len(),
        lost.len(),
        regressions.len()
    );
    for (fault, took) in &report {
        println!(
            "chaos report: {fault}: prices moving again after {:.1} s",
            took.as_secs_f64()
        );
    }
    assert!(lost.is_empty(), "accepted but not stored: {lost:?}");
    assert!(
        regressions.is_empty(),
        "clients saw versions go down: {regressions:?}"
    );
    assert!(
        reasons.contains("invalid_json") && reasons.contains("invalid_update"),
        "{reasons:?}"
    );
    for (_, task) in clients {
        task.abort();
    }
    launcher.stop().await;
}

/// Waits until REST shows, for every event, an update the supplier stamped after `since`: the
/// prices are moving again. Returns how long that took.
async fn recovered(
    launcher: &Launcher,
    events: &[String],
    since: DateTime<Utc>,
    fault: &str,
) -> Duration {
    let started = Instant::now();
    let mut told = false;
    for event in events {
        loop {
            if !told && started.elapsed() > Duration::from_secs(5) {
                told = true;
                let scrape = odds_demo::status::Scrape::take(launcher).await;
                let pick = |s: &odds_demo::metrics_text::Samples, prefix: &str| {
                    s.0.iter()
                        .filter(|(k, _)| k.starts_with(prefix))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                println!(
                    "chaos diag after {fault}: {event} still old; ingest: {} {} | processor: {} {} {}",
                    pick(&scrape.ingest, "odds_ingest_updates_produced"),
                    pick(&scrape.ingest, "odds_ingest_in_flight"),
                    pick(&scrape.processor, "odds_proc_messages_consumed"),
                    pick(&scrape.processor, "odds_proc_consumer_lag"),
                    pick(&scrape.processor, "odds_proc_errors"),
                );
            }
            let path = format!("/v1/events/{event}/odds");
            if let Ok(r) = http_get(launcher.service_addr, &path).await {
                if r.status == 200 {
                    let current: OddsUpdate = serde_json::from_str(&r.body).unwrap();
                    if current.updated_at > since {
                        break;
                    }
                }
            }
            assert!(
                started.elapsed() < RECOVERY_LIMIT,
                "after {fault}: {event} showed no newer price within {RECOVERY_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    started.elapsed()
}

/// Reads the supplier's stream as a second client (the supplier sends every client the same
/// stream): the newest update it sent per (event, market). Reconnects across supplier restarts, and
/// returns once the stream ends after `gone` is set.
async fn tap_supplier(url: String, sent: Versions, gone: Arc<AtomicBool>) {
    loop {
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    if let Ok(update) = odds_contracts::parse_update(text.as_bytes()) {
                        let mut sent = sent.lock().unwrap();
                        let newest = sent.get(&key(&update)).map_or(0, |u| u.version);
                        if update.version >= newest {
                            sent.insert(key(&update), update);
                        }
                    }
                }
            }
        }
        if gone.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client of `/ws/odds` following every event, recording what it saw.
async fn follow_all(url: String, log: Arc<Mutex<ClientLog>>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","eventId":"*"}"#))
        .await
        .unwrap();
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        if !matches!(value["type"].as_str(), Some("snapshot" | "odds")) {
            continue;
        }
        let update: OddsUpdate = serde_json::from_value(value["data"].clone()).unwrap();
        let mut log = log.lock().unwrap();
        let previous = log.newest.get(&key(&update)).copied().unwrap_or(0);
        if update.version < previous {
            log.regressions
                .push((key(&update), previous, update.version));
        } else {
            log.newest.insert(key(&update), update.version);
        }
    }
}

/// Records no stage may accept, produced straight to the topic as a faulty upstream would:
/// bytes that are not JSON, and an update whose team name holds NUL (Postgres text cannot).
async fn produce_bad_records(brokers: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut nul = odds_testkit::sample_update("MATCH_001", u64::MAX >> 12);
    nul.home_team = "Nul\u{0}City".into();
    let records: HashMap<&str, Vec<u8>> = HashMap::from([
        ("POISON", b"{not json".to_vec()),
        ("MATCH_001", nul.to_json().into_bytes()),
    ]);
    for (key, payload) in &records {
        producer
            .send(
                FutureRecord::to(TOPIC_ODDS_UPDATES)
                    .key(*key)
                    .payload(payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
}
