//! Validation: the only way from a raw `OddsPipeline` to the [`ValidPipeline`] the builders take.
//!
//! The CRD's CEL rules reject most bad specs at admission, but a cluster may run the CRD
//! without them (old API server, `--validate=false`, a CRD applied by hand), and some rules
//! need observed state (partitions may not shrink below the existing topic's, referenced
//! Secrets must exist). A failure here becomes a `Degraded` condition and a Warning event,
//! never a crash or a retry loop. What passes is turned into types that cannot express the
//! invalid cases (one Kafka source, one supplier), so the builders never re-check the spec.

use crate::crd::{
    ComponentSpec, ImageSpec, KafkaAuthentication, KafkaAuthenticationType, NetworkPolicySpec,
    OddsPipeline, OddsServiceSpec, ScalingMode, SecretKeyRef, SimulatorSpec, TopicDeletionPolicy,
    TopicSpec, MAX_CONSUMER_GROUP_LENGTH, MAX_SIMULATOR_VALUE, MIN_MIGRATION_DEADLINE_SECONDS,
};
use crate::model::{Component, Facts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

/// Longest pipeline name: the migration Job is `<name>-migrate-<10 hex>` and Job names are
/// label values (at most 63 characters).
pub const MAX_NAME_LENGTH: usize = 44;
/// Longest Kubernetes object name (a DNS-1123 subdomain), which a KafkaTopic's name is.
pub const MAX_SUBDOMAIN_LENGTH: usize = 253;
/// Annotation whose value goes into the migration Job's name: changing it (e.g. to the
/// current time) starts a new migration Job after a failed one.
pub const RETRY_MIGRATION_ANNOTATION: &str = "odds-pipeline.github.io/retry-migration";

/// Everything wrong with a spec, one message per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {}", .problems.join("; "))]
pub struct InvalidSpec {
    pub problems: Vec<String>,
}

/// Where the pipeline's Kafka is.
#[derive(Clone, Debug, PartialEq)]
pub enum KafkaSource {
    /// A Strimzi `Kafka` in the pipeline's namespace: the operator creates the topics, and
    /// with `authentication` the pipeline's `KafkaUser`.
    Strimzi {
        cluster: String,
        authentication: Option<KafkaAuthentication>,
    },
    /// Brokers managed elsewhere: the topics must exist.
    External { bootstrap_servers: String },
}

/// Port of Strimzi's plain listener (`<cluster>-kafka-bootstrap:9092`).
pub const PLAIN_LISTENER_PORT: i32 = odds_contracts::ports::KAFKA_PLAIN as i32;

impl KafkaSource {
    /// The port of the Strimzi listener the workloads use: the secured one with
    /// `kafka.authentication`, else the plain one. (External brokers carry their ports in
    /// `bootstrapServers`; for them this is the plain port, never used.)
    pub fn listener_port(&self) -> i32 {
        match self {
            KafkaSource::Strimzi {
                authentication: Some(auth),
                ..
            } => auth.port,
            _ => PLAIN_LISTENER_PORT,
        }
    }
}

/// Where the odds come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Supplier {
    External { url: String },
    Simulator(SimulatorSpec),
}

