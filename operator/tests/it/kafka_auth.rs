//! Secured Kafka: with `kafka.authentication` the operator builds one Strimzi KafkaUser per
//! pipeline (ACLs on exactly its topic, DLQ and group), hands ingest and the processor the
//! credentials Strimzi makes, gives KEDA's lag trigger a TriggerAuthentication for the same
//! user, and holds the two Kafka clients back until the user is Ready. The objects are checked
//! against Strimzi 1.2's and KEDA 2.20.2's CRDs, and the client settings against librdkafka
//! itself: the properties the pods end up with must make a client librdkafka accepts.

use crate::fixtures::{cpu_request, env, ready_facts, sample, valid, vendored_crd_schema};
use crate::fixtures::{PipelineExt, KEDA, NS, STRIMZI};
use crate::harness::{harness, Harness};
use crate::keda_schema::problems;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use odds_operator::build::{self, kafkauser, Component, KafkaUser, MigrationState};
use odds_operator::crd::{
    AutoscalingSpec, KafkaAuthentication, KafkaAuthenticationType, OddsPipeline, ScalingMode,
};
use odds_runtime::kafka::KafkaArgs;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn secured(type_: KafkaAuthenticationType, tls: bool) -> impl FnOnce(&mut OddsPipeline) {
    move |p| {
        p.spec.kafka.authentication = Some(KafkaAuthentication {
            type_,
            port: if tls { 9093 } else { 9094 },
            tls,
        })
    }
}

/// The three ways to log in: SCRAM over TLS (the sample), SCRAM over plain TCP, mutual TLS.
fn variants() -> Vec<(&'static str, OddsPipeline)> {
    vec![
        ("scram-sha-512, tls", sample()),
        (
            "scram-sha-512, plain",
            sample().edit(secured(KafkaAuthenticationType::ScramSha512, false)),
        ),
        (
            "tls",
            sample().edit(secured(KafkaAuthenticationType::Tls, true)),
        ),
    ]
}

fn strimzi_user_schema() -> Value {
    vendored_crd_schema(&STRIMZI, "044-Crd-kafkauser.yaml")
}

fn keda_auth_schema() -> Value {
    vendored_crd_schema(&KEDA, "keda.sh_triggerauthentications.yaml")
}

fn schema_problems(schema: &Value, object: &impl serde::Serialize) -> Vec<String> {
    let mut value = serde_json::to_value(object).unwrap();
    value.as_object_mut().unwrap().remove("metadata");
    let mut out = Vec::new();
    problems(schema, &value, "", &mut out);
    out
}

#[test]
fn the_sample_logs_in_with_scram_on_the_tls_listener() {
    let children = build::children(&valid(&sample()), &MigrationState::Succeeded);
    let user = children.kafka_user.expect("a KafkaUser");
    assert_eq!(user.metadata.name.as_deref(), Some("demo-kafka-client"));
    assert_eq!(user.labels()["strimzi.io/cluster"], "odds");
    assert_eq!(user.spec.authentication.type_, "scram-sha-512");
    let data = children.config_map.unwrap().data.unwrap();
    assert_eq!(data["KAFKA_BROKERS"], "odds-kafka-bootstrap:9093");
    assert_eq!(data["KAFKA_PROP_SECURITY_PROTOCOL"], "SASL_SSL");
    assert_eq!(data["KAFKA_PROP_SASL_MECHANISM"], "SCRAM-SHA-512");
    assert_eq!(data["KAFKA_PROP_SASL_USERNAME"], "demo-kafka-client");
}

