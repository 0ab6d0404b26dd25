//! Pure builders: from a [`ValidPipeline`] to every child object, with no I/O.
//!
//! Keeping the "what should exist" decision free of I/O is what makes it testable without a
//! cluster (golden files, property checks) and keeps the reconciler a thin loop of
//! dereference → validate → build → apply → status. The builders take only what validation
//! produced, so they never meet a spec that breaks a rule. One module per kind of child.

/// Declares the types a mirror is made of (a kind's spec, the objects inside it, its status):
/// every one derives the same traits, names its fields in camelCase and leaves an unset
/// `Option` out of the JSON, so each type states only its fields. `skip_serializing_none`
/// comes first: it must rewrite the fields before serde's derive reads them.
macro_rules! mirror_types {
    ($($(#[$attr:meta])* pub struct $name:ident { $($body:tt)* })+) => {
        $(
            #[serde_with::skip_serializing_none]
            #[derive(
                serde::Serialize,
                serde::Deserialize,
                Clone,
                Debug,
                PartialEq,
                Default,
                schemars::JsonSchema,
            )]
            #[serde(rename_all = "camelCase")]
            $(#[$attr])*
            pub struct $name { $($body)* }
        )+
    };
}

/// Declares the typed mirror of a kind another operator owns (Strimzi, KEDA, the Prometheus
/// Operator): a namespaced `kube::CustomResource` whose spec is `$spec` and whose root type
/// is named by `kind`, a [`mirror_types!`] type like the rest of the mirror, so only what
/// differs is written at each kind: its group, version, kind and status type. The mirrors
/// hold only the fields the operator sets or reads; the tests check the built objects against
/// each project's released CRD.
macro_rules! foreign_kind {
    (
        $($key:ident = $value:literal),+;
        $(#[$attr:meta])*
        pub struct $spec:ident { $($body:tt)* }
    ) => {
        mirror_types! {
            $(#[$attr])*
            #[derive(kube::CustomResource)]
            #[kube($($key = $value),+, namespaced, derive = "Default")]
            pub struct $spec { $($body)* }
        }
    };
}

pub mod configmap;
pub mod deployment;
pub mod hpa;
pub mod ingress;
pub mod job;
pub mod kafkauser;
pub mod networkpolicy;
pub mod pdb;
pub mod podmonitor;
pub mod scaledobject;
pub mod scaling;
pub mod service;
pub mod topic;

pub use crate::model::{Component, Facts};
pub mod triggerauth;

use crate::crd::{Reason, SecretKeyRef};
use crate::validate::ValidPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use odds_contracts::ports;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub use kafkauser::KafkaUser;
pub use podmonitor::PodMonitor;
pub use scaledobject::ScaledObject;
pub use topic::KafkaTopic;
pub use triggerauth::TriggerAuthentication;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "odds-operator";
/// Pod template annotation whose change rolls the pods when config or Secrets change.
pub const CONFIG_HASH_ANNOTATION: &str = "odds-pipeline.github.io/config-hash";
/// Port every workload serves `/healthz` `/readyz` `/metrics` on (`HTTP_ADDR`).
pub const OPS_PORT: i32 = ports::OPS as i32;
/// Port the odds service's API listens on inside the pod.
pub const API_PORT: i32 = ports::API as i32;
/// Port the simulator's WebSocket feed listens on.
pub const SIMULATOR_PORT: i32 = ports::SIMULATOR as i32;

impl Component {
    /// Name of this component's children (Deployment, PDB, Service...).
    pub fn name(self, pipeline: &ValidPipeline) -> String {
        self.name_in(&pipeline.name)
    }
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
    pub kafka_user: Option<KafkaUser>,
    pub migration_job: Option<Job>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub network_policies: Vec<NetworkPolicy>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub hpas: Vec<HorizontalPodAutoscaler>,
    pub scaled_objects: Vec<ScaledObject>,
    /// The lag trigger's login, beside the processor's ScaledObject on a secured Kafka.
    pub trigger_authentication: Option<TriggerAuthentication>,
    pub pod_monitor: Option<PodMonitor>,
    pub ingress: Option<Ingress>,
    /// The scaling mode in force for each workload with a spec section.
    pub scaling: BTreeMap<Component, scaling::Scaling>,
    /// Workloads held back, with the reason (`WaitingForTopic`, `WaitingForMigration`).
    pub blocked: Vec<(Component, Reason)>,
}

impl Children {
    /// Every object, in the order the controller applies them (what `odds-operator render`
    /// prints and the golden file holds).
    pub fn objects(&self) -> serde_json::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        out.extend(self.config_map.iter().map(serde_json::to_value));
        out.extend(self.network_policies.iter().map(serde_json::to_value));
        out.extend(self.topics.iter().map(serde_json::to_value));
        out.extend(self.kafka_user.iter().map(serde_json::to_value));
        out.extend(self.migration_job.iter().map(serde_json::to_value));
        out.extend(self.deployments.iter().map(serde_json::to_value));
        out.extend(self.services.iter().map(serde_json::to_value));
        out.extend(self.pdbs.iter().map(serde_json::to_value));
        out.extend(self.hpas.iter().map(serde_json::to_value));
        out.extend(self.pod_monitor.iter().map(serde_json::to_value));
        out.extend(self.trigger_authentication.iter().map(serde_json::to_value));
        out.extend(self.scaled_objects.iter().map(serde_json::to_value));
        out.extend(self.ingress.iter().map(serde_json::to_value));
        out.into_iter().collect()
    }
}

impl Children {
    /// While a ScaledObject named in `leaving` is still there (KEDA's finalizer holds it
    /// until KEDA has deleted its HPA), its Deployment's `replicas` still belongs to KEDA:
    /// the HPA that replaces it waits, and so does a fixed `replicas`, which is left out of
    /// the apply (the Deployment keeps the count KEDA left). The ScaledObject's deletion
    /// reconciles the pipeline again, and the next apply carries them.
    pub fn await_release(&mut self, pipeline: &ValidPipeline, leaving: &BTreeSet<String>) {
        self.hpas.retain(|hpa| !leaving.contains(&hpa.name_any()));
        for (component, scaling) in &mut self.scaling {
            let name = component.name(pipeline);
            if scaling.scaler != scaling::Scaler::Fixed || !leaving.contains(&name) {
                continue;
            }
            let held = self
                .deployments
                .iter_mut()
                .filter(|d| d.metadata.name.as_deref() == Some(name.as_str()))
                .filter_map(|d| d.spec.as_mut())
                .any(|spec| spec.replicas.take().is_some());
            if held {
                scaling.message = format!(
                    "{}, applied once KEDA has released the Deployment (ScaledObject {name} is being deleted)",
                    scaling.message
                );
            }
        }
    }
}

/// Builds every child of `pipeline`; `migration` is the state of its migration Job.
pub fn children(pipeline: &ValidPipeline, migration: &MigrationState) -> Children {
    let config_map = configmap::build(pipeline);
    let scaled_objects = scaledobject::build(pipeline);
    // Only a lag trigger logs in to Kafka; the connections trigger asks Prometheus.
    let lag_trigger = scaled_objects
        .iter()
        .any(|o| o.spec.triggers.iter().any(|t| t.type_ == "kafka"));
    let mut out = Children {
        topics: topic::build(pipeline),
        kafka_user: kafkauser::build(pipeline),
        migration_job: Some(job::build(pipeline)),
        services: service::build(pipeline),
        network_policies: networkpolicy::build(pipeline),
        pdbs: pdb::build(pipeline),
        hpas: hpa::build(pipeline),
        trigger_authentication: triggerauth::build(pipeline).filter(|_| lag_trigger),
        scaled_objects,
        pod_monitor: podmonitor::build(pipeline),
        ingress: ingress::build(pipeline),
        scaling: [
            Component::Ingest,
            Component::Processor,
            Component::OddsService,
        ]
        .into_iter()
        .map(|c| (c, scaling::decide(pipeline, c)))
        .collect(),
        ..Children::default()
    };
    for component in pipeline.components() {
        match gate(component, pipeline, migration) {
            Some(reason) => out.blocked.push((component, reason)),
            None => {
                let hash = config_hash(pipeline, &config_map, component);
                out.deployments
                    .push(deployment::build(pipeline, component, &hash));
            }
        }
    }
    out.config_map = Some(config_map);
    out
}

/// Why `component` must wait, if it must.
fn gate(
    component: Component,
    pipeline: &ValidPipeline,
    migration: &MigrationState,
) -> Option<Reason> {
    let needs_topic = matches!(
        component,
        Component::Ingest | Component::Processor | Component::OddsService
    );
    let needs_schema = matches!(component, Component::Processor | Component::OddsService);
    let needs_kafka_user = matches!(component, Component::Ingest | Component::Processor)
        && kafkauser::authentication(pipeline).is_some();
    if needs_topic && !pipeline.facts.topics_ready {
        Some(Reason::WaitingForTopic)
    } else if needs_kafka_user && !pipeline.facts.kafka_user_ready {
        Some(Reason::WaitingForKafkaUser)
    } else if needs_schema && migration != &MigrationState::Succeeded {
        Some(Reason::WaitingForMigration)
    } else {
        None
    }
}

/// The labels every child carries; the selector uses the stable subset.
pub fn labels(pipeline: &ValidPipeline, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pipeline, component);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "odds-operator".into(),
    );
    labels.insert("app.kubernetes.io/part-of".into(), "odds-pipeline".into());
    labels.insert(
        "app.kubernetes.io/version".into(),
        label_safe(&pipeline.image.tag),
    );
    labels
}

