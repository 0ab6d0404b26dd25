//! Discovery of the optional APIs the operator uses: Strimzi's `KafkaTopic` and KEDA's
//! `ScaledObject`.
//!
//! Only a definite answer counts: the API server's list of the group version's resources
//! (served or not), or a 404 for the group version (not served). Any other error (a 5xx, a
//! timeout, a refused connection) says nothing about the cluster, so the last known answer
//! stays in force and discovery is asked again with backoff. Taking an error for "absent"
//! would put a CPU HPA beside a live ScaledObject (two autoscalers on one Deployment) or
//! report `StrimziNotInstalled` for a cluster that has Strimzi.

use crate::controller::Context;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Strimzi's group version, and the resource in it the operator uses.
pub const STRIMZI: (&str, &str) = ("kafka.strimzi.io/v1", "kafkatopics");
/// KEDA's group version, and the resource in it the operator uses.
pub const KEDA: (&str, &str) = ("keda.sh/v1alpha1", "scaledobjects");
/// The Prometheus Operator's group version, and the resource in it the operator uses.
pub const POD_MONITORS: (&str, &str) = ("monitoring.coreos.com/v1", "podmonitors");

/// How long one discovery request may take before it counts as unanswered.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often discovery is asked again while every answer comes (a CRD installed or removed
/// is noticed within this time; a watch of an optional API answering 404 asks at once).
pub const DISCOVERY_POLL: Duration = Duration::from_secs(60);

/// Which optional APIs the cluster serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Strimzi's `kafkatopics` in `kafka.strimzi.io/v1`.
    pub strimzi: bool,
    /// KEDA's `scaledobjects` in `keda.sh/v1alpha1`.
    pub keda: bool,
    /// The Prometheus Operator's `podmonitors` in `monitoring.coreos.com/v1`.
    pub pod_monitors: bool,
}

/// Discovery gave no answer: it says nothing about whether the API is served.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot discover {group_version}: {reason}")]
pub struct DiscoveryError {
    pub group_version: &'static str,
    pub reason: String,
}

/// Whether the API server serves Strimzi's `kafkatopics` in `kafka.strimzi.io/v1`: `Ok` for
/// a definite answer (the resource list, or 404 for the group version), `Err` for none.
pub async fn strimzi_installed(client: &kube::Client) -> Result<bool, DiscoveryError> {
    serves(client, STRIMZI).await
}

/// Whether the API server serves KEDA's `scaledobjects` in `keda.sh/v1alpha1` (same rules).
pub async fn keda_installed(client: &kube::Client) -> Result<bool, DiscoveryError> {
    serves(client, KEDA).await
}

/// Whether the API server serves the Prometheus Operator's `podmonitors` in
/// `monitoring.coreos.com/v1` (same rules).
pub async fn pod_monitors_installed(client: &kube::Client) -> Result<bool, DiscoveryError> {
    serves(client, POD_MONITORS).await
}

async fn serves(
    client: &kube::Client,
    (group_version, plural): (&'static str, &str),
) -> Result<bool, DiscoveryError> {
    let failed = |reason: String| DiscoveryError {
        group_version,
        reason,
    };
    match tokio::time::timeout(
        DISCOVERY_TIMEOUT,
        client.list_api_group_resources(group_version),
    )
    .await
    {
        Ok(Ok(list)) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(false),
        Ok(Err(error)) => Err(failed(error.to_string())),
        Err(_) => Err(failed(format!("no answer within {DISCOVERY_TIMEOUT:?}"))),
    }
}

/// Discovery's answers, kept in the reconcile's [`Context`] (`strimzi`, `keda`), where an
/// unanswered request leaves the last known answer.
pub struct Discovery {
    client: kube::Client,
    ctx: Arc<Context>,
    /// The group versions answered at least once.
    known: BTreeSet<&'static str>,
    /// The group versions whose last request got no answer (warned once per outage).
    failing: BTreeSet<&'static str>,
}

impl Discovery {
    pub fn new(client: kube::Client, ctx: Arc<Context>) -> Self {
        Self {
            client,
            ctx,
            known: BTreeSet::new(),
            failing: BTreeSet::new(),
        }
    }

    /// What the context holds now.
    pub fn current(&self) -> Discovered {
        Discovered {
            strimzi: self.ctx.strimzi.load(Ordering::Relaxed),
            keda: self.ctx.keda.load(Ordering::Relaxed),
            pod_monitors: self.ctx.pod_monitors.load(Ordering::Relaxed),
        }
    }

    /// Asks discovery once: each definite answer goes into the context, an unanswered
    /// request leaves the previous answer. Returns whether every request was answered.
    pub async fn refresh(&mut self) -> bool {
        let strimzi = strimzi_installed(&self.client).await;
        let keda = keda_installed(&self.client).await;
        let pod_monitors = pod_monitors_installed(&self.client).await;
        let strimzi = self.note(STRIMZI.0, strimzi);
        let keda = self.note(KEDA.0, keda);
        let pod_monitors = self.note(POD_MONITORS.0, pod_monitors);
        if let Some(found) = strimzi {
            self.ctx.strimzi.store(found, Ordering::Relaxed);
        }
        if let Some(found) = keda {
            self.ctx.keda.store(found, Ordering::Relaxed);
        }
        if let Some(found) = pod_monitors {
            self.ctx.pod_monitors.store(found, Ordering::Relaxed);
        }
        strimzi.is_some() && keda.is_some() && pod_monitors.is_some()
    }

    fn note(
        &mut self,
        group_version: &'static str,
        answer: Result<bool, DiscoveryError>,
    ) -> Option<bool> {
        match answer {
            Ok(found) => {
                if self.failing.remove(group_version) {
                    tracing::info!(group_version, found, "discovery answers again");
                }
                self.known.insert(group_version);
                Some(found)
            }
            Err(error) => {
                if self.failing.insert(group_version) {
                    tracing::warn!(%error, "discovery failed: keeping the last known answer and retrying with backoff");
                } else {
                    tracing::debug!(%error, "discovery failed again");
                }
                None
            }
        }
    }

    /// Asks until every optional API has been answered once (with backoff), or until `stop`
    /// (`None`). Nothing is known before: no guess is taken for an answer.
    pub async fn until_known(&mut self, stop: &CancellationToken) -> Option<Discovered> {
        let mut failures = 0;
        loop {
            self.refresh().await;
            if self.known.len() == 3 {
                return Some(self.current());
            }
            failures += 1;
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(backoff(failures)) => {}
            }
        }
    }

    /// Asks again every [`DISCOVERY_POLL`] (after an unanswered request, sooner, with
    /// backoff; and at once when a watch of an optional API answered 404), and cancels
    /// `changed` (and returns) once the answers differ from `built`, the set the running
    /// controller watches: it must restart with the watches that set implies.
    /// Returns itself, for the next controller's poll.
    pub async fn poll(mut self, built: Discovered, changed: CancellationToken) -> Self {
        let mut failures = 0;
        loop {
            let wait = if failures == 0 {
                DISCOVERY_POLL
            } else {
                backoff(failures)
            };
            let watches = self.ctx.watches.clone();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = watches.api_gone() => {}
            }
            failures = if self.refresh().await {
                0
            } else {
                failures + 1
            };
            if self.current() != built {
                changed.cancel();
                return self;
            }
        }
    }
}

/// Wait after `failures` unanswered rounds: 1 s doubling, at most [`DISCOVERY_POLL`].
pub fn backoff(failures: u32) -> Duration {
    let seconds = 1u64 << failures.saturating_sub(1).min(6);
    Duration::from_secs(seconds).min(DISCOVERY_POLL)
}
