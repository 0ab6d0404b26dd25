//! The canary's figures, written where the odds page can read them: the pipeline's Redis,
//! under [`REDIS_FRESHNESS_KEY`], as a [`FreshnessReport`] with a time-to-live (see
//! [`odds_contracts::freshness`] for why Redis and why the TTL).
//!
//! Whoever runs a canary (the operator's leader, `make demo`, the bench) calls
//! [`crate::Canary::publish_to`]; the same summary then feeds their own display and the page,
//! so the two can never disagree. Publishing is best effort and never stops the canary: a
//! failed write is counted ([`Publications::failed`]), logged once per outage (a warning on
//! the first failure, a note when writes succeed again) and retried at the next interval
//! on a fresh connection.

use crate::window::{Sight, Summary};
use odds_contracts::freshness::{FreshnessReport, FRESHNESS_PUBLISH_EVERY_MS, FRESHNESS_TTL_MS};
use odds_contracts::names::REDIS_FRESHNESS_KEY;
use odds_contracts::JsonMessage;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest one connection attempt or write may take: well under the publish interval.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The report of `summary`, published by `publisher`.
pub fn report(summary: &Summary, publisher: &str) -> FreshnessReport {
    FreshnessReport {
        publisher: publisher.to_string(),
        measured_at: summary.measured_at,
        window_seconds: summary.window.as_secs(),
        frames: summary.frames_sampled,
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        longest_freeze_ms: u64::try_from(summary.longest_freeze.as_millis()).unwrap_or(u64::MAX),
        longest_freeze_at: summary
            .longest_freeze_key
            .as_ref()
            .map(|(event, market)| format!("{event} {market}")),
        blind: match &summary.sight {
            Sight::Watching => None,
            Sight::Starting => Some("the canary has not connected yet".to_string()),
            Sight::Blind { why, .. } => Some(why.describe()),
        },
    }
}

/// How a canary's publishing fares, shared with its task.
#[derive(Debug, Default)]
pub struct Publications {
    written: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Publications {
    /// Reports written since the start.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Writes that failed since the start.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The error of the latest failed write, until a write succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records a success; whether it ends an outage.
    fn succeeded(&self) -> bool {
        let ended_outage = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .is_some();
        self.written.fetch_add(1, Ordering::Relaxed);
        ended_outage
    }

    /// Records a failure; whether it is the first of an outage.
    fn failed_with(&self, error: String) -> bool {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(error)
            .is_none()
    }
}

/// Writes `summarise()`'s report every [`FRESHNESS_PUBLISH_EVERY_MS`] until `stop`, then
/// deletes it (best effort) so the page says at once that no canary runs.
pub(crate) async fn publish_every(
    client: redis::Client,
    publisher: String,
    summarise: impl Fn() -> Summary,
    publications: Arc<Publications>,
    stop: CancellationToken,
) {
    let mut connection: Option<MultiplexedConnection> = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(FRESHNESS_PUBLISH_EVERY_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let json = report(&summarise(), &publisher).to_json();
        let set = redis::cmd("SET")
            .arg(REDIS_FRESHNESS_KEY)
            .arg(json)
            .arg("PX")
            .arg(FRESHNESS_TTL_MS)
            .clone();
        match write(&client, &mut connection, &set).await {
            Ok(()) => {
                if publications.succeeded() {
                    tracing::info!(%publisher, "the canary's figures are published again");
                }
            }
            Err(error) => {
                connection = None;
                if publications.failed_with(error.clone()) {
                    tracing::warn!(%publisher, %error, "cannot publish the canary's figures to Redis; retrying");
                }
            }
        }
    }
    let delete = redis::cmd("DEL").arg(REDIS_FRESHNESS_KEY).clone();
    let _ = write(&client, &mut connection, &delete).await;
}

/// Runs `command` on `connection`, connecting first when there is none.
async fn write(
    client: &redis::Client,
    connection: &mut Option<MultiplexedConnection>,
    command: &redis::Cmd,
) -> Result<(), String> {
    if connection.is_none() {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let opened = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        *connection = Some(opened);
    }
    let Some(open) = connection.as_mut() else {
        return Err("no connection".into());
    };
    command
        .query_async::<redis::Value>(open)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Canary, CanaryConfig};
    use odds_testkit::TestRedis;
    use std::time::Instant;

    fn unreachable_canary() -> Canary {
        // Port 9 (discard) on loopback: nothing listens, the canary is blind at once.
        Canary::start(CanaryConfig {
            url: "ws://127.0.0.1:9/ws/odds".into(),
            sample: vec!["*".into()],
            window: Duration::from_secs(60),
        })
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what} never happened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_canarys_summary_is_written_with_a_time_to_live_and_removed_when_it_stops() {
        let redis = TestRedis::start().await.unwrap();
        let mut canary = unreachable_canary();
        canary.publish_to(&redis.url(), "test").unwrap();
        let published = |c: &Canary| c.publications().map_or(0, Publications::written);
        until("a write", || published(&canary) >= 1).await;
        let mut conn = redis.connection().await.unwrap();
        let json: String = redis::cmd("GET")
            .arg(REDIS_FRESHNESS_KEY)
            .query_async(&mut conn)
            .await
            .unwrap();
        let written = FreshnessReport::parse(json.as_bytes()).unwrap();
        let now = report(&canary.summary(), "test");
        assert_eq!(written.publisher, "test");
        assert_eq!(written.window_seconds, 60);
        assert_eq!((written.frames, written.p99_ms), (0, None));
        assert!(
            written
                .blind
                .as_deref()
                .is_some_and(|why| why.starts_with("the canary cannot reach odds-service")),
            "{written:?}"
        );
        assert!(written.measured_at <= now.measured_at);
        let ttl: i64 = redis::cmd("PTTL")
            .arg(REDIS_FRESHNESS_KEY)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 0 && ttl <= FRESHNESS_TTL_MS as i64,
            "time to live {ttl} ms"
        );
        assert_eq!(canary.publications().map(Publications::failed), Some(0));

        canary.stop().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: Option<String> = redis::cmd("GET")
                .arg(REDIS_FRESHNESS_KEY)
                .query_async(&mut conn)
                .await
                .unwrap();
            if left.is_none() {
                break;
            }
            assert!(Instant::now() < deadline, "the report outlived its canary");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_counted_and_the_canary_goes_on() {
        let mut redis = TestRedis::start().await.unwrap();
        let url = redis.url();
        redis.stop();
        let mut canary = unreachable_canary();
        canary.publish_to(&url, "test").unwrap();
        let failed = |c: &Canary| c.publications().map_or(0, Publications::failed);
        until("a failed write", || failed(&canary) >= 1).await;
        assert!(canary
            .publications()
            .and_then(Publications::last_error)
            .is_some());
        // The canary still measures (it is blind, and says why).
        assert!(matches!(canary.summary().sight, Sight::Blind { .. }));
        // Redis back: the next write succeeds and the error is forgotten.
        redis.start_again().await.unwrap();
        let written = |c: &Canary| c.publications().map_or(0, Publications::written);
        until("a write after the outage", || written(&canary) >= 1).await;
        assert_eq!(
            canary.publications().and_then(Publications::last_error),
            None
        );
        assert!(Canary::publish_to(&mut canary, "not a url", "test").is_err());
    }
}