/// A pipeline that passed [`validate`], with the facts it was validated against.
#[derive(Clone, Debug)]
pub struct ValidPipeline {
    pub name: String,
    pub namespace: String,
    /// The controller owner reference children carry (absent only for a pipeline that was
    /// never stored, as in pure builder tests without a uid).
    pub owner: Option<OwnerReference>,
    pub image: ImageSpec,
    pub kafka: KafkaSource,
    pub topic: TopicSpec,
    pub dlq_topic: TopicSpec,
    /// Whether the KafkaTopics carry the owner reference (`Delete`) or outlive the pipeline.
    pub topic_deletion_policy: TopicDeletionPolicy,
    /// The processor's Kafka consumer group, which KEDA's lag trigger reads too:
    /// `kafka.consumerGroup`, else [`crate::names::default_consumer_group`].
    pub consumer_group: String,
    pub supplier: Supplier,
    pub redis_url: SecretKeyRef,
    pub postgres_url: SecretKeyRef,
    pub postgres_read_url: Option<SecretKeyRef>,
    pub ingest: ComponentSpec,
    pub processor: ComponentSpec,
    pub odds_service: OddsServiceSpec,
    /// Value of [`RETRY_MIGRATION_ANNOTATION`], if set.
    pub migration_retry: Option<String>,
    /// `activeDeadlineSeconds` of the migration Job.
    pub migration_deadline_seconds: i64,
    pub network_policy: NetworkPolicySpec,
    /// Where the workloads send traces (`spec.observability.tracing`), if anywhere.
    pub tracing: Option<crate::crd::TracingSpec>,
    pub facts: Facts,
}

impl ValidPipeline {
    /// The spec section of a component (the simulator uses defaults: one small pod).
    pub fn component(&self, component: Component) -> ComponentSpec {
        match component {
            Component::Simulator => ComponentSpec::default(),
            Component::Ingest => self.ingest.clone(),
            Component::Processor => self.processor.clone(),
            Component::OddsService => self.odds_service.workload.clone(),
        }
    }

    /// The components this pipeline runs, in start order.
    pub fn components(&self) -> Vec<Component> {
        let mut out = Vec::new();
        if matches!(self.supplier, Supplier::Simulator(_)) {
            out.push(Component::Simulator);
        }
        out.extend([
            Component::Ingest,
            Component::Processor,
            Component::OddsService,
        ]);
        out
    }
}

/// Validates `pipeline` against the rules and what the cluster already has (`facts`): one
/// check per spec section, every problem reported at once, in spec order.
pub fn validate(pipeline: &OddsPipeline, facts: &Facts) -> Result<ValidPipeline, InvalidSpec> {
    let spec = &pipeline.spec;
    let mut problems = Vec::new();
    let name = pipeline.name_any();
    problems.extend(name_problem(&name));
    let namespace = pipeline.namespace().unwrap_or_default();
    let source = kafka_source(&spec.kafka, &mut problems);
    problems.extend(authentication_problems(&spec.kafka));
    if let Some(tracing) = &spec.observability.tracing {
        problems.extend(crate::crd::tracing_problems(tracing));
    }
    let supplier = supplier(&spec.supplier, &mut problems);
    let consumer_group = consumer_group(&spec.kafka, &namespace, &name, &mut problems);
    problems.extend(topic_problems(&name, &spec.kafka, facts));
    problems.extend(workload_problems(spec));
    problems.extend(simulator_problems(&spec.supplier));
    problems.extend(crate::freshness::slo_problems(&spec.slo));
    if spec.postgres.migration_deadline_seconds < MIN_MIGRATION_DEADLINE_SECONDS {
        problems.push(format!(
            "postgres.migrationDeadlineSeconds must be at least {MIN_MIGRATION_DEADLINE_SECONDS}"
        ));
    }
    problems.extend(secret_problems(spec, facts));
    match (source, supplier) {
        (Some(kafka), Some(supplier)) if problems.is_empty() => Ok(valid_pipeline(
            pipeline,
            facts,
            (name, namespace),
            kafka,
            supplier,
            consumer_group,
        )),
        _ => Err(InvalidSpec { problems }),
    }
}

