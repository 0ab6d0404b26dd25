//! Server-side apply of children under one field manager, forced.
//!
//! Forcing is right because the operator is the only intended writer of the fields it sets;
//! fields it leaves out (an HPA's `replicas`) stay with whoever owns them. Each apply reports
//! whether the object was created, changed or already as desired, so events are only
//! published for real changes and a steady state writes nothing that changes.
//!
//! Server-side apply removes a field that the manager applied before and leaves out now,
//! unless another manager also owns it. That is what makes turning on autoscaling dangerous:
//! the Deployment would drop `replicas` (to the default, 1) until the HPA's first sync. So
//! before `replicas` is left out, [`hand_over_replicas`] gives it to a second field manager
//! at its current value, as the Kubernetes documentation describes ("Transferring
//! ownership"); the HPA takes it from there when it first scales.

use crate::build::TriggerAuthentication;
use crate::build::{Children, KafkaTopic, KafkaUser, PodMonitor, ScaledObject, FIELD_MANAGER};
use crate::crd::Reason;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Field manager that holds a Deployment's `replicas` between the operator letting go of it
/// and the HorizontalPodAutoscaler's first scale.
pub const HANDOVER_MANAGER: &str = "odds-operator-handover";

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// The API server refused to write (or delete) a child.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {name}: {}", message(.source))]
pub struct ApplyError {
    pub verb: &'static str,
    pub kind: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// The API server's own message when it sent one (what `kubectl` would print).
fn message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

impl ApplyError {
    fn new<K: Resource<DynamicType = ()>>(
        verb: &'static str,
        name: &str,
        source: kube::Error,
    ) -> Self {
        Self {
            verb,
            kind: K::kind(&()).into_owned(),
            name: name.to_string(),
            source,
        }
    }

    /// The `Degraded` reason this failure shows as.
    pub fn reason(&self) -> Reason {
        classify(&self.kind, &self.source)
    }
}

/// The reason a failed request against an object of `kind` shows as: a 403 is RBAC or a
/// quota (`Forbidden`), a 404 for a Strimzi kind means its CRD is gone
/// (`StrimziNotInstalled`), for a ScaledObject that KEDA's is (`KedaNotInstalled`), for a
/// PodMonitor that the Prometheus Operator's is (`MetricsUnavailable`), anything else the API
/// server refused is `ApplyFailed`.
pub fn classify(kind: &str, error: &kube::Error) -> Reason {
    match error {
        kube::Error::Api(status) if status.code == 403 => Reason::Forbidden,
        kube::Error::Api(status)
            if status.code == 404
                && (kind == KafkaTopic::kind(&()) || kind == KafkaUser::kind(&())) =>
        {
            Reason::StrimziNotInstalled
        }
        kube::Error::Api(status)
            if status.code == 404
                && (kind == ScaledObject::kind(&())
                    || kind == TriggerAuthentication::kind(&())) =>
        {
            Reason::KedaNotInstalled
        }
        kube::Error::Api(status) if status.code == 404 && kind == PodMonitor::kind(&()) => {
            Reason::MetricsUnavailable
        }
        _ => Reason::ApplyFailed,
    }
}

/// A kind of child the operator applies: namespaced, and read and written as JSON.
pub trait Child:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> Child for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

/// Applies `desired` in `namespace`; returns what happened and the object as stored (with
/// its status, which the status computation reads).
pub async fn apply<K: Child>(
    client: &kube::Client,
    namespace: &str,
    desired: &K,
) -> Result<(Outcome, K), ApplyError> {
    let (outcome, _, after) = apply_seen(client, namespace, desired).await?;
    Ok((outcome, after))
}

/// [`apply`], also returning the object as it was before (absent when created).
async fn apply_seen<K: Child>(
    client: &kube::Client,
    namespace: &str,
    desired: &K,
) -> Result<(Outcome, Option<K>, K), ApplyError> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = desired.name_any();
    let named = name.as_str();
    let failed = |verb: &'static str| move |error| ApplyError::new::<K>(verb, named, error);
    let before = api.get_opt(&name).await.map_err(failed("get"))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut body = serde_json::to_value(desired)
        .map_err(kube::Error::SerdeError)
        .map_err(failed("serialize"))?;
    // Apply bodies carry type information; k8s-openapi types serialize it, typed CRs too.
    if let Some(object) = body.as_object_mut() {
        object.insert("apiVersion".into(), K::api_version(&()).into());
        object.insert("kind".into(), K::kind(&()).into());
    }
    let after = api
        .patch(&name, &params, &Patch::Apply(&body))
        .await
        .map_err(failed("apply"))?;
    let outcome = match &before {
        None => Outcome::Created,
        Some(before) if comparable(before) == comparable(&after) => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    };
    Ok((outcome, before, after))
}

/// The object without what the server changes on every write (versions, field ownership,
/// status), so two stored versions compare equal when nothing the operator controls changed.
fn comparable<K: Serialize>(object: &K) -> Option<serde_json::Value> {
    let mut value = serde_json::to_value(object).ok()?;
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for key in ["resourceVersion", "generation", "managedFields"] {
                meta.remove(key);
            }
        }
    }
    Some(value)
}

