//! The pure builders: spec + facts → child objects, checked without any API.
//!
//! `golden/sample-children.yaml` is every child of the sample CR; regenerate it with
//! `UPDATE_GOLDEN=1 cargo test -p odds-operator --test builders` after an intended change
//! and review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::EnvVar;
use odds_operator::build::{self, job, Component, Facts, MigrationState, CONFIG_HASH_ANNOTATION};
use odds_operator::crd::{IngressSpec, OddsPipeline, PdbSpec};
use odds_operator::observe;
use odds_operator::validate::validate;
use std::collections::BTreeMap;

fn sample() -> OddsPipeline {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/oddspipeline.yaml");
    let mut pipeline: OddsPipeline =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    pipeline.metadata.uid = Some("0c6f-uid".into());
    pipeline
}

fn ready_facts() -> Facts {
    Facts {
        secret_versions: BTreeMap::from([
            ("odds-postgres".into(), "11".into()),
            ("odds-redis".into(), "12".into()),
        ]),
        topics_ready: true,
        migration: MigrationState::Succeeded,
        existing_partitions: Some(6),
    }
}

fn deployment<'a>(children: &'a build::Children, name: &str) -> &'a Deployment {
    children
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .expect(name)
}

fn hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

fn env(d: &Deployment) -> Vec<EnvVar> {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap()
}

#[test]
fn sample_children_match_the_golden_file() {
    let children = build::children(&sample(), &ready_facts());
    let mut docs: Vec<serde_json::Value> = Vec::new();
    let mut push = |v: serde_json::Value| docs.push(v);
    children
        .config_map
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    children
        .topics
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    children
        .migration_job
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    children
        .deployments
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    children
        .services
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    children
        .pdbs
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    children
        .hpas
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    children
        .ingress
        .iter()
        .for_each(|o| push(serde_json::to_value(o).unwrap()));
    let rendered: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap()))
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/sample-children.yaml"
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        golden == rendered,
        "children differ from {path}; if intended, rerun with UPDATE_GOLDEN=1 and review the diff"
    );
    assert!(children.blocked.is_empty());
}

#[test]
fn external_kafka_needs_no_topics_and_uses_the_given_brokers() {
    let mut p = sample();
    p.spec.kafka.cluster_ref = None;
    p.spec.kafka.bootstrap_servers = Some("broker-0:9092,broker-1:9092".into());
    let children = build::children(&p, &ready_facts());
    assert!(children.topics.is_empty());
    assert_eq!(
        children.config_map.unwrap().data.unwrap()["KAFKA_BROKERS"],
        "broker-0:9092,broker-1:9092"
    );
}

#[test]
fn external_supplier_deploys_no_simulator() {
    let mut p = sample();
    p.spec.supplier.simulator = None;
    p.spec.supplier.url = Some("wss://feed.example/ws".into());
    let children = build::children(&p, &ready_facts());
    assert!(children
        .deployments
        .iter()
        .all(|d| d.metadata.name.as_deref() != Some("demo-simulator")));
    assert_eq!(children.services.len(), 1);
    let data = children.config_map.unwrap().data.unwrap();
    assert_eq!(data["SUPPLIER_URL"], "wss://feed.example/ws");
    assert!(!data.contains_key("SIM_RATE"));
}

#[test]
fn extra_env_wins_over_the_operators() {
    let mut p = sample();
    p.spec.odds_service.workload.pod_overrides.env = vec![EnvVar {
        name: "LISTEN_ADDR".into(),
        value: Some("0.0.0.0:8081".into()),
        ..EnvVar::default()
    }];
    let children = build::children(&p, &ready_facts());
    let listen: Vec<_> = env(deployment(&children, "demo-odds-service"))
        .into_iter()
        .filter(|e| e.name == "LISTEN_ADDR")
        .collect();
    assert_eq!(listen.len(), 1);
    assert_eq!(listen[0].value.as_deref(), Some("0.0.0.0:8081"));
}

#[test]
fn read_replica_secret_reaches_only_the_odds_service() {
    let mut p = sample();
    p.spec.postgres.read_url_secret_ref = Some(odds_operator::crd::SecretKeyRef {
        name: "ro".into(),
        key: "url".into(),
    });
    let children = build::children(&p, &ready_facts());
    assert!(env(deployment(&children, "demo-odds-service"))
        .iter()
        .any(|e| e.name == "DATABASE_READ_URL"));
    assert!(!env(deployment(&children, "demo-processor"))
        .iter()
        .any(|e| e.name == "DATABASE_READ_URL"));
}

#[test]
fn config_hash_follows_config_and_secrets_not_replicas() {
    let base = build::children(&sample(), &ready_facts());
    let mut scaled = sample();
    scaled.spec.ingest.replicas = 3;
    assert_eq!(
        hash(deployment(
            &build::children(&scaled, &ready_facts()),
            "demo-ingest"
        )),
        hash(deployment(&base, "demo-ingest"))
    );
    let mut rotated = ready_facts();
    rotated
        .secret_versions
        .insert("odds-redis".into(), "99".into());
    assert_ne!(
        hash(deployment(
            &build::children(&sample(), &rotated),
            "demo-ingest"
        )),
        hash(deployment(&base, "demo-ingest"))
    );
    let mut retopic = sample();
    retopic.spec.kafka.topic.name = "odds_v2".into();
    assert_ne!(
        hash(deployment(
            &build::children(&retopic, &ready_facts()),
            "demo-ingest"
        )),
        hash(deployment(&base, "demo-ingest"))
    );
}

