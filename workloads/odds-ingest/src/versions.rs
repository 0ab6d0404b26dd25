//! Watching the supplier's versions: gaps and regressions are counted, never swallowed.
//!
//! The contract says an event's `version` rises with every update, across supplier restarts
//! too. Ingest passes every valid update on regardless (the processor's version guard decides
//! what is current), but it is the first stage to see a supplier break the rule, so it says
//! so: a gap (versions skipped: updates missed while disconnected, or a restarted supplier's
//! new base) and a regression (a version not newer than the last seen) are counted, and the
//! first regression of each event is logged with both versions. A `repeated` version is
//! expected right after a reconnect, when the supplier's image repeats current versions; an
//! `older` one means the supplier went backwards and its updates will be ignored downstream.

use odds_contracts::OddsUpdate;
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
            VersionCheck::Repeated => Some("repeated"),
            VersionCheck::Older => Some("older"),
            VersionCheck::InOrder | VersionCheck::Gap { .. } => None,
        }
    }
}

/// The last version seen per event.
#[derive(Debug, Default)]
pub struct VersionTracker {
    last: HashMap<String, u64>,
    logged_regression: HashSet<String>,
}

impl VersionTracker {
    /// Checks `update` against the last version of its event and remembers the newest.
    pub fn observe(&mut self, update: &OddsUpdate) -> VersionCheck {
        if self.last.len() >= MAX_TRACKED_EVENTS && !self.last.contains_key(&update.event_id) {
            self.last.clear();
            self.logged_regression.clear();
        }
        let Some(last) = self.last.get_mut(&update.event_id) else {
            self.last.insert(update.event_id.clone(), update.version);
            return VersionCheck::InOrder;
        };
        let check = match update.version {
            v if v == *last + 1 => VersionCheck::InOrder,
            v if v > *last => VersionCheck::Gap {
                skipped: v - *last - 1,
            },
            v if v == *last => VersionCheck::Repeated,
            _ => VersionCheck::Older,
        };
        if check == VersionCheck::Older && self.logged_regression.insert(update.event_id.clone()) {
            tracing::warn!(
                event_id = %update.event_id,
                version = update.version,
                last_seen = *last,
                "supplier sent an older version than before; downstream stages will ignore it \
                 (further regressions of this event are counted, not logged)"
            );
        }
        *last = (*last).max(update.version);
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odds_testkit::sample_update;

    #[test]
    fn gaps_and_regressions_are_told_apart() {
        let mut tracker = VersionTracker::default();
        let mut check = |event: &str, version| tracker.observe(&sample_update(event, version));
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
}
