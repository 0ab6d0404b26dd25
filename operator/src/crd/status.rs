//! The `OddsPipeline` status types: what `kubectl get` and `kubectl describe` show.
//!
//! Conditions use the standard `metav1.Condition` shape so tools that understand it
//! (`kubectl wait --for=condition=Ready`, Argo CD, k9s) work without special cases.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// What the operator observed and did.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OddsPipelineStatus {
    /// The `metadata.generation` this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `TopicReady`, `Migrated`, `Autoscaling`,
    /// `Watching`, `ReconciliationPaused`, `Fresh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Ingest pods.
    pub ingest: Option<ComponentStatus>,
    /// Processor pods.
    pub processor: Option<ComponentStatus>,
    /// Odds service pods.
    pub odds_service: Option<ComponentStatus>,
    /// In-cluster WebSocket URL of the odds service.
    pub web_socket_url: Option<String>,
    /// Workloads kept at their previous version, and why.
    // Serialized when empty too: the status apply then replaces the list as a whole.
    #[serde(default)]
    pub held_back: Vec<HeldBack>,
    /// How fresh the prices the operator's canary client received were, over `slo.window`.
    pub freshness: Option<super::FreshnessStatus>,
}

/// A workload kept at its previous version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeldBack {
    /// The component, e.g. `processor`.
    pub component: String,
    /// Why it waits: `WaitingForTopic` or `WaitingForMigration`.
    pub reason: String,
}

/// Pod counts of one workload.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Pods passing readiness.
    pub ready_replicas: i32,
    /// Pods wanted.
    pub desired_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
    /// How the replica count is decided now, and why.
    pub scaling: Option<ScalingStatus>,
    /// Processor only: the consumer lag (messages, all partitions) the last scaling decision
    /// saw, as KEDA's autoscaler reported it (the ScaledObject's HPA: average per replica ×
    /// replicas); `unknown` when no lag-based decision has been reported (CPU or fixed
    /// replicas, KEDA not installed, or no decision yet).
    pub lag: Option<String>,
}

/// The scaling mode in force for one workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    /// `Fixed` (`replicas` from the spec), `Cpu` (HorizontalPodAutoscaler), `Lag` (KEDA,
    /// consumer lag) or `Connections` (KEDA, open WebSocket connections).
    pub mode: String,
    /// Why this mode: `AsRequested`, or the reason of a fallback to `Cpu`
    /// (`KedaNotInstalled`, `NoPrometheusAddress`, `MetricsUnavailable`).
    pub reason: String,
    /// What scales the workload, in words.
    pub message: String,
}

/// The standard Kubernetes condition shape (`metav1.Condition`).
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// The generation the condition was computed for.
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

impl OddsPipelineStatus {
    /// The condition of `type_`, if the status has one.
    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }

    /// Whether condition `type_` is `True`.
    pub fn is_true(&self, type_: ConditionType) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

/// The condition types the operator sets. The stored form is the string (`metav1.Condition`);
/// code compares these, never literals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionType {
    Ready,
    Progressing,
    Degraded,
    TopicReady,
    Migrated,
    /// Every autoscaled component scales by the mode its spec asks for (`False`: a
    /// fallback to CPU is in force, with the reason).
    Autoscaling,
    /// Every watch the operator keeps for this pipeline works (`False`: one has failed for a
    /// while, `WatchFailed`, so changes of that kind are only seen on the periodic requeue).
    Watching,
    ReconciliationPaused,
    /// The prices the canary client received meet `spec.slo` (`False`: `Stale`, `Frozen`,
    /// `NoData` or `CanaryUnreachable`). Not part of `Ready`: it judges what clients see,
    /// not whether the workloads run.
    Fresh,
}

impl ConditionType {
    /// Every condition type, in the order the status lists them.
    pub const ALL: [ConditionType; 9] = [
        Self::TopicReady,
        Self::Migrated,
        Self::Degraded,
        Self::Progressing,
        Self::Ready,
        Self::ReconciliationPaused,
        Self::Autoscaling,
        Self::Watching,
        Self::Fresh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::TopicReady => "TopicReady",
            Self::Migrated => "Migrated",
            Self::Autoscaling => "Autoscaling",
            Self::Watching => "Watching",
            Self::ReconciliationPaused => "ReconciliationPaused",
            Self::Fresh => "Fresh",
        }
    }
}

