//! NetworkPolicies: each workload (and the migration Job) talks only to what it needs.
//!
//! Without them every pod of a pipeline accepts connections from anywhere in the cluster and
//! can reach anything: a compromised or misconfigured neighbour could write to the feed or
//! read the datastores through it. One policy per workload, selecting its pods by the same
//! labels as its Deployment, with both directions listed:
//! - ingress: metrics scrapes (port `metrics`, from anywhere: Prometheus runs where the
//!   cluster puts it), odds-service's API port from anywhere (its clients, and the operator's
//!   freshness canary, `crate::canaries`, wherever the operator runs), the simulator's feed from this
//!   pipeline's ingest pods only;
//! - egress: DNS (port 53), and per workload only the peers its configuration names: Kafka
//!   (Strimzi's broker pods of `clusterRef`, or the ports of `bootstrapServers`), Redis and
//!   Postgres (the ports of the URLs in their Secrets: the operator never sees where a
//!   Secret's host is, so any address on that port), the supplier (the simulator's pods, or
//!   the port of the external URL), and the trace collector's port when
//!   `observability.tracing` is set.

use super::{selector_labels, Component, API_PORT, OPS_PORT, SIMULATOR_PORT};
use crate::crd::SecretKeyRef;
use crate::urls::url_port;
use crate::validate::{KafkaSource, Supplier, ValidPipeline};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use odds_contracts::env;
use std::collections::BTreeMap;

const REDIS_PORT: u16 = 6379;
const POSTGRES_PORT: u16 = 5432;
/// The migration Job's pods' `app.kubernetes.io/component`.
const MIGRATION: &str = "migration";

/// Name of the policy for the pods of `component` (a workload's suffix or `migration`).
pub fn name_in(pipeline: &str, component: &str) -> String {
    format!("{pipeline}-{component}")
}

/// One policy per workload and one for the migration Job; none when the spec turns them off.
pub fn build(pipeline: &ValidPipeline) -> Vec<NetworkPolicy> {
    if !pipeline.network_policy.enabled {
        return Vec::new();
    }
    let mut out: Vec<NetworkPolicy> = pipeline
        .components()
        .into_iter()
        .map(|component| {
            policy(
                pipeline,
                component.suffix(),
                ingress(pipeline, component),
                egress(pipeline, component),
            )
        })
        .collect();
    // The migration Job reads the database URL only.
    let database = secret_port(pipeline, &pipeline.postgres_url).unwrap_or(POSTGRES_PORT);
    let postgres = vec![port_rule(&[database])];
    out.push(policy(pipeline, MIGRATION, Vec::new(), with_dns(postgres)));
    out
}

fn policy(
    pipeline: &ValidPipeline,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: super::metadata(
            pipeline,
            name_in(&pipeline.name, component),
            "network-policy",
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(pipeline, component)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// The pods of `component` of this pipeline (the migration Job's pods carry the same three
/// labels, with `migration` as the component).
fn pods(pipeline: &ValidPipeline, component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(pipeline, component)),
        ..LabelSelector::default()
    }
}

fn ingress(pipeline: &ValidPipeline, component: Component) -> Vec<NetworkPolicyIngressRule> {
    let from_anywhere = |port: i32| NetworkPolicyIngressRule {
        from: None,
        ports: Some(vec![tcp(port)]),
    };
    let mut rules = vec![from_anywhere(OPS_PORT)];
    match component {
        Component::OddsService => rules.push(from_anywhere(API_PORT)),
        Component::Simulator => rules.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(pods(pipeline, Component::Ingest.suffix())),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![tcp(SIMULATOR_PORT)]),
        }),
        Component::Ingest | Component::Processor => {}
    }
    rules
}

fn egress(pipeline: &ValidPipeline, component: Component) -> Vec<NetworkPolicyEgressRule> {
    let mut rules = match component {
        // It only serves: no egress at all (not even DNS).
        Component::Simulator => return Vec::new(),
        Component::Ingest => vec![kafka(pipeline), supplier(pipeline)],
        Component::Processor => vec![kafka(pipeline)],
        Component::OddsService => Vec::new(),
    };
    let ports = datastore_ports(pipeline, component);
    if !ports.is_empty() {
        rules.push(port_rule(&ports));
    }
    // The trace collector (`spec.observability.tracing`): any address on its port, as for
    // an external datastore.
    if let Some(port) = pipeline
        .tracing
        .as_ref()
        .and_then(|tracing| url_port(&tracing.endpoint))
    {
        rules.push(port_rule(&[port]));
    }
    with_dns(rules)
}

/// The ports of the datastore URLs `component` reads (the Secret keys of its env, as
/// [`ValidPipeline::secret_env`] lists them, less the Kafka credentials, which are no URLs),
/// each the URL's or its scheme's default.
fn datastore_ports(pipeline: &ValidPipeline, component: Component) -> Vec<u16> {
    let datastores = [env::REDIS_URL, env::DATABASE_URL, env::DATABASE_READ_URL];
    let mut ports: Vec<u16> = pipeline
        .secret_env(component)
        .into_iter()
        .filter(|(variable, _)| datastores.contains(variable))
        .map(|(variable, reference)| {
            let default = if variable == env::REDIS_URL {
                REDIS_PORT
            } else {
                POSTGRES_PORT
            };
            secret_port(pipeline, &reference).unwrap_or(default)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn with_dns(mut rules: Vec<NetworkPolicyEgressRule>) -> Vec<NetworkPolicyEgressRule> {
    rules.push(NetworkPolicyEgressRule {
        to: None,
        ports: Some(vec![
            NetworkPolicyPort {
                port: Some(IntOrString::Int(53)),
                protocol: Some("UDP".into()),
                end_port: None,
            },
            tcp(53),
        ]),
    });
    rules
}

fn kafka(pipeline: &ValidPipeline) -> NetworkPolicyEgressRule {
    match &pipeline.kafka {
        KafkaSource::Strimzi { cluster, .. } => NetworkPolicyEgressRule {
            // Strimzi labels every pod of the Kafka cluster so (bootstrap and brokers alike).
            to: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        ("strimzi.io/cluster".to_string(), cluster.clone()),
                        ("strimzi.io/kind".to_string(), "Kafka".to_string()),
                    ])),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![tcp(pipeline.kafka.listener_port())]),
        },
        KafkaSource::External { bootstrap_servers } => {
            let mut ports: Vec<u16> = bootstrap_servers
                .split(',')
                .filter_map(|server| server.trim().rsplit_once(':')?.1.parse().ok())
                .collect();
            ports.sort_unstable();
            ports.dedup();
            port_rule(&ports)
        }
    }
}

fn supplier(pipeline: &ValidPipeline) -> NetworkPolicyEgressRule {
    match &pipeline.supplier {
        Supplier::Simulator(_) => NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(pods(pipeline, Component::Simulator.suffix())),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![tcp(SIMULATOR_PORT)]),
        },
        Supplier::External { url } => port_rule(&[url_port(url).unwrap_or(443)]),
    }
}

fn secret_port(pipeline: &ValidPipeline, reference: &SecretKeyRef) -> Option<u16> {
    pipeline
        .facts
        .ports
        .get(&reference.name)?
        .get(&reference.key)
        .copied()
}

/// Egress to `ports` (TCP) of any address.
fn port_rule(ports: &[u16]) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: None,
        ports: Some(ports.iter().map(|p| tcp(i32::from(*p))).collect()),
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}
