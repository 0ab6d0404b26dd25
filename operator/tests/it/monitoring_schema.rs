//! Every PodMonitor the operator builds (connections mode, for the sample and its variants)
//! is valid against prometheus-operator 0.93.0's released CRD schema (vendored beside the
//! repository; the folder is `PROMETHEUS_OPERATOR_CRDS`, by default
//! `../shared/vendor/prometheus-operator-0.93.0`), with the structural check of
//! `keda_schema` (types, required fields, enums, bounds, patterns, and no field the schema
//! does not know). `charts/test.py` validates the golden file again with a full JSON-schema
//! validator, with the chart's own ServiceMonitor, PodMonitor and PrometheusRule.

use crate::fixtures::{assert_each_begins_a_line, assert_golden, ready_facts};
use crate::fixtures::{vendored_crd_schema, PROMETHEUS_OPERATOR};
use crate::keda_schema::{pipelines, problems};
use odds_operator::build::{self, MigrationState, PodMonitor};
use odds_operator::validate::validate;
use serde_json::{json, Value};

fn pod_monitor_schema() -> Value {
    vendored_crd_schema(
        &PROMETHEUS_OPERATOR,
        "monitoring.coreos.com_podmonitors.yaml",
    )
}

fn as_json(monitor: &PodMonitor) -> Value {
    let mut value = serde_json::to_value(monitor).unwrap();
    value["apiVersion"] = json!("monitoring.coreos.com/v1");
    value["kind"] = json!("PodMonitor");
    value
}

/// Problems of `value` (a PodMonitor) against the schema; `metadata` is the API server's own.
fn check(schema: &Value, value: &Value) -> Vec<String> {
    assert!(value["metadata"]["name"].is_string(), "a named object");
    let mut without_meta = value.clone();
    without_meta.as_object_mut().unwrap().remove("metadata");
    let mut out = Vec::new();
    problems(schema, &without_meta, "", &mut out);
    out
}

fn pod_monitors() -> Vec<(String, PodMonitor)> {
    let facts = build::Facts {
        keda_installed: true,
        pod_monitors_installed: true,
        ..ready_facts()
    };
    pipelines()
        .into_iter()
        .filter_map(|(name, pipeline)| {
            let valid = validate(&pipeline, &facts).unwrap();
            let monitor = build::children(&valid, &MigrationState::Succeeded).pod_monitor?;
            Some((name, monitor))
        })
        .collect()
}

#[test]
fn every_built_pod_monitor_is_valid_against_the_prometheus_operators_crd() {
    let schema = pod_monitor_schema();
    let built = pod_monitors();
    assert_eq!(
        built.len(),
        6,
        "one PodMonitor per connections-mode variant"
    );
    for (name, monitor) in &built {
        let problems = check(&schema, &as_json(monitor));
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
}

#[test]
fn the_schema_check_catches_what_the_prometheus_operators_api_would_refuse() {
    let schema = pod_monitor_schema();
    let (_, monitor) = pod_monitors().remove(0);
    let mut value = as_json(&monitor);
    value["spec"].as_object_mut().unwrap().remove("selector");
    value["spec"]["podMetricsEndpoints"][0]["interval"] = json!("every 15 seconds");
    value["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = json!("rename");
    value["spec"]["podMetricsEndpoints"][0]["scrapeEvery"] = json!("15s");
    let out = check(&schema, &value);
    assert_each_begins_a_line(
        &out,
        &[
            ".spec.selector: required",
            ".spec.podMetricsEndpoints[0].interval: \"every 15 seconds\" does not match",
            ".spec.podMetricsEndpoints[0].relabelings[0].action: \"rename\" is not one of",
            ".spec.podMetricsEndpoints[0].scrapeEvery: not in the schema (would be pruned)",
        ],
    );
}

/// The built PodMonitors, as `charts/test.py` validates them a second time (with a full
/// JSON-schema validator): `golden/pod-monitors.yaml`, refreshed with `UPDATE_GOLDEN=1`.
#[test]
fn built_pod_monitors_match_the_golden_file() {
    let mut rendered = String::new();
    for (name, monitor) in pod_monitors() {
        rendered.push_str(&format!(
            "--- # {name}\n{}",
            serde_yaml::to_string(&as_json(&monitor)).unwrap()
        ));
    }
    assert_golden("pod-monitors.yaml", &rendered, "PodMonitors");
}
