//! The leader's canaries: one [`odds_canary::Canary`] per pipeline, started by the reconcile
//! that finds the pipeline valid and running, replaced when its objective or Service changes,
//! stopped when the pipeline is paused, invalid or deleted, and all stopped with the
//! controller (a replica that loses the lease drops them with its context). Why they run here
//! is said in [`crate::freshness`].
//!
//! Their figures also become metrics, labelled with the pipeline, for the burn-rate alerts:
//! `canary_frames_total` and `canary_slow_frames_total` (frames older than the pipeline's
//! `freshnessP99Ms`: the objective allows 1 % of them), the window's `canary_age_p99_seconds`
//! and `canary_longest_freeze_seconds`, `canary_watching` (0 while blind), and the
//! objective itself (`slo_freshness_p99_seconds`, `slo_max_freeze_seconds`).

use crate::freshness::Objective;
use crate::metrics::FreshnessMetrics;
use odds_canary::{Canary, CanaryConfig, Sight, Summary};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// What measures one pipeline.
#[derive(Debug)]
enum Measure {
    /// A canary client connected to the pipeline's Service.
    Live(Canary),
    /// Summaries handed in by the caller ([`Canaries::feed`]): the in-memory tests, which
    /// have no Service to connect to.
    Fed(Option<Summary>),
}

#[derive(Debug)]
struct Entry {
    url: String,
    objective: Objective,
    /// `slo.window` as the user wrote it, for the status.
    window: String,
    measure: Measure,
    /// The frame counts already added to the counters.
    counted: (u64, u64),
}

/// Every pipeline's canary, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Canaries {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Make [`Measure::Fed`] canaries instead of live ones.
    fed: bool,
}

/// What a pipeline's canary says now, with the objective it is judged by.
#[derive(Clone, Debug)]
pub struct Reading {
    pub summary: Summary,
    pub objective: Objective,
    pub window: String,
}

impl Canaries {
    /// Canaries that connect to the pipelines' Services.
    pub fn live() -> Canaries {
        Canaries::default()
    }

    /// Canaries whose summaries the caller hands in with [`Canaries::feed`].
    pub fn fed() -> Canaries {
        Canaries {
            fed: true,
            ..Canaries::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes sure pipeline `key` is measured at `url` against `objective` (a changed URL,
    /// sample or window starts a new canary; a changed threshold only changes the verdict).
    /// Must be called inside a tokio runtime.
    pub fn ensure(&self, key: &str, url: String, objective: Objective, window: String) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            let same_canary = entry.url == url
                && entry.objective.sample == objective.sample
                && entry.objective.window == objective.window;
            if same_canary {
                entry.objective = objective;
                entry.window = window;
                return;
            }
        }
        let measure = if self.fed {
            Measure::Fed(None)
        } else {
            tracing::info!(pipeline = key, %url, "starting the freshness canary");
            Measure::Live(Canary::start(CanaryConfig {
                url: url.clone(),
                sample: objective.sample.clone(),
                window: objective.window,
            }))
        };
        entries.insert(
            key.to_string(),
            Entry {
                url,
                objective,
                window,
                measure,
                counted: (0, 0),
            },
        );
    }

    /// Stops measuring pipeline `key` (its canary disconnects).
    pub fn stop(&self, key: &str) {
        if self.lock().remove(key).is_some() {
            tracing::info!(pipeline = key, "stopped the freshness canary");
        }
    }

    /// Whether pipeline `key` is measured.
    pub fn measures(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Hands in the summary of a fed canary (ignored for a live one).
    pub fn feed(&self, key: &str, summary: Summary) {
        if let Some(entry) = self.lock().get_mut(key) {
            if let Measure::Fed(slot) = &mut entry.measure {
                *slot = Some(summary);
            }
        }
    }

    /// What pipeline `key`'s canary says now; `None` when it is not measured (or a fed
    /// canary was handed nothing yet).
    pub fn reading(&self, key: &str) -> Option<Reading> {
        let entries = self.lock();
        let entry = entries.get(key)?;
        let summary = match &entry.measure {
            Measure::Live(canary) => canary.summary(),
            Measure::Fed(summary) => summary.clone()?,
        };
        Some(Reading {
            summary,
            objective: entry.objective.clone(),
            window: entry.window.clone(),
        })
    }

    /// The keys of every measured pipeline.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Publishes pipeline `key`'s reading as metrics (see the module doc).
    pub fn report(&self, metrics: &FreshnessMetrics, namespace: &str, name: &str, key: &str) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(key) else {
            return;
        };
        let (summary, totals) = match &entry.measure {
            Measure::Live(canary) => (canary.summary(), canary.frames_over(entry.objective.p99)),
            Measure::Fed(Some(summary)) => (summary.clone(), (summary.frames_sampled, 0)),
            Measure::Fed(None) => return,
        };
        let labels = [namespace, name];
        let (frames, slow) = totals;
        metrics
            .frames
            .with_label_values(&labels)
            .inc_by(frames.saturating_sub(entry.counted.0));
        metrics
            .slow_frames
            .with_label_values(&labels)
            .inc_by(slow.saturating_sub(entry.counted.1));
        entry.counted = (frames.max(entry.counted.0), slow.max(entry.counted.1));
        let seconds = |ms: Option<u64>| ms.map_or(f64::NAN, |ms| ms as f64 / 1000.0);
        metrics
            .age_p99
            .with_label_values(&labels)
            .set(seconds(summary.p99_ms));
        metrics
            .longest_freeze
            .with_label_values(&labels)
            .set(summary.longest_freeze.as_secs_f64());
        metrics
            .watching
            .with_label_values(&labels)
            .set(i64::from(summary.sight == Sight::Watching));
        metrics
            .objective_p99
            .with_label_values(&labels)
            .set(entry.objective.p99.as_secs_f64());
        metrics
            .objective_freeze
            .with_label_values(&labels)
            .set(entry.objective.max_freeze.as_secs_f64());
    }
}
