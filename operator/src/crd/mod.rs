//! The `OddsPipeline` custom resource: what a user asks for, and what the operator reports.
//!
//! The Rust types are the single source of the CRD (`odds-operator crd` prints it, `crds/`
//! holds that output). Every field carries a doc comment because it becomes the field's
//! description in the schema (`kubectl explain oddspipeline.spec...`). Rules the API server
//! can check on its own are CEL `x-kubernetes-validations`; [`crate::validate`] repeats them
//! (and adds the ones that need observed state) so a cluster without CEL is still safe.

use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod component;
mod freshness;
mod observability;
mod status;
pub use component::{
    AutoscalingSpec, ComponentSpec, IngressSpec, OddsServiceSpec, PdbSpec, PodOverrides,
    ScalingMode, ServiceSpec, ServiceType,
};
pub use freshness::{
    FreshnessStatus, SloSpec, DEFAULT_FRESHNESS_P99_MS, DEFAULT_MAX_FREEZE_SECONDS, DEFAULT_WINDOW,
    MAX_FREEZE_SECONDS, MAX_FRESHNESS_P99_MS, MAX_SAMPLE_EVENTS,
};
pub use observability::{default_sampling_ratio, tracing_problems, ObservabilitySpec, TracingSpec};
pub use status::{
    ComponentStatus, Condition, ConditionType, HeldBack, OddsPipelineStatus, Reason, ScalingStatus,
};

/// API group of the project's resources (a domain the project owns).
pub const GROUP: &str = "odds-pipeline.github.io";
/// Annotation that pauses reconciliation, as Strimzi users know it (`"true"` pauses).
pub const PAUSE_ANNOTATION: &str = "odds-pipeline.github.io/pause-reconciliation";

/// Desired state of an odds pipeline: the workloads, their Kafka topics, and their wiring.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "odds-pipeline.github.io",
    version = "v1alpha1",
    kind = "OddsPipeline",
    plural = "oddspipelines",
    namespaced,
    status = "OddsPipelineStatus",
    shortname = "op",
    shortname = "oddsp",
    category = "odds",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Ingest","type":"string","jsonPath":".status.ingest.summary"}"#,
    printcolumn = r#"{"name":"Processor","type":"string","jsonPath":".status.processor.summary"}"#,
    printcolumn = r#"{"name":"Odds-Service","type":"string","jsonPath":".status.oddsService.summary"}"#,
    printcolumn = r#"{"name":"Lag","type":"string","jsonPath":".status.processor.lag","description":"Consumer lag the processor's last scaling decision saw (Lag mode), else unknown"}"#,
    printcolumn = r#"{"name":"Fresh","type":"string","jsonPath":".status.freshness.summary","description":"p99 age of the prices the operator's canary client received over spec.slo.window, or frozen/no data/unreachable"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // Same rule as `validate::name_problem`: the name becomes Service names (DNS-1035),
    // label values and `<name>-migrate-<10 hex>` (a Job name, at most 63 characters).
    validation = Rule::new(
        "self.metadata.name.size() <= 44 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ).message("metadata.name must be at most 44 characters of lower-case letters, digits and '-', start with a letter and end with a letter or digit (it names Services and the migration Job)"),
    validation = kafka_topic_name_rule("topic"),
    validation = kafka_topic_name_rule("dlqTopic")
)]
#[x_kube(validation = Rule::new(
    "!has(self.processor.autoscaling) ? self.processor.replicas <= self.kafka.topic.partitions : self.processor.autoscaling.maxReplicas <= self.kafka.topic.partitions"
).message("processor replicas (or autoscaling.maxReplicas) must not exceed kafka.topic.partitions: extra consumers would sit idle"))]
// Lag is a Kafka consumer's signal and connections the WebSocket tier's.
#[x_kube(validation = autoscaling_mode_rule("ingest", "== 'Cpu'", "must be Cpu (Lag is the processor's, Connections the odds service's)"))]
#[x_kube(validation = autoscaling_mode_rule("processor", "!= 'Connections'", "must be Cpu or Lag"))]
#[x_kube(validation = autoscaling_mode_rule("oddsService", "!= 'Lag'", "must be Cpu or Connections"))]
#[serde(rename_all = "camelCase")]
pub struct OddsPipelineSpec {
    /// Container image holding every pipeline binary.
    #[serde(default)]
    pub image: ImageSpec,
    /// Kafka cluster and topics.
    pub kafka: KafkaSpec,
    /// Redis connection (cache and pub/sub).
    pub redis: RedisSpec,
    /// Postgres connection (read models).
    pub postgres: PostgresSpec,
    /// Where odds come from: an external WebSocket feed or the in-cluster simulator.
    #[serde(default)]
    pub supplier: SupplierSpec,
    /// The ingest workload (supplier feed to Kafka).
    #[serde(default)]
    pub ingest: ComponentSpec,
    /// The processor workload (Kafka to Postgres and Redis).
    #[serde(default)]
    pub processor: ComponentSpec,
    /// The odds service (REST and WebSocket API for clients).
    #[serde(default)]
    pub odds_service: OddsServiceSpec,
    /// NetworkPolicies that let each workload talk only to what it needs.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// What the workloads report besides metrics: distributed tracing.
    #[serde(default, skip_serializing_if = "is_default")]
    pub observability: ObservabilitySpec,
    /// Stop all changes to the children (they keep running as they are).
    #[serde(default)]
    pub paused: bool,
    /// The freshness objective clients' prices are held to, measured by the operator's
    /// canary client (`status.freshness`, the `Fresh` condition).
    #[serde(default)]
    pub slo: SloSpec,
}

