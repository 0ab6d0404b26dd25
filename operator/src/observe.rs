//! Dereference: what the reconciler reads from the cluster before and after applying.
//!
//! Kept apart from the loop so the facts the pure builders depend on (Secrets' presence and
//! versions, topic readiness, migration outcome) and the pod counts the status reports are
//! gathered in one place, each with a single GET per object.

use crate::build::{self, job, Component, Facts, KafkaTopic, MigrationState};
use crate::controller::Error;
use crate::crd::{ComponentStatus, OddsPipeline};
use crate::status;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Reads what the build needs to know: Secrets, topic readiness, migration outcome.
pub async fn facts(
    client: &kube::Client,
    pipeline: &OddsPipeline,
    namespace: &str,
) -> Result<Facts, Error> {
    let mut facts = Facts::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in secret_names(pipeline) {
        if let Some(secret) = secrets.get_metadata_opt(&name).await? {
            facts
                .secret_versions
                .insert(name, secret.metadata.resource_version.unwrap_or_default());
        }
    }
    let topics = build::topic::build(pipeline);
    if topics.is_empty() {
        facts.topics_ready = true;
    } else {
        let api: Api<KafkaTopic> = Api::namespaced(client.clone(), namespace);
        let mut all_ready = true;
        for (index, desired) in topics.iter().enumerate() {
            let existing = api.get_opt(&desired.name_any()).await?;
            if index == 0 {
                facts.existing_partitions = existing.as_ref().and_then(|t| t.spec.partitions);
            }
            all_ready &= existing.as_ref().is_some_and(KafkaTopic::is_ready);
        }
        facts.topics_ready = all_ready;
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    facts.migration = match jobs.get_opt(&job::name(pipeline)).await? {
        Some(found) => job::state(&found),
        None => MigrationState::Pending,
    };
    Ok(facts)
}

pub fn secret_names(pipeline: &OddsPipeline) -> Vec<String> {
    let spec = &pipeline.spec;
    let mut names = vec![
        spec.redis.url_secret_ref.name.clone(),
        spec.postgres.url_secret_ref.name.clone(),
    ];
    if let Some(read) = &spec.postgres.read_url_secret_ref {
        names.push(read.name.clone());
    }
    names.sort();
    names.dedup();
    names
}

pub fn missing_secrets(pipeline: &OddsPipeline, facts: &Facts) -> Vec<String> {
    secret_names(pipeline)
        .into_iter()
        .filter(|name| !facts.secret_versions.contains_key(name))
        .collect()
}

/// Ready and desired pods of each workload Deployment that exists.
pub async fn components(
    client: &kube::Client,
    pipeline: &OddsPipeline,
    namespace: &str,
) -> Result<BTreeMap<Component, ComponentStatus>, Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut out = BTreeMap::new();
    for component in build::deployment::components(pipeline) {
        let Some(deployment) = api.get_opt(&component.name(pipeline)).await? else {
            continue;
        };
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.unwrap_or_default();
        // A pod counts once it runs the current template and passes readiness.
        let ready = status
            .ready_replicas
            .unwrap_or(0)
            .min(status.updated_replicas.unwrap_or(0));
        out.insert(component, status::component_status(ready, desired));
    }
    Ok(out)
}

/// The pipelines in `namespace` that reference Secret `name`: a change of that Secret must
/// reconcile them (their pods roll through the config hash).
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