/// The [`ValidPipeline`] of a spec without problems: what [`validate`] decided, and the rest
/// of the spec as it is.
fn valid_pipeline(
    pipeline: &OddsPipeline,
    facts: &Facts,
    (name, namespace): (String, String),
    kafka: KafkaSource,
    supplier: Supplier,
    consumer_group: String,
) -> ValidPipeline {
    let spec = &pipeline.spec;
    let mut owner = pipeline.controller_owner_ref(&());
    if let Some(owner) = owner.as_mut() {
        owner.block_owner_deletion = Some(true);
    }
    ValidPipeline {
        name,
        namespace,
        owner,
        image: spec.image.clone(),
        kafka,
        consumer_group,
        supplier,
        topic: spec.kafka.topic.clone(),
        dlq_topic: spec.kafka.dlq_topic.clone(),
        topic_deletion_policy: spec.kafka.topic_deletion_policy,
        redis_url: spec.redis.url_secret_ref.clone(),
        postgres_url: spec.postgres.url_secret_ref.clone(),
        postgres_read_url: spec.postgres.read_url_secret_ref.clone(),
        ingest: spec.ingest.clone(),
        processor: spec.processor.clone(),
        odds_service: spec.odds_service.clone(),
        migration_retry: pipeline
            .annotations()
            .get(RETRY_MIGRATION_ANNOTATION)
            .cloned(),
        migration_deadline_seconds: spec.postgres.migration_deadline_seconds,
        network_policy: spec.network_policy.clone(),
        tracing: spec.observability.tracing.clone(),
        facts: facts.clone(),
    }
}

/// `kafka.clusterRef` or `kafka.bootstrapServers`, exactly one of them.
fn kafka_source(kafka: &crate::crd::KafkaSpec, problems: &mut Vec<String>) -> Option<KafkaSource> {
    match (&kafka.cluster_ref, &kafka.bootstrap_servers) {
        (Some(cluster), None) => Some(KafkaSource::Strimzi {
            cluster: cluster.clone(),
            authentication: kafka.authentication.clone(),
        }),
        (None, Some(servers)) => Some(KafkaSource::External {
            bootstrap_servers: servers.clone(),
        }),
        _ => {
            problems.push("set exactly one of kafka.clusterRef and kafka.bootstrapServers".into());
            None
        }
    }
}

/// `supplier.url` or an enabled `supplier.simulator`, exactly one of them.
fn supplier(supplier: &crate::crd::SupplierSpec, problems: &mut Vec<String>) -> Option<Supplier> {
    match (&supplier.url, &supplier.simulator) {
        (Some(url), None) => Some(Supplier::External { url: url.clone() }),
        (Some(url), Some(sim)) if !sim.enabled => Some(Supplier::External { url: url.clone() }),
        (None, Some(sim)) if sim.enabled => Some(Supplier::Simulator(sim.clone())),
        _ => {
            problems
                .push("set exactly one of supplier.url and an enabled supplier.simulator".into());
            None
        }
    }
}

/// `kafka.consumerGroup`, else the default group of pipeline `name`.
fn consumer_group(
    kafka: &crate::crd::KafkaSpec,
    namespace: &str,
    name: &str,
    problems: &mut Vec<String>,
) -> String {
    match &kafka.consumer_group {
        Some(group) => {
            problems.extend(consumer_group_problem(group));
            group.clone()
        }
        None => crate::names::default_consumer_group(namespace, name),
    }
}

/// What is wrong with `kafka.topic` and `kafka.dlqTopic`: their KafkaTopic names, the
/// partitions (at least one, never fewer than the topic has), and the two colliding.
fn topic_problems(name: &str, kafka: &crate::crd::KafkaSpec, facts: &Facts) -> Vec<String> {
    let mut problems = Vec::new();
    // KafkaTopics exist only with `clusterRef`; a bad pipeline name is name_problem's to report.
    if kafka.cluster_ref.is_some() && name_problem(name).is_none() {
        for (field, topic) in [
            ("kafka.topic.name", &kafka.topic),
            ("kafka.dlqTopic.name", &kafka.dlq_topic),
        ] {
            problems.extend(topic_resource_problem(name, field, topic));
        }
    }
    if kafka.topic.partitions < 1 {
        problems.push("kafka.topic.partitions must be at least 1".into());
    }
    if let Some(existing) = facts.existing_partitions {
        if kafka.topic.partitions < existing {
            problems.push(format!(
                "kafka.topic.partitions may not shrink (topic has {existing}, spec asks {})",
                kafka.topic.partitions
            ));
        }
    }
    if crate::names::kube_name(&kafka.topic.name) == crate::names::kube_name(&kafka.dlq_topic.name)
    {
        problems.push(format!(
            "kafka.topic.name ({}) and kafka.dlqTopic.name ({}) differ only by case, `_` or `.`: they would be one KafkaTopic",
            kafka.topic.name, kafka.dlq_topic.name
        ));
    }
    problems
}

