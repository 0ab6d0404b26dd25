//! The operator and the workloads agree on configuration. Env names are the constants of
//! `odds_contracts::env`, which the workloads' clap configs read too, so a rename is one edit
//! the compiler follows; what remains to check is that each component gets the variables
//! meant for it and nothing the workloads do not know.

use crate::fixtures::{container, job_container, sample, valid, PipelineExt};
use odds_contracts::env;
use odds_operator::build::{self, kafkauser, Component, MigrationState};
use std::collections::BTreeSet;

/// Every variable the operator may set, by the contract's constants.
fn known() -> BTreeSet<&'static str> {
    BTreeSet::from([
        env::HTTP_ADDR,
        env::LOG_FORMAT,
        env::LISTEN_ADDR,
        env::KAFKA_BROKERS,
        env::KAFKA_TOPIC,
        env::KAFKA_DLQ_TOPIC,
        env::KAFKA_GROUP,
        env::SUPPLIER_URL,
        env::SIM_EVENTS,
        env::SIM_RATE,
        env::SIM_SEED,
        env::DATABASE_URL,
        env::DATABASE_READ_URL,
        env::REDIS_URL,
        // librdkafka properties (`KAFKA_PROP_X_Y` → `x.y`, the runtime's rule) of the Kafka login.
        kafkauser::SECURITY_PROTOCOL_ENV,
        kafkauser::SASL_MECHANISM_ENV,
        kafkauser::SASL_USERNAME_ENV,
        kafkauser::SASL_PASSWORD_ENV,
        kafkauser::SSL_CA_PEM_ENV,
        kafkauser::SSL_CERTIFICATE_PEM_ENV,
        kafkauser::SSL_KEY_PEM_ENV,
    ])
}

/// The ConfigMap keys each component is meant to read (every pod loads all of them).
fn config_keys(component: Component) -> &'static [&'static str] {
    match component {
        Component::Simulator => &[
            env::SIM_EVENTS,
            env::SIM_RATE,
            env::SIM_SEED,
            env::HTTP_ADDR,
            env::LOG_FORMAT,
        ],
        Component::Ingest => &[
            env::SUPPLIER_URL,
            env::KAFKA_BROKERS,
            env::KAFKA_TOPIC,
            env::KAFKA_DLQ_TOPIC,
            env::HTTP_ADDR,
            env::LOG_FORMAT,
            kafkauser::SECURITY_PROTOCOL_ENV,
            kafkauser::SASL_MECHANISM_ENV,
            kafkauser::SASL_USERNAME_ENV,
        ],
        Component::Processor => &[
            env::KAFKA_BROKERS,
            env::KAFKA_TOPIC,
            env::KAFKA_DLQ_TOPIC,
            env::KAFKA_GROUP,
            env::HTTP_ADDR,
            env::LOG_FORMAT,
            kafkauser::SECURITY_PROTOCOL_ENV,
            kafkauser::SASL_MECHANISM_ENV,
            kafkauser::SASL_USERNAME_ENV,
        ],
        Component::OddsService => &[env::HTTP_ADDR, env::LOG_FORMAT],
    }
}

#[test]
fn every_config_map_key_is_meant_for_some_workload() {
    let pipeline = valid(&sample());
    let children = build::children(&pipeline, &MigrationState::Succeeded);
    let config: BTreeSet<String> = children
        .config_map
        .unwrap()
        .data
        .unwrap()
        .into_keys()
        .collect();
    let meant: BTreeSet<String> = pipeline
        .components()
        .into_iter()
        .flat_map(|c| config_keys(c).iter().map(|k| k.to_string()))
        .collect();
    assert_eq!(meant, config);
}

#[test]
fn every_env_the_operator_sets_is_a_contract_variable() {
    let pipeline = valid(&sample().read_replica("ro"));
    let children = build::children(&pipeline, &MigrationState::Succeeded);
    let config = children.config_map.unwrap().data.unwrap();
    for key in config.keys() {
        assert!(known().contains(key.as_str()), "ConfigMap key {key}");
    }
    let mut secrets_by_component = Vec::new();
    for deployment in &children.deployments {
        let c = container(deployment);
        for var in c.env.iter().flatten() {
            assert!(
                known().contains(var.name.as_str()),
                "{}: {}",
                c.name,
                var.name
            );
        }
        let secret_vars: Vec<_> = c
            .env
            .iter()
            .flatten()
            .filter(|v| v.value_from.is_some())
            .map(|v| v.name.clone())
            .collect();
        secrets_by_component.push((c.name.clone(), secret_vars));
    }
    let (sasl_password, ca) = (kafkauser::SASL_PASSWORD_ENV, kafkauser::SSL_CA_PEM_ENV);
    let (database, redis) = (env::DATABASE_URL, env::REDIS_URL);
    let expected = [
        ("simulator", vec![]),
        ("ingest", vec![sasl_password, ca]),
        ("processor", vec![database, redis, sasl_password, ca]),
        (
            "odds-service",
            vec![database, redis, env::DATABASE_READ_URL],
        ),
    ]
    .map(|(component, vars)| {
        let vars = vars.into_iter().map(str::to_string).collect::<Vec<_>>();
        (component.to_string(), vars)
    });
    assert_eq!(
        secrets_by_component, expected,
        "credentials reach only the pods that use them"
    );
}

#[test]
fn each_component_runs_its_binary_and_the_job_runs_migrate_with_only_the_database_url() {
    let pipeline = valid(&sample());
    let children = build::children(&pipeline, &MigrationState::Succeeded);
    for (deployment, component) in children.deployments.iter().zip(pipeline.components()) {
        assert_eq!(
            container(deployment).command.as_deref(),
            Some(&[component.binary().to_string()][..])
        );
    }
    let job = build::job::build(&pipeline);
    let c = job_container(&job);
    assert_eq!(
        c.command.clone().unwrap(),
        [Component::Processor.binary(), "migrate"]
    );
    let env: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env, [env::DATABASE_URL]);
}

#[test]
fn the_crd_bounds_the_simulator_where_its_flags_do() {
    use clap::Parser;
    use supplier_simulator::SimulatorConfig;
    let max = odds_operator::crd::MAX_SIMULATOR_VALUE;
    for flag in ["--events", "--rate"] {
        let parse = |value: i32| {
            SimulatorConfig::try_parse_from(["supplier-simulator", flag, &value.to_string()])
        };
        assert!(parse(max).is_ok(), "{flag} {max}: {:?}", parse(max).err());
        let refused = parse(max + 1).unwrap_err();
        assert_eq!(
            refused.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{flag}"
        );
        assert!(parse(1).is_ok() && parse(0).is_err(), "{flag}");
    }
}
