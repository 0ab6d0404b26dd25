//! Watching the supplier's versions: gaps and regressions are counted, never swallowed.
//!
//! The contract says an event's `version` rises with every update, across supplier restarts
//! too. Ingest passes every valid update on regardless (the processor's version guard decides
//! what is current), but it is the first stage to see a supplier break the rule, so it says
//! so: a gap (versions skipped: updates missed while disconnected, or a restarted supplier's
//! new base) and a regression (a version not newer than the last seen of the same market)
//! are counted, and the first regression of each event is logged with both versions. Versions
//! count all of an event's markets, so gaps are judged per event and regressions per (event,
//! market): a supplier's image re-sends each market at its own, possibly older, version. A `repeated` version is
//! expected right after a reconnect, when the supplier's image repeats current versions; an
//! `older` one means the supplier went backwards and its updates will be ignored downstream.

use odds_runtime::regressions;
use std::collections::{HashMap, HashSet};

/// Events remembered at most; beyond this the memory is reset (counting restarts from scratch
/// rather than growing without bound on a supplier with ever-new event ids).
const MAX_TRACKED_EVENTS: usize = 1_000_000;

/// What an update's version says about the supplier's sequence for its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionCheck {
    /// First update of the event seen, or exactly one more than the last.
    InOrder,
    /// Newer, but `skipped` versions were never seen.
    Gap { skipped: u64 },
    /// The same version again.
    Repeated,
    /// Older than the last version seen.
    Older,
}

impl VersionCheck {
    /// Metric label of a regression.
    pub fn regression_reason(self) -> Option<&'static str> {
        match self {
            VersionCheck::Repeated => Some(regressions::REPEATED),
            VersionCheck::Older => Some(regressions::OLDER),
            VersionCheck::InOrder | VersionCheck::Gap { .. } => None,
        }
    }
}

/// The last versions seen of one event.
#[derive(Debug, Default)]
struct EventVersions {
    /// The newest version of any market.
    newest: u64,
    /// The newest version per market (a handful at most).
    markets: Vec<(String, u64)>,
}

impl EventVersions {
    /// Checks `version` against this event's last (and its `market`'s), and remembers the
    /// newest; also returns the market's last version before this one.
    fn observe(&mut self, market: &str, version: u64) -> (VersionCheck, u64) {
        let first_of_event = self.markets.is_empty();
        let slot = match self.markets.iter().position(|(m, _)| *m == market) {
            Some(i) => i,
            None => {
                self.markets.push((market.to_owned(), 0));
                self.markets.len() - 1
            }
        };
        let market_last = self.markets[slot].1;
        let newest = self.newest;
        let check = match version {
            _ if first_of_event => VersionCheck::InOrder,
            v if v == market_last => VersionCheck::Repeated,
            v if v < market_last => VersionCheck::Older,
            v if v > newest.saturating_add(1) => VersionCheck::Gap {
                skipped: v - newest - 1,
            },
            // One more than the event's newest, or a market's first quote at or below it.
            _ => VersionCheck::InOrder,
        };
        self.markets[slot].1 = market_last.max(version);
        self.newest = newest.max(version);
        (check, market_last)
    }
}

/// The last versions seen per event and market.
#[derive(Debug, Default)]
pub struct VersionTracker {
    last: HashMap<String, EventVersions>,
    logged_regression: HashSet<String>,
}

impl VersionTracker {
    /// Checks an update's `version` against the last of its event (and of its `market`), and
    /// remembers the newest.
    pub fn observe(&mut self, event_id: &str, market: &str, version: u64) -> VersionCheck {
        // One hash lookup for a known event (the per-update path), no allocation; the id is
        // copied only for a new event.
        let (check, market_last) = match self.last.get_mut(event_id) {
            Some(versions) => versions.observe(market, version),
            None => {
                if self.last.len() >= MAX_TRACKED_EVENTS {
                    self.last.clear();
                    self.logged_regression.clear();
                }
                let mut versions = EventVersions::default();
                let seen = versions.observe(market, version);
                self.last.insert(event_id.to_owned(), versions);
                seen
            }
        };
        if check == VersionCheck::Older && self.logged_regression.insert(event_id.to_owned()) {
            tracing::warn!(
                event_id,
                market,
                version,
                last_seen = market_last,
                "supplier sent an older version than before; downstream stages will ignore it \
                 (further regressions of this event are counted, not logged)"
            );
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_regressions_are_told_apart() {
        let mut tracker = VersionTracker::default();
        let mut check = |event: &str, version| tracker.observe(event, "1X2", version);
        assert_eq!(check("E1", 5), VersionCheck::InOrder);
        assert_eq!(check("E1", 6), VersionCheck::InOrder);
        assert_eq!(check("E1", 9), VersionCheck::Gap { skipped: 2 });
        assert_eq!(check("E1", 9), VersionCheck::Repeated);
        assert_eq!(check("E1", 3), VersionCheck::Older);
        assert_eq!(check("E1", 10), VersionCheck::InOrder, "the newest is kept");
        assert_eq!(check("E2", 1), VersionCheck::InOrder);
        assert_eq!(VersionCheck::Older.regression_reason(), Some("older"));
        assert_eq!(VersionCheck::Gap { skipped: 1 }.regression_reason(), None);
    }

    #[test]
    fn versions_compare_exactly_across_the_contract_range() {
        let mut tracker = VersionTracker::default();
        let mut check = |version| tracker.observe("E1", "1X2", version);
        let exact = 1u64 << 53;
        let top = odds_contracts::MAX_VERSION;
        assert_eq!(check(exact), VersionCheck::InOrder);
        assert_eq!(
            check(exact + 1),
            VersionCheck::InOrder,
            "not a repeat of 2^53"
        );
        assert_eq!(check(exact), VersionCheck::Older);
        assert_eq!(
            check(top - 1),
            VersionCheck::Gap {
                skipped: top - exact - 3
            }
        );
        assert_eq!(check(top), VersionCheck::InOrder);
        assert_eq!(check(top), VersionCheck::Repeated);
        assert_eq!(check(top - 1), VersionCheck::Older);
    }

    #[test]
    fn markets_share_the_event_sequence_and_regress_on_their_own() {
        let mut tracker = VersionTracker::default();
        let mut check = |market: &str, version| tracker.observe("E1", market, version);
        assert_eq!(check("1X2", 5), VersionCheck::InOrder);
        assert_eq!(check("HT_1X2", 6), VersionCheck::InOrder);
        assert_eq!(
            check("1X2", 7),
            VersionCheck::InOrder,
            "no gap: 6 was HT_1X2's"
        );
        assert_eq!(check("HT_1X2", 9), VersionCheck::Gap { skipped: 1 });
        // A reconnect's image: each market at its own latest version, repeated, not older.
        assert_eq!(check("1X2", 7), VersionCheck::Repeated);
        assert_eq!(check("HT_1X2", 9), VersionCheck::Repeated);
        assert_eq!(check("1X2", 6), VersionCheck::Older);
        assert_eq!(VersionCheck::Gap { skipped: 1 }.regression_reason(), None);
    }
}