#[test]
fn the_kafka_user_may_touch_only_its_pipelines_topic_dlq_and_group() {
    let pipeline = sample().edit(|p| p.spec.kafka.consumer_group = Some("odds-demo".into()));
    let user = build::children(&valid(&pipeline), &MigrationState::Succeeded)
        .kafka_user
        .unwrap();
    assert_eq!(user.spec.authorization.type_, "simple");
    let acls: Vec<(String, String, String, Vec<String>)> = user
        .spec
        .authorization
        .acls
        .iter()
        .map(|a| {
            (
                a.type_.clone(),
                a.resource.type_.clone(),
                format!("{}:{}", a.resource.pattern_type, a.resource.name),
                a.operations.clone(),
            )
        })
        .collect();
    let ops = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        acls,
        [
            (
                "allow".into(),
                "topic".into(),
                "literal:odds_updates".into(),
                ops(&["Describe", "Read", "Write"])
            ),
            (
                "allow".into(),
                "topic".into(),
                "literal:odds_updates_dlq".into(),
                ops(&["Describe", "Write"])
            ),
            (
                "allow".into(),
                "group".into(),
                "literal:odds-demo".into(),
                ops(&["Describe", "Read"])
            ),
        ]
    );
}

#[test]
fn every_built_kafka_user_is_valid_against_strimzis_crd() {
    let schema = strimzi_user_schema();
    for (name, pipeline) in variants() {
        let user = build::children(&valid(&pipeline), &MigrationState::Succeeded)
            .kafka_user
            .unwrap();
        let problems = schema_problems(&schema, &user);
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
    // Not vacuous: an operation Strimzi does not know is refused.
    let mut user = build::children(&valid(&sample()), &MigrationState::Succeeded)
        .kafka_user
        .unwrap();
    user.spec.authorization.acls[0]
        .operations
        .push("Own".into());
    assert!(!schema_problems(&schema, &user).is_empty());
}

/// A pipeline in lag mode with KEDA: the trigger logs in through a TriggerAuthentication.
fn lag_scaled(pipeline: OddsPipeline) -> OddsPipeline {
    pipeline.edit(|p| {
        p.spec.processor.autoscaling = Some(AutoscalingSpec {
            mode: ScalingMode::Lag,
            min_replicas: 1,
            max_replicas: 6,
            ..crate::fixtures::autoscaling_defaults()
        });
        p.spec.processor.resources = Some(cpu_request("100m"));
    })
}

fn keda_children(pipeline: &OddsPipeline) -> build::Children {
    let facts = build::Facts {
        keda_installed: true,
        ..ready_facts()
    };
    let valid = odds_operator::validate::validate(pipeline, &facts).unwrap();
    build::children(&valid, &MigrationState::Succeeded)
}

#[test]
fn the_lag_trigger_logs_in_as_the_pipelines_kafka_user() {
    let schema = keda_auth_schema();
    for (name, pipeline) in variants() {
        let children = keda_children(&lag_scaled(pipeline));
        let auth = children
            .trigger_authentication
            .expect("a TriggerAuthentication");
        let problems = schema_problems(&schema, &auth);
        assert!(problems.is_empty(), "{name}: {problems:?}");
        let trigger = &children.scaled_objects[0].spec.triggers[0];
        assert_eq!(
            trigger.authentication_ref.as_ref().map(|r| r.name.as_str()),
            auth.metadata.name.as_deref(),
            "{name}"
        );
        assert!(
            trigger.metadata["bootstrapServers"]
                .starts_with("odds-kafka-bootstrap.default.svc:909"),
            "{name}: {:?}",
            trigger.metadata
        );
        // Every parameter comes from a key that exists: Strimzi's Secrets, or the ConfigMap.
        let config = children.config_map.as_ref().unwrap().data.clone().unwrap();
        let params: Vec<&str> = auth
            .spec
            .secret_target_ref
            .iter()
            .chain(&auth.spec.config_map_target_ref)
            .map(|t| t.parameter.as_str())
            .collect();
        for target in &auth.spec.config_map_target_ref {
            assert!(config.contains_key(&target.key), "{name}: {target:?}");
        }
        for target in &auth.spec.secret_target_ref {
            let known = strimzi_secrets(&target.name);
            assert!(known.contains_key(&target.key), "{name}: {target:?}");
        }
        match trigger.metadata["sasl"].as_str() {
            "scram_sha512" => {
                assert!(params.contains(&"username") && params.contains(&"password"))
            }
            "none" => assert!(params.contains(&"cert") && params.contains(&"key")),
            other => panic!("{name}: sasl {other}"),
        }
        assert_eq!(
            params.contains(&"ca"),
            trigger.metadata["tls"] == "enable",
            "{name}: the CA comes with TLS"
        );
    }
    // Without authentication neither the TriggerAuthentication nor a reference to one.
    let plain = keda_children(&lag_scaled(
        sample().edit(|p| p.spec.kafka.authentication = None),
    ));
    assert!(plain.trigger_authentication.is_none());
    assert!(plain.scaled_objects[0].spec.triggers[0]
        .authentication_ref
        .is_none());
}

/// A self-signed certificate and its key (PEM), made by the `openssl` command.
fn certificate() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=demo-kafka-client", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command (make deps installs it)");
    assert!(status.success());
    (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

/// The keys of the Secrets Strimzi makes, by Secret name (values are placeholders).
fn strimzi_secrets(name: &str) -> BTreeMap<String, String> {
    let keys: &[&str] = match name {
        "demo-kafka-client" => &[
            "password",
            "sasl.jaas.config",
            "ca.crt",
            "user.crt",
            "user.key",
            "user.p12",
            "user.password",
        ],
        "odds-cluster-ca-cert" => &["ca.crt", "ca.p12", "ca.password"],
        _ => &[],
    };
    keys.iter()
        .map(|k| (k.to_string(), String::new()))
        .collect()
}

/// The environment a kubelet gives `component`'s container: the ConfigMap's data, then the
/// container's env with each `secretKeyRef` resolved from `secrets`.
fn pod_environment(
    children: &build::Children,
    component: Component,
    secrets: &BTreeMap<(String, String), String>,
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = children
        .config_map
        .as_ref()
        .unwrap()
        .data
        .clone()
        .unwrap()
        .into_iter()
        .collect();
    let deployment = children
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(&component.name_in("demo")))
        .unwrap();
    let container = crate::fixtures::container(deployment);
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => {
                let r = from.secret_key_ref.as_ref().unwrap();
                secrets
                    .get(&(r.name.clone(), r.key.clone()))
                    .unwrap_or_else(|| {
                        panic!("{component:?} reads {}/{}, no such key", r.name, r.key)
                    })
                    .clone()
            }
            _ => String::new(),
        };
        vars.push((var.name.clone(), value));
    }
    vars
}

