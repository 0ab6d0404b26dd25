//! The ConfigMap with the pipeline's non-secret configuration, shared by all workloads.
//!
//! Workloads read it with `envFrom`, so the env names here are the workloads' config contract
//! (see the binaries' `--help`). Secrets never land here: they are referenced per container.

use super::{metadata, SIMULATOR_PORT};
use crate::crd::OddsPipeline;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Name of the pipeline's ConfigMap.
pub fn name(pipeline: &OddsPipeline) -> String {
    format!("{}-config", pipeline.name_any())
}

/// Kafka bootstrap address: Strimzi's bootstrap Service when a cluster is referenced.
pub fn bootstrap_servers(pipeline: &OddsPipeline) -> String {
    let kafka = &pipeline.spec.kafka;
    match (&kafka.cluster_ref, &kafka.bootstrap_servers) {
        (Some(cluster), _) => format!("{cluster}-kafka-bootstrap:9092"),
        (None, Some(servers)) => servers.clone(),
        (None, None) => String::new(),
    }
}

/// The supplier feed ingest connects to: the external URL or the simulator's Service.
pub fn supplier_url(pipeline: &OddsPipeline) -> String {
    match (&pipeline.spec.supplier.url, simulator_enabled(pipeline)) {
        (Some(url), _) => url.clone(),
        (None, true) => format!("ws://{}-simulator:{SIMULATOR_PORT}/ws", pipeline.name_any()),
        (None, false) => String::new(),
    }
}

/// Whether the operator deploys the simulator.
pub fn simulator_enabled(pipeline: &OddsPipeline) -> bool {
    pipeline
        .spec
        .supplier
        .simulator
        .as_ref()
        .is_some_and(|s| s.enabled)
}

/// Builds the ConfigMap.
pub fn build(pipeline: &OddsPipeline) -> ConfigMap {
    let spec = &pipeline.spec;
    let mut data = BTreeMap::from([
        ("KAFKA_BROKERS".to_string(), bootstrap_servers(pipeline)),
        ("KAFKA_TOPIC".to_string(), spec.kafka.topic.name.clone()),
        (
            "KAFKA_DLQ_TOPIC".to_string(),
            spec.kafka.dlq_topic.name.clone(),
        ),
        ("KAFKA_GROUP".to_string(), "odds-processor".to_string()),
        ("SUPPLIER_URL".to_string(), supplier_url(pipeline)),
        ("LOG_FORMAT".to_string(), "json".to_string()),
        (
            "HTTP_ADDR".to_string(),
            format!("0.0.0.0:{}", super::OPS_PORT),
        ),
    ]);
    if let Some(sim) = spec.supplier.simulator.as_ref().filter(|s| s.enabled) {
        data.insert("SIM_EVENTS".into(), sim.events.to_string());
        data.insert("SIM_RATE".into(), sim.rate.to_string());
        data.insert("SIM_SEED".into(), sim.seed.to_string());
    }
    ConfigMap {
        metadata: metadata(pipeline, name(pipeline), "config"),
        data: Some(data),
        ..ConfigMap::default()
    }
}
