//! Strimzi `KafkaTopic`s for the updates topic and its DLQ.
//!
//! A small typed mirror of Strimzi's `kafka.strimzi.io/v1` KafkaTopic (only the fields the
//! operator sets or reads; see the vendored CRD), so builders stay typed and tests can register
//! it with the in-memory API. Only created when the pipeline references a Strimzi cluster.
//!
//! Whether a KafkaTopic carries the pipeline's owner reference is `kafka.topicDeletionPolicy`'s
//! call: with `Retain` (the default) it has none, so deleting the pipeline leaves the topic
//! and its data; a pipeline of the same name created later applies the same object under the
//! same field manager and so takes it over. With `Delete` it has the controller reference
//! every other child has, and garbage collection deletes it with the pipeline (Strimzi then
//! deletes the topic in Kafka). Server-side apply removes the reference when the policy
//! switches to `Retain` (the operator applied it before and leaves it out now). Either way the
//! operator itself never deletes a KafkaTopic ([`crate::prune`]).

use super::metadata;
use crate::crd::{OddsPipeline, TopicDeletionPolicy};
pub use crate::names::{kube_name, resource_name};
use crate::validate::{KafkaSource, ValidPipeline};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Label the Strimzi topic operator uses to pick the cluster.
pub const STRIMZI_CLUSTER_LABEL: &str = "strimzi.io/cluster";

foreign_kind! {
    group = "kafka.strimzi.io", version = "v1", kind = "KafkaTopic", status = "StrimziStatus";
    /// Strimzi KafkaTopic spec (subset).
    pub struct KafkaTopicSpec {
        pub topic_name: Option<String>,
        pub partitions: Option<i32>,
        pub replicas: Option<i32>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub config: BTreeMap<String, serde_json::Value>,
    }
}

mirror_types! {
    /// Strimzi condition (subset).
    pub struct StrimziCondition {
        #[serde(rename = "type")]
        pub type_: String,
        pub status: String,
        pub reason: Option<String>,
        pub message: Option<String>,
    }

    /// The status of a Strimzi kind (subset: what KafkaTopic and KafkaUser share).
    pub struct StrimziStatus {
        #[serde(default)]
        pub conditions: Vec<StrimziCondition>,
        pub observed_generation: Option<i64>,
    }
}

impl StrimziStatus {
    /// Whether Strimzi's conditions say `Ready=True`.
    pub fn is_ready(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

impl KafkaTopic {
    /// Strimzi reports `Ready=True` once the topic exists in Kafka as specified. (Its
    /// `observedGeneration` is not compared: a later partition increase keeps the topic usable.)
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(StrimziStatus::is_ready)
    }
}

/// The pipeline a KafkaTopic belongs to, by its labels: what the controller's KafkaTopic watch
/// reconciles when Strimzi reports on a topic. (Not by owner reference: a retained topic has
/// none.) Topics not labelled as the operator's map to nothing.
pub fn pipeline_of(topic: &KafkaTopic) -> Option<ObjectRef<OddsPipeline>> {
    let labels = topic.labels();
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        != Some("odds-operator")
    {
        return None;
    }
    let name = labels.get("app.kubernetes.io/instance")?;
    let reference = ObjectRef::new(name);
    Some(match topic.namespace() {
        Some(namespace) => reference.within(&namespace),
        None => reference,
    })
}

/// The updates topic and the DLQ, when a Strimzi cluster is referenced; none otherwise.
pub fn build(pipeline: &ValidPipeline) -> Vec<KafkaTopic> {
    let KafkaSource::Strimzi { cluster, .. } = &pipeline.kafka else {
        return Vec::new();
    };
    [&pipeline.topic, &pipeline.dlq_topic]
        .into_iter()
        .map(|topic| {
            let mut meta = metadata(
                pipeline,
                resource_name(&pipeline.name, topic),
                "kafka-topic",
            );
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(STRIMZI_CLUSTER_LABEL.into(), cluster.clone());
            if pipeline.topic_deletion_policy == TopicDeletionPolicy::Retain {
                meta.owner_references = None;
            }
            KafkaTopic {
                metadata: meta,
                spec: KafkaTopicSpec {
                    topic_name: Some(topic.name.clone()),
                    partitions: Some(topic.partitions),
                    replicas: Some(topic.replicas),
                    config: topic
                        .config
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect(),
                },
                status: None,
            }
        })
        .collect()
}
