//! `spec.observability.tracing`: the CRD's rules, the operator's own checks, and what it
//! builds: the standard `OTEL_*` variables in the ConfigMap every workload reads (so the pods
//! roll when tracing changes) and egress to the collector's port.
//!
//! `golden/tracing-config.yaml` is the traced sample's ConfigMap; regenerate it with
//! `UPDATE_GOLDEN=1 cargo test -p odds-operator tracing` after an intended change.

use crate::fixtures::{
    assert_golden, egress_ports, hash, repo_file, sample, sample_json, valid, PipelineExt,
};
use kube::core::cel::Validator;
use odds_operator::build::{self, MigrationState};
use odds_operator::crd::{OddsPipeline, TracingSpec};
use odds_operator::validate::validate;
use serde_json::{json, Value};

const COLLECTOR: &str = "http://jaeger-collector.observability:4318";

fn traced(endpoint: &str, sampling_ratio: f64) -> OddsPipeline {
    sample().edit(|p| {
        p.spec.observability.tracing = Some(TracingSpec {
            endpoint: endpoint.into(),
            sampling_ratio,
        })
    })
}

fn rejection(tracing: Value) -> String {
    let text = std::fs::read_to_string(repo_file("crds/oddspipelines.yaml")).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut cr = sample_json();
    cr["spec"]["observability"] = json!({ "tracing": tracing });
    match Validator::new().validate(schema, &cr, None) {
        Ok(()) => String::new(),
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn the_crd_accepts_an_http_collector_and_a_ratio_from_0_to_1() {
    assert_eq!(rejection(json!({ "endpoint": COLLECTOR })), "");
    assert_eq!(
        rejection(json!({ "endpoint": "http://10.0.0.7:4318", "samplingRatio": 1.0 })),
        ""
    );
    let typed: OddsPipeline = serde_json::from_value({
        let mut cr = sample_json();
        cr["spec"]["observability"] = json!({ "tracing": { "endpoint": COLLECTOR } });
        cr
    })
    .unwrap();
    let tracing = typed.spec.observability.tracing.unwrap();
    assert_eq!(tracing.sampling_ratio, 0.01, "the default ratio");
}

#[test]
fn the_crd_rejects_other_endpoints_and_ratios_with_the_reason() {
    for endpoint in ["https://collector:4318", "collector:4318", "http://:4318"] {
        let message = rejection(json!({ "endpoint": endpoint }));
        assert!(
            message.contains("observability.tracing.endpoint must be an http:// URL"),
            "{endpoint}: {message}"
        );
    }
    for ratio in [1.5, -0.1] {
        let message = rejection(json!({ "endpoint": COLLECTOR, "samplingRatio": ratio }));
        assert!(
            message.contains("observability.tracing.samplingRatio must be from 0 to 1"),
            "{ratio}: {message}"
        );
    }
    assert!(
        !rejection(json!({ "samplingRatio": 0.5 })).is_empty(),
        "endpoint is required"
    );
}

#[test]
fn the_operator_repeats_the_rules() {
    let facts = crate::fixtures::ready_facts();
    let problems = validate(&traced("https://collector:4318", 2.0), &facts)
        .expect_err("invalid")
        .problems;
    assert!(
        problems.iter().any(|p| p.contains("tracing.endpoint")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("samplingRatio")),
        "{problems:?}"
    );
}

#[test]
fn every_workload_gets_the_otel_environment_and_the_golden_config_holds() {
    let children = build::children(&valid(&traced(COLLECTOR, 0.05)), &MigrationState::Succeeded);
    let config_map = children.config_map.clone().unwrap();
    let rendered = serde_yaml::to_string(&config_map).unwrap();
    assert_golden("tracing-config.yaml", &rendered, "the ConfigMap's fields");
    let data = config_map.data.unwrap();
    assert_eq!(data["OTEL_EXPORTER_OTLP_ENDPOINT"], COLLECTOR);
    assert_eq!(data["OTEL_TRACES_SAMPLER"], "parentbased_traceidratio");
    assert_eq!(data["OTEL_TRACES_SAMPLER_ARG"], "0.05");
    assert_eq!(
        data["OTEL_RESOURCE_ATTRIBUTES"],
        "k8s.namespace.name=default,odds.pipeline=demo"
    );
    // Every workload reads the ConfigMap.
    for deployment in &children.deployments {
        let spec = deployment.spec.as_ref().unwrap();
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        let from_config = container.env_from.iter().flatten().any(|source| {
            source.config_map_ref.as_ref().map(|c| c.name.as_str()) == Some("demo-config")
        });
        assert!(
            from_config,
            "{:?} reads the config",
            deployment.metadata.name
        );
    }
    let untraced = build::children(&valid(&sample()), &MigrationState::Succeeded);
    let keys = untraced.config_map.unwrap().data.unwrap();
    assert!(!keys.keys().any(|k| k.starts_with("OTEL_")), "{keys:?}");
}

#[test]
fn turning_tracing_on_or_changing_the_ratio_rolls_the_pods() {
    let ingest = |p: &OddsPipeline| {
        let children = build::children(&valid(p), &MigrationState::Succeeded);
        let deployment = children
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some("demo-ingest"))
            .cloned()
            .unwrap();
        hash(&deployment)
    };
    let off = ingest(&sample());
    let on = ingest(&traced(COLLECTOR, 0.01));
    let more = ingest(&traced(COLLECTOR, 0.5));
    assert!(off != on && on != more, "{off} {on} {more}");
}

#[test]
fn the_workloads_may_reach_the_collector_port_and_only_then() {
    let egress_ports = |p: &OddsPipeline, policy: &str| {
        egress_ports(
            &build::children(&valid(p), &MigrationState::Succeeded),
            policy,
        )
    };
    for policy in ["demo-ingest", "demo-processor", "demo-odds-service"] {
        assert!(
            egress_ports(&traced(COLLECTOR, 0.01), policy).contains(&4318),
            "{policy}"
        );
        assert!(!egress_ports(&sample(), policy).contains(&4318), "{policy}");
    }
    let default_port = egress_ports(&traced("http://collector", 0.01), "demo-ingest");
    assert!(default_port.contains(&80), "{default_port:?}");
}
