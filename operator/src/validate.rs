//! Checks of a pipeline that the reconciler makes before building anything.
//!
//! The CRD's CEL rules reject most bad specs at admission, but a cluster may run the CRD
//! without them (old API server, `--validate=false`, a CRD applied by hand), and some rules
//! need observed state (partitions may not shrink below the existing topic's). A failure here
//! becomes a `Degraded` condition and a Warning event, never a crash or a retry loop.

use crate::build::Facts;
use crate::crd::{ComponentSpec, OddsPipelineSpec};

/// Everything wrong with a spec, one message per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {}", .problems.join("; "))]
pub struct InvalidSpec {
    pub problems: Vec<String>,
}

/// Validates `spec` against the rules and what the cluster already has.
pub fn validate(spec: &OddsPipelineSpec, facts: &Facts) -> Result<(), InvalidSpec> {
    let mut problems = Vec::new();
    let kafka = &spec.kafka;
    if kafka.cluster_ref.is_some() == kafka.bootstrap_servers.is_some() {
        problems.push("set exactly one of kafka.clusterRef and kafka.bootstrapServers".into());
    }
    let simulator = spec.supplier.simulator.as_ref().is_some_and(|s| s.enabled);
    if spec.supplier.url.is_some() == simulator {
        problems.push("set exactly one of supplier.url and an enabled supplier.simulator".into());
    }
    if kafka.topic.partitions < 1 {
        problems.push("kafka.topic.partitions must be at least 1".into());
    }
    if let Some(existing) = facts.existing_partitions {
        if kafka.topic.partitions < existing {
            problems.push(format!(
                "kafka.topic.partitions may not shrink (topic has {existing}, spec asks {})",
                kafka.topic.partitions
            ));
        }
    }
    let processor_max = spec
        .processor
        .autoscaling
        .as_ref()
        .map_or(spec.processor.replicas, |a| a.max_replicas);
    if processor_max > kafka.topic.partitions {
        problems.push(format!(
            "processor replicas ({processor_max}) exceed kafka.topic.partitions ({}): extra consumers would sit idle",
            kafka.topic.partitions
        ));
    }
    for (name, component) in [
        ("ingest", &spec.ingest),
        ("processor", &spec.processor),
        ("oddsService", &spec.odds_service.workload),
    ] {
        check_component(name, component, &mut problems);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec { problems })
    }
}

fn check_component(name: &str, spec: &ComponentSpec, problems: &mut Vec<String>) {
    if spec.replicas < 0 {
        problems.push(format!("{name}.replicas must not be negative"));
    }
    if let Some(scaling) = &spec.autoscaling {
        if scaling.min_replicas < 1 || scaling.min_replicas > scaling.max_replicas {
            problems.push(format!(
                "{name}.autoscaling needs 1 <= minReplicas ({}) <= maxReplicas ({})",
                scaling.min_replicas, scaling.max_replicas
            ));
        }
    }
}
