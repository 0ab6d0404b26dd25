//! The operator and the workloads agree on configuration: every env var the operator sets for
//! a component is one that component's binary reads (its clap `env = "..."`, or the shared
//! `OpsArgs`), and the migration Job runs a subcommand the processor has.
//!
//! The workloads' config modules are read as text: the operator cannot link the workload
//! binaries, and a renamed env var must fail here rather than in a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use odds_operator::build::{self, Component, Facts, MigrationState};
use odds_operator::crd::OddsPipeline;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn declared_env(crate_dir: &str) -> BTreeSet<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workloads");
    let mut names = BTreeSet::new();
    for path in [
        root.join(crate_dir).join("src/config.rs"),
        root.join("runtime/src/ops.rs"),
    ] {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for part in text.split("env = \"").skip(1) {
            names.insert(part.split('"').next().unwrap().to_string());
        }
    }
    names
}

fn sample() -> OddsPipeline {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/oddspipeline.yaml");
    let mut pipeline: OddsPipeline =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    pipeline.spec.postgres.read_url_secret_ref = Some(odds_operator::crd::SecretKeyRef {
        name: "ro".into(),
        key: "url".into(),
    });
    pipeline
}

fn crate_dir(component: Component) -> &'static str {
    match component {
        Component::Simulator => "supplier-simulator",
        Component::Ingest => "odds-ingest",
        Component::Processor => "odds-processor",
        Component::OddsService => "odds-service",
    }
}

/// The ConfigMap keys each component is meant to read (the rest are for its siblings).
fn config_keys(component: Component) -> &'static [&'static str] {
    match component {
        Component::Simulator => &[
            "SIM_EVENTS",
            "SIM_RATE",
            "SIM_SEED",
            "HTTP_ADDR",
            "LOG_FORMAT",
        ],
        Component::Ingest => &[
            "SUPPLIER_URL",
            "KAFKA_BROKERS",
            "KAFKA_TOPIC",
            "KAFKA_DLQ_TOPIC",
            "HTTP_ADDR",
            "LOG_FORMAT",
        ],
        Component::Processor => &[
            "KAFKA_BROKERS",
            "KAFKA_TOPIC",
            "KAFKA_DLQ_TOPIC",
            "KAFKA_GROUP",
            "HTTP_ADDR",
            "LOG_FORMAT",
        ],
        Component::OddsService => &["HTTP_ADDR", "LOG_FORMAT"],
    }
}

#[test]
fn every_env_the_operator_sets_is_read_by_its_workload() {
    let facts = Facts {
        topics_ready: true,
        migration: MigrationState::Succeeded,
        ..Facts::default()
    };
    let children = build::children(&sample(), &facts);
    let config: BTreeSet<String> = children
        .config_map
        .unwrap()
        .data
        .unwrap()
        .into_keys()
        .collect();
    let mut meant_for_someone = BTreeSet::new();
    for component in build::deployment::components(&sample()) {
        let declared = declared_env(crate_dir(component));
        let deployment = children
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(&component.name(&sample())))
            .unwrap();
        let container = &deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(container.command.as_ref().unwrap()[0], component.binary());
        for env in container.env.iter().flatten() {
            assert!(
                declared.contains(&env.name),
                "{} does not read {} (reads {declared:?})",
                component.binary(),
                env.name
            );
        }
        for key in config_keys(component) {
            assert!(config.contains(*key), "the ConfigMap lacks {key}");
            assert!(
                declared.contains(*key),
                "{} does not read {key}",
                component.binary()
            );
            meant_for_someone.insert(key.to_string());
        }
    }
    assert_eq!(
        meant_for_someone, config,
        "every ConfigMap key is meant for some workload"
    );
}

#[test]
fn the_migration_job_runs_the_processors_migrate_subcommand() {
    let job = build::job::build(&sample());
    let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container.command.clone().unwrap(),
        ["odds-processor", "migrate"]
    );
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../workloads/odds-processor/src/config.rs"
    ))
    .unwrap();
    assert!(
        config.contains("\"migrate\"") || config.contains("Migrate("),
        "odds-processor has no `migrate` subcommand"
    );
    let env: Vec<_> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(env, ["DATABASE_URL"]);
    assert!(declared_env("odds-processor").contains("DATABASE_URL"));
}