/// The librdkafka client properties `component` builds from its environment, as the stage
/// does at start-up.
fn client_properties(vars: &[(String, String)]) -> Vec<(String, String)> {
    let brokers = &vars.iter().find(|(k, _)| k == "KAFKA_BROKERS").unwrap().1;
    KafkaArgs::new(brokers).client_properties_with_env(&[], vars.iter().cloned())
}

fn librdkafka_accepts(props: &[(String, String)]) -> Result<(), String> {
    let mut config = rdkafka::ClientConfig::new();
    for (key, value) in props {
        config.set(key, value);
    }
    // Creating the client builds its TLS context and checks the SASL mechanism, without a
    // broker to talk to.
    config
        .create::<rdkafka::producer::BaseProducer>()
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn librdkafka_accepts_the_login_ingest_and_the_processor_are_given() {
    let (cert, key) = certificate();
    let secrets: BTreeMap<(String, String), String> = [
        ("demo-kafka-client", "password", "p4ss"),
        ("demo-kafka-client", "user.crt", cert.as_str()),
        ("demo-kafka-client", "user.key", key.as_str()),
        ("odds-cluster-ca-cert", "ca.crt", cert.as_str()),
        ("odds-postgres", "url", "postgres://odds@postgres/odds"),
        ("odds-redis", "url", "redis://redis:6379"),
    ]
    .into_iter()
    .map(|(s, k, v)| ((s.to_string(), k.to_string()), v.to_string()))
    .collect();
    for (name, pipeline) in variants() {
        let children = build::children(&valid(&pipeline), &MigrationState::Succeeded);
        for component in [Component::Ingest, Component::Processor] {
            let props = client_properties(&pod_environment(&children, component, &secrets));
            let get = |key: &str| {
                props
                    .iter()
                    .rev()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
            };
            let protocol = get("security.protocol").unwrap_or("plaintext");
            assert_ne!(protocol, "plaintext", "{name}, {component:?}: {props:?}");
            if name.starts_with("scram") {
                assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
                assert_eq!(get("sasl.username"), Some("demo-kafka-client"));
                assert_eq!(get("sasl.password"), Some("p4ss"));
            } else {
                assert_eq!(get("ssl.certificate.pem"), Some(cert.as_str()));
            }
            if let Err(error) = librdkafka_accepts(&props) {
                panic!("{name}, {component:?}: librdkafka refuses {props:?}: {error}");
            }
        }
    }
    // Not vacuous: a client key that is not the certificate's is refused at creation.
    let (_, other_key) = certificate();
    let mut wrong = secrets.clone();
    wrong.insert(("demo-kafka-client".into(), "user.key".into()), other_key);
    let (_, mtls) = variants().remove(2);
    let children = build::children(&valid(&mtls), &MigrationState::Succeeded);
    let props = client_properties(&pod_environment(&children, Component::Ingest, &wrong));
    assert!(
        librdkafka_accepts(&props).is_err(),
        "a mismatched key passed"
    );
}

#[test]
fn only_the_kafka_clients_read_the_credentials_and_reach_the_secured_port() {
    let children = build::children(&valid(&sample()), &MigrationState::Succeeded);
    let reads = |component: Component| -> Vec<String> {
        let d: &Deployment = children
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(&component.name_in("demo")))
            .unwrap();
        env(d)
            .iter()
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|r| format!("{}/{}", r.name, r.key))
            .collect()
    };
    for component in [Component::Ingest, Component::Processor] {
        let secrets = reads(component);
        assert!(
            secrets.contains(&"demo-kafka-client/password".to_string()),
            "{secrets:?}"
        );
        assert!(
            secrets.contains(&"odds-cluster-ca-cert/ca.crt".to_string()),
            "{secrets:?}"
        );
    }
    for component in [Component::Simulator, Component::OddsService] {
        assert!(
            reads(component).iter().all(|r| !r.contains("kafka")),
            "{component:?}"
        );
    }
    let kafka_ports: Vec<Value> = children
        .network_policies
        .iter()
        .flat_map(|p| p.spec.as_ref().unwrap().egress.clone().unwrap_or_default())
        .filter(|rule| {
            serde_json::to_string(&rule.to)
                .unwrap()
                .contains("strimzi.io/cluster")
        })
        .flat_map(|rule| rule.ports.unwrap_or_default())
        .map(|port| serde_json::to_value(port.port).unwrap())
        .collect();
    assert!(!kafka_ports.is_empty());
    assert!(
        kafka_ports.iter().all(|p| *p == json!(9093)),
        "{kafka_ports:?}"
    );
}

