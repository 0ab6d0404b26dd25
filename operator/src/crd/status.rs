//! The `OddsPipeline` status types: what `kubectl get` and `kubectl describe` show.
//!
//! Conditions use the standard `metav1.Condition` shape so tools that understand it
//! (`kubectl wait --for=condition=Ready`, Argo CD, k9s) work without special cases.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// What the operator observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OddsPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `TopicReady`, `Migrated`, `ReconciliationPaused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Ingest pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<ComponentStatus>,
    /// Processor pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<ComponentStatus>,
    /// Odds service pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odds_service: Option<ComponentStatus>,
    /// In-cluster WebSocket URL of the odds service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_socket_url: Option<String>,
}

/// Pod counts of one workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Pods passing readiness.
    pub ready_replicas: i32,
    /// Pods wanted.
    pub desired_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
}

/// The standard Kubernetes condition shape (`metav1.Condition`).
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}
