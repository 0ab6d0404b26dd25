//! Version regressions, counted and logged alike at every stage.
//!
//! The contract says an event's `version` only rises, so an update whose version is not newer
//! than the last one a stage saw of its (event, market) is a regression. Each stage counts
//! them in its `version_regressions_total{reason}` and logs the first `older` one of each
//! event with both versions, the way ingest started doing it: `repeated` (the same version
//! again) is expected after a supplier's reconnect image or a Kafka redelivery; `older` means
//! something upstream went backwards, and that update is ignored from there on.

use prometheus::IntCounterVec;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// The reason label of the same version again.
pub const REPEATED: &str = "repeated";
/// The reason label of a version older than the last seen.
pub const OLDER: &str = "older";
/// Every reason label, for pre-creating the series.
pub const REASONS: [&str; 2] = [REPEATED, OLDER];

/// Events whose first `older` regression is remembered as logged; beyond this the memory is
/// reset (a new round of log lines rather than unbounded memory).
const MAX_LOGGED_EVENTS: usize = 100_000;
/// (event, market) pairs whose newest version [`LatestVersions`] remembers at most.
const MAX_TRACKED_MARKETS: usize = 1_000_000;

/// The reason label of `version` after `last_seen`, if it is a regression.
pub fn reason(version: u64, last_seen: u64) -> Option<&'static str> {
    match version.cmp(&last_seen) {
        std::cmp::Ordering::Greater => None,
        std::cmp::Ordering::Equal => Some(REPEATED),
        std::cmp::Ordering::Less => Some(OLDER),
    }
}

/// A stage's regression counter and log (cheap to clone: clones share the log's memory).
#[derive(Clone, Debug)]
pub struct RegressionLog {
    counter: IntCounterVec,
    /// Where the regression was seen, for the log line.
    seen_at: &'static str,
    logged: Arc<Mutex<HashSet<String>>>,
}

impl RegressionLog {
    /// A log counting into `counter` (labelled by `reason`), whose series it pre-creates so
    /// dashboards show zeros instead of gaps.
    pub fn new(counter: IntCounterVec, seen_at: &'static str) -> RegressionLog {
        for reason in REASONS {
            counter.with_label_values(&[reason]);
        }
        RegressionLog {
            counter,
            seen_at,
            logged: Arc::default(),
        }
    }

    /// Counts `version` of (`event_id`, `market`) if it is not newer than `last_seen`, and
    /// logs the event's first `older` one. Returns the reason when it was a regression.
    pub fn record(
        &self,
        event_id: &str,
        market: &str,
        version: u64,
        last_seen: u64,
    ) -> Option<&'static str> {
        let reason = reason(version, last_seen)?;
        self.counter.with_label_values(&[reason]).inc();
        if reason == OLDER && self.first_of_event(event_id) {
            tracing::warn!(
                event_id,
                market,
                version,
                last_seen,
                seen_at = self.seen_at,
                "an older version than before arrived; it is ignored \
                 (further regressions of this event are counted, not logged)"
            );
        }
        Some(reason)
    }

    fn first_of_event(&self, event_id: &str) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        if logged.contains(event_id) {
            return false;
        }
        if logged.len() >= MAX_LOGGED_EVENTS {
            logged.clear();
        }
        logged.insert(event_id.to_owned())
    }
}

/// The newest version seen per (event, market), for a stage that has no store to ask.
#[derive(Debug, Default)]
pub struct LatestVersions {
    newest: HashMap<String, Vec<(String, u64)>>,
    markets: usize,
}

impl LatestVersions {
    /// Remembers `version` if it is the newest of its (event, market) and returns the newest
    /// seen before it (`None` the first time).
    pub fn observe(&mut self, event_id: &str, market: &str, version: u64) -> Option<u64> {
        if self.markets >= MAX_TRACKED_MARKETS && !self.newest.contains_key(event_id) {
            self.newest.clear();
            self.markets = 0;
        }
        let markets = match self.newest.get_mut(event_id) {
            Some(markets) => markets,
            None => self.newest.entry(event_id.to_owned()).or_default(),
        };
        match markets.iter_mut().find(|(m, _)| m == market) {
            Some((_, newest)) => {
                let before = *newest;
                *newest = before.max(version);
                Some(before)
            }
            None => {
                markets.push((market.to_owned(), version));
                self.markets += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn regressions_are_counted_by_reason_exactly_at_every_magnitude() {
        let counter =
            IntCounterVec::new(Opts::new("version_regressions_total", "test"), &["reason"])
                .unwrap();
        let log = RegressionLog::new(counter.clone(), "test");
        let top = i64::MAX as u64;
        let exact = 1u64 << 53;
        assert_eq!(log.record("E", "1X2", exact + 1, exact), None);
        assert_eq!(log.record("E", "1X2", exact, exact + 1), Some(OLDER));
        assert_eq!(log.record("E", "1X2", top, top), Some(REPEATED));
        assert_eq!(log.record("E", "1X2", top - 1, top), Some(OLDER));
        assert_eq!(counter.with_label_values(&[OLDER]).get(), 2);
        assert_eq!(counter.with_label_values(&[REPEATED]).get(), 1);
    }

    #[test]
    fn latest_versions_are_kept_per_market() {
        let mut latest = LatestVersions::default();
        let exact = 1u64 << 53;
        assert_eq!(latest.observe("E", "1X2", exact + 1), None);
        assert_eq!(latest.observe("E", "HT_1X2", 1), None);
        assert_eq!(latest.observe("E", "1X2", exact), Some(exact + 1));
        assert_eq!(latest.observe("E", "1X2", exact + 2), Some(exact + 1));
        assert_eq!(latest.observe("E", "1X2", 1), Some(exact + 2));
        assert_eq!(latest.observe("E", "HT_1X2", 2), Some(1));
    }
}
