//! Dereference: what the reconciler reads from the cluster before and after applying.
//!
//! Kept apart from the loop so the facts validation and the pure builders depend on
//! (Secrets' presence and key digests, topic readiness, migration outcome) and the pod counts
//! the status reports are gathered in one place, each with a single GET per object.

use crate::build::{job, kafkauser, topic, Component, Facts, KafkaTopic, KafkaUser};
use crate::build::{MigrationState, ScaledObject};
use crate::crd::{ComponentStatus, KafkaAuthenticationType, OddsPipeline};
use crate::rollout;
use crate::status::{self, Failure};
pub use crate::urls::{url_host_port, url_port, RedisUrl};
use crate::validate::ValidPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A read the reconcile needed failed.
#[derive(Debug, thiserror::Error)]
#[error("reading {what}: {source}")]
pub struct DereferenceError {
    /// What was being read, e.g. `Secret odds-redis`.
    pub what: String,
    #[source]
    pub source: kube::Error,
}

fn reading(what: impl Into<String>) -> impl FnOnce(kube::Error) -> DereferenceError {
    let what = what.into();
    move |source| DereferenceError { what, source }
}

/// Reads what validation and the build need to know: Secrets and topics.
///
/// A referenced Secret is read in full, but only digests of its values leave this
/// function, and the ports of its URLs; the values themselves are never logged or written
/// anywhere. One value is kept, in memory only: the Redis URL, to which the pipeline's
/// freshness canary publishes its figures for the odds page ([`RedisUrl`]).
pub async fn facts(
    client: &kube::Client,
    pipeline: &OddsPipeline,
    namespace: &str,
) -> Result<Facts, DereferenceError> {
    let mut facts = Facts::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in secret_names(pipeline) {
        let found = secrets
            .get_opt(&name)
            .await
            .map_err(reading(format!("Secret {name}")))?;
        if let Some(secret) = found {
            let redis = &pipeline.spec.redis.url_secret_ref;
            if name == redis.name {
                facts.redis_url = secret_string(&secret, &redis.key).map(RedisUrl);
            }
            facts.ports.insert(name.clone(), url_ports(&secret));
            facts.secrets.insert(name, key_digests(&secret));
        }
    }
    facts.kafka_user_ready = kafka_user_ready(client, pipeline, namespace, &facts).await?;
    if pipeline.spec.kafka.cluster_ref.is_none() {
        facts.topics_ready = true;
    } else {
        let api: Api<KafkaTopic> = Api::namespaced(client.clone(), namespace);
        let mut all_ready = true;
        let kafka = &pipeline.spec.kafka;
        for (index, spec) in [&kafka.topic, &kafka.dlq_topic].into_iter().enumerate() {
            let name = topic::resource_name(&pipeline.name_any(), spec);
            let existing = api
                .get_opt(&name)
                .await
                .map_err(reading(format!("KafkaTopic {name}")))?;
            if index == 0 {
                facts.existing_partitions = existing.as_ref().and_then(|t| t.spec.partitions);
            }
            all_ready &= existing.as_ref().is_some_and(KafkaTopic::is_ready);
        }
        facts.topics_ready = all_ready;
    }
    Ok(facts)
}

/// With `kafka.authentication`: whether the pipeline's KafkaUser is `Ready` and the keys its
/// workloads read (the user's credentials, the cluster CA) are in the Secrets already read
/// into `facts`. Without it: true, there is nothing to wait for.
async fn kafka_user_ready(
    client: &kube::Client,
    pipeline: &OddsPipeline,
    namespace: &str,
    facts: &Facts,
) -> Result<bool, DereferenceError> {
    let kafka = &pipeline.spec.kafka;
    let (Some(cluster), Some(auth)) = (&kafka.cluster_ref, &kafka.authentication) else {
        return Ok(true);
    };
    let api: Api<KafkaUser> = Api::namespaced(client.clone(), namespace);
    let name = kafkauser::name_in(&pipeline.name_any());
    let ready = api
        .get_opt(&name)
        .await
        .map_err(reading(format!("KafkaUser {name}")))?
        .is_some_and(|user| user.is_ready());
    let has = |secret: &str, key: &str| {
        facts
            .secrets
            .get(secret)
            .is_some_and(|keys| keys.contains_key(key))
    };
    let user_keys: &[&str] = match auth.type_ {
        KafkaAuthenticationType::ScramSha512 => &["password"],
        KafkaAuthenticationType::Tls => &["user.crt", "user.key"],
    };
    let credentials = user_keys.iter().all(|key| has(&name, key));
    let ca = !auth.tls || has(&kafkauser::cluster_ca_secret(cluster), "ca.crt");
    Ok(ready && credentials && ca)
}

