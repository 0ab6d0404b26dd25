//! Freeze, as a client sees it: how long a WebSocket client showed a price while the supplier
//! had already sent a newer one.
//!
//! For one client and one (event, market): while it shows version `v` (from the moment it
//! received `v` until it receives anything newer), it is frozen from the moment the supplier
//! sent the first version above `v`. Receiving an older or equal version (a snapshot after a
//! reconnect) ends nothing; receiving any newer one, even if not the newest, does: prices are
//! moving again. The freeze of a fault is the longest such interval, over every client and
//! market, inside the fault's window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Current odds are per (event, market).
pub type Key = (String, String);

/// The versions the supplier sent, per (event, market), each with when it was seen on the
/// supplier's stream (the moment ingest received it too).
#[derive(Default, Clone, Debug)]
pub struct Upstream {
    pub accepted: BTreeMap<Key, Vec<(u64, Instant)>>,
}

impl Upstream {
    /// Records a version; one not above the newest (an image re-sent on reconnect) is old news.
    pub fn record(&mut self, key: Key, version: u64, at: Instant) {
        let versions = self.accepted.entry(key).or_default();
        if versions.last().is_none_or(|(newest, _)| version > *newest) {
            versions.push((version, at));
        }
    }

    /// When the supplier sent the first version of `key` above `version`.
    pub fn first_above(&self, key: &Key, version: u64) -> Option<Instant> {
        let versions = self.accepted.get(key)?;
        let first = versions.partition_point(|(v, _)| *v <= version);
        versions.get(first).map(|(_, at)| *at)
    }

    /// The first version of `key` the supplier sent at or after `at`.
    pub fn first_sent_since(&self, key: &Key, at: Instant) -> Option<u64> {
        let versions = self.accepted.get(key)?;
        let first = versions.partition_point(|(_, sent)| *sent < at);
        versions.get(first).map(|(v, _)| *v)
    }
}

/// A client shown an older version of a market after a newer one.
#[derive(Clone, Debug)]
pub struct Regression {
    pub at: Instant,
    pub key: Key,
    pub before: u64,
    pub shown: u64,
}

/// What one client was shown: per (event, market), each newer version with when it arrived.
#[derive(Default, Clone, Debug)]
pub struct Shown {
    pub receipts: BTreeMap<Key, Vec<(Instant, u64)>>,
    pub regressions: Vec<Regression>,
}

impl Shown {
    pub fn record(&mut self, key: Key, version: u64, at: Instant) {
        let newest = self.newest(&key);
        if version < newest {
            self.regressions.push(Regression {
                at,
                key,
                before: newest,
                shown: version,
            });
        } else if version > newest {
            self.receipts.entry(key).or_default().push((at, version));
        }
    }

    /// The newest version shown for `key` (0 before any).
    pub fn newest(&self, key: &Key) -> u64 {
        self.receipts
            .get(key)
            .and_then(|r| r.last())
            .map_or(0, |(_, v)| *v)
    }
}

/// The longest freeze and where it was.
#[derive(Clone, Debug, Default)]
pub struct Freeze {
    pub longest: Duration,
    pub key: Option<Key>,
}

/// The longest freeze of `shown` inside `[from, to]`. A freeze that began before `from` counts
/// from `from`: an outage's own length is not what the fault run measures after it.
pub fn longest_freeze(upstream: &Upstream, shown: &Shown, from: Instant, to: Instant) -> Freeze {
    let mut worst = Freeze::default();
    for key in upstream.accepted.keys() {
        let receipts = shown.receipts.get(key).map_or(&[][..], Vec::as_slice);
        // Before its first receipt the client held nothing (version 0) since `from`.
        let held = std::iter::once((from, 0))
            .chain(receipts.iter().copied())
            .collect::<Vec<_>>();
        for (i, (since, version)) in held.iter().enumerate() {
            let until = held.get(i + 1).map_or(to, |(at, _)| *at);
            let Some(newer) = upstream.first_above(key, *version) else {
                continue;
            };
            let start = newer.max(*since).max(from);
            let end = until.min(to);
            let frozen = end.saturating_duration_since(start);
            if frozen > worst.longest {
                worst = Freeze {
                    longest: frozen,
                    key: Some(key.clone()),
                };
            }
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        ("MATCH_001".to_owned(), "1X2".to_owned())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_freeze_runs_from_the_first_newer_version_sent_to_the_next_newer_one_shown() {
        let t0 = Instant::now();
        let mut upstream = Upstream::default();
        let mut shown = Shown::default();
        upstream.record(key(), 1, t0);
        shown.record(key(), 1, t0 + ms(10));
        upstream.record(key(), 2, t0 + ms(100));
        upstream.record(key(), 3, t0 + ms(200));
        // Version 2 is skipped (conflated): showing 3 ends the freeze that 2 began.
        shown.record(key(), 3, t0 + ms(900));
        let freeze = longest_freeze(&upstream, &shown, t0, t0 + ms(1000));
        assert_eq!(freeze.longest, ms(800));
        assert_eq!(freeze.key, Some(key()));
    }

    #[test]
    fn a_snapshot_of_the_version_already_shown_ends_nothing_and_an_older_one_is_a_regression() {
        let t0 = Instant::now();
        let mut upstream = Upstream::default();
        let mut shown = Shown::default();
        upstream.record(key(), 5, t0);
        shown.record(key(), 5, t0);
        upstream.record(key(), 6, t0 + ms(100));
        shown.record(key(), 5, t0 + ms(300));
        shown.record(key(), 4, t0 + ms(400));
        let freeze = longest_freeze(&upstream, &shown, t0, t0 + ms(600));
        assert_eq!(freeze.longest, ms(500), "still frozen at the window's end");
        assert_eq!(shown.regressions.len(), 1);
        assert_eq!(
            (shown.regressions[0].before, shown.regressions[0].shown),
            (5, 4)
        );
    }

    #[test]
    fn a_freeze_that_began_before_the_window_counts_from_its_start() {
        let t0 = Instant::now();
        let mut upstream = Upstream::default();
        let mut shown = Shown::default();
        upstream.record(key(), 1, t0);
        shown.record(key(), 1, t0);
        upstream.record(key(), 2, t0 + ms(100));
        shown.record(key(), 2, t0 + ms(2500));
        let from_restore = longest_freeze(&upstream, &shown, t0 + ms(2000), t0 + ms(3000));
        assert_eq!(from_restore.longest, ms(500));
        // Nothing newer upstream: a quiet market is not frozen.
        let quiet = longest_freeze(&upstream, &shown, t0 + ms(2600), t0 + ms(9000));
        assert_eq!(quiet.longest, Duration::ZERO);
    }

    #[test]
    fn image_resends_are_not_new_versions() {
        let t0 = Instant::now();
        let mut upstream = Upstream::default();
        upstream.record(key(), 3, t0);
        upstream.record(key(), 3, t0 + ms(50));
        upstream.record(key(), 2, t0 + ms(60));
        assert_eq!(upstream.accepted[&key()], vec![(3, t0)]);
        assert_eq!(upstream.first_sent_since(&key(), t0 + ms(1)), None);
        assert_eq!(upstream.first_above(&key(), 2), Some(t0));
    }
}
