//! Whether live updates flow, and whether the cache may be read: one [`Feed`] per process,
//! set by the pub/sub subscriber and read by REST, WebSockets and readiness.
//!
//! Three things stop live updates. This process may have lost its pub/sub subscription. A
//! processor may report that its cache writes fail (Redis out of memory or read-only: the
//! updates channel then goes quiet too); such a report is a lease, renewed every second while
//! writes fail, so a processor that dies does not keep the feed down. And the pipeline
//! upstream of Redis may have stopped ([`crate::upstream`]): no processor beats, one says it
//! cannot reach Kafka or Postgres, or no record arrived for the silence limit. Clients are
//! told each with its reason; readiness follows only the first two, which are this replica's
//! own view of Redis: an upstream stall is the same for every replica, and taking them all out
//! of rotation would turn a stall into an outage of REST too.
//!
//! The cache is trusted separately: from a failure report until a processor shows that it
//! repaired the cache from Postgres (a healthy report, or a beat whose repair count rose since
//! the failure). A lease that runs out says only that nobody reports failures any more, not
//! that the missed writes were made good.

use crate::upstream::Upstream;
use odds_contracts::cache_status::{CacheStatus, CACHE_STATUS_LEASE_MS};
use odds_contracts::heartbeat::Heartbeat;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The feed as its readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// Why live updates are stopped, as clients are told; `None` while they flow.
    pub down: Option<String>,
    /// Subscribed, and no processor reports failing cache writes (readiness `live-feed`).
    pub receiving: bool,
    /// The cache holds what Postgres holds, as far as anyone can tell.
    pub cache_trusted: bool,
}

impl FeedStatus {
    pub fn is_live(&self) -> bool {
        self.down.is_none()
    }
}

/// Cache failures reported and not yet known to be repaired.
#[derive(Debug)]
struct Distrust {
    since: Instant,
    /// Each processor's repair count when the failure came (or when first heard from since).
    baselines: HashMap<String, u64>,
}

#[derive(Debug)]
struct FeedState {
    /// `Err(reason)` while this process has no pub/sub subscription.
    link: Result<(), String>,
    /// A processor's report that cache writes fail, honoured until the instant given.
    cache_failing: Option<(String, Instant)>,
    distrust: Option<Distrust>,
    upstream: Upstream,
    /// An update arrived since the last tick (noted cheaply while the feed is live).
    update_seen: Option<Instant>,
}

/// The live feed's state.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<FeedState>,
    status: watch::Sender<FeedStatus>,
}

impl Feed {
    /// A feed that is down until the first subscription. Zero durations turn the heartbeat
    /// watch or the silence limit off.
    pub fn new(heartbeat_timeout: Duration, max_silence: Duration) -> Arc<Feed> {
        let reason = "not yet subscribed to Redis pub/sub".to_owned();
        Arc::new(Feed {
            state: Mutex::new(FeedState {
                link: Err(reason.clone()),
                cache_failing: None,
                distrust: None,
                upstream: Upstream::new(heartbeat_timeout, max_silence, Instant::now()),
                update_seen: None,
            }),
            status: watch::channel(FeedStatus {
                down: Some(reason),
                receiving: false,
                cache_trusted: false,
            })
            .0,
        })
    }

    pub fn is_live(&self) -> bool {
        self.status.borrow().is_live()
    }

    pub fn status(&self) -> FeedStatus {
        self.status.borrow().clone()
    }

    /// Why the cache may not be read, if it may not.
    pub fn cache_distrusted(&self) -> Option<String> {
        let status = self.status.borrow();
        if status.cache_trusted {
            return None;
        }
        Some(status.down.clone().unwrap_or_else(|| {
            "a processor's cache writes failed and no repair has been seen since".to_owned()
        }))
    }

    /// Changes of the status, for connections and readiness.
    pub fn watch(&self) -> watch::Receiver<FeedStatus> {
        self.status.subscribe()
    }

