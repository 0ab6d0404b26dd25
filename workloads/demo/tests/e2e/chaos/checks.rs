//! The end of a fault run: the supplier stops, and everything it sent must land.
//!
//! Postgres holds the supplier's last update of every (event, market) and Redis agrees; every
//! version the supplier sent is in `odds_history` exactly once (lost = sent by the supplier
//! but not in history; records that reached Kafka are checked against history too); the bad
//! records are on the DLQ with their reasons; every client shows the final prices.

use super::clients::Observers;
use super::freeze::Key;
use odds_contracts::names::{
    dlq_headers, redis_current_key, TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ,
};
use odds_contracts::OddsUpdate;
use odds_demo::Launcher;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Longest the pipeline may take to settle before the run fails.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(90);

/// What the end of a run found.
pub struct EndOfRun {
    /// Versions the supplier sent (each (event, market, version) once).
    pub sent: usize,
    /// Sent by the supplier, never stored in `odds_history`.
    pub lost: Vec<(Key, u64)>,
    /// In Kafka as valid updates (and not dead-lettered), never stored in `odds_history`.
    pub lost_after_kafka: Vec<(Key, u64)>,
}

pub async fn at_the_end(
    launcher: &mut Launcher,
    observers: &mut Observers,
    pool: &PgPool,
) -> EndOfRun {
    launcher.stop_stage("supplier-simulator").await.unwrap();
    observers.supplier_stopped().await;
    let (last_sent, sent_versions) = {
        let sent = observers.sent.lock().unwrap();
        let versions: BTreeSet<(Key, u64)> = sent
            .upstream
            .accepted
            .iter()
            .flat_map(|(key, versions)| versions.iter().map(|(v, _)| (key.clone(), *v)))
            .collect();
        (sent.last.clone(), versions)
    };
    assert_eq!(
        last_sent.len(),
        6 * odds_contracts::Market::ALL.len(),
        "the tap saw every event in every market"
    );

    eventually("Postgres holds the supplier's last updates", || async {
        let current: Vec<(String, String, i64, f64, f64, f64)> = sqlx::query_as(
            "SELECT event_id, market, version, home_odds::float8, draw_odds::float8,
                    away_odds::float8
             FROM odds_current ORDER BY event_id, market",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        current.len() == last_sent.len()
            && current.iter().all(|(id, market, version, h, d, a)| {
                let s = &last_sent[&(id.clone(), market.clone())];
                *version as u64 == s.version
                    && (*h, *d, *a) == (s.odds.home, s.odds.draw, s.odds.away)
            })
    })
    .await;

    // Redis agrees (the cache was repaired after Redis lost its data).
    let client = redis::Client::open(launcher.infra.redis_url.as_str()).unwrap();
    let redis = client.get_multiplexed_async_connection().await.unwrap();
    for ((event, market), sent) in &last_sent {
        eventually(&format!("Redis holds {event} {market}"), || {
            let mut redis = redis.clone();
            async move {
                let cached: Option<String> = redis::cmd("GET")
                    .arg(redis_current_key(event, market))
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                let cached: Option<OddsUpdate> = cached.map(|c| serde_json::from_str(&c).unwrap());
                cached.map(|c| (c.version, c.odds)) == Some((sent.version, sent.odds))
            }
        })
        .await;
    }

    // Every client shows the final prices.
    eventually("every client shows the final prices", || async {
        observers.clients.iter().all(|client| {
            let shown = client.lock().unwrap();
            last_sent
                .iter()
                .all(|(key, s)| shown.newest(key) == s.version)
        })
    })
    .await;

    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (event_id, market, version)) FROM odds_history",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(rows, distinct, "each version once in odds_history");
    let stored = history(pool).await;
    let lost: Vec<(Key, u64)> = sent_versions.difference(&stored).cloned().collect();

    let brokers = &launcher.infra.kafka_brokers;
    let dlq = odds_testkit::read_topic(
        brokers,
        TOPIC_ODDS_UPDATES_DLQ,
        3,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let reasons: BTreeSet<String> = dlq
        .iter()
        .filter_map(|r| r.header(dlq_headers::REASON))
        .collect();
    for reason in ["invalid_json", "invalid_update", "storage_rejected"] {
        assert!(
            reasons.contains(reason),
            "{reason} missing on the DLQ: {reasons:?}"
        );
    }
    let dead_lettered: BTreeSet<(Key, u64)> = dlq
        .iter()
        .filter_map(|r| versioned(r.payload.as_deref()?))
        .collect();
    let records = odds_testkit::read_topic(
        brokers,
        TOPIC_ODDS_UPDATES,
        usize::try_from(rows).unwrap_or(0),
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let in_kafka: BTreeSet<(Key, u64)> = records
        .iter()
        .filter_map(|r| versioned(r.payload.as_deref()?))
        .collect();
    let lost_after_kafka = in_kafka
        .difference(&stored)
        .filter(|v| !dead_lettered.contains(*v))
        .cloned()
        .collect();
    EndOfRun {
        sent: sent_versions.len(),
        lost,
        lost_after_kafka,
    }
}

async fn history(pool: &PgPool) -> BTreeSet<(Key, u64)> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT event_id, market, version FROM odds_history")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(event, market, version)| ((event, market), version as u64))
        .collect()
}

fn versioned(payload: &[u8]) -> Option<(Key, u64)> {
    let update = odds_contracts::parse_update(payload).ok()?;
    Some(((update.event_id, update.market), update.version))
}

/// Polls `condition` until it holds; fails the run after [`SETTLE_LIMIT`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE_LIMIT;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "never true within {SETTLE_LIMIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