async fn held_back(h: &Harness) -> Vec<(String, String)> {
    h.pipeline()
        .await
        .status
        .unwrap_or_default()
        .held_back
        .into_iter()
        .map(|h| (h.component, h.reason))
        .collect()
}

async fn topics_only_ready(h: &Harness) {
    for name in ["demo-odds-updates", "demo-odds-updates-dlq"] {
        h.patch_status::<odds_operator::build::KafkaTopic>(
            name,
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        )
        .await;
    }
}

#[tokio::test]
async fn kafka_clients_wait_for_their_kafka_user_then_start_with_its_credentials() {
    let h = harness(sample(), true).await;
    h.reconcile().await;
    let user: KafkaUser = h.api::<KafkaUser>().get("demo-kafka-client").await.unwrap();
    assert_eq!(user.owner_references()[0].kind, "OddsPipeline");
    topics_only_ready(&h).await;
    h.migration_done().await;
    h.reconcile().await;
    let waiting = held_back(&h).await;
    for component in ["ingest", "processor"] {
        assert!(
            waiting.contains(&(component.into(), "WaitingForKafkaUser".into())),
            "{waiting:?}"
        );
        assert!(h.deployment(&format!("demo-{component}")).await.is_none());
    }
    assert!(h.deployment("demo-odds-service").await.is_some());
    assert!(h.deployment("demo-simulator").await.is_some());

    h.kafka_user_ready().await;
    h.reconcile().await;
    assert!(held_back(&h).await.is_empty(), "{:?}", held_back(&h).await);
    for component in ["ingest", "processor"] {
        assert!(h.deployment(&format!("demo-{component}")).await.is_some());
    }
}