/// What is wrong with the workloads' sections: more processors than partitions, and each
/// component's replicas, autoscaling and overrides.
fn workload_problems(spec: &crate::crd::OddsPipelineSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let partitions = spec.kafka.topic.partitions;
    let processor_max = spec
        .processor
        .autoscaling
        .as_ref()
        .map_or(spec.processor.replicas, |a| a.max_replicas);
    if processor_max > partitions {
        problems.push(format!(
            "processor replicas ({processor_max}) exceed kafka.topic.partitions ({partitions}): extra consumers would sit idle"
        ));
    }
    for (name, component, allowed) in [
        ("ingest", &spec.ingest, &[ScalingMode::Cpu][..]),
        (
            "processor",
            &spec.processor,
            &[ScalingMode::Cpu, ScalingMode::Lag][..],
        ),
        (
            "oddsService",
            &spec.odds_service.workload,
            &[ScalingMode::Cpu, ScalingMode::Connections][..],
        ),
    ] {
        check_component(name, component, allowed, &mut problems);
    }
    problems
}

/// `supplier.simulator`'s events and rate within what the simulator accepts.
fn simulator_problems(supplier: &crate::crd::SupplierSpec) -> Vec<String> {
    let Some(sim) = &supplier.simulator else {
        return Vec::new();
    };
    [("events", sim.events), ("rate", sim.rate)]
        .into_iter()
        .filter(|(_, value)| !(1..=MAX_SIMULATOR_VALUE).contains(value))
        .map(|(field, value)| format!(
            "supplier.simulator.{field} ({value}) must be 1 to {MAX_SIMULATOR_VALUE}, what the simulator accepts"
        ))
        .collect()
}

/// The Secrets the spec references: each must exist and hold its key.
fn secret_problems(spec: &crate::crd::OddsPipelineSpec, facts: &Facts) -> Vec<String> {
    let mut problems = Vec::new();
    let mut refs = vec![&spec.redis.url_secret_ref, &spec.postgres.url_secret_ref];
    refs.extend(spec.postgres.read_url_secret_ref.as_ref());
    let mut missing = Vec::new();
    for reference in refs {
        match facts.secrets.get(&reference.name) {
            None => missing.push(reference.name.clone()),
            Some(keys) if !keys.contains_key(&reference.key) => problems.push(format!(
                "Secret {} has no key {}",
                reference.name, reference.key
            )),
            Some(_) => {}
        }
    }
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        problems.push(format!("missing Secret(s): {}", missing.join(", ")));
    }
    problems
}

/// Why `name` cannot name a pipeline, if it cannot: it becomes Service names (DNS-1035
/// labels), label values and the migration Job's name. The CRD has the same rule in CEL.
pub fn name_problem(name: &str) -> Option<String> {
    let dns_1035 = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if name.len() > MAX_NAME_LENGTH {
        Some(format!(
            "metadata.name must be at most {MAX_NAME_LENGTH} characters (has {})",
            name.len()
        ))
    } else if !dns_1035 {
        Some(format!(
            "metadata.name {name:?} must be lower-case letters, digits and '-', start with a letter and end with a letter or digit"
        ))
    } else {
        None
    }
}

