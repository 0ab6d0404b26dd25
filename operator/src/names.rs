//! Names derived from a spec that both validation and the builders need: a Kafka topic's
//! Kubernetes name (two topics may not share one) and the processor's default consumer group.
//! Kept below both so that validation does not depend on the builders.

use crate::crd::TopicSpec;

/// First part of a pipeline's default consumer group, and the one group every pipeline used
/// before groups were per pipeline (`kafka.consumerGroup: odds-processor` keeps it).
pub const CONSUMER_GROUP_PREFIX: &str = "odds-processor";

/// The consumer group of pipeline `name` in `namespace` when the spec names none:
/// `odds-processor.<namespace>.<name>`. Namespaces are unique in a cluster and names in a
/// namespace, so two pipelines never get one group; `.` cannot occur in either (DNS-1123
/// labels and the pipeline name rule), so the parts cannot run into each other. At most
/// 15 + 63 + 1 + 44 = 123 characters, all of them legal in a Kafka group id.
pub fn default_consumer_group(namespace: &str, name: &str) -> String {
    format!("{CONSUMER_GROUP_PREFIX}.{namespace}.{name}")
}

/// Kubernetes name of the KafkaTopic for topic `topic` of pipeline `pipeline`.
pub fn resource_name(pipeline: &str, topic: &TopicSpec) -> String {
    format!("{pipeline}-{}", kube_name(&topic.name))
}

/// A Kafka topic name as a Kubernetes name: `_` and `.` are not allowed there, nor upper
/// case. Two topics with the same `kube_name` would be one KafkaTopic, so validation
/// rejects that.
pub fn kube_name(topic: &str) -> String {
    topic.to_lowercase().replace(['_', '.'], "-")
}