#[tokio::test]
async fn a_ready_kafka_user_without_its_secret_still_holds_the_clients_back() {
    let h = harness(sample(), true).await;
    h.delete::<Secret>("demo-kafka-client").await;
    h.reconcile().await;
    h.topics_ready().await;
    h.migration_done().await;
    h.reconcile().await;
    assert!(held_back(&h)
        .await
        .contains(&("ingest".into(), "WaitingForKafkaUser".into())));
    // Strimzi's user operator writes the Secret: the watch reconciles, and they start.
    let mut secret = crate::harness::secret_with("demo-kafka-client", &[("password", "s")]);
    secret.metadata.namespace = Some(NS.into());
    h.api::<Secret>()
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    h.reconcile().await;
    assert!(held_back(&h).await.is_empty());
}

#[tokio::test]
async fn a_rotated_password_rolls_exactly_the_kafka_clients() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let hash = |d: Option<Deployment>| {
        d.unwrap()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[build::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let before: BTreeMap<&str, String> = {
        let mut m = BTreeMap::new();
        for c in ["demo-ingest", "demo-processor", "demo-odds-service"] {
            m.insert(c, hash(h.deployment(c).await));
        }
        m
    };
    h.api::<Secret>()
        .patch(
            "demo-kafka-client",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"password": ByteString(b"rotated".to_vec())}})),
        )
        .await
        .unwrap();
    h.reconcile().await;
    for c in ["demo-ingest", "demo-processor"] {
        assert_ne!(hash(h.deployment(c).await), before[c], "{c} did not roll");
    }
    assert_eq!(
        hash(h.deployment("demo-odds-service").await),
        before["demo-odds-service"]
    );
}

#[tokio::test]
async fn turning_authentication_off_deletes_the_kafka_user_and_the_login() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    h.change(json!({"spec": {"kafka": {"authentication": null}}}))
        .await;
    assert!(h
        .get::<KafkaUser>(&kafkauser::name_in("demo"))
        .await
        .is_none());
    // What the operator applies now (server-side apply removes what it applied before and
    // leaves out; the in-memory API keeps map keys, so the apply bodies are checked).
    let config = h.applied("ConfigMap/demo-config").pop().unwrap();
    let data = config["data"].as_object().unwrap();
    assert_eq!(data["KAFKA_BROKERS"], "odds-kafka-bootstrap:9092");
    assert!(
        !data.keys().any(|k| k.starts_with("KAFKA_PROP_")),
        "{data:?}"
    );
    let ingest = h.applied("Deployment/demo-ingest").pop().unwrap();
    let env = &ingest["spec"]["template"]["spec"]["containers"][0]["env"];
    let names: Vec<&str> = env
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("KAFKA_PROP_")),
        "{names:?}"
    );
}