#[test]
fn workloads_wait_for_topic_and_migration() {
    let mut facts = ready_facts();
    facts.topics_ready = false;
    facts.migration = MigrationState::Pending;
    let children = build::children(&sample(), &facts);
    assert_eq!(children.deployments.len(), 1, "only the simulator");
    assert!(children
        .blocked
        .contains(&(Component::Processor, "WaitingForTopic")));
    facts.topics_ready = true;
    let children = build::children(&sample(), &facts);
    assert_eq!(
        children.blocked,
        vec![
            (Component::Processor, "WaitingForMigration"),
            (Component::OddsService, "WaitingForMigration")
        ]
    );
    facts.migration = MigrationState::Failed("boom".into());
    assert_eq!(build::children(&sample(), &facts).blocked.len(), 2);
}

#[test]
fn disabled_budget_and_optional_ingress() {
    let mut p = sample();
    p.spec.processor.pod_disruption_budget = PdbSpec {
        enabled: false,
        max_unavailable: 1,
    };
    p.spec.odds_service.ingress = Some(IngressSpec {
        host: "odds.local".into(),
        class_name: Some("nginx".into()),
    });
    let children = build::children(&p, &ready_facts());
    let names: Vec<_> = children
        .pdbs
        .iter()
        .map(|b| b.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["demo-simulator", "demo-ingest", "demo-odds-service"]
    );
    let ingress = children.ingress.unwrap().spec.unwrap();
    assert_eq!(ingress.ingress_class_name.as_deref(), Some("nginx"));
    assert_eq!(
        ingress.rules.unwrap()[0].host.as_deref(),
        Some("odds.local")
    );
}

#[test]
fn migration_job_name_tracks_image_and_job_template() {
    let a = job::name(&sample());
    let mut p = sample();
    p.spec.processor.replicas = 4;
    p.spec.ingest.replicas = 2;
    assert_eq!(job::name(&p), a, "workload settings do not re-migrate");
    p.spec.image.tag = "v2".into();
    assert_ne!(job::name(&p), a, "a new image migrates");
    let mut moved = sample();
    moved.spec.postgres.url_secret_ref.name = "other-db".into();
    assert_ne!(
        job::name(&moved),
        a,
        "a Job template change is a new Job (templates are immutable)"
    );
    assert!(a.starts_with("demo-migrate-") && a.len() <= 63);
}

#[test]
fn secret_changes_map_to_the_pipelines_using_them() {
    let mut other = sample();
    other.metadata.name = Some("other".into());
    other.spec.redis.url_secret_ref.name = "other-redis".into();
    let mut elsewhere = sample();
    elsewhere.metadata.namespace = Some("prod".into());
    let pipelines = [sample(), other, elsewhere];
    let names = |ns: &str, secret: &str| -> Vec<String> {
        observe::pipelines_using_secret(pipelines.iter(), Some(ns), secret)
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(names("default", "odds-postgres"), ["demo", "other"]);
    assert_eq!(names("default", "odds-redis"), ["demo"]);
    assert_eq!(names("default", "other-redis"), ["other"]);
    assert_eq!(names("prod", "odds-redis"), ["demo"]);
    assert!(names("default", "unrelated").is_empty());
}

#[test]
fn label_values_stay_valid_for_odd_tags() {
    let mut p = sample();
    p.spec.image.tag = "1.2.3+build/7".into();
    let children = build::children(&p, &ready_facts());
    let labels = children.config_map.unwrap().metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/version"], "1.2.3_build_7");
}

#[test]
fn validation_reports_every_problem() {
    let mut p = sample();
    p.spec.kafka.bootstrap_servers = Some("x:9092".into());
    p.spec.processor.replicas = 9;
    p.spec.kafka.topic.partitions = 4;
    let mut facts = ready_facts();
    facts.existing_partitions = Some(6);
    let problems = validate(&p.spec, &facts).unwrap_err().problems;
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("exactly one of kafka.clusterRef"));
    assert!(problems[1].contains("may not shrink (topic has 6, spec asks 4)"));
    assert!(problems[2].contains("processor replicas (9) exceed"));
    assert!(validate(&sample().spec, &ready_facts()).is_ok());
}

#[test]
fn processor_autoscaling_gets_its_own_hpa_and_no_replicas() {
    let mut p = sample();
    p.spec.processor.autoscaling = Some(odds_operator::crd::AutoscalingSpec {
        min_replicas: 2,
        max_replicas: 6,
        target_cpu_utilization: 80,
    });
    let children = build::children(&p, &ready_facts());
    let targets: Vec<_> = children
        .hpas
        .iter()
        .map(|h| h.spec.as_ref().unwrap().scale_target_ref.name.clone())
        .collect();
    assert_eq!(targets, ["demo-processor", "demo-odds-service"]);
    assert_eq!(
        deployment(&children, "demo-processor")
            .spec
            .as_ref()
            .unwrap()
            .replicas,
        None
    );
    assert_eq!(
        deployment(&children, "demo-ingest")
            .spec
            .as_ref()
            .unwrap()
            .replicas,
        Some(1)
    );
    p.spec.processor.autoscaling.as_mut().unwrap().max_replicas = 7;
    let problems = validate(&p.spec, &ready_facts()).unwrap_err().problems;
    assert!(
        problems[0].contains("processor replicas (7) exceed"),
        "{problems:?}"
    );
}