/// The value of `key` in `secret` as text (`stringData` winning, as in [`key_digests`]).
fn secret_string(secret: &Secret, key: &str) -> Option<String> {
    let from_strings = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned();
    from_strings.or_else(|| {
        let bytes = secret.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    })
}

/// A digest of each key's value. `stringData` counts as the API server stores it: merged
/// into `data`, winning over a `data` key of the same name (it arrives so only from a file,
/// as `odds-operator render --secrets` reads one).
pub fn key_digests(secret: &Secret) -> BTreeMap<String, String> {
    let mut keys: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key.clone(), digest(&value.0)))
        .collect();
    for (key, value) in secret.string_data.iter().flatten() {
        keys.insert(key.clone(), digest(value.as_bytes()));
    }
    keys
}

/// The port of each key whose value is a URL with a port (or a scheme whose default port is
/// known): what the NetworkPolicies open. Nothing else of the value leaves this function.
pub fn url_ports(secret: &Secret) -> BTreeMap<String, u16> {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key, String::from_utf8_lossy(&value.0).into_owned()));
    let strings = secret
        .string_data
        .iter()
        .flatten()
        .map(|(key, value)| (key, value.clone()));
    data.chain(strings)
        .filter_map(|(key, value)| Some((key.clone(), url_port(&value)?)))
        .collect()
}

fn digest(value: &[u8]) -> String {
    crate::build::short_hex(&Sha256::digest(value))
}

/// The state of the migration Job of `pipeline`'s current image.
pub async fn migration(
    client: &kube::Client,
    pipeline: &ValidPipeline,
) -> Result<MigrationState, DereferenceError> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &pipeline.namespace);
    let name = job::name(pipeline);
    Ok(
        match jobs
            .get_opt(&name)
            .await
            .map_err(reading(format!("Job {name}")))?
        {
            Some(found) => job::state(&found),
            None => MigrationState::Pending,
        },
    )
}

/// The Secrets `pipeline` references, sorted, each once: the datastores' and, with
/// `kafka.authentication`, the KafkaUser's and the cluster CA's that Strimzi makes.
pub fn secret_names(pipeline: &OddsPipeline) -> Vec<String> {
    let spec = &pipeline.spec;
    let mut names = vec![
        spec.redis.url_secret_ref.name.clone(),
        spec.postgres.url_secret_ref.name.clone(),
    ];
    if let Some(read) = &spec.postgres.read_url_secret_ref {
        names.push(read.name.clone());
    }
    if let (Some(cluster), Some(auth)) = (&spec.kafka.cluster_ref, &spec.kafka.authentication) {
        names.push(kafkauser::name_in(&pipeline.name_any()));
        if auth.tls {
            names.push(kafkauser::cluster_ca_secret(cluster));
        }
    }
    names.sort();
    names.dedup();
    names
}

/// What the workloads' Deployments (and, for one that is not ready, its pods) say.
#[derive(Clone, Debug, Default)]
pub struct Workloads {
    /// Ready and desired pods of each workload Deployment that exists.
    pub components: BTreeMap<Component, ComponentStatus>,
    /// Workloads whose rollout is stuck, with the cause.
    pub stuck: BTreeMap<Component, Failure>,
}