/// With `clusterRef` each topic becomes a KafkaTopic named `<name>-<topic>`
/// (`build::topic::resource_name`: lower case, `_` and `.` as `-`), which must be a DNS-1123
/// subdomain: the rule for `kafka.<topic>.name` (as `validate::topic_resource_problem`). On
/// the root, as only it sees the name.
fn kafka_topic_name_rule(topic: &str) -> Rule {
    let resource = format!(
        "(self.metadata.name + '-' + self.spec.kafka.{topic}.name.lowerAscii().replace('_', '-').replace('.', '-'))"
    );
    Rule::new(format!(
        "!has(self.spec.kafka.clusterRef) || ({resource}.size() <= 253 && {resource}.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))"
    ))
    .message(Message::Message(format!(
        "kafka.{topic}.name gives an invalid KafkaTopic name: <metadata.name>-<topic name in lower case, '_' and '.' as '-'> must be a DNS-1123 subdomain, at most 253 characters and not starting or ending with '-', so the topic name may not end with '-', '_' or '.' and may have at most 252 characters minus the pipeline name's length"
    )))
}

/// The modes `<component>.autoscaling.mode` may take, where set: `allowed` compares the mode
/// in CEL, `must` says what it must be (as `validate::check_component`).
fn autoscaling_mode_rule(component: &str, allowed: &str, must: &str) -> Rule {
    let mode = format!("self.{component}.autoscaling.mode");
    Rule::new(format!(
        "!has(self.{component}.autoscaling) || !has({mode}) || {mode} {allowed}"
    ))
    .message(Message::Message(format!(
        "{component}.autoscaling.mode {must}"
    )))
}

/// One NetworkPolicy per workload (and the migration Job): ingest and processor accept only
/// metrics scrapes, odds-service its API port and scrapes, the simulator its feed from ingest;
/// egress goes only to the pipeline's Kafka, Redis, Postgres, the supplier and DNS (port 53).
/// Kafka is the Strimzi cluster's broker pods (`clusterRef`) or the ports of
/// `bootstrapServers`; Redis and Postgres are the ports of the URLs in their Secrets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Build the NetworkPolicies (default true). Turn off where another mechanism (a service
    /// mesh, cluster-wide policies) already governs the pipeline's traffic; the policies
    /// the operator made are then deleted.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Which image to run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, e.g. `ghcr.io/odds-pipeline/odds-pipeline`.
    #[serde(default = "default_repository")]
    pub repository: String,
    /// Image tag.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Kubernetes image pull policy.
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self {
            repository: default_repository(),
            tag: default_tag(),
            pull_policy: PullPolicy::default(),
        }
    }
}

