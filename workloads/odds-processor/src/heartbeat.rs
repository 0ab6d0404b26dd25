//! The processor's heartbeat: every [`HEARTBEAT_EVERY_MS`] it publishes on
//! [`REDIS_HEARTBEAT_CHANNEL`] what it knows about the pipeline upstream of Redis (see
//! [`odds_contracts::heartbeat`]), so odds-service can tell its WebSocket clients when prices
//! stopped moving because this stage stopped, not because the market is calm.
//!
//! It reads only what the processor already exposes (its metrics and readiness), in a task of
//! its own with its own Redis connection: a Redis that hangs never slows the processing loop,
//! and a processing loop that hangs stops nothing here but what the beat reports.

use crate::checks::{CHECK_KAFKA, CHECK_POSTGRES};
use crate::config::ProcessorConfig;
use crate::metrics::Metrics;
use crate::redis_link::RedisLink;
use odds_contracts::heartbeat::{Heartbeat, HEARTBEAT_EVERY_MS};
use odds_contracts::names::REDIS_HEARTBEAT_CHANNEL;
use odds_contracts::JsonMessage;
use odds_runtime::Readiness;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// A check that has never passed counts as failing only after this long: a starting processor
/// has not tried Postgres yet, and saying "cannot write" then would flap every client's
/// status on every rollout.
const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// Starts beating until `shutdown`, then sends one `leaving` beat. Nothing connects before
/// the first beat; a beat that cannot be published is dropped (readers notice the silence).
/// Beats go to the Redis of `config`, within its Redis timeout.
pub fn spawn(
    config: &ProcessorConfig,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, redis::RedisError> {
    let timeout = config.redis_timeout_ms.duration();
    let mut publisher = Publisher(RedisLink::new(&config.redis_url, timeout)?);
    let mut beats = Beats::new(metrics, readiness, Instant::now());
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(HEARTBEAT_EVERY_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let beat = beats.next(Instant::now(), false);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = publisher.publish(&beat) => {}
            }
        }
        let last = beats.next(Instant::now(), true);
        // Bounded by the connection's timeouts; a stopping processor must not wait on Redis.
        let _ = tokio::time::timeout(timeout * 2, publisher.publish(&last)).await;
    }))
}

/// What the beats say, from the processor's metrics and readiness.
struct Beats {
    id: String,
    metrics: Metrics,
    readiness: Readiness,
    started: Instant,
    consumed: u64,
    last_record: Instant,
    passed: [bool; 2],
}

impl Beats {
    fn new(metrics: Metrics, readiness: Readiness, now: Instant) -> Beats {
        Beats {
            id: processor_id(),
            consumed: metrics.messages_consumed.get(),
            metrics,
            readiness,
            started: now,
            last_record: now,
            passed: [false; 2],
        }
    }

    fn next(&mut self, now: Instant, leaving: bool) -> Heartbeat {
        // Sampled once a beat: a record read since the last beat is "now" within a beat.
        let consumed = self.metrics.messages_consumed.get();
        if consumed != self.consumed {
            self.consumed = consumed;
            self.last_record = now;
        }
        let checks = self.readiness.snapshot();
        let starting = now.duration_since(self.started) < STARTUP_GRACE;
        let mut healthy = |slot: usize, check: &str| {
            // A check the processor does not keep (an embedded processor) is no failure.
            let ok = checks.get(check).copied().unwrap_or(true);
            self.passed[slot] |= ok;
            ok || (starting && !self.passed[slot])
        };
        let postgres = healthy(0, CHECK_POSTGRES);
        let kafka = healthy(1, CHECK_KAFKA);
        Heartbeat {
            processor: self.id.clone(),
            uptime_ms: millis(now.duration_since(self.started)),
            idle_ms: millis(now.duration_since(self.last_record)),
            postgres,
            kafka,
            cache_fresh: self.metrics.cache_stale.get() == 0,
            cache_repairs: self.metrics.cache_repairs.get(),
            leaving,
        }
    }
}

/// Publishes beats, best effort: a beat that cannot be published is dropped.
struct Publisher(RedisLink);

impl Publisher {
    async fn publish(&mut self, beat: &Heartbeat) {
        let published = self
            .0
            .publish(REDIS_HEARTBEAT_CHANNEL, beat.to_json())
            .await;
        if let Err(error) = published {
            tracing::debug!(%error, "heartbeat not published");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The pod's name where Kubernetes sets `HOSTNAME`, made unique per start.
fn processor_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "odds-processor".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_report_idleness_and_failures_but_not_a_start_in_progress() {
        let metrics = Metrics::unregistered().unwrap();
        let readiness = Readiness::new(&[CHECK_KAFKA, CHECK_POSTGRES]);
        readiness.set(CHECK_KAFKA, true);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        metrics.cache_stale.set(1);
        let mut beats = Beats::new(metrics.clone(), readiness.clone(), start);
        let first = beats.next(start, false);
        assert!(first.postgres, "not tried yet while starting");
        assert!(!first.cache_fresh);
        assert_eq!(beats.next(at(3000), false).idle_ms, 3000);
        metrics.messages_consumed.inc();
        assert_eq!(beats.next(at(4000), false).idle_ms, 0);

        readiness.set(CHECK_POSTGRES, true);
        assert!(beats.next(at(4100), false).postgres);
        readiness.set(CHECK_POSTGRES, false);
        let beat = beats.next(at(4200), false);
        assert!(
            !beat.postgres,
            "a check that passed and fails is reported at once"
        );
        assert_eq!((beat.processor, beat.uptime_ms), (first.processor, 4200));

        let mut late = Beats::new(metrics, readiness, start);
        let last = late.next(start + STARTUP_GRACE, true);
        assert!(!last.postgres, "never passed within the grace");
        assert!(last.leaving);
    }
}
