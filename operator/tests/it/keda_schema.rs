//! Every ScaledObject the operator builds (the sample and its variants, in each KEDA mode)
//! is valid against KEDA 2.20.2's released CRD schema (vendored beside the repository; the
//! folder is `KEDA_CRDS`, by default `../shared/vendor/keda-2.20.2`).
//!
//! The check is structural, as the API server applies a CRD's schema: types, required
//! fields, enums, bounds and lengths, and no field the schema does not know (the API server would
//! silently prune it, so KEDA would never see what the operator meant).

use crate::fixtures::{
    assert_golden, autoscaling_defaults, cpu_request, ready_facts, sample, vendored_crd_schema,
    PipelineExt, KEDA,
};
use odds_operator::build::{self, Component, MigrationState, ScaledObject};
use odds_operator::crd::{AutoscalingSpec, OddsPipeline, ScalingMode};
use odds_operator::validate::validate;
use serde_json::{json, Value};

fn scaled_object_schema() -> Value {
    vendored_crd_schema(&KEDA, "keda.sh_scaledobjects.yaml")
}

/// What the API server would refuse or prune in `value`, by path (also used for the
/// Prometheus Operator's CRDs, `monitoring_schema`).
pub fn problems(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object() else {
                out.push(format!("{path}: must be an object"));
                return;
            };
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap();
                if !map.contains_key(key) {
                    out.push(format!("{path}.{key}: required"));
                }
            }
            for (key, field) in map {
                let at = format!("{path}.{key}");
                if let Some(sub) = schema["properties"].get(key) {
                    problems(sub, field, &at, out);
                } else if schema["additionalProperties"].is_object() {
                    problems(&schema["additionalProperties"], field, &at, out);
                } else if !preserve {
                    out.push(format!("{at}: not in the schema (would be pruned)"));
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    problems(&schema["items"], item, &format!("{path}[{i}]"), out);
                }
            }
            None => out.push(format!("{path}: must be an array")),
        },
        Some("string") => match value.as_str() {
            Some(text) => {
                let length = text.chars().count() as u64;
                if schema["minLength"].as_u64().is_some_and(|min| length < min) {
                    out.push(format!("{path}: shorter than {}", schema["minLength"]));
                }
                if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
                    out.push(format!("{path}: longer than {}", schema["maxLength"]));
                }
                // The CRDs' patterns are Go (RE2) syntax, which the regex crate shares; one it
                // cannot compile must not pass unchecked.
                if let Some(pattern) = schema["pattern"].as_str() {
                    match regex::Regex::new(pattern) {
                        Ok(re) if re.is_match(text) => {}
                        Ok(_) => out.push(format!("{path}: {text:?} does not match {pattern}")),
                        Err(_) => {
                            out.push(format!("{path}: has a pattern this check cannot verify"))
                        }
                    }
                }
                if let Some(allowed) = schema["enum"].as_array() {
                    if !allowed.iter().any(|a| a == text) {
                        out.push(format!("{path}: {text:?} is not one of {allowed:?}"));
                    }
                }
            }
            None => out.push(format!("{path}: must be a string")),
        },
        Some("integer") => match value.as_i64() {
            Some(n) => {
                if schema["format"] == json!("int32") && i32::try_from(n).is_err() {
                    out.push(format!("{path}: {n} is not an int32"));
                }
                if schema["minimum"].as_i64().is_some_and(|min| n < min) {
                    out.push(format!("{path}: {n} below the minimum"));
                }
                if schema["maximum"].as_i64().is_some_and(|max| n > max) {
                    out.push(format!("{path}: {n} above the maximum"));
                }
            }
            None => out.push(format!("{path}: must be an integer")),
        },
        Some("number") if !value.is_number() => out.push(format!("{path}: must be a number")),
        Some("boolean") if !value.is_boolean() => out.push(format!("{path}: must be a boolean")),
        _ => {}
    }
}

/// Problems of `object` against the ScaledObject schema. `metadata` is the API server's own
/// (ObjectMeta), not the CRD's.
fn check(schema: &Value, object: &ScaledObject) -> Vec<String> {
    let mut value = serde_json::to_value(object).unwrap();
    value["apiVersion"] = json!("keda.sh/v1alpha1");
    value["kind"] = json!("ScaledObject");
    assert!(value["metadata"]["name"].is_string(), "a named object");
    let mut out = Vec::new();
    let mut without_meta = value.clone();
    without_meta.as_object_mut().unwrap().remove("metadata");
    problems(schema, &without_meta, "", &mut out);
    out
}

fn scaling(mode: ScalingMode, edit: impl FnOnce(&mut AutoscalingSpec)) -> AutoscalingSpec {
    let mut spec = AutoscalingSpec {
        mode,
        min_replicas: 1,
        max_replicas: 6,
        ..autoscaling_defaults()
    };
    edit(&mut spec);
    spec
}