/// What is wrong with `kafka.authentication`, as the CRD's CEL rules say it.
fn authentication_problems(kafka: &crate::crd::KafkaSpec) -> Vec<String> {
    let Some(auth) = &kafka.authentication else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if kafka.cluster_ref.is_none() {
        problems.push("kafka.authentication needs kafka.clusterRef (the operator creates the KafkaUser in that Strimzi cluster); with kafka.bootstrapServers, set KAFKA_PROP_* variables in podOverrides.env".into());
    }
    if auth.type_ == KafkaAuthenticationType::Tls && !auth.tls {
        problems.push(
            "kafka.authentication.type tls (mutual TLS) needs a TLS listener: set tls: true".into(),
        );
    }
    if !(1..=65535).contains(&auth.port) {
        problems.push(format!(
            "kafka.authentication.port ({}) must be 1 to 65535",
            auth.port
        ));
    }
    problems
}

/// Why `group` cannot be `kafka.consumerGroup`, if it cannot: 1 to 249 of the characters
/// Kafka allows in topic names (Kafka itself takes any string as a group id, but ACLs, tools
/// and KEDA's metadata are simpler with these). The CRD has the same rule in CEL.
pub fn consumer_group_problem(group: &str) -> Option<String> {
    let legal = group
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (group.is_empty() || group.len() > MAX_CONSUMER_GROUP_LENGTH || !legal).then(|| {
        format!(
            "kafka.consumerGroup {group:?} must be 1 to {MAX_CONSUMER_GROUP_LENGTH} of a-z, A-Z, 0-9, '.', '_' and '-'"
        )
    })
}

/// Why `topic` (the spec field `field`) cannot be a topic of pipeline `pipeline` with
/// `clusterRef`, if it cannot: its KafkaTopic, [`crate::names::resource_name`], must be
/// a DNS-1123 subdomain (at most 253 characters, starting and ending with a letter or digit).
/// The CRD has the same rule in CEL.
pub fn topic_resource_problem(pipeline: &str, field: &str, topic: &TopicSpec) -> Option<String> {
    let resource = crate::names::resource_name(pipeline, topic);
    let alphanumeric =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let subdomain = resource.len() <= MAX_SUBDOMAIN_LENGTH
        && alphanumeric(resource.chars().next())
        && alphanumeric(resource.chars().last())
        && resource
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (!subdomain).then(|| {
        format!(
            "{field} {:?} gives the KafkaTopic name {resource:?} ({} characters), which is not a DNS-1123 subdomain: at most {MAX_SUBDOMAIN_LENGTH} characters, not starting or ending with '-' (the topic name may not end with '-', '_' or '.')",
            topic.name,
            resource.len()
        )
    })
}

fn check_component(
    name: &str,
    spec: &ComponentSpec,
    allowed: &[ScalingMode],
    problems: &mut Vec<String>,
) {
    if spec.replicas < 0 {
        problems.push(format!("{name}.replicas must not be negative"));
    }
    if let Some(scaling) = &spec.autoscaling {
        if !allowed.contains(&scaling.mode) {
            let allowed: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            problems.push(format!(
                "{name}.autoscaling.mode {} is not one of {}",
                scaling.mode.as_str(),
                allowed.join(", ")
            ));
        }
        if scaling.min_replicas < 1 || scaling.min_replicas > scaling.max_replicas {
            problems.push(format!(
                "{name}.autoscaling needs 1 <= minReplicas ({}) <= maxReplicas ({})",
                scaling.min_replicas, scaling.max_replicas
            ));
        }
        let has_cpu_request = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|r| r.contains_key("cpu"));
        // Lag and connections modes need it too: CPU is their fallback without KEDA.
        if !has_cpu_request {
            problems.push(format!(
                "{name}.autoscaling scales on CPU utilisation (the fallback of every mode), which needs {name}.resources.requests.cpu"
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let repeated: std::collections::BTreeSet<&str> = spec
        .pod_overrides
        .env
        .iter()
        .map(|e| e.name.as_str())
        .filter(|name| !seen.insert(*name))
        .collect();
    for repeated in repeated {
        problems.push(format!(
            "{name}.podOverrides.env sets {repeated} more than once"
        ));
    }
}
