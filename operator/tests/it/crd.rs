//! The CRD in `crds/` is current, and the sample CR passes the CRD's own validation rules
//! (CEL `x-kubernetes-validations` evaluated client-side with kube's CEL engine, after the
//! schema's defaults are applied, as the API server does).

use crate::fixtures::{repo_file, sample_json as sample};
use kube::core::cel::Validator;
use odds_operator::crd::{crd_yaml, OddsPipeline};
use serde_json::{json, Value};

#[test]
fn crds_directory_is_up_to_date() {
    let committed =
        std::fs::read_to_string(repo_file("crds/oddspipelines.yaml")).unwrap_or_default();
    let generated = crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/oddspipelines.yaml is stale: run `cargo run -p odds-operator -- crd > crds/oddspipelines.yaml`"
    );
    // The chart's copy, which its templates/crd.yaml renders (so `helm upgrade` updates the CRD).
    let packaged = std::fs::read_to_string(repo_file(
        "charts/odds-operator/files/oddspipelines.crd.yaml",
    ))
    .unwrap_or_default();
    assert!(
        packaged == generated,
        "charts/odds-operator/files/oddspipelines.crd.yaml is stale: run `cp crds/oddspipelines.yaml charts/odds-operator/files/oddspipelines.crd.yaml`"
    );
}