    fn update(&self, now: Instant, change: impl FnOnce(&mut FeedState)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        if let Some(seen) = state.update_seen.take() {
            state.upstream.update(seen);
        }
        let verdict = state.upstream.verdict(now);
        let down = match (&state.link, &state.cache_failing) {
            (Err(reason), _) => Some(reason.clone()),
            (Ok(()), Some((reason, _))) => Some(format!("cache writes fail: {reason}")),
            (Ok(()), None) => verdict,
        };
        let receiving = state.link.is_ok() && state.cache_failing.is_none();
        let next = FeedStatus {
            down,
            receiving,
            cache_trusted: receiving && state.distrust.is_none(),
        };
        self.status.send_if_modified(|status| {
            if *status == next {
                return false;
            }
            if status.down != next.down {
                match &next.down {
                    Some(reason) => tracing::warn!(%reason, "live updates stopped"),
                    None => tracing::info!("live updates flowing"),
                }
            }
            *status = next;
            true
        });
    }

    /// The subscription was established (`Ok`) or lost.
    pub fn link(&self, link: Result<(), String>) {
        let now = Instant::now();
        self.update(now, |state| {
            if link.is_ok() {
                state.upstream.listening(now);
            }
            state.link = link;
        });
    }

    /// Applies a processor's report; true when it ends a failure (clients need a resync).
    pub fn cache_report(&self, report: CacheStatus) -> bool {
        let now = Instant::now();
        let mut recovered = false;
        self.update(now, |state| {
            if report.healthy {
                recovered = state.cache_failing.take().is_some();
                state.distrust = None;
                return;
            }
            let reason = report.reason.unwrap_or_else(|| "unknown".to_owned());
            let until = now + Duration::from_millis(CACHE_STATUS_LEASE_MS);
            state.cache_failing = Some((reason, until));
            if state.distrust.is_none() {
                let baselines = state
                    .upstream
                    .processors()
                    .map(|p| (p.beat.processor.clone(), p.beat.cache_repairs))
                    .collect();
                state.distrust = Some(Distrust {
                    since: now,
                    baselines,
                });
            }
        });
        recovered
    }

    /// Applies a processor's beat; a beat showing a cache repair made since the last failure
    /// report makes the cache trusted again.
    pub fn heartbeat(&self, beat: Heartbeat) {
        let now = Instant::now();
        self.update(now, |state| {
            let id = beat.processor.clone();
            let (fresh, repairs, leaving) = (beat.cache_fresh, beat.cache_repairs, beat.leaving);
            state.upstream.beat(beat, now);
            let started = state.upstream.processor(&id).map(|p| p.started);
            let Some(distrust) = &mut state.distrust else {
                return;
            };
            if leaving {
                distrust.baselines.remove(&id);
                return;
            }
            let repaired = fresh
                && match distrust.baselines.get(&id) {
                    Some(&before) => repairs > before,
                    // Started after the failure: each of its repairs came after it too.
                    None => repairs > 0 && started.is_some_and(|s| s > distrust.since),
                };
            if repaired {
                tracing::info!(processor = %id, "cache repaired from Postgres; trusting it again");
                state.distrust = None;
            } else {
                distrust.baselines.entry(id).or_insert(repairs);
            }
        });
    }

    /// An update arrived: proof that records flow. Cheap while the feed is live (noted for
    /// the next tick); while it is down it ends an upstream stall at once, before the update
    /// reaches any client.
    pub fn update_received(&self) {
        let now = Instant::now();
        if self.is_live() {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.update_seen = Some(now);
            return;
        }
        self.update(now, |state| state.update_seen = Some(now));
    }

