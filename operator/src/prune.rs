//! Removal of children the spec no longer asks for (simulator turned off, autoscaling,
//! Ingress, NetworkPolicies or Kafka authentication removed, an HPA replaced by a ScaledObject or the other way
//! round, the PodMonitor of a connections mode turned off, a finished migration Job of an
//! older image, a ConfigMap an older operator version named differently).
//!
//! Only objects this pipeline controls are candidates: labelled as ours and carrying this
//! pipeline's uid in a controller owner reference. Two kinds are never pruned: Deployments of
//! workloads that are merely held back (they keep serving the old version until their gate
//! opens) and `KafkaTopic`s (deleting one deletes the topic's data in Kafka): not even one the
//! spec no longer names, nor one this pipeline controls. A KafkaTopic goes only with its
//! pipeline, through garbage collection, and only with `kafka.topicDeletionPolicy: Delete`.

use crate::apply::ApplyError;
use crate::build::TriggerAuthentication;
use crate::build::{configmap, job, Children, KafkaUser, PodMonitor, ScaledObject};
use crate::validate::{KafkaSource, ValidPipeline};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt::Debug;

/// Names that must stay, per kind.
#[derive(Debug, Default)]
pub struct Keep {
    pub config_maps: BTreeSet<String>,
    pub deployments: BTreeSet<String>,
    pub services: BTreeSet<String>,
    pub pdbs: BTreeSet<String>,
    pub hpas: BTreeSet<String>,
    pub scaled_objects: BTreeSet<String>,
    pub pod_monitors: BTreeSet<String>,
    pub ingresses: BTreeSet<String>,
    pub network_policies: BTreeSet<String>,
    pub kafka_users: BTreeSet<String>,
    pub trigger_authentications: BTreeSet<String>,
}

impl Keep {
    /// What the pipeline wants to exist, including Deployments that are held back.
    pub fn of(pipeline: &ValidPipeline, children: &Children) -> Self {
        let names = |items: Vec<String>| items.into_iter().collect::<BTreeSet<_>>();
        Self {
            config_maps: names(vec![configmap::name_in(&pipeline.name)]),
            deployments: names(
                pipeline
                    .components()
                    .into_iter()
                    .map(|c| c.name(pipeline))
                    .collect(),
            ),
            services: names(
                children
                    .services
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect(),
            ),
            pdbs: names(children.pdbs.iter().map(ResourceExt::name_any).collect()),
            hpas: names(children.hpas.iter().map(ResourceExt::name_any).collect()),
            scaled_objects: names(
                children
                    .scaled_objects
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect(),
            ),
            pod_monitors: names(
                children
                    .pod_monitor
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect(),
            ),
            ingresses: names(children.ingress.iter().map(ResourceExt::name_any).collect()),
            network_policies: names(
                children
                    .network_policies
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect(),
            ),
            kafka_users: names(
                children
                    .kafka_user
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect(),
            ),
            trigger_authentications: names(
                children
                    .trigger_authentication
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect(),
            ),
        }
    }
}

/// One deleted child: `Kind name` and its reference (the event's related object).
pub type Deleted = (String, ObjectReference);

/// Deletes what this pipeline owns but no longer wants; returns each deleted child.
/// Old migration Jobs go only once the current one succeeded (`migrated`).
pub async fn prune(
    client: &kube::Client,
    pipeline: &ValidPipeline,
    keep: &Keep,
    migrated: bool,
) -> Result<Vec<Deleted>, ApplyError> {
    let mut deleted = Vec::new();
    deleted.extend(unwanted::<ConfigMap>(client, pipeline, &keep.config_maps).await?);
    deleted.extend(unwanted::<Deployment>(client, pipeline, &keep.deployments).await?);
    deleted.extend(unwanted::<Service>(client, pipeline, &keep.services).await?);
    deleted.extend(unwanted::<PodDisruptionBudget>(client, pipeline, &keep.pdbs).await?);
    deleted.extend(autoscalers(client, pipeline, keep).await?);
    // Only looked at where the Prometheus Operator is installed (without its CRD there can
    // be none).
    if pipeline.facts.pod_monitors_installed {
        deleted.extend(unwanted::<PodMonitor>(client, pipeline, &keep.pod_monitors).await?);
    }
    deleted.extend(unwanted::<Ingress>(client, pipeline, &keep.ingresses).await?);
    deleted.extend(unwanted::<NetworkPolicy>(client, pipeline, &keep.network_policies).await?);
    // A KafkaUser exists only on a Strimzi cluster (`clusterRef` never changes, and the
    // reconcile stops before pruning while Strimzi is missing); removing
    // `kafka.authentication` deletes it, and Strimzi then the user and its ACLs.
    if matches!(pipeline.kafka, KafkaSource::Strimzi { .. }) {
        deleted.extend(unwanted::<KafkaUser>(client, pipeline, &keep.kafka_users).await?);
    }
    if pipeline.facts.keda_installed {
        deleted.extend(
            unwanted::<TriggerAuthentication>(client, pipeline, &keep.trigger_authentications)
                .await?,
        );
    }
    if migrated {
        let current = BTreeSet::from([job::name(pipeline)]);
        deleted.extend(unwanted::<Job>(client, pipeline, &current).await?);
    }
    Ok(deleted)
}

