//! The freshness objective judged: a [`Summary`] against thresholds gives a [`Verdict`].
//!
//! Pure and shared: the operator maps the verdict to its `Fresh` condition's reason and
//! message, and the fault run against the real binaries asserts the same verdict, so what the
//! test proves is what the operator reports, without the demo depending on the operator.
//!
//! The verdict, most urgent first: [`Verdict::CanaryUnreachable`] (the canary cannot connect:
//! nothing else can be judged), [`Verdict::Frozen`] (a freeze longer than the allowed one, one
//! in progress included), [`Verdict::NoData`] (no price with an age in the window),
//! [`Verdict::Stale`] (p99 age above the objective), else [`Verdict::WithinObjective`].

use crate::window::{Blindness, Sight, Summary};
use std::time::Duration;

/// What a pipeline's freshness is judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// The highest p99 age allowed.
    pub p99: Duration,
    /// The longest freeze allowed.
    pub max_freeze: Duration,
}

/// What the canary's figures say about the objective.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The canary cannot connect to odds-service; the connection error.
    CanaryUnreachable(String),
    /// A freeze longer than allowed ended in the window, or is in progress while blind.
    Frozen,
    /// No aged price in the window.
    NoData,
    /// The p99 age (milliseconds) is above the objective.
    Stale { p99_ms: u64 },
    /// Both thresholds hold.
    WithinObjective,
}

impl Verdict {
    /// Whether the pipeline is fresh.
    pub fn is_fresh(&self) -> bool {
        *self == Verdict::WithinObjective
    }
}

/// The verdict on `summary` (see the module doc for the order).
pub fn judge(summary: &Summary, thresholds: &Thresholds) -> Verdict {
    if let Sight::Blind {
        why: Blindness::Unreachable(error),
        ..
    } = &summary.sight
    {
        return Verdict::CanaryUnreachable(error.clone());
    }
    if summary.longest_freeze > thresholds.max_freeze {
        return Verdict::Frozen;
    }
    let Some(p99_ms) = summary.p99_ms.filter(|_| summary.p50_ms.is_some()) else {
        return Verdict::NoData;
    };
    if u128::from(p99_ms) > thresholds.p99.as_millis() {
        return Verdict::Stale { p99_ms };
    }
    Verdict::WithinObjective
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p99: Option<u64>, freeze_ms: u64, sight: Sight) -> Summary {
        Summary {
            measured_at: chrono::Utc::now(),
            window: Duration::from_secs(60),
            frames_sampled: u64::from(p99.is_some()),
            p50_ms: p99.map(|p| p / 2),
            p99_ms: p99,
            longest_freeze: Duration::from_millis(freeze_ms),
            longest_freeze_key: None,
            supplier_skew_p50_ms: None,
            sight,
        }
    }

    const THRESHOLDS: Thresholds = Thresholds {
        p99: Duration::from_millis(250),
        max_freeze: Duration::from_secs(1),
    };

    #[test]
    fn the_most_urgent_verdict_wins() {
        let unreachable = Sight::Blind {
            since: chrono::Utc::now(),
            why: Blindness::Unreachable("refused".into()),
        };
        assert_eq!(
            judge(&summary(Some(900), 5_000, unreachable), &THRESHOLDS),
            Verdict::CanaryUnreachable("refused".into())
        );
        assert_eq!(
            judge(&summary(Some(900), 1_001, Sight::Watching), &THRESHOLDS),
            Verdict::Frozen
        );
        assert_eq!(
            judge(&summary(None, 1_000, Sight::Watching), &THRESHOLDS),
            Verdict::NoData
        );
        assert_eq!(
            judge(&summary(Some(251), 0, Sight::Watching), &THRESHOLDS),
            Verdict::Stale { p99_ms: 251 }
        );
        let fresh = judge(&summary(Some(250), 1_000, Sight::Watching), &THRESHOLDS);
        assert_eq!(fresh, Verdict::WithinObjective);
        assert!(fresh.is_fresh());
        assert!(!Verdict::Frozen.is_fresh());
    }
}
