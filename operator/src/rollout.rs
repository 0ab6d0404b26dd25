//! Why a workload's rollout is stuck, read from its Deployment and its pods.
//!
//! A Deployment whose pods cannot pull their image, crash at start, cannot be created (a
//! quota, Pod Security admission) or exceed the progress deadline never becomes ready; its
//! `ready/desired` alone would leave the pipeline `Progressing` forever with nothing to act
//! on. Each cause becomes `Degraded` with its own reason and the pod's or ReplicaSet's own
//! message, which is what a user would otherwise dig out with `kubectl describe`. Pure, so
//! each cause is tested on the objects Kubernetes reports.

use crate::crd::Reason;
use crate::status::Failure;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

/// Container waiting reasons that mean the image cannot be had.
const IMAGE_REASONS: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];
/// Container waiting reasons that mean the kubelet cannot build the container (a missing
/// Secret or ConfigMap key, a non-root check that fails).
const CONFIG_REASONS: [&str; 2] = ["CreateContainerConfigError", "CreateContainerError"];

/// The first reason `deployment` (with its `pods`) cannot roll out, if there is one. The
/// order is what blocks first: pods not created, then pods that cannot start, then the
/// deadline (which every other cause eventually also trips).
pub fn stuck(deployment: &Deployment, pods: &[Pod]) -> Option<Failure> {
    let conditions = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(failure) = conditions
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
    {
        return Some(Failure {
            reason: Reason::FailedCreate,
            message: failure.message.clone().unwrap_or_default(),
        });
    }
    for pod in pods {
        if let Some(failure) = pod_problem(pod) {
            return Some(failure);
        }
    }
    conditions
        .iter()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| Failure {
            reason: Reason::ProgressDeadlineExceeded,
            message: c.message.clone().unwrap_or_default(),
        })
}

/// What keeps one pod's containers from running, if anything.
fn pod_problem(pod: &Pod) -> Option<Failure> {
    let name = pod.metadata.name.as_deref().unwrap_or("(pod)");
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let why = waiting.reason.as_deref().unwrap_or_default();
        let said = waiting.message.as_deref().unwrap_or_default();
        let reason = if IMAGE_REASONS.contains(&why) {
            Reason::ImagePullFailed
        } else if why == "CrashLoopBackOff" {
            Reason::CrashLoop
        } else if CONFIG_REASONS.contains(&why) {
            Reason::ContainerConfigError
        } else {
            continue;
        };
        let mut message = format!("pod {name} container {}: {why}", container.name);
        if reason == Reason::CrashLoop {
            let last = container
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref());
            message.push_str(&format!(" after {} restarts", container.restart_count));
            if let Some(last) = last {
                message.push_str(&format!(
                    ", last exit code {} ({})",
                    last.exit_code,
                    last.reason.as_deref().unwrap_or("no reason")
                ));
                if let Some(text) = last.message.as_deref().filter(|m| !m.is_empty()) {
                    message.push_str(&format!(": {text}"));
                }
            }
        }
        if !said.is_empty() {
            message.push_str(&format!(": {said}"));
        }
        return Some(Failure { reason, message });
    }
    None
}
