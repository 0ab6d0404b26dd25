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

/// Drops the sample's `kafka.authentication`, which needs `clusterRef`.
fn without_authentication(cr: &mut Value) {
    cr["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("authentication");
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
        [
            "Ready",
            "Ingest",
            "Processor",
            "Odds-Service",
            "Lag",
            "Fresh",
            "Age"
        ]
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

#[test]
fn a_consumer_group_override_must_be_a_kafka_group_id() {
    let with = |group: &str| {
        let mut cr = sample();
        cr["spec"]["kafka"]["consumerGroup"] = json!(group);
        rejection(&cr, None)
    };
    for bad in &crate::fixtures::invalid_consumer_groups() {
        assert!(
            with(bad).contains(
                "spec.kafka.consumerGroup: kafka.consumerGroup must be 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-'"
            ),
            "{bad:?}: {}",
            with(bad)
        );
    }
    for good in ["odds-processor", "A.b_C-9", &"g".repeat(249)] {
        assert_eq!(with(good), "", "{good:?}");
    }
    // The schema bounds the length too (what the API server's cost estimate of the rule needs).
    let field =
        &schema()["properties"]["spec"]["properties"]["kafka"]["properties"]["consumerGroup"];
    assert_eq!(field["maxLength"], json!(249), "{field}");
    // Unset, the pipeline's own group is derived (see consumer_group.rs): nothing to check.
    assert_eq!(rejection(&sample(), None), "");
}

#[test]
fn topic_names_whose_kafka_topic_name_is_no_dns_subdomain_are_rejected() {
    let topic = "kafka.topic.name gives an invalid KafkaTopic name";
    let dlq = "kafka.dlqTopic.name gives an invalid KafkaTopic name";
    let with = |name: &str, field: &str, value: &str| {
        let mut cr = sample();
        cr["metadata"]["name"] = json!(name);
        cr["spec"]["kafka"][field]["name"] = json!(value);
        rejection(&cr, None)
    };
    // A trailing '_', '.' or '-' becomes a trailing '-'.
    for bad in ["odds_updates_", "odds.updates.", "odds-updates-", "___"] {
        assert!(with("demo", "topic", bad).contains(topic), "{bad}");
        assert!(
            with("demo", "dlqTopic", &format!("dlq{bad}")).contains(dlq),
            "{bad}"
        );
    }
    // `demo-` + 248 characters is 253, the most a KafkaTopic name may have; 249 is too many.
    let long = |n: usize| "t".repeat(n);
    assert_eq!(with("demo", "topic", &long(248)), "");
    assert!(with("demo", "topic", &long(249)).contains(topic));
    assert_eq!(with("demo", "dlqTopic", &long(248)), "");
    assert!(with("demo", "dlqTopic", &long(249)).contains(dlq));
    // A longer pipeline name leaves less: 44 + 1 + 208 = 253.
    let name = "a".repeat(44);
    assert_eq!(with(&name, "topic", &long(208)), "");
    assert!(with(&name, "topic", &long(209)).contains(topic));
    // A leading or inner '_' or '.' is fine (an inner "--" is a valid subdomain).
    assert_eq!(with("demo", "topic", "_odds..updates"), "");
    assert_eq!(with("demo", "topic", "Odds.Updates"), "");
    // With bootstrapServers no KafkaTopic is made, so Kafka's own rule is the only one.
    let mut external = sample();
    external["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("clusterRef");
    without_authentication(&mut external);
    external["spec"]["kafka"]["bootstrapServers"] = json!("kafka:9092");
    external["spec"]["kafka"]["topic"]["name"] = json!("odds_updates_");
    external["spec"]["kafka"]["dlqTopic"]["name"] = json!(long(249));
    assert_eq!(rejection(&external, None), "");
}

#[test]
fn topic_names_may_not_change_once_set() {
    let old = sample();
    let message = "topic names may not change once set: the pipeline would move to an empty topic and orphan the old one, with its data; to use another topic, create a new pipeline";
    for field in ["topic", "dlqTopic"] {
        let mut renamed = old.clone();
        renamed["spec"]["kafka"][field]["name"] = json!("odds_updates_v2");
        assert!(
            rejection(&renamed, Some(&old))
                .contains(&format!("spec.kafka.{field}.name: {message}")),
            "{field}: {}",
            rejection(&renamed, Some(&old))
        );
        // On create (and in `odds-operator render`, which has no old object) any name goes.
        assert_eq!(rejection(&renamed, None), "", "{field}");
    }
    // A topic named before only by the default keeps it: spelling it out is no change.
    let mut defaulted = old.clone();
    let kafka = defaulted["spec"]["kafka"].as_object_mut().unwrap();
    kafka.remove("topic");
    kafka.remove("dlqTopic");
    let mut explicit = defaulted.clone();
    explicit["spec"]["kafka"]["topic"] = json!({"name": "odds_updates", "partitions": 6});
    assert_eq!(rejection(&explicit, Some(&defaulted)), "");
    explicit["spec"]["kafka"]["topic"]["name"] = json!("odds-updates");
    assert!(rejection(&explicit, Some(&defaulted)).contains(message));
    // An update that keeps the names passes, whatever else it changes.
    let mut kept = old.clone();
    kept["spec"]["kafka"]["topic"]["partitions"] = json!(12);
    kept["spec"]["kafka"]["topic"]["config"] = json!({"retention.ms": "86400000"});
    kept["spec"]["kafka"]["dlqTopic"]["replicas"] = json!(3);
    kept["spec"]["kafka"]["consumerGroup"] = json!("odds-processor");
    assert_eq!(rejection(&kept, Some(&old)), "");
}

#[test]
fn the_kafka_cluster_may_not_change_once_set() {
    let message = "kafka.clusterRef may not change or be removed once set: the pipeline would point at another Kafka cluster, away from its topics, their data and its consumer group's offsets; to use another cluster, create a new pipeline";
    let old = sample();
    let mut moved = old.clone();
    moved["spec"]["kafka"]["clusterRef"] = json!("odds-2");
    assert!(
        rejection(&moved, Some(&old)).contains(&format!("spec.kafka: {message}")),
        "{}",
        rejection(&moved, Some(&old))
    );
    // Removing it for bootstrapServers is a move too.
    let mut external = old.clone();
    external["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("clusterRef");
    without_authentication(&mut external);
    external["spec"]["kafka"]["bootstrapServers"] = json!("odds-kafka-bootstrap:9092");
    assert!(rejection(&external, Some(&old)).contains(message));
    // Unchanged passes; so does a new pipeline on another cluster (no old object).
    assert_eq!(rejection(&old, Some(&old)), "");
    assert_eq!(rejection(&moved, None), "");
    // bootstrapServers stays editable (brokers come and go), and a pipeline on external
    // brokers may hand its topics to a Strimzi cluster: clusterRef was not set before.
    let mut more_brokers = external.clone();
    more_brokers["spec"]["kafka"]["bootstrapServers"] =
        json!("odds-kafka-bootstrap:9092,odds-kafka-1:9092");
    assert_eq!(rejection(&more_brokers, Some(&external)), "");
    assert_eq!(rejection(&old, Some(&external)), "");
}

#[test]
fn simulator_events_and_rate_stop_where_the_simulator_does() {
    for field in ["events", "rate"] {
        let bound = &schema()["properties"]["spec"]["properties"]["supplier"]["properties"]
            ["simulator"]["properties"][field];
        assert_eq!(
            (bound["minimum"].as_f64(), bound["maximum"].as_f64()),
            (Some(1.0), Some(1_000_000.0)),
            "{field}: {bound}"
        );
    }
    assert_eq!(odds_operator::crd::MAX_SIMULATOR_VALUE, 1_000_000);
}

#[test]
fn kafka_authentication_needs_a_strimzi_cluster_and_tls_for_client_certificates() {
    let sample = sample();
    assert_eq!(
        sample["spec"]["kafka"]["authentication"]["type"],
        "scram-sha-512"
    );
    // Defaults: Strimzi's conventional TLS listener.
    let mut defaults = sample.clone();
    defaults["spec"]["kafka"]["authentication"] = json!({"type": "tls"});
    assert_eq!(rejection(&defaults, None), "");
    let typed: OddsPipeline = serde_json::from_value(defaults).unwrap();
    let auth = typed.spec.kafka.authentication.unwrap();
    assert_eq!((auth.port, auth.tls), (9093, true));

    let mut external = sample.clone();
    external["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("clusterRef");
    external["spec"]["kafka"]["bootstrapServers"] = json!("kafka:9092");
    assert!(
        rejection(&external, None).contains("kafka.authentication needs kafka.clusterRef"),
        "{}",
        rejection(&external, None)
    );
    let mut mtls_plain = sample.clone();
    mtls_plain["spec"]["kafka"]["authentication"] = json!({"type": "tls", "tls": false});
    assert!(rejection(&mtls_plain, None).contains("needs a TLS listener"));
    let mut scram_plain = sample.clone();
    scram_plain["spec"]["kafka"]["authentication"] =
        json!({"type": "scram-sha-512", "port": 9094, "tls": false});
    assert_eq!(rejection(&scram_plain, None), "");
    // Schema bounds (kube's client-side evaluator checks only the CEL rules).
    let auth = &schema()["properties"]["spec"]["properties"]["kafka"]["properties"]
        ["authentication"]["properties"];
    assert_eq!(auth["type"]["enum"], json!(["scram-sha-512", "tls"]));
    let port = &auth["port"];
    assert_eq!(
        (port["minimum"].as_f64(), port["maximum"].as_f64()),
        (Some(1.0), Some(65535.0)),
        "{port}"
    );
}
