//! Prometheus metrics of the operator, served as `odds_operator_*`: the names below are
//! registered without that prefix in the operator's [`PrefixedRegistry`] (see
//! [`odds_runtime::metrics`]), which the ops server exposes at `/metrics`.
//!
//! - `reconciles_total`, `reconcile_errors_total{error}` (the step that failed) and
//!   `reconcile_duration_seconds` (buckets up to the reconcile deadline);
//! - `api_errors_total{verb,code}`: the Kubernetes API errors the reconcile meets;
//! - `watch_errors_total{resource,reason}`: failures of the controller's list/watch streams;
//! - `leader`: 1 while this replica holds the leader Lease;
//! - `pipeline_condition{namespace,pipeline,type,status}`: 1 for each condition's current
//!   status, 0 for the others; removed when the pipeline is deleted;
//! - the freshness canaries' series ([`FreshnessMetrics`], fed by [`crate::canaries`]).

use crate::crd::{Condition, ConditionType, OddsPipeline};
use kube::runtime::watcher;
use kube::ResourceExt;
use odds_runtime::metrics::{component, PrefixedRegistry};
use prometheus::core::Collector;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use std::collections::BTreeSet;

/// Upper bounds of the reconcile duration buckets, in seconds: up to the 60 s reconcile
/// deadline (`controller::RECONCILE_DEADLINE`), after which a reconcile is abandoned.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// The values of a condition's `status`, each a series of `pipeline_condition`.
pub const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
    pub api_errors: IntCounterVec,
    pub watch_errors: IntCounterVec,
    pub leader: IntGauge,
    pub conditions: IntGaugeVec,
    pub freshness: FreshnessMetrics,
}

impl Metrics {
    /// The operator's registry: everything below is served as `odds_operator_<name>`.
    pub fn registry() -> Result<PrefixedRegistry, prometheus::Error> {
        PrefixedRegistry::new(component::OPERATOR)
    }

    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &PrefixedRegistry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registry.registered(IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        Ok(Self {
            reconciles: registry
                .registered(IntCounter::new("reconciles_total", "Reconciles started")?)?,
            failures: counter(
                "reconcile_errors_total",
                "Reconciles that failed, by the step that failed",
                &["error"],
            )?,
            duration: registry.registered(Histogram::with_opts(
                HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration")
                    .buckets(DURATION_BUCKETS.to_vec()),
            )?)?,
            api_errors: counter(
                "api_errors_total",
                "Kubernetes API errors the reconcile met, by verb and HTTP code",
                &["verb", "code"],
            )?,
            watch_errors: counter(
                "watch_errors_total",
                "Failures of the controller's list/watch streams, by resource and reason",
                &["resource", "reason"],
            )?,
            leader: registry.registered(IntGauge::new(
                "leader",
                "1 while this replica holds the leader Lease",
            )?)?,
            conditions: registry.registered(IntGaugeVec::new(
                Opts::new(
                    "pipeline_condition",
                    "OddsPipeline status conditions: 1 for the condition's current status",
                ),
                &["namespace", "pipeline", "type", "status"],
            )?)?,
            freshness: FreshnessMetrics::register(registry)?,
        })
    }

    /// Counts one API error of a request with `verb` (`get`, `list`, `patch`, `create`,
    /// `delete`): `code` is the HTTP status, or `transport` when no answer came.
    pub fn api_error(&self, verb: &str, error: &kube::Error) {
        let code = api_error_code(error);
        self.api_errors.with_label_values(&[verb, &code]).inc();
    }

    /// Sets the condition series of pipeline `namespace/name` to `conditions`; the series of
    /// condition types it no longer has go.
    pub fn set_conditions(&self, namespace: &str, name: &str, conditions: &[Condition]) {
        for type_ in ConditionType::ALL {
            let current = conditions.iter().find(|c| c.type_ == type_.as_str());
            for status in CONDITION_STATUSES {
                let labels = [namespace, name, type_.as_str(), status];
                match current {
                    Some(c) => self
                        .conditions
                        .with_label_values(&labels)
                        .set(i64::from(c.status == status)),
                    None => {
                        let _ = self.conditions.remove_label_values(&labels);
                    }
                }
            }
        }
    }

    /// Removes every condition series of pipeline `namespace/name` (it was deleted).
    pub fn forget_pipeline(&self, namespace: &str, name: &str) {
        self.set_conditions(namespace, name, &[]);
        self.freshness.forget(namespace, name);
    }
}

/// The freshness canaries' series, per pipeline (`namespace`, `pipeline`).
#[derive(Clone, Debug)]
pub struct FreshnessMetrics {
    /// Prices received with an age: the SLI's events.
    pub frames: IntCounterVec,
    /// Of those, the ones older than the pipeline's `slo.freshnessP99Ms`: the SLI's errors
    /// (the objective's budget is 1 % of the events).
    pub slow_frames: IntCounterVec,
    pub age_p99: GaugeVec,
    pub longest_freeze: GaugeVec,
    pub watching: IntGaugeVec,
    pub objective_p99: GaugeVec,
    pub objective_freeze: GaugeVec,
    /// Writes of the canary's figures to the pipeline's Redis that failed.
    pub publish_failures: IntCounterVec,
}