/// The openAPIV3Schema of the committed CRD (what a cluster would enforce).
fn schema() -> Value {
    let text = std::fs::read_to_string(repo_file("crds/oddspipelines.yaml")).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn rejection(object: &Value, old: Option<&Value>) -> String {
    match Validator::new().validate(&schema(), object, old) {
        Ok(()) => String::new(),
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn sample_cr_deserializes_and_passes_the_crd_rules() {
    let sample = sample();
    let typed: OddsPipeline = serde_json::from_value(sample.clone()).unwrap();
    assert_eq!(typed.spec.kafka.cluster_ref.as_deref(), Some("odds"));
    assert_eq!(rejection(&sample, None), "");
    // An update that leaves the partitions alone passes the transition rules too.
    assert_eq!(rejection(&sample, Some(&sample)), "");
}

#[test]
fn minimal_cr_passes_with_defaults_applied() {
    let minimal = json!({
        "apiVersion": "odds-pipeline.github.io/v1alpha1", "kind": "OddsPipeline",
        "metadata": {"name": "m", "namespace": "default"},
        "spec": {
            "kafka": {"bootstrapServers": "kafka:9092"},
            "redis": {"urlSecretRef": {"name": "r"}},
            "postgres": {"urlSecretRef": {"name": "p"}},
            "supplier": {"url": "ws://feed/ws"}
        }
    });
    assert_eq!(rejection(&minimal, None), "");
    let typed: OddsPipeline = serde_json::from_value(minimal).unwrap();
    assert_eq!(typed.spec.kafka.topic.partitions, 6);
    assert_eq!(typed.spec.processor.replicas, 1);
}

#[test]
fn migration_deadline_defaults_to_an_hour_and_has_a_floor() {
    let field = &schema()["properties"]["spec"]["properties"]["postgres"]["properties"]
        ["migrationDeadlineSeconds"];
    assert_eq!(field["minimum"].as_f64(), Some(60.0), "{field}");
    let typed: OddsPipeline = serde_json::from_value(sample()).unwrap();
    assert_eq!(typed.spec.postgres.migration_deadline_seconds, 3600);
}

#[test]
fn both_kafka_sources_are_rejected() {
    let mut cr = sample();
    cr["spec"]["kafka"]["bootstrapServers"] = json!("kafka:9092");
    assert!(
        rejection(&cr, None).contains("exactly one of kafka.clusterRef and kafka.bootstrapServers")
    );
    cr["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("clusterRef");
    cr["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("bootstrapServers");
    assert!(rejection(&cr, None).contains("exactly one of kafka.clusterRef"));
}

#[test]
fn processor_replicas_above_partitions_are_rejected() {
    let mut cr = sample();
    cr["spec"]["processor"]["replicas"] = json!(7);
    assert!(rejection(&cr, None).contains("must not exceed kafka.topic.partitions"));
    cr["spec"]["processor"]["replicas"] = json!(6);
    assert_eq!(rejection(&cr, None), "");
}

#[test]
fn autoscaling_min_above_max_is_rejected() {
    let mut cr = sample();
    cr["spec"]["oddsService"]["autoscaling"]["minReplicas"] = json!(9);
    assert!(rejection(&cr, None).contains("minReplicas must not exceed"));
}

#[test]
fn partitions_may_grow_but_not_shrink() {
    let old = sample();
    let mut grown = old.clone();
    grown["spec"]["kafka"]["topic"]["partitions"] = json!(12);
    assert_eq!(rejection(&grown, Some(&old)), "");
    let mut shrunk = old.clone();
    shrunk["spec"]["kafka"]["topic"]["partitions"] = json!(3);
    shrunk["spec"]["processor"]["replicas"] = json!(1);
    assert!(rejection(&shrunk, Some(&old)).contains("partitions may not shrink"));
}

#[test]
fn simulator_and_url_are_exclusive() {
    let mut cr = sample();
    cr["spec"]["supplier"]["url"] = json!("ws://feed/ws");
    assert!(rejection(&cr, None).contains("exactly one of supplier.url"));
}

#[test]
fn crd_has_names_columns_and_status_subresource() {
    let text = crd_yaml().unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        crd["metadata"]["name"],
        "oddspipelines.odds-pipeline.github.io"
    );
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["op", "oddsp"]));
    assert_eq!(crd["spec"]["names"]["categories"], json!(["odds"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Ingest", "Processor", "Odds-Service", "Lag", "Age"]
    );
}

#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_odds-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(output.status.success());
    let committed = std::fs::read_to_string(repo_file("crds/oddspipelines.yaml")).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
}

#[test]
fn names_that_cannot_name_children_are_rejected() {
    for bad in ["demo.v2", "1demo", "Demo", "demo-", &"a".repeat(45)] {
        let mut cr = sample();
        cr["metadata"]["name"] = json!(bad);
        assert!(
            rejection(&cr, None).contains("metadata.name must be at most 44 characters"),
            "{bad}: {}",
            rejection(&cr, None)
        );
    }
    for good in ["demo", "d", "odds-v2", &"a".repeat(44)] {
        let mut cr = sample();
        cr["metadata"]["name"] = json!(good);
        assert_eq!(rejection(&cr, None), "", "{good}");
    }
}

#[test]
fn topic_and_dlq_mapping_to_one_kafka_topic_are_rejected() {
    for dlq in ["odds_updates", "ODDS.updates", "odds-updates"] {
        let mut cr = sample();
        cr["spec"]["kafka"]["dlqTopic"]["name"] = json!(dlq);
        assert!(
            rejection(&cr, None).contains("would map to one KafkaTopic"),
            "{dlq}"
        );
    }
}

#[test]
fn autoscaling_without_a_cpu_request_is_rejected() {
    let mut cr = sample();
    cr["spec"]["oddsService"]
        .as_object_mut()
        .unwrap()
        .remove("resources");
    assert!(rejection(&cr, None).contains("set resources.requests.cpu"));
    let mut cr = sample();
    cr["spec"]["ingest"]["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 2});
    assert!(rejection(&cr, None).contains("set resources.requests.cpu"));
    cr["spec"]["ingest"]["resources"] = json!({"requests": {"cpu": "50m"}});
    assert_eq!(rejection(&cr, None), "");
}

#[test]
fn pod_override_env_is_a_list_map_keyed_by_name() {
    let schema = schema();
    for component in ["ingest", "processor", "oddsService"] {
        let env = &schema["properties"]["spec"]["properties"][component]["properties"]
            ["podOverrides"]["properties"]["env"];
        assert_eq!(env["x-kubernetes-list-type"], "map", "{component}");
        assert_eq!(
            env["x-kubernetes-list-map-keys"],
            json!(["name"]),
            "{component}"
        );
    }
}

#[test]
fn crd_subcommand_exits_quietly_when_the_reader_stops_early() {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_odds-operator"))
        .arg("crd")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // What `odds-operator crd | head -c 100` does: read a little, then close the pipe. The
    // CRD is larger than a pipe's buffer, so the writer meets EPIPE.
    let mut start = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut start).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert!(String::from_utf8_lossy(&start).starts_with("apiVersion: apiextensions.k8s.io/v1"));
}

#[test]
fn autoscaling_modes_are_accepted_only_where_they_mean_something() {
    let with = |component: &str, mode: &str| {
        let mut cr = sample();
        cr["spec"][component]["resources"] = json!({"requests": {"cpu": "100m"}});
        cr["spec"][component]["autoscaling"] =
            json!({"mode": mode, "minReplicas": 1, "maxReplicas": 2});
        rejection(&cr, None)
    };
    assert_eq!(with("processor", "Lag"), "");
    assert_eq!(with("oddsService", "Connections"), "");
    assert_eq!(with("ingest", "Cpu"), "");
    assert!(with("ingest", "Lag").contains("ingest.autoscaling.mode must be Cpu"));
    assert!(
        with("processor", "Connections").contains("processor.autoscaling.mode must be Cpu or Lag")
    );
    assert!(with("oddsService", "Lag")
        .contains("oddsService.autoscaling.mode must be Cpu or Connections"));
    // An unknown mode is the schema's enum to refuse (the CEL evaluator checks rules only).
    let mode = &schema()["properties"]["spec"]["properties"]["processor"]["properties"]
        ["autoscaling"]["properties"]["mode"];
    assert_eq!(mode["enum"], json!(["Cpu", "Lag", "Connections"]));
    assert_eq!(mode["default"], json!("Cpu"));
    // Lag mode is bounded by the partitions like any processor autoscaling.
    let mut cr = sample();
    cr["spec"]["processor"]["resources"] = json!({"requests": {"cpu": "100m"}});
    cr["spec"]["processor"]["autoscaling"] =
        json!({"mode": "Lag", "minReplicas": 1, "maxReplicas": 7});
    assert!(rejection(&cr, None).contains("must not exceed kafka.topic.partitions"));
}