/// The sample and its variants, each in every KEDA mode with defaults and with every
/// option set.
pub fn pipelines() -> Vec<(String, OddsPipeline)> {
    let mut out = Vec::new();
    for (base_name, base) in [
        ("sample", sample()),
        (
            "external kafka",
            sample().external_kafka("broker-0:9092,broker-1:9092"),
        ),
        (
            "external supplier",
            sample().external_supplier("wss://feed.example/ws"),
        ),
    ] {
        for options in [false, true] {
            let lag = scaling(ScalingMode::Lag, |s| {
                if options {
                    s.target_lag_per_replica = Some(250);
                    s.scale_down_stabilization_seconds = Some(60);
                    s.polling_interval_seconds = Some(5);
                }
            });
            let connections = scaling(ScalingMode::Connections, |s| {
                s.prometheus_address = Some("http://prometheus.monitoring.svc:9090".into());
                s.max_replicas = 10;
                if options {
                    s.target_connections_per_replica = Some(2000);
                    s.scale_down_stabilization_seconds = Some(0);
                    s.polling_interval_seconds = Some(15);
                    s.pod_monitor_labels =
                        [("release".to_string(), "kube-prometheus-stack".to_string())].into();
                }
            });
            let pipeline = base.clone().edit(|p| {
                p.spec.processor.autoscaling = Some(lag);
                p.spec.processor.resources = Some(cpu_request("100m"));
                p.spec.odds_service.workload.autoscaling = Some(connections);
            });
            out.push((format!("{base_name}, options {options}"), pipeline));
        }
    }
    out
}

fn keda_children(pipeline: &OddsPipeline) -> build::Children {
    let facts = build::Facts {
        keda_installed: true,
        pod_monitors_installed: true,
        ..ready_facts()
    };
    build::children(
        &validate(pipeline, &facts).unwrap(),
        &MigrationState::Succeeded,
    )
}

fn scaled_objects(pipeline: &OddsPipeline) -> Vec<ScaledObject> {
    keda_children(pipeline).scaled_objects
}

#[test]
fn every_built_scaled_object_is_valid_against_kedas_crd() {
    let schema = scaled_object_schema();
    let mut checked = 0;
    for (name, pipeline) in pipelines() {
        let built = scaled_objects(&pipeline);
        let targets: Vec<&str> = built
            .iter()
            .map(|so| so.spec.scale_target_ref.name.as_str())
            .collect();
        assert_eq!(
            targets,
            [
                Component::Processor.name_in("demo"),
                Component::OddsService.name_in("demo")
            ],
            "{name}: one ScaledObject per KEDA mode"
        );
        for so in &built {
            let problems = check(&schema, so);
            assert!(problems.is_empty(), "{name}: {problems:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

/// The built ScaledObjects, as `charts/test.py` validates them a second time (with a full
/// JSON-schema validator, patterns included): `golden/keda-scaledobjects.yaml`, refreshed
/// with `UPDATE_GOLDEN=1`.
#[test]
fn built_scaled_objects_match_the_golden_file() {
    let mut rendered = String::new();
    for (name, pipeline) in pipelines() {
        let children = keda_children(&pipeline);
        // One document of KEDA's `kind`, headed by the variant's name.
        let document = |mut value: Value, kind: &str| {
            value["apiVersion"] = json!("keda.sh/v1alpha1");
            value["kind"] = json!(kind);
            format!("--- # {name}\n{}", serde_yaml::to_string(&value).unwrap())
        };
        for so in &children.scaled_objects {
            let value = serde_json::to_value(so).unwrap();
            rendered.push_str(&document(value, "ScaledObject"));
        }
        // The lag trigger's login on a secured Kafka (the sample's), KEDA's kind too.
        if let Some(auth) = &children.trigger_authentication {
            let value = serde_json::to_value(auth).unwrap();
            rendered.push_str(&document(value, "TriggerAuthentication"));
        }
    }
    assert_golden("keda-scaledobjects.yaml", &rendered, "ScaledObjects");
}

#[test]
fn the_schema_check_catches_what_kedas_api_would_refuse() {
    // The check is not vacuous: a trigger without metadata, a field KEDA does not know and a
    // string where an integer belongs are each found.
    let schema = scaled_object_schema();
    let (_, pipeline) = pipelines().remove(0);
    let so = scaled_objects(&pipeline).remove(0);
    let mut value = serde_json::to_value(&so).unwrap();
    value["spec"]["triggers"][0]
        .as_object_mut()
        .unwrap()
        .remove("metadata");
    value["spec"]["lagThreshold"] = json!("10");
    value["spec"]["maxReplicaCount"] = json!("6");
    value["spec"]["pollingInterval"] = json!(-1);
    value["spec"]["scaleTargetRef"]["name"] = json!("");
    value.as_object_mut().unwrap().remove("metadata");
    let mut out = Vec::new();
    problems(&schema, &value, "", &mut out);
    for expected in [
        ".spec.triggers[0].metadata: required",
        ".spec.lagThreshold: not in the schema (would be pruned)",
        ".spec.maxReplicaCount: must be an integer",
        ".spec.pollingInterval: -1 below the minimum",
        ".spec.scaleTargetRef.name: shorter than 1",
    ] {
        assert!(out.iter().any(|p| p == expected), "{expected}: {out:?}");
    }
}

#[test]
fn the_processor_never_gets_more_replicas_than_partitions() {
    // Validation refuses maxReplicas above the partitions; the builder caps on its own too.
    let pipeline = sample().edit(|p| {
        p.spec.processor.autoscaling = Some(scaling(ScalingMode::Lag, |s| s.max_replicas = 6));
        p.spec.processor.resources = Some(cpu_request("100m"));
    });
    let mut valid = validate(
        &pipeline,
        &build::Facts {
            keda_installed: true,
            ..ready_facts()
        },
    )
    .unwrap();
    valid.topic.partitions = 3;
    let built = build::children(&valid, &MigrationState::Succeeded).scaled_objects;
    assert_eq!(built[0].spec.max_replica_count, Some(3));
    assert_eq!(
        built[0].spec.triggers[0].metadata["allowIdleConsumers"],
        "false"
    );
}
