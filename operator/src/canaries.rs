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
//!
//! Each canary also publishes its figures to the pipeline's Redis (the URL of its Secret,
//! [`RedisUrl`]), where odds-service serves them to the odds page (`GET /v1/freshness`): the
//! page shows the figures the status shows. A write that fails never stops the canary; it
//! counts in `canary_publish_failures_total` and is logged once per outage.

use crate::freshness::Objective;
use crate::metrics::FreshnessMetrics;
use crate::urls::RedisUrl;
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
    /// Where its figures are published, if the Redis Secret could be read.
    redis: Option<RedisUrl>,
    objective: Objective,
    /// `slo.window` as the user wrote it, for the status.
    window: String,
    measure: Measure,
    /// The frame counts already added to the counters.
    counted: (u64, u64),
    /// The failed publications already added to their counter.
    counted_publish_failures: u64,
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

    /// Makes sure pipeline `key` is measured at `url` against `objective`, its figures
    /// published to `redis` (a changed URL, Redis, sample or window starts a new canary; a
    /// changed threshold only changes the verdict). Must be called inside a tokio runtime.
    pub fn ensure(
        &self,
        key: &str,
        url: String,
        redis: Option<RedisUrl>,
        objective: Objective,
        window: String,
    ) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            let same_canary = entry.url == url
                && entry.redis == redis
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
            Measure::Live(start_live(key, &url, redis.as_ref(), &objective))
        };
        entries.insert(
            key.to_string(),
            Entry {
                url,
                redis,
                objective,
                window,
                measure,
                counted: (0, 0),
                counted_publish_failures: 0,
            },
        );
    }

    /// Where pipeline `key`'s canary publishes its figures (`None` when it is not measured or
    /// its Redis Secret could not be read).
    pub fn publishes_to(&self, key: &str) -> Option<RedisUrl> {
        self.lock().get(key)?.redis.clone()
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
        if let Measure::Live(canary) = &entry.measure {
            let failed = canary.publications().map_or(0, |p| p.failed());
            metrics
                .publish_failures
                .with_label_values(&labels)
                .inc_by(failed.saturating_sub(entry.counted_publish_failures));
            entry.counted_publish_failures = failed.max(entry.counted_publish_failures);
        }
    }
}

/// Who the operator's canaries name as their figures' source on the odds page.
pub const PUBLISHER: &str = "odds-operator";

/// A canary connected to `url`, publishing to `redis` when it is known (a URL that is not
/// one is logged and leaves the canary measuring, unpublished).
fn start_live(key: &str, url: &str, redis: Option<&RedisUrl>, objective: &Objective) -> Canary {
    tracing::info!(pipeline = key, %url, "starting the freshness canary");
    let mut canary = Canary::start(CanaryConfig {
        url: url.to_string(),
        sample: objective.sample.clone(),
        window: objective.window,
    });
    match redis {
        Some(RedisUrl(redis)) => {
            if let Err(error) = canary.publish_to(redis, PUBLISHER) {
                tracing::warn!(pipeline = key, %error, "the canary's figures are not published");
            }
        }
        None => {
            tracing::warn!(
                pipeline = key,
                "the Redis Secret is not readable: the canary's figures are not published"
            );
        }
    }
    canary
}