/// Whether `manager` owns `spec.replicas` of `deployment` (by its `managedFields`).
pub fn owns_replicas(deployment: &Deployment, manager: &str) -> bool {
    deployment.managed_fields().iter().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.subresource.as_deref().unwrap_or("").is_empty()
            && entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|spec| spec.get("f:replicas"))
                .is_some()
    })
}

/// Before `desired` (which leaves `replicas` to an autoscaler) is applied: if the operator
/// still owns the live Deployment's `replicas`, applies the current value under
/// [`HANDOVER_MANAGER`], so the operator's next apply drops only its own claim and the value
/// stays until the HPA scales. Returns whether a hand-over was written.
pub async fn hand_over_replicas(
    client: &kube::Client,
    namespace: &str,
    desired: &Deployment,
) -> Result<bool, ApplyError> {
    if desired.spec.as_ref().is_some_and(|s| s.replicas.is_some()) {
        return Ok(false);
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let name = desired.name_any();
    let named = name.as_str();
    let failed =
        |verb: &'static str| move |error| ApplyError::new::<Deployment>(verb, named, error);
    let Some(live) = api.get_opt(&name).await.map_err(failed("get"))? else {
        return Ok(false);
    };
    let current = live.spec.as_ref().and_then(|s| s.replicas);
    let Some(current) = current.filter(|_| owns_replicas(&live, FIELD_MANAGER)) else {
        return Ok(false);
    };
    let body = serde_json::json!({
        "apiVersion": Deployment::api_version(&()),
        "kind": Deployment::kind(&()),
        "metadata": {"name": name},
        "spec": {"replicas": current},
    });
    // Forced: the only other owner is the operator itself, or an HPA that already scaled
    // to this very value (it takes the field back on its next scale).
    let params = PatchParams::apply(HANDOVER_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&body))
        .await
        .map_err(failed("hand over replicas of"))?;
    Ok(true)
}

/// A child that an apply created or changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub outcome: Outcome,
    pub kind: String,
    pub name: String,
    /// The child, as the event's `related` object (events about different children are
    /// then kept apart instead of being folded into one series).
    pub reference: k8s_openapi::api::core::v1::ObjectReference,
    /// For a Deployment whose `replicas` this apply changed: `(before, after)`.
    pub scaled: Option<(i32, i32)>,
}

/// Applies every child, in dependency order (config and topics before the workloads that
/// read them; autoscalers after their Deployments, and only once the autoscaler of another
/// kind was removed by `prune::Pruner::autoscalers`). Returns what was created or changed, and the first refusal, if any: what was
/// applied before it stays applied and is reported, so events match the cluster.
pub async fn apply_all(
    client: &kube::Client,
    namespace: &str,
    children: &Children,
) -> (Vec<Change>, Result<(), ApplyError>) {
    let mut changes = Vec::new();
    let result = apply_each(client, namespace, children, &mut changes).await;
    (changes, result)
}

async fn apply_each(
    client: &kube::Client,
    namespace: &str,
    children: &Children,
    changes: &mut Vec<Change>,
) -> Result<(), ApplyError> {
    let mut to = Recorder {
        client,
        namespace,
        changes,
    };
    to.apply(&children.config_map).await?;
    // Before any pod: a workload never runs without the policy that confines it.
    to.apply(&children.network_policies).await?;
    to.apply(&children.topics).await?;
    to.apply(&children.kafka_user).await?;
    to.apply(&children.migration_job).await?;
    for deployment in &children.deployments {
        hand_over_replicas(client, namespace, deployment).await?;
        let (outcome, before, after) = apply_seen(client, namespace, deployment).await?;
        let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
        // Only a value the operator applied is a change it caused (an autoscaler's moves
        // are the autoscaler's to explain).
        let scaled = match (before.as_ref().and_then(replicas), replicas(deployment)) {
            (Some(was), Some(now)) if was != now => Some((was, now)),
            _ => None,
        };
        if let Some(change) = recorded(outcome, &after) {
            to.changes.push(Change { scaled, ..change });
        }
    }
    to.apply(&children.services).await?;
    to.apply(&children.pdbs).await?;
    to.apply(&children.hpas).await?;
    // The series source before the ScaledObject that queries it.
    to.apply(&children.pod_monitor).await?;
    // The login before the trigger that uses it.
    to.apply(&children.trigger_authentication).await?;
    to.apply(&children.scaled_objects).await?;
    to.apply(&children.ingress).await?;
    Ok(())
}

/// Applies children in a namespace, recording each change.
struct Recorder<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    changes: &'a mut Vec<Change>,
}

impl Recorder<'_> {
    /// Applies each of `objects` in order (a list, or an `Option` of one), stopping at the
    /// first the API server refuses.
    async fn apply<'k, K: Child + 'k>(
        &mut self,
        objects: impl IntoIterator<Item = &'k K>,
    ) -> Result<(), ApplyError> {
        for object in objects {
            let (outcome, stored) = apply(self.client, self.namespace, object).await?;
            self.changes.extend(recorded(outcome, &stored));
        }
        Ok(())
    }
}

fn recorded<K: Resource<DynamicType = ()>>(outcome: Outcome, stored: &K) -> Option<Change> {
    (outcome != Outcome::Unchanged).then(|| Change {
        outcome,
        kind: K::kind(&()).into_owned(),
        name: stored.name_any(),
        reference: stored.object_ref(&()),
        scaled: None,
    })
}
