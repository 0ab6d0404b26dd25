//! Which autoscaler, if any, owns each workload's replica count: the decision that the HPA
//! and ScaledObject builders, the Deployment's `replicas`, the status and the events share.
//!
//! The spec says what the user wants (`autoscaling.mode`); the cluster decides what is
//! possible: lag and connections need KEDA's `ScaledObject` CRD, and connections a Prometheus
//! to ask and something that scrapes the connections into it (the operator's PodMonitor needs
//! the Prometheus Operator's CRD). Where the wish cannot be met the component falls back to CPU (an HPA), never to
//! fixed replicas, so a pipeline that asked to scale still scales; the status says why.

use super::Component;
use crate::crd::{AutoscalingSpec, Reason, ScalingMode, ScalingStatus};
use crate::validate::ValidPipeline;

/// Default KEDA `lagThreshold`: messages one processor replica is expected to work off.
pub const DEFAULT_TARGET_LAG: i64 = 1000;
/// Default connections per odds-service replica: half of the measured 10 000 clients in
/// 121 MiB (README "Performance"), leaving headroom for the fan-out's CPU.
pub const DEFAULT_TARGET_CONNECTIONS: i64 = 5000;
/// Default scale-down stabilisation window (the HPA's own default).
pub const DEFAULT_SCALE_DOWN_WINDOW: i32 = 300;
/// Default KEDA polling interval (KEDA's own default).
pub const DEFAULT_POLLING_INTERVAL: i32 = 30;

/// What owns a workload's replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaler {
    /// `spec.replicas`, applied by the operator.
    Fixed,
    /// A HorizontalPodAutoscaler on CPU.
    Hpa,
    /// A KEDA ScaledObject (lag or connections).
    Keda,
}

/// The mode in force for one component and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scaling {
    pub scaler: Scaler,
    /// `Fixed`, `Cpu`, `Lag` or `Connections`.
    pub mode: &'static str,
    /// `AsRequested`, or why a fallback is in force.
    pub reason: Reason,
    pub message: String,
}

impl Scaling {
    /// As shown in `status.<component>.scaling`.
    pub fn status(&self) -> ScalingStatus {
        ScalingStatus {
            mode: self.mode.to_string(),
            reason: self.reason.as_str().to_string(),
            message: self.message.clone(),
        }
    }

    /// Whether the spec's wish is met (no fallback).
    pub fn as_requested(&self) -> bool {
        self.reason == Reason::AsRequested
    }
}

/// The autoscaling spec of `component`, if it has one.
pub fn spec(pipeline: &ValidPipeline, component: Component) -> Option<AutoscalingSpec> {
    pipeline.component(component).autoscaling
}

/// The replica bounds an autoscaler gets: for the processor, capped at the topic's
/// partitions (validation already rejects more; the cap keeps the builders safe on their own).
fn bounds(pipeline: &ValidPipeline, component: Component, spec: &AutoscalingSpec) -> (i32, i32) {
    let max = match component {
        Component::Processor => spec.max_replicas.min(pipeline.topic.partitions),
        _ => spec.max_replicas,
    };
    (spec.min_replicas.min(max), max)
}

/// A component whose replicas an autoscaler owns: its autoscaling spec and the bounds its
/// autoscaler gets.
#[derive(Clone, Debug)]
pub struct Autoscaled {
    pub component: Component,
    pub spec: AutoscalingSpec,
    pub min: i32,
    pub max: i32,
}

/// The components whose replicas `scaler` owns (what its builder makes an object for).
pub fn autoscaled_by(pipeline: &ValidPipeline, scaler: Scaler) -> Vec<Autoscaled> {
    pipeline
        .components()
        .into_iter()
        .filter(|c| decide(pipeline, *c).scaler == scaler)
        .filter_map(|component| {
            let spec = spec(pipeline, component)?;
            let (min, max) = bounds(pipeline, component, &spec);
            Some(Autoscaled {
                component,
                spec,
                min,
                max,
            })
        })
        .collect()
}

/// Decides what owns `component`'s replicas.
pub fn decide(pipeline: &ValidPipeline, component: Component) -> Scaling {
    let Some(spec) = spec(pipeline, component) else {
        let replicas = pipeline.component(component).replicas;
        return Scaling {
            scaler: Scaler::Fixed,
            mode: "Fixed",
            reason: Reason::AsRequested,
            message: format!("{replicas} replicas from the spec"),
        };
    };
    let (min, max) = bounds(pipeline, component, &spec);
    let cpu = |reason: Reason, why: &str| Scaling {
        scaler: Scaler::Hpa,
        mode: ScalingMode::Cpu.as_str(),
        reason,
        message: format!(
            "{why}HorizontalPodAutoscaler on CPU, {}% of the request, {min} to {max} replicas",
            spec.target_cpu_utilization
        ),
    };
    let keda = pipeline.facts.keda_installed;
    match spec.mode {
        ScalingMode::Cpu => cpu(Reason::AsRequested, ""),
        ScalingMode::Lag if !keda => cpu(
            Reason::KedaNotInstalled,
            "Lag asked for, but KEDA's ScaledObject CRD (keda.sh/v1alpha1) is not installed: ",
        ),
        ScalingMode::Connections if !keda => cpu(
            Reason::KedaNotInstalled,
            "Connections asked for, but KEDA's ScaledObject CRD (keda.sh/v1alpha1) is not installed: ",
        ),
        ScalingMode::Connections if spec.prometheus_address.is_none() => cpu(
            Reason::NoPrometheusAddress,
            "Connections asked for without autoscaling.prometheusAddress: ",
        ),
        // The series carry `pipeline` and `component` only where a scrape adds them: the
        // operator's PodMonitor, unless the spec says another scrape does.
        ScalingMode::Connections
            if spec.pod_monitor.unwrap_or(true) && !pipeline.facts.pod_monitors_installed =>
        {
            cpu(
                Reason::MetricsUnavailable,
                "Connections asked for, but the Prometheus Operator's PodMonitor CRD (monitoring.coreos.com/v1) is not installed, so nothing scrapes odds_ws_connections with the pipeline and component labels (set autoscaling.podMonitor: false if your own scrape adds them): ",
            )
        }
        ScalingMode::Lag => Scaling {
            scaler: Scaler::Keda,
            mode: ScalingMode::Lag.as_str(),
            reason: Reason::AsRequested,
            message: format!(
                "KEDA ScaledObject on the consumer lag of group {} on {}, {} messages per replica, {min} to {max} replicas",
                pipeline.consumer_group,
                pipeline.topic.name,
                spec.target_lag_per_replica.unwrap_or(DEFAULT_TARGET_LAG)
            ),
        },
        ScalingMode::Connections => Scaling {
            scaler: Scaler::Keda,
            mode: ScalingMode::Connections.as_str(),
            reason: Reason::AsRequested,
            message: format!(
                "KEDA ScaledObject on open WebSocket connections (Prometheus), {} per replica, {min} to {max} replicas, scraped by {}",
                spec.target_connections_per_replica
                    .unwrap_or(DEFAULT_TARGET_CONNECTIONS),
                if spec.pod_monitor.unwrap_or(true) {
                    format!("PodMonitor {}", super::podmonitor::name(pipeline))
                } else {
                    "a scrape outside the operator (podMonitor: false)".to_string()
                }
            ),
        },
    }
}
