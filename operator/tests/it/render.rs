//! `odds-operator render`, run as a user runs it: the same children the controller builds,
//! and the same messages admission and validation give for a bad spec.

use crate::fixtures::{assert_contains, repo_file, sample};
use odds_operator::build::{self, MigrationState};
use odds_operator::render::{render, secrets_from_yaml, RenderOptions};
use odds_operator::validate::validate;
use serde::Deserialize;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_odds-operator"))
        .arg("render")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs `odds-operator render` as [`run`] does; it must refuse (exit 1), saying `says`
/// on stderr. Returns the output.
fn refused(args: &[&str], stdin: Option<&str>, says: &str) -> Output {
    let out = run(args, stdin);
    assert_eq!(out.status.code(), Some(1));
    assert_contains(&String::from_utf8_lossy(&out.stderr), says);
    out
}

fn sample_path() -> String {
    repo_file("operator/samples/oddspipeline.yaml")
        .display()
        .to_string()
}

fn secrets_path() -> String {
    repo_file("operator/samples/secrets.yaml")
        .display()
        .to_string()
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect()
}

fn without_owner(mut objects: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for object in &mut objects {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("ownerReferences");
        }
    }
    objects
}

#[test]
fn render_prints_what_the_controller_builds_for_the_sample() {
    let out = run(&["-f", &sample_path(), "--secrets", &secrets_path()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = documents(&String::from_utf8(out.stdout).unwrap());

    // What the controller builds with the same facts (topics Ready, migration done).
    let secrets = secrets_from_yaml(&std::fs::read_to_string(secrets_path()).unwrap()).unwrap();
    let facts = build::Facts {
        secrets: secrets
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap(),
                    odds_operator::observe::key_digests(s),
                )
            })
            .collect(),
        topics_ready: true,
        kafka_user_ready: true,
        ..build::Facts::default()
    };
    let built = build::children(
        &validate(&sample(), &facts).unwrap(),
        &MigrationState::Succeeded,
    );
    assert_eq!(printed, without_owner(built.objects().unwrap()));
    let kinds: Vec<&str> = printed.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "ConfigMap",
        "KafkaTopic",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // A file has no uid: nothing claims an owner that does not exist yet.
    assert!(printed
        .iter()
        .all(|o| o["metadata"]["ownerReferences"].is_null()));
}

#[test]
fn secret_values_change_the_config_hash_and_a_missing_secret_fails() {
    let plain = run(&["-f", &sample_path()], None);
    let with = run(&["-f", &sample_path(), "--secrets", &secrets_path()], None);
    assert!(plain.status.success() && with.status.success());
    assert_ne!(
        plain.stdout, with.stdout,
        "Secret digests go into the config hash"
    );

    let only_redis = "apiVersion: v1\nkind: Secret\nmetadata: {name: odds-redis}\nstringData: {url: 'redis://r:6379'}\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    std::fs::write(&file, only_redis).unwrap();
    let args = ["-f", &sample_path(), "--secrets", file.to_str().unwrap()];
    refused(&args, None, "missing Secret(s): odds-postgres");
}

#[test]
fn a_spec_admission_would_reject_fails_with_the_crd_rule_message() {
    let text = std::fs::read_to_string(sample_path()).unwrap().replace(
        "replicas: 2\n    resources:\n      requests:\n        cpu: 100m\n        memory: 128Mi",
        "replicas: 9\n    resources:\n      requests:\n        cpu: 100m\n        memory: 128Mi",
    );
    assert!(text.contains("replicas: 9"));
    let out = refused(
        &["-f", "-"],
        Some(&text),
        "OddsPipeline demo: the API server would reject it",
    );
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        "must not exceed kafka.topic.partitions",
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is printed for an invalid file"
    );
}

#[test]
fn a_wrongly_typed_field_and_a_foreign_kind_are_refused() {
    let text = std::fs::read_to_string(sample_path())
        .unwrap()
        .replace("partitions: 6", "partitions: six");
    refused(&["-f", "-"], Some(&text), "would reject it");
    let foreign = "kind \"Secret\" is not an OddsPipeline";
    refused(&["-f", &secrets_path()], None, foreign);
}

#[test]
fn discovery_flags_change_what_is_built_as_on_a_cluster() {
    let lag = std::fs::read_to_string(sample_path()).unwrap().replace(
        "    # autoscaling:\n    #   mode: Lag",
        "    autoscaling:\n      mode: Lag\n      minReplicas: 1\n      maxReplicas: 6\n    #",
    );
    let options = |keda| RenderOptions {
        namespace: "default".into(),
        strimzi: true,
        keda,
        pod_monitors: false,
        secrets: None,
    };
    let with_keda = render(&lag, &options(true)).unwrap();
    let without = render(&lag, &options(false)).unwrap();
    assert!(with_keda.contains("kind: ScaledObject"), "{with_keda}");
    assert!(!without.contains("kind: ScaledObject"));

    let args = ["-f", &sample_path(), "--strimzi", "false"];
    refused(&args, None, "StrimziNotInstalled");
}

#[test]
fn a_pipeline_without_a_namespace_lands_in_the_given_one() {
    let text = std::fs::read_to_string(sample_path())
        .unwrap()
        .replace("  namespace: default\n", "");
    let options = RenderOptions {
        namespace: "odds".into(),
        strimzi: true,
        keda: false,
        pod_monitors: false,
        secrets: None,
    };
    let out = render(&text, &options).unwrap();
    let docs = documents(&out);
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "odds"));
}

#[test]
fn the_new_admission_rules_hold_in_render_too() {
    let sample = std::fs::read_to_string(sample_path()).unwrap();
    let options = RenderOptions {
        namespace: "default".into(),
        strimzi: true,
        keda: false,
        pod_monitors: false,
        secrets: None,
    };
    // A CEL rule on the object: the KafkaTopic name `demo-odds-updates-` is no DNS subdomain.
    let trailing = sample.replace("name: odds_updates\n", "name: odds_updates_\n");
    assert_ne!(trailing, sample);
    let error = render(&trailing, &options).unwrap_err().to_string();
    assert!(
        error.contains("the API server would reject it")
            && error.contains("kafka.topic.name gives an invalid KafkaTopic name"),
        "{error}"
    );
    // A schema bound, which kube's client-side evaluator does not check: validate's own
    // check says it instead.
    let fast = sample.replace("rate: 20\n", "rate: 2000000\n");
    assert_ne!(fast, sample);
    let error = render(&fast, &options).unwrap_err().to_string();
    assert!(
        error.contains("supplier.simulator.rate (2000000) must be 1 to 1000000"),
        "{error}"
    );
    // Render is a create (no old object), so the transition rules never apply: a renamed
    // topic or another cluster renders.
    let renamed = sample
        .replace("name: odds_updates\n", "name: odds_updates_v2\n")
        .replace("clusterRef: odds\n", "clusterRef: odds-2\n");
    assert_ne!(renamed, sample);
    let out = render(&renamed, &options).unwrap();
    assert!(out.contains("topicName: odds_updates_v2\n"), "{out}");
    assert!(
        out.contains("KAFKA_BROKERS: odds-2-kafka-bootstrap:9093\n"),
        "{out}"
    );
}