/// Deletes the HPAs and ScaledObjects this pipeline no longer wants. Run before the wanted
/// autoscalers are applied too: a Deployment must never have two (they would fight over
/// `replicas`, and KEDA's admission webhook refuses a ScaledObject for a Deployment an HPA
/// already scales). In between, `replicas` keeps its value: no autoscaler moves it, and the
/// operator's apply leaves it out. ScaledObjects are only looked at when KEDA is installed
/// (without its CRD there can be none).
pub async fn autoscalers(
    client: &kube::Client,
    pipeline: &ValidPipeline,
    keep: &Keep,
) -> Result<Vec<Deleted>, ApplyError> {
    let mut deleted = unwanted::<HorizontalPodAutoscaler>(client, pipeline, &keep.hpas).await?;
    if pipeline.facts.keda_installed {
        deleted.extend(unwanted::<ScaledObject>(client, pipeline, &keep.scaled_objects).await?);
    }
    Ok(deleted)
}

/// This pipeline's ScaledObjects that it no longer wants but that still exist: KEDA's
/// finalizer keeps a deleted ScaledObject (and the HPA KEDA made for it) until KEDA has
/// cleaned up, so the HPA that replaces it must wait, or two HPAs would scale one
/// Deployment for a moment.
pub async fn scaled_objects_leaving(
    client: &kube::Client,
    pipeline: &ValidPipeline,
    keep: &Keep,
) -> Result<BTreeSet<String>, ApplyError> {
    if !pipeline.facts.keda_installed {
        return Ok(BTreeSet::new());
    }
    Ok(controlled::<ScaledObject>(client, pipeline)
        .await?
        .into_iter()
        .map(|o| o.name_any())
        .filter(|name| !keep.scaled_objects.contains(name))
        .collect())
}

/// The objects of kind `K` this pipeline controls: labelled as ours and carrying its uid in
/// a controller owner reference.
async fn controlled<K>(
    client: &kube::Client,
    pipeline: &ValidPipeline,
) -> Result<Vec<K>, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let Some(uid) = pipeline.owner.as_ref().map(|o| o.uid.clone()) else {
        return Ok(Vec::new());
    };
    let api: Api<K> = Api::namespaced(client.clone(), &pipeline.namespace);
    let selector = format!(
        "app.kubernetes.io/managed-by=odds-operator,app.kubernetes.io/instance={}",
        pipeline.name
    );
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|error| ApplyError {
            verb: "list",
            kind: K::kind(&()).into_owned(),
            name: selector.clone(),
            source: error,
        })?;
    Ok(listed
        .into_iter()
        .filter(|object| {
            object
                .owner_references()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .collect())
}

/// Deletes the objects of kind `K` that this pipeline controls and `keep` does not name.
async fn unwanted<K>(
    client: &kube::Client,
    pipeline: &ValidPipeline,
    keep: &BTreeSet<String>,
) -> Result<Vec<Deleted>, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), &pipeline.namespace);
    let mut deleted = Vec::new();
    for object in controlled::<K>(client, pipeline).await? {
        // One already being deleted (held by a finalizer) is not deleted, nor announced, again.
        let leaving = object.meta().deletion_timestamp.is_some();
        if !keep.contains(&object.name_any()) && !leaving {
            // Background propagation also removes the Job's pods and the ReplicaSets.
            match api
                .delete(&object.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => deleted.push((
                    format!("{} {}", K::kind(&()), object.name_any()),
                    object.object_ref(&()),
                )),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    return Err(ApplyError {
                        verb: "delete",
                        kind: K::kind(&()).into_owned(),
                        name: object.name_any(),
                        source: error,
                    })
                }
            }
        }
    }
    Ok(deleted)
}