/// Every reason the operator puts in a condition or a held-back workload, so the reasons a
/// user can see are listed in one place (README "Status conditions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    AllComponentsReady,
    ComponentsNotReady,
    Waiting,
    TopicsReady,
    ExternalKafka,
    WaitingForTopic,
    WaitingForMigration,
    /// `kafka.authentication` is set and Strimzi has not yet made the pipeline's `KafkaUser`
    /// Ready with its Secret, or the cluster CA Secret is missing: ingest and the processor
    /// wait, since their pods could not start without the credentials.
    WaitingForKafkaUser,
    Migrated,
    MigrationPending,
    MigrationFailed,
    AsExpected,
    /// The spec breaks a rule, or a referenced Secret (or key) is missing.
    InvalidSpec,
    /// The API server refused a child (validation, admission webhook, conflict...).
    ApplyFailed,
    /// The operator's ServiceAccount may not do what the reconcile needs (RBAC, quota).
    Forbidden,
    /// `kafka.clusterRef` is set but the cluster has no Strimzi `KafkaTopic` CRD.
    StrimziNotInstalled,
    /// Reading the cluster failed (the API server is unreachable or refused a read).
    ReadFailed,
    /// The scaling mode in force is the one the spec asks for.
    AsRequested,
    /// Lag or connections mode was asked for, but the cluster has no KEDA `ScaledObject`
    /// CRD (keda.sh/v1alpha1): CPU scaling is in force instead. Also `Degraded`'s reason for
    /// the one reconcile that finds KEDA gone after start-up.
    KedaNotInstalled,
    /// Connections mode was asked for without `prometheusAddress`: CPU scaling instead.
    NoPrometheusAddress,
    /// A list/watch the operator keeps for the pipeline has failed for a while (RBAC, a
    /// removed CRD, an API server that refuses): the condition `Watching=False`.
    WatchFailed,
    /// Connections mode was asked for with `podMonitor` (the default), but the cluster has
    /// no Prometheus Operator `PodMonitor` CRD (monitoring.coreos.com/v1): nothing would
    /// scrape the connections, so KEDA would read none. CPU scaling instead. Also
    /// `Degraded`'s reason for the one reconcile that finds the CRD gone after start-up.
    MetricsUnavailable,
    RollingOut,
    Idle,
    Paused,
    Reconciling,
    /// A workload's pods cannot pull their image (`ErrImagePull`, `ImagePullBackOff`,
    /// `InvalidImageName`).
    ImagePullFailed,
    /// A workload's container keeps exiting (`CrashLoopBackOff`).
    CrashLoop,
    /// The kubelet cannot build a workload's container (`CreateContainerConfigError`, e.g. a
    /// missing Secret key).
    ContainerConfigError,
    /// A workload's ReplicaSet cannot create pods (`FailedCreate`: a quota, Pod Security
    /// admission).
    FailedCreate,
    /// A workload's rollout made no progress within the Deployment's deadline.
    ProgressDeadlineExceeded,
    /// `Fresh=True`: the canary's p99 age and longest freeze are within `spec.slo`.
    WithinObjective,
    /// The canary's p99 age is above `slo.freshnessP99Ms`.
    Stale,
    /// A price stayed frozen longer than `slo.maxFreezeSeconds` (or is frozen now).
    Frozen,
    /// The canary received no price with an age in the window (nothing moved, or the
    /// ingest that stamps accept times is older than the operator).
    NoData,
    /// The canary cannot connect to the pipeline's odds-service Service.
    CanaryUnreachable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllComponentsReady => "AllComponentsReady",
            Self::ComponentsNotReady => "ComponentsNotReady",
            Self::Waiting => "Waiting",
            Self::TopicsReady => "TopicsReady",
            Self::ExternalKafka => "ExternalKafka",
            Self::WaitingForTopic => "WaitingForTopic",
            Self::WaitingForMigration => "WaitingForMigration",
            Self::WaitingForKafkaUser => "WaitingForKafkaUser",
            Self::Migrated => "Migrated",
            Self::MigrationPending => "MigrationPending",
            Self::MigrationFailed => "MigrationFailed",
            Self::AsExpected => "AsExpected",
            Self::InvalidSpec => "InvalidSpec",
            Self::ApplyFailed => "ApplyFailed",
            Self::Forbidden => "Forbidden",
            Self::StrimziNotInstalled => "StrimziNotInstalled",
            Self::ReadFailed => "ReadFailed",
            Self::AsRequested => "AsRequested",
            Self::KedaNotInstalled => "KedaNotInstalled",
            Self::NoPrometheusAddress => "NoPrometheusAddress",
            Self::WatchFailed => "WatchFailed",
            Self::MetricsUnavailable => "MetricsUnavailable",
            Self::RollingOut => "RollingOut",
            Self::Idle => "Idle",
            Self::Paused => "Paused",
            Self::Reconciling => "Reconciling",
            Self::ImagePullFailed => "ImagePullFailed",
            Self::CrashLoop => "CrashLoop",
            Self::ContainerConfigError => "ContainerConfigError",
            Self::FailedCreate => "FailedCreate",
            Self::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Self::WithinObjective => "WithinObjective",
            Self::Stale => "Stale",
            Self::Frozen => "Frozen",
            Self::NoData => "NoData",
            Self::CanaryUnreachable => "CanaryUnreachable",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