impl ImageSpec {
    /// `repository:tag`, the reference the pods run.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

fn default_repository() -> String {
    "odds-pipeline".to_string()
}
fn default_tag() -> String {
    "latest".to_string()
}

/// Kubernetes image pull policy.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Kafka: a Strimzi cluster in this namespace, or any brokers by address.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.clusterRef) != has(self.bootstrapServers)")
    .message("set exactly one of kafka.clusterRef and kafka.bootstrapServers"))]
#[x_kube(validation = Rule::new("!has(self.authentication) || has(self.clusterRef)")
    .message("kafka.authentication needs kafka.clusterRef (the operator creates the KafkaUser in that Strimzi cluster); with kafka.bootstrapServers, set KAFKA_PROP_* variables in podOverrides.env"))]
#[x_kube(validation = Rule::new(
    "self.topic.name.lowerAscii().replace('_', '-').replace('.', '-') != self.dlqTopic.name.lowerAscii().replace('_', '-').replace('.', '-')"
).message("kafka.topic.name and kafka.dlqTopic.name must differ by more than case, '_' or '.': they would map to one KafkaTopic"))]
// A transition rule on the object rather than on the optional field: a rule on `clusterRef`
// itself runs only when old and new both have it, so removing it (for `bootstrapServers`)
// would slip through. `oldSelf.clusterRef` is read only where `has()` says it exists.
#[x_kube(validation = Rule::new(
    "!has(oldSelf.clusterRef) || (has(self.clusterRef) && self.clusterRef == oldSelf.clusterRef)"
).message("kafka.clusterRef may not change or be removed once set: the pipeline would point at another Kafka cluster, away from its topics, their data and its consumer group's offsets; to use another cluster, create a new pipeline"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Name of a Strimzi `Kafka` in this namespace; the operator then creates the topics as
    /// `KafkaTopic`s and connects to `<clusterRef>-kafka-bootstrap:9092`. May not change or
    /// be removed once set (that would point the pipeline at another cluster): create a new
    /// pipeline instead.
    pub cluster_ref: Option<String>,
    /// Comma-separated `host:port` list of brokers managed elsewhere (topics must exist).
    /// May change (brokers are added and replaced; the list only says how to reach the
    /// cluster).
    pub bootstrap_servers: Option<String>,
    /// Kafka consumer group of the processor; KEDA's lag trigger reads the same group.
    /// Default `odds-processor.<namespace>.<name>`, one group per pipeline, so pipelines on
    /// one Kafka cluster never split each other's records. Set it to use a group an ACL
    /// grants, or `odds-processor` to keep the group of operator versions before per-pipeline
    /// groups. 1 to 249 of `a-z A-Z 0-9 . _ -`. A new group starts at the earliest retained
    /// record: the processor replays the topic, which its version guards make harmless.
    #[x_kube(validation = Rule::new(
        "self.size() <= 249 && self.matches('^[a-zA-Z0-9._-]+$')"
    ).message("kafka.consumerGroup must be 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-'"))]
    // The schema's own bound also caps what the API server estimates the rule may cost.
    #[schemars(length(max = MAX_CONSUMER_GROUP_LENGTH))]
    pub consumer_group: Option<String>,
    /// The odds update topic.
    #[serde(default = "TopicSpec::updates")]
    pub topic: TopicSpec,
    /// The dead-letter topic for rejected updates.
    #[serde(default = "TopicSpec::dlq")]
    pub dlq_topic: TopicSpec,
    /// What deleting the pipeline does to its KafkaTopics (with `clusterRef`; with
    /// `bootstrapServers` the operator creates none). `Retain` (the default): the KafkaTopics
    /// carry no owner reference, so they and the data in Kafka stay when the pipeline is
    /// deleted; a pipeline of the same name created later takes them over as they are (their
    /// partitions may grow, never shrink). `Delete`: they carry the pipeline's controller
    /// owner reference, so garbage collection deletes them with the pipeline and Strimzi then
    /// deletes the topics and their data. A change applies to the live KafkaTopics at once.
    #[serde(default)]
    pub topic_deletion_policy: TopicDeletionPolicy,
    /// How ingest, the processor and KEDA's lag trigger authenticate to the Strimzi cluster
    /// (`clusterRef` only). Unset: a plain listener without authentication on port 9092.
    /// Set: the operator creates a Strimzi `KafkaUser` `<name>-kafka-client` whose ACLs allow
    /// only this pipeline's topic, DLQ and consumer group, and gives the workloads the
    /// credentials from the Secret Strimzi makes for it (and the cluster CA from
    /// `<clusterRef>-cluster-ca-cert`). For `bootstrapServers`, pass credentials as
    /// `KAFKA_PROP_*` variables in `podOverrides.env` instead.
    pub authentication: Option<KafkaAuthentication>,
}

