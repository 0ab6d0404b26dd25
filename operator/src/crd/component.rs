//! Per-workload settings of an `OddsPipeline`: replicas, resources, autoscaling, disruption
//! budget, pod overrides, and how clients reach the odds service.

use super::{one, yes};
use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Settings every workload has.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "!has(self.autoscaling) || (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)"
).message("autoscaling scales on CPU utilisation of the request: set resources.requests.cpu"))]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Pod count (ignored while `autoscaling` is set: the autoscaler owns it).
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container resource requests and limits.
    pub resources: Option<ResourceRequirements>,
    /// Horizontal pod autoscaling on CPU (for the processor, `maxReplicas` may not exceed
    /// the topic's partitions).
    pub autoscaling: Option<AutoscalingSpec>,
    /// Pod disruption budget.
    #[serde(default)]
    pub pod_disruption_budget: PdbSpec,
    /// Scheduling and environment overrides for the pods.
    #[serde(default)]
    pub pod_overrides: PodOverrides,
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            resources: None,
            autoscaling: None,
            pod_disruption_budget: PdbSpec::default(),
            pod_overrides: PodOverrides::default(),
        }
    }
}

/// Autoscaler bounds and what to scale by.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// What the replica count follows: `Cpu` (a HorizontalPodAutoscaler on CPU utilisation),
    /// `Lag` (processor only: the consumer group's Kafka lag, through a KEDA ScaledObject) or
    /// `Connections` (oddsService only: open WebSocket connections, through KEDA's Prometheus
    /// scaler). Without KEDA, or for `Connections` without `prometheusAddress`, the operator
    /// falls back to `Cpu` and says why in `status.<component>.scaling` and the `Autoscaling`
    /// condition; likewise for `Connections` when nothing would scrape the connections
    /// (`podMonitor` without the Prometheus Operator's PodMonitor CRD).
    #[serde(default)]
    pub mode: ScalingMode,
    /// Lower bound of the pod count.
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Upper bound of the pod count (for the processor, at most the topic's partitions: a
    /// consumer beyond the partition count has nothing to read).
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent of the request (`Cpu` mode, and the fallback).
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// `Lag`: messages of consumer lag one replica is expected to work off (KEDA's
    /// `lagThreshold`); replicas = total lag / this, within the bounds. Default 1000.
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: Option<i64>,
    /// `Connections`: open WebSocket connections per replica. Default 5000, half of what one
    /// replica was measured to hold (10 000 clients in 121 MiB RSS, README "Performance"),
    /// leaving room for the fan-out's CPU.
    #[schemars(range(min = 1))]
    pub target_connections_per_replica: Option<i64>,
    /// `Connections`: address of a Prometheus that scrapes the odds service's pods with the
    /// `namespace`, `pipeline` and `component` labels (the operator's PodMonitor, see
    /// `podMonitor`, or the chart's), e.g. `http://prometheus-operated.monitoring.svc:9090`.
    #[schemars(length(min = 1))]
    pub prometheus_address: Option<String>,
    /// `Connections`: whether the operator creates a Prometheus Operator `PodMonitor`
    /// (`<name>-metrics`) that scrapes this pipeline's pods on their `metrics` port and adds
    /// the `pipeline` and `component` labels the connections query selects. Default true;
    /// without the PodMonitor CRD (monitoring.coreos.com/v1) the odds service then scales on
    /// CPU (`Autoscaling=False`, `MetricsUnavailable`). Set false when something else already
    /// scrapes the pods with those labels, e.g. the chart's `monitoring.podMonitor` (both
    /// would scrape each pod twice and the summed connections would count double).
    pub pod_monitor: Option<bool>,
    /// `Connections`: extra labels on the operator's PodMonitor, e.g. `release:
    /// kube-prometheus-stack` when your Prometheus selects PodMonitors by label
    /// (`podMonitorSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_monitor_labels: BTreeMap<String, String>,
    /// Seconds of lower recommendations the autoscaler waits for before it scales down (the
    /// HPA's scale-down stabilisation window). Default 300, the HPA's own default.
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
    /// `Lag` and `Connections`: seconds between KEDA's checks of the metric. Default 30.
    #[schemars(range(min = 1, max = 3600))]
    pub polling_interval_seconds: Option<i32>,
}

/// What an autoscaled component's replica count follows.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ScalingMode {
    /// CPU utilisation of the pods, through a HorizontalPodAutoscaler.
    #[default]
    Cpu,
    /// The processor's consumer lag, through a KEDA ScaledObject with a Kafka trigger.
    Lag,
    /// The odds service's open WebSocket connections, through a KEDA ScaledObject with a
    /// Prometheus trigger.
    Connections,
}

impl ScalingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "Cpu",
            Self::Lag => "Lag",
            Self::Connections => "Connections",
        }
    }
}

fn default_cpu_target() -> i32 {
    70
}

/// Pod disruption budget settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Create a PodDisruptionBudget.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Pods that voluntary disruptions (drains) may take down at once.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub max_unavailable: i32,
}

impl Default for PdbSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: 1,
        }
    }
}

/// Pod-level overrides.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Node labels the pods must land on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Pod affinity rules.
    pub affinity: Option<Affinity>,
    /// Extra environment variables. An entry replaces the operator's variable of the same
    /// name; each name may appear once (the list is a map keyed by `name`, as a container's
    /// `env` is under server-side apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
}

/// The odds service: a workload plus how clients reach it.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OddsServiceSpec {
    /// Pods, resources, autoscaling, disruption budget, overrides.
    #[serde(flatten)]
    pub workload: ComponentSpec,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Optional Ingress for HTTP and WebSocket clients.
    pub ingress: Option<IngressSpec>,
}

/// Service exposure of the odds service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Kubernetes Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port of the HTTP and WebSocket API on the Service.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

fn default_service_port() -> i32 {
    odds_contracts::ports::API as i32
}

/// Kubernetes Service type.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Ingress exposure.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name clients use.
    pub host: String,
    /// IngressClass name (cluster default when absent).
    pub class_name: Option<String>,
}
