//! Pure builders: from a pipeline's spec and the facts observed in the cluster to every child
//! object, with no I/O.
//!
//! Keeping the "what should exist" decision free of I/O is what makes it testable without a
//! cluster (golden files, property checks) and keeps the reconciler a thin loop of
//! dereference → validate → build → apply → status. One module per kind of child.

pub mod configmap;
pub mod deployment;
pub mod hpa;
pub mod ingress;
pub mod job;
pub mod pdb;
pub mod service;
pub mod topic;

use crate::crd::OddsPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub use topic::KafkaTopic;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "odds-operator";
/// Pod template annotation whose change rolls the pods when config or Secrets change.
pub const CONFIG_HASH_ANNOTATION: &str = "odds-pipeline.github.io/config-hash";
/// Port every workload serves `/healthz` `/readyz` `/metrics` on (`HTTP_ADDR`).
pub const OPS_PORT: i32 = 9000;
/// Port the odds service's API listens on inside the pod.
pub const API_PORT: i32 = 8080;
/// Port the simulator's WebSocket feed listens on.
pub const SIMULATOR_PORT: i32 = 8090;

/// The workloads the operator deploys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Simulator,
    Ingest,
    Processor,
    OddsService,
}

impl Component {
    /// Name suffix and `app.kubernetes.io/component` label.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Simulator => "simulator",
            Self::Ingest => "ingest",
            Self::Processor => "processor",
            Self::OddsService => "odds-service",
        }
    }

    /// The binary in the image that this component runs.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Simulator => "supplier-simulator",
            Self::Ingest => "odds-ingest",
            Self::Processor => "odds-processor",
            Self::OddsService => "odds-service",
        }
    }

    /// Name of this component's children (Deployment, PDB, Service...).
    pub fn name(self, pipeline: &OddsPipeline) -> String {
        format!("{}-{}", pipeline.name_any(), self.suffix())
    }
}

/// What the reconciler observed before building: facts the spec alone does not give.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// `resourceVersion` of each referenced Secret that exists, by Secret name. A change of
    /// a Secret changes the config hash, which rolls the pods that read it.
    pub secret_versions: BTreeMap<String, String>,
    /// Whether the updates and DLQ topics are usable (Strimzi `Ready`, or external Kafka).
    pub topics_ready: bool,
    /// Outcome of this image's migration Job.
    pub migration: MigrationState,
    /// Partition count of the existing updates `KafkaTopic`, if one exists.
    pub existing_partitions: Option<i32>,
}

/// Where the migration Job of the current image stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MigrationState {
    /// Not created yet, or still running.
    #[default]
    Pending,
    Succeeded,
    /// Gave up; the Job's message says why.
    Failed(String),
}

/// Every child object of one pipeline, as it should be. Workloads that must wait (for the
/// topic or the migration) are absent: the reconciler then leaves what runs untouched.
#[derive(Clone, Debug, Default)]
pub struct Children {
    pub config_map: Option<ConfigMap>,
    pub topics: Vec<KafkaTopic>,
    pub migration_job: Option<Job>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub hpas: Vec<HorizontalPodAutoscaler>,
    pub ingress: Option<Ingress>,
    /// Workloads held back, with the reason (`WaitingForTopic`, `WaitingForMigration`).
    pub blocked: Vec<(Component, &'static str)>,
}

/// Builds every child of `pipeline` given `facts`.
pub fn children(pipeline: &OddsPipeline, facts: &Facts) -> Children {
    let config_map = configmap::build(pipeline);
    let hash = config_hash(&config_map, facts);
    let mut out = Children {
        topics: topic::build(pipeline),
        migration_job: Some(job::build(pipeline)),
        services: service::build(pipeline),
        pdbs: pdb::build(pipeline),
        hpas: hpa::build(pipeline),
        ingress: ingress::build(pipeline),
        config_map: Some(config_map),
        ..Children::default()
    };
    for component in deployment::components(pipeline) {
        match gate(component, facts) {
            Some(reason) => out.blocked.push((component, reason)),
            None => out
                .deployments
                .push(deployment::build(pipeline, component, &hash)),
        }
    }
    out
}

/// Why `component` must wait, if it must.
fn gate(component: Component, facts: &Facts) -> Option<&'static str> {
    let needs_topic = matches!(
        component,
        Component::Ingest | Component::Processor | Component::OddsService
    );
    let needs_schema = matches!(component, Component::Processor | Component::OddsService);
    if needs_topic && !facts.topics_ready {
        Some("WaitingForTopic")
    } else if needs_schema && facts.migration != MigrationState::Succeeded {
        Some("WaitingForMigration")
    } else {
        None
    }
}

/// The labels every child carries; the selector uses the stable subset.
pub fn labels(pipeline: &OddsPipeline, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pipeline, component);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "odds-operator".into(),
    );
    labels.insert("app.kubernetes.io/part-of".into(), "odds-pipeline".into());
    labels.insert(
        "app.kubernetes.io/version".into(),
        label_safe(&pipeline.spec.image.tag),
    );
    labels
}

/// Labels that identify one component's pods (never change: selectors are immutable).
pub fn selector_labels(pipeline: &OddsPipeline, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "odds-pipeline".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            pipeline.name_any(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// Metadata of a child: name, namespace, labels, and the controller owner reference that
/// makes Kubernetes garbage-collect it with the pipeline.
pub fn metadata(pipeline: &OddsPipeline, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: pipeline.namespace(),
        labels: Some(labels(pipeline, component)),
        owner_references: owner_reference(pipeline).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference (absent only for a pipeline that was never stored).
pub fn owner_reference(pipeline: &OddsPipeline) -> Option<OwnerReference> {
    let mut reference = pipeline.controller_owner_ref(&())?;
    reference.block_owner_deletion = Some(true);
    Some(reference)
}

/// Label values allow 63 characters of `[A-Za-z0-9._-]`.
fn label_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// Hash of the pods' configuration: the ConfigMap's data and the referenced Secrets' versions.
fn config_hash(config_map: &ConfigMap, facts: &Facts) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    for (secret, version) in &facts.secret_versions {
        hasher.update(format!("secret {secret}@{version}\n").as_bytes());
    }
    short_hex(&hasher.finalize())
}

/// The first 16 hex digits of a digest: plenty to tell versions apart, short enough for names.
pub fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