impl FreshnessMetrics {
    /// Creates the series and registers them on `registry`.
    pub fn register(registry: &PrefixedRegistry) -> Result<FreshnessMetrics, prometheus::Error> {
        Ok(FreshnessMetrics {
            frames: per_pipeline(
                registry,
                IntCounterVec::new,
                "canary_frames_total",
                "Prices the freshness canary received with an age (ingested_at)",
            )?,
            slow_frames: per_pipeline(
                registry,
                IntCounterVec::new,
                "canary_slow_frames_total",
                "Prices the freshness canary received older than the pipeline's slo.freshnessP99Ms",
            )?,
            age_p99: per_pipeline(
                registry,
                GaugeVec::new,
                "canary_age_p99_seconds",
                "99th percentile age of the canary's prices over slo.window (NaN without data)",
            )?,
            longest_freeze: per_pipeline(
                registry,
                GaugeVec::new,
                "canary_longest_freeze_seconds",
                "Longest freeze the canary saw over slo.window, one in progress included",
            )?,
            watching: per_pipeline(
                registry,
                IntGaugeVec::new,
                "canary_watching",
                "1 while the canary is connected and live updates flow, 0 while it is blind",
            )?,
            objective_p99: per_pipeline(
                registry,
                GaugeVec::new,
                "slo_freshness_p99_seconds",
                "The pipeline's slo.freshnessP99Ms, in seconds",
            )?,
            objective_freeze: per_pipeline(
                registry,
                GaugeVec::new,
                "slo_max_freeze_seconds",
                "The pipeline's slo.maxFreezeSeconds",
            )?,
            publish_failures: per_pipeline(
                registry,
                IntCounterVec::new,
                "canary_publish_failures_total",
                "Writes of the canary's figures to the pipeline's Redis (for the odds page) that failed",
            )?,
        })
    }

    /// Removes pipeline `namespace/name`'s series (it is no longer measured).
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        let _ = self.frames.remove_label_values(&labels);
        let _ = self.slow_frames.remove_label_values(&labels);
        let _ = self.age_p99.remove_label_values(&labels);
        let _ = self.longest_freeze.remove_label_values(&labels);
        let _ = self.watching.remove_label_values(&labels);
        let _ = self.objective_p99.remove_label_values(&labels);
        let _ = self.objective_freeze.remove_label_values(&labels);
        let _ = self.publish_failures.remove_label_values(&labels);
    }
}

/// The `code` label of an API error: the HTTP status the API server answered, or
/// `transport` (no answer: connection, TLS, timeout), or `decode` (an answer that was not
/// the object expected).
pub fn api_error_code(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.code.to_string(),
        kube::Error::SerdeError(_) => "decode".into(),
        _ => "transport".into(),
    }
}

/// Follows the pipelines' watch to remove the condition series of deleted pipelines: at a
/// `Delete` event, and, since a watch that restarts lists again without replaying the
/// deletions it missed, for every pipeline a completed re-list no longer holds.
#[derive(Debug, Default)]
pub struct PipelineSeries {
    /// Pipelines seen, as `(namespace, name)`.
    seen: BTreeSet<(String, String)>,
    /// During a (re-)list: the pipelines it has delivered so far.
    listing: Option<BTreeSet<(String, String)>>,
}

impl PipelineSeries {
    pub fn on_event(&mut self, metrics: &Metrics, event: &watcher::Event<OddsPipeline>) {
        let key = |p: &OddsPipeline| (p.namespace().unwrap_or_default(), p.name_any());
        match event {
            watcher::Event::Apply(pipeline) => {
                self.seen.insert(key(pipeline));
            }
            watcher::Event::Delete(pipeline) => {
                let (namespace, name) = key(pipeline);
                metrics.forget_pipeline(&namespace, &name);
                self.seen.remove(&(namespace, name));
            }
            watcher::Event::Init => self.listing = Some(BTreeSet::new()),
            watcher::Event::InitApply(pipeline) => {
                self.listing
                    .get_or_insert_with(BTreeSet::new)
                    .insert(key(pipeline));
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                for (namespace, name) in self.seen.difference(&listed) {
                    metrics.forget_pipeline(namespace, name);
                }
                self.seen = listed;
            }
        }
    }
}

/// A family with one series per pipeline (labels `namespace` and `pipeline`), made by `new`
/// and registered on `registry`.
fn per_pipeline<C: Collector + Clone + 'static>(
    registry: &PrefixedRegistry,
    new: fn(Opts, &[&str]) -> Result<C, prometheus::Error>,
    name: &str,
    help: &str,
) -> Result<C, prometheus::Error> {
    registry.registered(new(Opts::new(name, help), &["namespace", "pipeline"])?)
}