    /// Re-evaluates what time decides: a failure report that ran out (true: clients need a
    /// resync), a heartbeat or silence limit passed.
    pub fn tick(&self, now: Instant) -> bool {
        let mut expired = false;
        self.update(now, |state| {
            if matches!(&state.cache_failing, Some((_, until)) if *until <= now) {
                state.cache_failing = None;
                expired = true;
                tracing::info!("no cache failure reported lately; live updates resume");
            }
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(feed: &Feed) -> Option<String> {
        feed.status().down
    }

    fn beat(id: &str, uptime_ms: u64, cache_fresh: bool, cache_repairs: u64) -> Heartbeat {
        Heartbeat {
            processor: id.into(),
            uptime_ms,
            idle_ms: 0,
            postgres: true,
            kafka: true,
            cache_fresh,
            cache_repairs,
            leaving: false,
        }
    }

    #[test]
    fn feed_is_live_only_while_subscribed_and_no_cache_failure_holds() {
        let feed = Feed::new(Duration::ZERO, Duration::ZERO);
        assert!(!feed.is_live(), "down until the first subscription");
        feed.link(Ok(()));
        assert!(feed.is_live());

        let changes = feed.watch();
        assert!(!feed.cache_report(CacheStatus::failing("OOM command not allowed")));
        assert_eq!(
            down(&feed).as_deref(),
            Some("cache writes fail: OOM command not allowed")
        );
        assert!(
            changes.has_changed().unwrap_or(false),
            "connections are woken"
        );

        // A lost subscription is the more basic reason while both hold.
        feed.link(Err("Redis pub/sub connection lost".into()));
        assert_eq!(
            down(&feed).as_deref(),
            Some("Redis pub/sub connection lost")
        );
        feed.link(Ok(()));
        assert!(!feed.is_live(), "the failure report still holds");

        // A report is a lease: it ends by itself when no renewal comes, but the cache stays
        // distrusted until a repair is seen.
        let lease = Duration::from_millis(CACHE_STATUS_LEASE_MS);
        assert!(!feed.tick(Instant::now()), "not over yet");
        assert!(!feed.is_live());
        assert!(feed.tick(Instant::now() + lease + Duration::from_millis(1)));
        assert!(feed.is_live());
        assert!(feed.status().receiving);
        assert!(feed.cache_distrusted().is_some());

        // A healthy report (sent after a repair) ends a failure at once, asks for a resync
        // and makes the cache trusted.
        feed.cache_report(CacheStatus::failing("READONLY"));
        assert!(!feed.is_live());
        assert!(feed.cache_report(CacheStatus::healthy()));
        assert!(feed.is_live());
        assert_eq!(feed.cache_distrusted(), None);
        assert!(!feed.cache_report(CacheStatus::healthy()), "nothing to end");
    }

    #[test]
    fn only_a_repair_after_the_failure_makes_the_cache_trusted_again() {
        let feed = Feed::new(Duration::ZERO, Duration::ZERO);
        feed.link(Ok(()));
        feed.heartbeat(beat("old", 60_000, true, 1));
        feed.cache_report(CacheStatus::failing("OOM"));
        assert!(feed.cache_distrusted().is_some());
        // Another processor that repaired long before the failure proves nothing.
        feed.heartbeat(beat("other", 60_000, true, 3));
        feed.heartbeat(beat("old", 61_000, false, 1));
        feed.heartbeat(beat("other", 61_000, true, 3));
        assert!(feed.cache_distrusted().is_some());
        // The failing processor repairs: its count rises. Trusted once its reports stop.
        feed.heartbeat(beat("old", 62_000, true, 2));
        assert!(
            feed.cache_distrusted().is_some(),
            "its failure report still holds"
        );
        let lease = Duration::from_millis(CACHE_STATUS_LEASE_MS + 1);
        feed.tick(Instant::now() + lease);
        assert_eq!(feed.cache_distrusted(), None);

        // Failure again; its processor dies; a new one starts after it and repairs at start.
        feed.cache_report(CacheStatus::failing("OOM"));
        feed.heartbeat(Heartbeat {
            leaving: true,
            ..beat("old", 63_000, false, 2)
        });
        feed.heartbeat(beat("new", 0, false, 0));
        assert!(feed.cache_distrusted().is_some());
        feed.heartbeat(beat("new", 1000, true, 1));
        feed.tick(Instant::now() + lease);
        assert_eq!(feed.cache_distrusted(), None);
    }

    #[test]
    fn the_upstream_stops_and_resumes_the_feed_without_touching_readiness() {
        let feed = Feed::new(Duration::from_secs(3), Duration::ZERO);
        feed.link(Ok(()));
        assert!(feed.is_live());
        feed.tick(Instant::now() + Duration::from_secs(4));
        let status = feed.status();
        assert!(status.down.unwrap().contains("no heartbeat"));
        assert!(status.receiving && status.cache_trusted);
        feed.update_received();
        assert!(feed.is_live(), "an update is a sign of life");
        feed.heartbeat(Heartbeat {
            kafka: false,
            ..beat("p", 5000, true, 1)
        });
        assert!(down(&feed).unwrap().contains("cannot reach Kafka"));
        feed.heartbeat(beat("p", 6000, true, 1));
        assert!(feed.is_live());
    }
}