/// The listener and credentials the workloads use on a Strimzi cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'tls' || self.tls")
    .message("kafka.authentication.type tls (mutual TLS) needs a TLS listener: set tls: true"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaAuthentication {
    /// `scram-sha-512` (a generated password, SASL SCRAM-SHA-512) or `tls` (a client
    /// certificate from Strimzi's clients CA). The listener must use the same
    /// `authentication.type`, and the cluster `authorization: simple` for the ACLs to apply.
    #[serde(rename = "type")]
    pub type_: KafkaAuthenticationType,
    /// Port of the Strimzi listener on the bootstrap Service (and the brokers).
    #[serde(default = "default_secured_listener_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Whether the listener is TLS (Strimzi's `tls: true`); the workloads then trust the
    /// cluster CA and check the brokers' host names.
    #[serde(default = "default_true")]
    pub tls: bool,
}

/// A Strimzi `KafkaUser` authentication type.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaAuthenticationType {
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    #[serde(rename = "tls")]
    Tls,
}

impl KafkaAuthenticationType {
    /// The value of Strimzi's `authentication.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "scram-sha-512",
            Self::Tls => "tls",
        }
    }
}

/// The port of Strimzi's conventional TLS listener (`name: tls, port: 9093, tls: true`).
pub const DEFAULT_SECURED_LISTENER_PORT: i32 = 9093;

fn default_secured_listener_port() -> i32 {
    DEFAULT_SECURED_LISTENER_PORT
}

/// What deleting the pipeline does to its KafkaTopics.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum TopicDeletionPolicy {
    /// The KafkaTopics outlive the pipeline: no owner reference, the data stays in Kafka.
    #[default]
    Retain,
    /// The KafkaTopics are deleted with the pipeline (owner reference), and with them the data.
    Delete,
}

impl TopicDeletionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retain => "Retain",
            Self::Delete => "Delete",
        }
    }
}

/// Longest `kafka.consumerGroup`: Kafka's bound for topic names, whose characters it shares.
pub const MAX_CONSUMER_GROUP_LENGTH: usize = 249;

/// One Kafka topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Topic name in Kafka (at most 249 of `a-z A-Z 0-9 . _ -`, Kafka's own rule). With
    /// `clusterRef` it also names the KafkaTopic, `<pipeline>-<name>` in lower case with `_`
    /// and `.` as `-`, which must be a DNS-1123 subdomain: at most 253 characters, so at
    /// most 252 minus the pipeline name's length, and not ending in `-`, `_` or `.`. May not
    /// change once set: the data would stay in the old topic; create a new pipeline instead.
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "topic names may not change once set: the pipeline would move to an empty topic and orphan the old one, with its data; to use another topic, create a new pipeline"
    ))]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub name: String,
    /// Partition count; updates are keyed by event id, so this bounds processor parallelism.
    /// May grow, never shrink (Kafka cannot remove partitions).
    #[x_kube(validation = Rule::new("self >= oldSelf").message("partitions may not shrink"))]
    #[schemars(range(min = 1))]
    pub partitions: i32,
    /// Replication factor.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 32767))]
    pub replicas: i32,
    /// Topic configuration, e.g. `retention.ms: "604800000"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    fn updates() -> Self {
        Self {
            name: odds_contracts::names::TOPIC_ODDS_UPDATES.to_string(),
            partitions: 6,
            replicas: 1,
            config: BTreeMap::new(),
        }
    }
    fn dlq() -> Self {
        Self {
            name: odds_contracts::names::TOPIC_ODDS_UPDATES_DLQ.to_string(),
            partitions: 1,
            replicas: 1,
            config: BTreeMap::new(),
        }
    }
}

