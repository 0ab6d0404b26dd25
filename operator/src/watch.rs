//! Health of the controller's list/watch streams.
//!
//! kube's `Controller` retries a failing watch with a backoff shared by all its watches and
//! reports the error only in its output stream, without saying which watch failed. Each of
//! the operator's watch streams goes through [`WatchHealth::observe`] instead, under its
//! resource's name, so a failure (a 403 on a secured cluster, a CRD removed at run time, an
//! API server that refuses) is:
//! - logged at warn once per cause (a resource and a reason), not at every retry, and once
//!   more at info when that watch works again;
//! - counted in `odds_operator_watch_errors_total{resource, reason}`;
//! - once it has lasted [`PERSISTENT_AFTER`] without a success in between, shown in the
//!   status of the pipelines that depend on that watch (`Watching=False`, `WatchFailed`,
//!   with the API server's message);
//! - for the optional APIs (Strimzi's KafkaTopics, KEDA's ScaledObjects) a 404 also wakes
//!   the discovery poll ([`WatchHealth::api_gone`]), which restarts the controller without
//!   that watch once discovery confirms the CRD is gone.

use crate::build::{KafkaTopic, KafkaUser, ScaledObject, TriggerAuthentication};
use crate::crd::{OddsPipeline, ScalingMode};
use crate::metrics::Metrics;
use kube::runtime::watcher;
use kube::Resource;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a watch must have failed, without a success in between, before the pipelines
/// depending on it show it in their status (a few retries of the controller's backoff:
/// one failed list is not news).
pub const PERSISTENT_AFTER: Duration = Duration::from_secs(30);

/// A watch that is failing now.
#[derive(Clone, Debug)]
struct Failing {
    reason: &'static str,
    message: String,
    since: Instant,
}

/// The state of every watch of the controller, shared by the watch streams (writers) and
/// the reconciles (readers).
pub struct WatchHealth {
    metrics: Option<Metrics>,
    failing: Mutex<BTreeMap<String, Failing>>,
    warnings: AtomicU64,
    gone: Notify,
}

impl WatchHealth {
    pub fn new(metrics: Option<Metrics>) -> Self {
        Self {
            metrics,
            failing: Mutex::new(BTreeMap::new()),
            warnings: AtomicU64::new(0),
            gone: Notify::new(),
        }
    }

    /// Records one item of the watch stream of `resource` (a plural, e.g. `kafkatopics`).
    pub fn observe<K>(&self, resource: &str, item: &watcher::Result<watcher::Event<K>>) {
        match item {
            // Announces a (re-)list, before it is asked for: no proof it works.
            Ok(watcher::Event::Init) => {}
            Ok(_) => self.succeeded(resource),
            Err(error) => self.failed(resource, error),
        }
    }

    /// The watch of `resource` delivered an event: it works.
    pub fn succeeded(&self, resource: &str) {
        let recovered = self.lock().remove(resource);
        if let Some(failing) = recovered {
            tracing::info!(
                resource,
                reason = failing.reason,
                "watch works again after failing"
            );
        }
    }

    /// The watch of `resource` failed with `error`.
    pub fn failed(&self, resource: &str, error: &watcher::Error) {
        let reason = reason(error);
        if reason == "expired" {
            // 410 Gone: the watch's resourceVersion was compacted away; the watcher lists
            // again. Routine, not a failure.
            tracing::debug!(resource, %error, "watch expired; listing again");
            return;
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .watch_errors
                .with_label_values(&[resource, reason])
                .inc();
        }
        let message = format!("the watch of {resource} fails: {error}");
        let new_cause = {
            let mut failing = self.lock();
            match failing.get_mut(resource) {
                Some(now) => {
                    let new_cause = now.reason != reason;
                    if new_cause {
                        // A new cause restarts the clock of the status' "for a while".
                        now.since = Instant::now();
                        now.reason = reason;
                    }
                    now.message = message;
                    new_cause
                }
                None => {
                    failing.insert(
                        resource.to_string(),
                        Failing {
                            reason,
                            message,
                            since: Instant::now(),
                        },
                    );
                    true
                }
            }
        };
        if new_cause {
            self.warnings.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(resource, reason, %error, "watch failed; retrying with backoff (logged once per cause)");
        } else {
            tracing::debug!(resource, reason, %error, "watch failed again");
        }
        let optional = resource == KafkaTopic::plural(&())
            || resource == KafkaUser::plural(&())
            || resource == ScaledObject::plural(&())
            || resource == TriggerAuthentication::plural(&());
        if optional && reason == "not_found" {
            self.gone.notify_one();
        }
    }

    /// Waits until a watch of an optional API (KafkaTopics, ScaledObjects) answered 404: its
    /// CRD may have been removed.
    pub async fn api_gone(&self) {
        self.gone.notified().await;
    }

    /// How many warnings were logged (one per cause).
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    /// The persistent failures `pipeline` depends on: one message per watch that has failed
    /// for at least [`PERSISTENT_AFTER`].
    pub fn failures_for(&self, pipeline: &OddsPipeline) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, f)| now.duration_since(f.since) >= PERSISTENT_AFTER)
            .filter(|(resource, _)| depends_on(pipeline, resource))
            .map(|(_, f)| f.message.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Failing>> {
        self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `pipeline` depends on the watch of `resource`: KafkaTopics only for a pipeline
/// whose topics Strimzi manages, KafkaUsers only for one that authenticates to Kafka, ScaledObjects only for one that asks for a KEDA mode, the
/// rest (its own kind, its children, Secrets) for every pipeline.
pub fn depends_on(pipeline: &OddsPipeline, resource: &str) -> bool {
    if resource == KafkaTopic::plural(&()) {
        return pipeline.spec.kafka.cluster_ref.is_some();
    }
    if resource == KafkaUser::plural(&()) {
        return pipeline.spec.kafka.authentication.is_some();
    }
    if resource == ScaledObject::plural(&()) || resource == TriggerAuthentication::plural(&()) {
        let spec = &pipeline.spec;
        return [&spec.processor, &spec.odds_service.workload]
            .iter()
            .filter_map(|c| c.autoscaling.as_ref())
            .any(|a| a.mode != ScalingMode::Cpu);
    }
    true
}

/// The `reason` label of a watch failure.
pub fn reason(error: &watcher::Error) -> &'static str {
    let code = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.code),
            kube::Error::SerdeError(_) => return "decode",
            _ => None,
        },
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::NoResourceVersion => return "no_resource_version",
    };
    match code {
        None => "transport",
        Some(401) => "unauthorized",
        Some(403) => "forbidden",
        Some(404) => "not_found",
        Some(410) => "expired",
        Some(429) => "throttled",
        Some(code) if code >= 500 => "server_error",
        Some(_) => "refused",
    }
}