/// Labels that identify one component's pods (never change: selectors are immutable).
pub fn selector_labels(pipeline: &ValidPipeline, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "odds-pipeline".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            pipeline.name.clone(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// Metadata of a child: name, namespace, labels, and the controller owner reference that
/// makes Kubernetes garbage-collect it with the pipeline.
pub fn metadata(pipeline: &ValidPipeline, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(pipeline.namespace.clone()),
        labels: Some(labels(pipeline, component)),
        owner_references: pipeline.owner.clone().map(|r| vec![r]),
        ..ObjectMeta::default()
    }
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

/// Hash of what `component`'s pods read at start-up and never re-read: the ConfigMap's data
/// (every pod loads all of it with `envFrom`) and the values of the Secret keys this
/// component references (as digests; a Secret's labels, annotations or other keys do not
/// count). A change of the hash rolls the pods. Replicas, resources and the image are not in
/// it: a change to those rolls the pods through the template itself.
fn config_hash(pipeline: &ValidPipeline, config_map: &ConfigMap, component: Component) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    for (env, secret) in &pipeline.secret_env(component) {
        let digest = pipeline
            .facts
            .secrets
            .get(&secret.name)
            .and_then(|keys| keys.get(&secret.key))
            .map_or("", String::as_str);
        hasher.update(
            format!("{env} <- secret {}/{}: {digest}\n", secret.name, secret.key).as_bytes(),
        );
    }
    short_hex(&hasher.finalize())
}

/// The first 16 hex digits of a digest: plenty to tell versions apart, short enough for names.
pub fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

// Here rather than in `validate`: which env var reads which Secret key is a fact of the
// children built (the ConfigMap and Deployments), and validation only needs the keys.
impl ValidPipeline {
    /// The Secret keys a component's pods read, as `(env var, Secret key)`: the datastore
    /// URLs, and with `kafka.authentication` the Kafka credentials and cluster CA.
    pub fn secret_env(&self, component: Component) -> Vec<(&'static str, SecretKeyRef)> {
        use odds_contracts::env;
        let mut out = Vec::new();
        match component {
            Component::Simulator => {}
            Component::Ingest => out.extend(kafkauser::secret_env(self)),
            Component::Processor => {
                out.push((env::DATABASE_URL, self.postgres_url.clone()));
                out.push((env::REDIS_URL, self.redis_url.clone()));
                out.extend(kafkauser::secret_env(self));
            }
            Component::OddsService => {
                out.push((env::DATABASE_URL, self.postgres_url.clone()));
                out.push((env::REDIS_URL, self.redis_url.clone()));
                if let Some(read) = &self.postgres_read_url {
                    out.push((env::DATABASE_READ_URL, read.clone()));
                }
            }
        }
        out
    }
}
