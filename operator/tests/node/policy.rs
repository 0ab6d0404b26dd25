//! The rendered NetworkPolicies allow exactly the flows the pipeline needs, and nothing else.
//!
//! What is needed is derived, not listed by hand: each container's resolved environment,
//! restricted to the variables its binary reads (from the binary's own `--help`), gives the
//! addresses it connects to; an address names a rendered Service (its selected pods and
//! target port) or one of the datastores; each workload's `metrics` port is scraped, and the
//! odds service's API port is public. Every source (each workload, the migration Job, a
//! Prometheus, a client, an unrelated pod) is then tried against every port of every
//! destination: allowed must equal needed.

use crate::kubelet::{Manifests, TargetPort};
use crate::netpol::{Labels, Policies};
use crate::pipeline::{datastore_pods, kafka_pods, render_sample, sample_secrets};
use std::collections::BTreeSet;
use std::path::Path;

/// The environment variables `argv`'s binary reads (`[env: NAME=...]` in its help).
fn variables_read(argv: &[String]) -> BTreeSet<String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_odds-operator"))
        .parent()
        .unwrap();
    let binary = bin_dir.join(&argv[0]);
    assert!(
        binary.exists(),
        "{} is not built: run `cargo build --bins`",
        binary.display()
    );
    let out = std::process::Command::new(binary)
        .args(&argv[1..])
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect()
}

/// `(host, port)` of each address in `value`: a URL, or a comma-separated `host:port` list.
fn addresses(value: &str) -> Vec<(String, u16)> {
    if let Some((host, port)) = odds_operator::observe::url_host_port(value) {
        return vec![(host.to_string(), port)];
    }
    value
        .split(',')
        .filter_map(|item| {
            let (host, port) = item.trim().rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// Pods outside the pipeline: a Prometheus, a client, anything else.
const OUTSIDERS: [&str; 3] = ["prometheus", "client", "intruder"];

#[test]
fn network_policies_allow_exactly_the_flows_the_workloads_need() {
    let objects = render_sample();
    let secrets = sample_secrets();
    let manifests = Manifests {
        objects: objects.clone(),
        secrets,
    };
    let policies = Policies::of(&objects);
    assert!(!policies.0.is_empty(), "the sample renders NetworkPolicies");
    let plans = manifests.containers(&[]).unwrap();
    let services = manifests.services().unwrap();

    // Destinations: every pod with each port it declares, and the datastores.
    let mut destinations: Vec<(String, Labels, BTreeSet<u16>)> = plans
        .iter()
        .map(|p| {
            let ports = p.ports.values().copied().collect();
            (p.workload.clone(), p.labels.clone(), ports)
        })
        .collect();
    let datastores = [
        ("odds-kafka-bootstrap", kafka_pods(), 9092u16),
        ("redis", datastore_pods("redis"), 6379),
        ("postgres", datastore_pods("postgres"), 5432),
    ];
    for (name, labels, port) in &datastores {
        destinations.push((name.to_string(), labels.clone(), BTreeSet::from([*port])));
    }
    // What is needed.
    let mut needed: BTreeSet<(String, String, u16)> = BTreeSet::new();
    for plan in &plans {
        let reads = variables_read(&plan.argv);
        for (name, value) in &plan.env {
            if !reads.contains(name) {
                continue;
            }
            for (host, port) in addresses(value) {
                if host == "0.0.0.0" {
                    continue; // a listen address
                }
                if let Some(service) = services.iter().find(|s| s.name == host) {
                    let (_, target) = service.ports.iter().find(|(p, _)| *p == port).unwrap();
                    for pod in plans.iter().filter(|p| {
                        service
                            .selector
                            .iter()
                            .all(|(k, v)| p.labels.get(k) == Some(v))
                    }) {
                        let number = match target {
                            TargetPort::Number(n) => *n,
                            TargetPort::Name(n) => pod.ports[n],
                        };
                        needed.insert((plan.workload.clone(), pod.workload.clone(), number));
                    }
                } else {
                    let (name, _, port) = datastores
                        .iter()
                        .find(|(name, _, p)| *name == host && *p == port)
                        .unwrap_or_else(|| {
                            panic!("{} reads {name}={value}: no such peer", plan.workload)
                        });
                    needed.insert((plan.workload.clone(), name.to_string(), *port));
                }
            }
        }
        // Scrapes and the public API come from anywhere: Prometheus and the clients run
        // wherever the cluster puts them, so any pod outside the pipeline may use them.
        for outsider in OUTSIDERS {
            if let Some(metrics) = plan.ports.get("metrics") {
                needed.insert((outsider.into(), plan.workload.clone(), *metrics));
            }
            if plan.workload == "demo-odds-service" {
                needed.insert((outsider.into(), plan.workload.clone(), plan.ports["http"]));
            }
        }
    }
    // Sanity: the derivation found the pipeline's real flows.
    for flow in [
        ("demo-ingest", "demo-simulator", 8090),
        ("demo-ingest", "odds-kafka-bootstrap", 9092),
        ("demo-processor", "redis", 6379),
        ("demo-processor", "postgres", 5432),
        ("demo-odds-service", "postgres", 5432),
    ] {
        assert!(
            needed
                .iter()
                .any(|n| n.0 == flow.0 && n.1 == flow.1 && n.2 == flow.2),
            "{flow:?} not derived: {needed:?}"
        );
    }
    assert!(needed
        .iter()
        .any(|n| n.0.starts_with("demo-migrate-") && n.1 == "postgres"));

    // What is allowed, over every source and every port of every destination (plus one
    // port nobody declares).
    let outsider = |app: &str| Labels::from([("app".to_string(), app.to_string())]);
    let mut sources: Vec<(String, Labels)> = plans
        .iter()
        .map(|p| (p.workload.clone(), p.labels.clone()))
        .collect();
    for name in OUTSIDERS {
        sources.push((name.to_string(), outsider(name)));
    }
    let pipeline_pods: BTreeSet<&String> = plans.iter().map(|p| &p.workload).collect();
    let mut wrong = Vec::new();
    for (source, from) in &sources {
        for (destination, to, ports) in &destinations {
            // Between two pods outside the pipeline, its policies have no say.
            if !pipeline_pods.contains(source) && !pipeline_pods.contains(destination) {
                continue;
            }
            for port in ports.iter().copied().chain([12345]) {
                let allowed = policies.allows(Some(from), Some(to), port);
                let need = needed.contains(&(source.clone(), destination.clone(), port));
                if allowed != need {
                    wrong.push(format!(
                        "{source} -> {destination}:{port}: {} but {}",
                        if allowed { "allowed" } else { "refused" },
                        if need { "needed" } else { "not needed" },
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
