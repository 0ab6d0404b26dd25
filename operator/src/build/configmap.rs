//! The ConfigMap with the pipeline's non-secret configuration, shared by all workloads.
//!
//! Workloads read it with `envFrom`. The keys are the constants of `odds_contracts::env`, the
//! same ones the workloads' clap configs read, so a renamed variable cannot drift apart here.
//! Secrets never land here: they are referenced per container.

use super::{metadata, SIMULATOR_PORT};
pub use crate::names::{default_consumer_group, CONSUMER_GROUP_PREFIX};
use crate::validate::{KafkaSource, Supplier, ValidPipeline};
use k8s_openapi::api::core::v1::ConfigMap;
use odds_contracts::env;
use std::collections::BTreeMap;

/// Name of the ConfigMap of pipeline `pipeline`.
pub fn name_in(pipeline: &str) -> String {
    format!("{pipeline}-config")
}

/// Kafka bootstrap address: Strimzi's bootstrap Service when a cluster is referenced.
pub fn bootstrap_servers(pipeline: &ValidPipeline) -> String {
    match &pipeline.kafka {
        KafkaSource::Strimzi { cluster, .. } => {
            odds_contracts::ports::strimzi_bootstrap(cluster, None, pipeline.kafka.listener_port())
        }
        KafkaSource::External { bootstrap_servers } => bootstrap_servers.clone(),
    }
}

/// The supplier feed ingest connects to: the external URL or the simulator's Service.
pub fn supplier_url(pipeline: &ValidPipeline) -> String {
    match &pipeline.supplier {
        Supplier::External { url } => url.clone(),
        Supplier::Simulator(_) => format!("ws://{}-simulator:{SIMULATOR_PORT}/ws", pipeline.name),
    }
}

/// The standard OpenTelemetry variables of `spec.observability.tracing` (none without it):
/// every workload exports to the collector with a parent-based ratio sampler, its service
/// name its binary's, and its spans name the namespace and the pipeline.
pub fn tracing_entries(pipeline: &ValidPipeline) -> Vec<(String, String)> {
    let Some(tracing) = &pipeline.tracing else {
        return Vec::new();
    };
    [
        (env::OTEL_EXPORTER_OTLP_ENDPOINT, tracing.endpoint.clone()),
        (
            env::OTEL_TRACES_SAMPLER,
            "parentbased_traceidratio".to_owned(),
        ),
        (
            env::OTEL_TRACES_SAMPLER_ARG,
            tracing.sampling_ratio.to_string(),
        ),
        (
            env::OTEL_RESOURCE_ATTRIBUTES,
            format!(
                "k8s.namespace.name={},odds.pipeline={}",
                pipeline.namespace, pipeline.name
            ),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// Builds the ConfigMap.
pub fn build(pipeline: &ValidPipeline) -> ConfigMap {
    let mut data: BTreeMap<String, String> = [
        (env::KAFKA_BROKERS, bootstrap_servers(pipeline)),
        (env::KAFKA_TOPIC, pipeline.topic.name.clone()),
        (env::KAFKA_DLQ_TOPIC, pipeline.dlq_topic.name.clone()),
        (env::KAFKA_GROUP, pipeline.consumer_group.clone()),
        (env::SUPPLIER_URL, supplier_url(pipeline)),
        (env::LOG_FORMAT, "json".to_string()),
        (env::HTTP_ADDR, format!("0.0.0.0:{}", super::OPS_PORT)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect();
    for (key, value) in super::kafkauser::config_entries(pipeline) {
        data.insert(key.into(), value);
    }
    data.extend(tracing_entries(pipeline));
    if let Supplier::Simulator(sim) = &pipeline.supplier {
        data.insert(env::SIM_EVENTS.into(), sim.events.to_string());
        data.insert(env::SIM_RATE.into(), sim.rate.to_string());
        data.insert(env::SIM_SEED.into(), sim.seed.to_string());
    }
    ConfigMap {
        metadata: metadata(pipeline, name_in(&pipeline.name), "config"),
        data: Some(data),
        ..ConfigMap::default()
    }
}
