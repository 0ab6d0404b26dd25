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

use crate::apply::{ApplyError, Child};
use crate::build::TriggerAuthentication;
use crate::build::{configmap, job, Children, KafkaUser, PodMonitor, ScaledObject};
use crate::validate::{KafkaSource, ValidPipeline};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};

/// Names that must stay, per kind (as the API names it, e.g. `Deployment`).
#[derive(Debug, Default)]
struct Keep(BTreeMap<String, BTreeSet<String>>);

impl Keep {
    /// What the pipeline wants to exist, including Deployments that are held back, and its
    /// current migration Job.
    fn of(pipeline: &ValidPipeline, children: &Children) -> Self {
        let mut keep = Self::default();
        keep.add::<ConfigMap>([configmap::name_in(&pipeline.name)]);
        keep.add::<Deployment>(pipeline.components().into_iter().map(|c| c.name(pipeline)));
        keep.add::<Job>([job::name(pipeline)]);
        keep.add_each(&children.services);
        keep.add_each(&children.pdbs);
        keep.add_each(&children.hpas);
        keep.add_each(&children.scaled_objects);
        keep.add_each(&children.pod_monitor);
        keep.add_each(&children.ingress);
        keep.add_each(&children.network_policies);
        keep.add_each(&children.kafka_user);
        keep.add_each(&children.trigger_authentication);
        keep
    }

    fn add<K: Child>(&mut self, names: impl IntoIterator<Item = String>) {
        self.0
            .entry(K::kind(&()).into_owned())
            .or_default()
            .extend(names);
    }

    fn add_each<'k, K: Child + 'k>(&mut self, objects: impl IntoIterator<Item = &'k K>) {
        self.add::<K>(objects.into_iter().map(ResourceExt::name_any));
    }

    /// Whether the object of kind `K` named `name` must stay.
    fn contains<K: Child>(&self, name: &str) -> bool {
        self.0
            .get(K::kind(&()).as_ref())
            .is_some_and(|names| names.contains(name))
    }
}

/// One deleted child: `Kind name` and its reference (the event's related object).
pub type Deleted = (String, ObjectReference);

/// Prunes one pipeline's children: those it controls that [`Keep`] does not name.
pub struct Pruner<'a> {
    client: &'a kube::Client,
    pipeline: &'a ValidPipeline,
    keep: Keep,
}

impl<'a> Pruner<'a> {
    /// Prunes what `children` (built for `pipeline`) leaves out.
    pub fn new(client: &'a kube::Client, pipeline: &'a ValidPipeline, children: &Children) -> Self {
        Self {
            client,
            pipeline,
            keep: Keep::of(pipeline, children),
        }
    }

    /// Deletes what this pipeline owns but no longer wants; returns each deleted child.
    /// Old migration Jobs go only once the current one succeeded (`migrated`).
    pub async fn prune(&self, migrated: bool) -> Result<Vec<Deleted>, ApplyError> {
        let facts = &self.pipeline.facts;
        let mut deleted = Vec::new();
        deleted.extend(self.unwanted::<ConfigMap>().await?);
        deleted.extend(self.unwanted::<Deployment>().await?);
        deleted.extend(self.unwanted::<Service>().await?);
        deleted.extend(self.unwanted::<PodDisruptionBudget>().await?);
        deleted.extend(self.autoscalers().await?);
        // Only looked at where the Prometheus Operator is installed (without its CRD there
        // can be none).
        if facts.pod_monitors_installed {
            deleted.extend(self.unwanted::<PodMonitor>().await?);
        }
        deleted.extend(self.unwanted::<Ingress>().await?);
        deleted.extend(self.unwanted::<NetworkPolicy>().await?);
        // A KafkaUser exists only on a Strimzi cluster (`clusterRef` never changes, and the
        // reconcile stops before pruning while Strimzi is missing); removing
        // `kafka.authentication` deletes it, and Strimzi then the user and its ACLs.
        if matches!(self.pipeline.kafka, KafkaSource::Strimzi { .. }) {
            deleted.extend(self.unwanted::<KafkaUser>().await?);
        }
        if facts.keda_installed {
            deleted.extend(self.unwanted::<TriggerAuthentication>().await?);
        }
        if migrated {
            deleted.extend(self.unwanted::<Job>().await?);
        }
        Ok(deleted)
    }

    /// Deletes the HPAs and ScaledObjects this pipeline no longer wants. Run before the
    /// wanted autoscalers are applied too: a Deployment must never have two (they would
    /// fight over `replicas`, and KEDA's admission webhook refuses a ScaledObject for a
    /// Deployment an HPA already scales). In between, `replicas` keeps its value: no
    /// autoscaler moves it, and the operator's apply leaves it out. ScaledObjects are only
    /// looked at when KEDA is installed (without its CRD there can be none).
    pub async fn autoscalers(&self) -> Result<Vec<Deleted>, ApplyError> {
        let mut deleted = self.unwanted::<HorizontalPodAutoscaler>().await?;
        if self.pipeline.facts.keda_installed {
            deleted.extend(self.unwanted::<ScaledObject>().await?);
        }
        Ok(deleted)
    }

    /// This pipeline's ScaledObjects that it no longer wants but that still exist: KEDA's
    /// finalizer keeps a deleted ScaledObject (and the HPA KEDA made for it) until KEDA has
    /// cleaned up, so the HPA that replaces it must wait, or two HPAs would scale one
    /// Deployment for a moment.
    pub async fn scaled_objects_leaving(&self) -> Result<BTreeSet<String>, ApplyError> {
        if !self.pipeline.facts.keda_installed {
            return Ok(BTreeSet::new());
        }
        Ok(self
            .controlled::<ScaledObject>()
            .await?
            .into_iter()
            .map(|o| o.name_any())
            .filter(|name| !self.keep.contains::<ScaledObject>(name))
            .collect())
    }

    /// The objects of kind `K` this pipeline controls: labelled as ours and carrying its uid
    /// in a controller owner reference.
    async fn controlled<K: Child>(&self) -> Result<Vec<K>, ApplyError> {
        let pipeline = self.pipeline;
        let Some(uid) = pipeline.owner.as_ref().map(|o| o.uid.clone()) else {
            return Ok(Vec::new());
        };
        let api: Api<K> = Api::namespaced(self.client.clone(), &pipeline.namespace);
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
    async fn unwanted<K: Child>(&self) -> Result<Vec<Deleted>, ApplyError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.pipeline.namespace);
        let mut deleted = Vec::new();
        for object in self.controlled::<K>().await? {
            let name = object.name_any();
            // One already being deleted (held by a finalizer) is not deleted, nor announced,
            // again.
            let leaving = object.meta().deletion_timestamp.is_some();
            if self.keep.contains::<K>(&name) || leaving {
                continue;
            }
            // Background propagation also removes the Job's pods and the ReplicaSets.
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push((format!("{} {name}", K::kind(&())), object.object_ref(&()))),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    return Err(ApplyError {
                        verb: "delete",
                        kind: K::kind(&()).into_owned(),
                        name,
                        source: error,
                    })
                }
            }
        }
        Ok(deleted)
    }
}