/// Reads the workload Deployments of pipeline `name`; the pods of a Deployment that is not
/// ready are read too (one list per such Deployment), to say why.
pub async fn components(
    client: &kube::Client,
    name: &str,
    namespace: &str,
) -> Result<Workloads, DereferenceError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut out = Workloads::default();
    for component in [
        Component::Simulator,
        Component::Ingest,
        Component::Processor,
        Component::OddsService,
    ] {
        let deployment_name = component.name_in(name);
        let found = api
            .get_opt(&deployment_name)
            .await
            .map_err(reading(format!("Deployment {deployment_name}")))?;
        let Some(deployment) = found else {
            continue;
        };
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        // A pod counts once it runs the current template and passes readiness.
        let ready = status
            .ready_replicas
            .unwrap_or(0)
            .min(status.updated_replicas.unwrap_or(0));
        out.components
            .insert(component, status::component_status(ready, desired));
        if ready < desired {
            let pods = pods_of(client, &deployment, namespace).await?;
            if let Some(failure) = rollout::stuck(&deployment, &pods) {
                out.stuck.insert(component, failure);
            }
        }
    }
    Ok(out)
}

/// The pods `deployment` selects.
async fn pods_of(
    client: &kube::Client,
    deployment: &Deployment,
    namespace: &str,
) -> Result<Vec<Pod>, DereferenceError> {
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if selector.is_empty() {
        return Ok(Vec::new());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(reading(format!(
            "pods of Deployment {}",
            deployment.name_any()
        )))?;
    Ok(list.items)
}

/// The pipelines in `namespace` that reference Secret `name`: a change of that Secret must
/// reconcile them (their pods roll through the config hash when a value they read changed).
pub fn pipelines_using_secret<'a>(
    pipelines: impl IntoIterator<Item = &'a OddsPipeline>,
    namespace: Option<&str>,
    name: &str,
) -> Vec<kube::runtime::reflector::ObjectRef<OddsPipeline>> {
    pipelines
        .into_iter()
        .filter(|p| p.namespace().as_deref() == namespace)
        .filter(|p| secret_names(p).iter().any(|s| s == name))
        .map(kube::runtime::reflector::ObjectRef::from_obj)
        .collect()
}

/// The consumer lag the last scaling decision of pipeline `name`'s processor saw: KEDA's
/// HPA for the processor's ScaledObject (named in the ScaledObject's status) reports the
/// Kafka trigger's metric. `None` when there is no such decision yet.
pub async fn processor_lag(
    client: &kube::Client,
    name: &str,
    namespace: &str,
) -> Result<Option<i64>, DereferenceError> {
    let scaled_objects: Api<ScaledObject> = Api::namespaced(client.clone(), namespace);
    let so_name = Component::Processor.name_in(name);
    let Some(scaled_object) = scaled_objects
        .get_opt(&so_name)
        .await
        .map_err(reading(format!("ScaledObject {so_name}")))?
    else {
        return Ok(None);
    };
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let hpa_name = scaled_object.hpa_name();
    let hpa = hpas
        .get_opt(&hpa_name)
        .await
        .map_err(reading(format!("HorizontalPodAutoscaler {hpa_name}")))?;
    Ok(hpa.as_ref().and_then(lag_seen_by))
}

/// The total of the external metric `hpa` last saw: its `value`, or (for an `AverageValue`
/// target, how KEDA's Kafka trigger is set up) the average per replica × the replicas it
/// was averaged over.
pub fn lag_seen_by(hpa: &HorizontalPodAutoscaler) -> Option<i64> {
    let status = hpa.status.as_ref()?;
    let current = status
        .current_metrics
        .iter()
        .flatten()
        .find_map(|m| m.external.as_ref())
        .map(|external| &external.current)?;
    if let Some(value) = &current.value {
        return quantity(&value.0).map(|v| v.round() as i64);
    }
    let average = quantity(&current.average_value.as_ref()?.0)?;
    let replicas = f64::from(status.current_replicas?);
    Some((average * replicas).round() as i64)
}

/// A decimal Kubernetes quantity (`1500m`, `12`, `3k`) as a number; binary suffixes and
/// exponents do not occur in metric values.
pub fn quantity(text: &str) -> Option<f64> {
    let (number, scale) = match text.char_indices().last()? {
        (i, 'm') => (&text[..i], 1e-3),
        (i, 'k') => (&text[..i], 1e3),
        (i, 'M') => (&text[..i], 1e6),
        (i, 'G') => (&text[..i], 1e9),
        (i, 'T') => (&text[..i], 1e12),
        _ => (text, 1.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}
