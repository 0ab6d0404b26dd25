//! Server-side apply of children under one field manager, forced.
//!
//! Forcing is right because the operator is the only intended writer of the fields it sets;
//! fields it leaves out (an HPA's `replicas`) stay with whoever owns them. Each apply reports
//! whether the object was created, changed or already as desired, so events are only
//! published for real changes and a steady state writes nothing that changes.

use crate::build::{Children, FIELD_MANAGER};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Applies `desired` in `namespace`; returns what happened and the object as stored (with
/// its status, which the status computation reads).
pub async fn apply<K>(
    client: &kube::Client,
    namespace: &str,
    desired: &K,
) -> Result<(Outcome, K), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = desired.name_any();
    let before = api.get_opt(&name).await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut body = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    // Apply bodies carry type information; k8s-openapi types serialize it, typed CRs too.
    if let Some(object) = body.as_object_mut() {
        object.insert("apiVersion".into(), K::api_version(&()).into());
        object.insert("kind".into(), K::kind(&()).into());
    }
    let after = api.patch(&name, &params, &Patch::Apply(&body)).await?;
    let outcome = match &before {
        None => Outcome::Created,
        Some(before) if comparable(before)? == comparable(&after)? => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    };
    Ok((outcome, after))
}

/// The object without what the server changes on every write (versions, field ownership,
/// status), so two stored versions compare equal when nothing the operator controls changed.
fn comparable<K: Serialize>(object: &K) -> Result<serde_json::Value, kube::Error> {
    let mut value = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for key in ["resourceVersion", "generation", "managedFields"] {
                meta.remove(key);
            }
        }
    }
    Ok(value)
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
}

/// Applies every child, in dependency order (config and topics before the workloads that
/// read them); returns what was created or changed.
pub async fn apply_all(
    client: &kube::Client,
    namespace: &str,
    children: &Children,
) -> Result<Vec<Change>, kube::Error> {
    let mut changes = Vec::new();
    if let Some(cm) = &children.config_map {
        record(&mut changes, apply(client, namespace, cm).await?);
    }
    for topic in &children.topics {
        record(&mut changes, apply(client, namespace, topic).await?);
    }
    if let Some(job) = &children.migration_job {
        record(&mut changes, apply(client, namespace, job).await?);
    }
    for deployment in &children.deployments {
        record(&mut changes, apply(client, namespace, deployment).await?);
    }
    for service in &children.services {
        record(&mut changes, apply(client, namespace, service).await?);
    }
    for pdb in &children.pdbs {
        record(&mut changes, apply(client, namespace, pdb).await?);
    }
    for hpa in &children.hpas {
        record(&mut changes, apply(client, namespace, hpa).await?);
    }
    if let Some(ingress) = &children.ingress {
        record(&mut changes, apply(client, namespace, ingress).await?);
    }
    Ok(changes)
}

fn record<K: Resource<DynamicType = ()>>(
    changes: &mut Vec<Change>,
    (outcome, stored): (Outcome, K),
) {
    if outcome != Outcome::Unchanged {
        changes.push(Change {
            outcome,
            kind: K::kind(&()).into_owned(),
            name: stored.name_any(),
            reference: stored.object_ref(&()),
        });
    }
}