fn one() -> i32 {
    1
}

/// A key of a Secret in the pipeline's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".to_string()
}

/// Redis connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Secret key holding the `redis://` URL.
    pub url_secret_ref: SecretKeyRef,
}

/// Postgres connection.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Secret key holding the `postgres://` URL (read-write: processor and migrations).
    pub url_secret_ref: SecretKeyRef,
    /// Optional Secret key holding a read replica URL for the odds service.
    pub read_url_secret_ref: Option<SecretKeyRef>,
    /// Seconds the schema migration Job may run before Kubernetes fails it
    /// (`activeDeadlineSeconds`; the `Migrated` condition then says why). Raise it for a
    /// migration that builds an index on a large history: a changed value starts a new Job.
    #[serde(default = "default_migration_deadline")]
    #[schemars(range(min = MIN_MIGRATION_DEADLINE_SECONDS))]
    pub migration_deadline_seconds: i64,
}

/// How long a migration Job may run unless `postgres.migrationDeadlineSeconds` says otherwise.
/// Each attempt already gives up on a lock after the migrate command's `--lock-timeout-ms`;
/// the deadline bounds the retries and a migration that hangs for any other reason. An hour
/// leaves room for an index build on a sizeable history.
pub const DEFAULT_MIGRATION_DEADLINE_SECONDS: i64 = 3600;
/// Less than a minute would fail a healthy migration while its pod is still being scheduled.
pub const MIN_MIGRATION_DEADLINE_SECONDS: i64 = 60;

fn default_migration_deadline() -> i64 {
    DEFAULT_MIGRATION_DEADLINE_SECONDS
}

/// Where the odds come from.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.url) != (has(self.simulator) && self.simulator.enabled)")
    .message("set exactly one of supplier.url and an enabled supplier.simulator"))]
#[serde(rename_all = "camelCase")]
pub struct SupplierSpec {
    /// WebSocket URL of an external supplier feed.
    pub url: Option<String>,
    /// The in-cluster simulator, deployed by the operator.
    pub simulator: Option<SimulatorSpec>,
}

/// The supplier simulator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SimulatorSpec {
    /// Deploy the simulator and point ingest at it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Number of simulated sports events (1 to 1 000 000, what the simulator accepts).
    #[serde(default = "default_events")]
    #[schemars(range(min = 1, max = MAX_SIMULATOR_VALUE))]
    pub events: i32,
    /// Updates per second over all events (1 to 1 000 000, what the simulator accepts).
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = MAX_SIMULATOR_VALUE))]
    pub rate: i32,
    /// Random seed (same seed, same feed).
    #[serde(default = "default_seed")]
    pub seed: i64,
}

/// Largest `supplier.simulator.events` and `rate`: supplier-simulator refuses more
/// (`SIM_EVENTS` and `SIM_RATE` are parsed with `range(1..=1_000_000)`; a test holds the two
/// together), and a pod that exits at start-up is what admission should prevent.
pub const MAX_SIMULATOR_VALUE: i32 = 1_000_000;

fn yes() -> bool {
    true
}
fn default_events() -> i32 {
    4
}
fn default_rate() -> i32 {
    10
}
fn default_seed() -> i64 {
    42
}

impl OddsPipeline {
    /// Whether the user asked to stop all changes (spec field or Strimzi-style annotation).
    pub fn is_paused(&self) -> bool {
        self.spec.paused
            || self
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PAUSE_ANNOTATION))
                .is_some_and(|v| v == "true")
    }
}

/// The CRD as YAML, exactly what `odds-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&OddsPipeline::crd())
}
