//! The pure builders: validated spec + facts → child objects, checked without any API.
//!
//! `golden/sample-children.yaml` is every child of the sample CR; regenerate it with
//! `UPDATE_GOLDEN=1 cargo test -p odds-operator builders` after an intended change and
//! review the diff.

use crate::fixtures::{
    assert_golden, container, egress_ports, env, env_var, hash, ready_facts, replicas, sample,
    valid, PipelineExt, DEPLOYMENTS,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use odds_operator::build::{self, job, Children, Component, MigrationState};
use odds_operator::crd::{IngressSpec, OddsPipeline, PdbSpec, Reason};
use odds_operator::observe;
use odds_operator::validate::validate;

fn children(p: &OddsPipeline) -> Children {
    build::children(&valid(p), &MigrationState::Succeeded)
}

fn deployment<'a>(children: &'a Children, name: &str) -> &'a Deployment {
    children
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .expect(name)
}

/// Ready facts in which the URL in Secret `secret` names port `port`.
fn ready_facts_with_url_port(secret: &str, port: u16) -> build::Facts {
    let mut facts = ready_facts();
    let url_port = std::collections::BTreeMap::from([("url".to_string(), port)]);
    facts.ports.insert(secret.into(), url_port);
    facts
}

/// The names of `objects`, in order.
fn names<'a, K: ResourceExt + 'a>(objects: impl IntoIterator<Item = &'a K>) -> Vec<String> {
    objects.into_iter().map(ResourceExt::name_any).collect()
}

fn ingest_hash(p: &OddsPipeline, facts: &build::Facts) -> String {
    let children = build::children(&validate(p, facts).unwrap(), &MigrationState::Succeeded);
    hash(deployment(&children, "demo-ingest"))
}

#[test]
fn sample_children_match_the_golden_file() {
    let children = children(&sample());
    let docs = children.objects().unwrap();
    let rendered: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    assert_golden("sample-children.yaml", &rendered, "children");
    assert!(children.blocked.is_empty());
}

#[test]
fn external_kafka_needs_no_topics_and_uses_the_given_brokers() {
    let children = children(&sample().external_kafka("broker-0:9092,broker-1:9092"));
    assert!(children.topics.is_empty());
    assert_eq!(
        children.config_map.unwrap().data.unwrap()["KAFKA_BROKERS"],
        "broker-0:9092,broker-1:9092"
    );
}

#[test]
fn external_supplier_deploys_no_simulator() {
    let children = children(&sample().external_supplier("wss://feed.example/ws"));
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
fn extra_env_replaces_the_operators_in_place_and_appends_the_rest_in_order() {
    let p = sample()
        .with_env(Component::OddsService, "RUST_LOG", "debug")
        .with_env(Component::OddsService, "LISTEN_ADDR", "0.0.0.0:8081")
        .with_env(Component::OddsService, "A_FIRST", "1");
    let names: Vec<String> = env(deployment(&children(&p), "demo-odds-service"))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            "LISTEN_ADDR",
            "DATABASE_URL",
            "REDIS_URL",
            "RUST_LOG",
            "A_FIRST"
        ],
        "ours keep their place, the user's follow in their order"
    );
    let listen: Vec<_> = env(deployment(&children(&p), "demo-odds-service"))
        .into_iter()
        .filter(|e| e.name == "LISTEN_ADDR")
        .collect();
    assert_eq!(listen.len(), 1);
    assert_eq!(listen[0].value.as_deref(), Some("0.0.0.0:8081"));
    // The same input always gives the same list (no map ordering, no dedup by hash).
    assert_eq!(
        env(deployment(&children(&p), "demo-odds-service")),
        env(deployment(&children(&p), "demo-odds-service"))
    );
}

#[test]
fn merge_keeps_the_last_of_a_repeated_user_name() {
    let merged = build::deployment::merge_env(
        vec![env_var("A", "ours")],
        &[env_var("B", "1"), env_var("A", "theirs"), env_var("B", "2")],
    );
    assert_eq!(merged, [env_var("A", "theirs"), env_var("B", "2")]);
}

#[test]
fn read_replica_secret_reaches_only_the_odds_service() {
    let children = children(&sample().read_replica("ro"));
    assert!(env(deployment(&children, "demo-odds-service"))
        .iter()
        .any(|e| e.name == "DATABASE_READ_URL"));
    assert!(!env(deployment(&children, "demo-processor"))
        .iter()
        .any(|e| e.name == "DATABASE_READ_URL"));
}

#[test]
fn config_hash_follows_config_and_read_secret_values_only() {
    let facts = ready_facts();
    let base = ingest_hash(&sample(), &facts);
    assert_eq!(
        ingest_hash(&sample().replicas(Component::Ingest, 3), &facts),
        base,
        "replicas do not roll pods"
    );
    let mut retopic = sample();
    retopic.spec.kafka.topic.name = "odds_v2".into();
    assert_ne!(ingest_hash(&retopic, &facts), base, "config rolls pods");

    // A rotated Redis URL rolls the pods that read it, not ingest (which reads no Secret).
    // Ready facts, with the digest of key `key` of Secret `odds-redis` set to `digest`.
    let redis_key = |key: &str, digest: &str| {
        let mut facts = ready_facts();
        let redis = facts.secrets.get_mut("odds-redis").unwrap();
        redis.insert(key.into(), digest.into());
        facts
    };
    let rotated = redis_key("url", "99");
    assert_eq!(ingest_hash(&sample(), &rotated), base);
    let processor_hash = |facts: &build::Facts| {
        let c = build::children(
            &validate(&sample(), facts).unwrap(),
            &MigrationState::Succeeded,
        );
        hash(deployment(&c, "demo-processor"))
    };
    assert_ne!(processor_hash(&rotated), processor_hash(&facts));
    // Another key of the same Secret (or its labels) is not read by any pod.
    let other_key = redis_key("password", "x");
    assert_eq!(processor_hash(&other_key), processor_hash(&facts));
}

#[test]
fn workloads_wait_for_topic_and_migration() {
    let mut facts = ready_facts();
    facts.topics_ready = false;
    let pending = validate(&sample(), &facts).unwrap();
    let children = build::children(&pending, &MigrationState::Pending);
    assert_eq!(children.deployments.len(), 1, "only the simulator");
    assert!(children
        .blocked
        .contains(&(Component::Processor, Reason::WaitingForTopic)));
    let children = build::children(&valid(&sample()), &MigrationState::Pending);
    assert_eq!(
        children.blocked,
        vec![
            (Component::Processor, Reason::WaitingForMigration),
            (Component::OddsService, Reason::WaitingForMigration)
        ]
    );
    let failed = MigrationState::Failed("boom".into());
    assert_eq!(build::children(&valid(&sample()), &failed).blocked.len(), 2);
}

#[test]
fn disabled_budget_and_optional_ingress() {
    let p = sample().edit(|p| {
        p.spec.processor.pod_disruption_budget = PdbSpec {
            enabled: false,
            max_unavailable: 1,
        };
        p.spec.odds_service.ingress = Some(IngressSpec {
            host: "odds.local".into(),
            class_name: Some("nginx".into()),
        });
    });
    let children = children(&p);
    let names = names(&children.pdbs);
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
fn migration_job_name_tracks_image_job_template_and_retry() {
    let name = |p: OddsPipeline| job::name(&valid(&p));
    let a = name(sample());
    assert_eq!(
        name(
            sample()
                .replicas(Component::Processor, 4)
                .replicas(Component::Ingest, 2)
        ),
        a,
        "workload settings do not re-migrate"
    );
    assert_ne!(name(sample().image_tag("v2")), a, "a new image migrates");
    let moved = sample().edit(|p| p.spec.postgres.url_secret_ref.name = "odds-redis".into());
    assert_ne!(
        name(moved),
        a,
        "a Job template change is a new Job (templates are immutable)"
    );
    let retried = |value: &str| {
        sample().edit(|p| {
            p.metadata.annotations = Some(
                [(
                    odds_operator::validate::RETRY_MIGRATION_ANNOTATION.to_string(),
                    value.to_string(),
                )]
                .into(),
            )
        })
    };
    assert_ne!(name(retried("1")), a, "a retry is a new Job");
    assert_ne!(
        name(retried("2")),
        name(retried("1")),
        "each retry is a new Job"
    );
    assert!(a.starts_with("demo-migrate-") && a.len() <= 63);
    let longest = "a".repeat(odds_operator::validate::MAX_NAME_LENGTH);
    assert_eq!(name(sample().named(&longest)).len(), 63);
}

/// A migration that needs longer gets it from the spec, and raising the deadline after a Job
/// ran out of time starts a new Job; pipelines that keep the default keep their Job names.
#[test]
fn the_migration_deadline_comes_from_the_spec_and_a_new_one_is_a_new_job() {
    let name = |pipeline: odds_operator::crd::OddsPipeline| job::name(&valid(&pipeline));
    let default_name = name(sample());
    let explicit_default = sample().edit(|p| {
        p.spec.postgres.migration_deadline_seconds =
            odds_operator::crd::DEFAULT_MIGRATION_DEADLINE_SECONDS
    });
    assert_eq!(name(explicit_default), default_name);
    let longer = sample().edit(|p| p.spec.postgres.migration_deadline_seconds = 4 * 3600);
    let built = job::build(&valid(&longer));
    assert_eq!(
        built.spec.as_ref().unwrap().active_deadline_seconds,
        Some(4 * 3600)
    );
    assert_ne!(name(longer), default_name, "a raised deadline is a new Job");
    // The CRD's minimum, repeated for objects that reached the operator unchecked.
    let too_short = sample().edit(|p| p.spec.postgres.migration_deadline_seconds = 5);
    let problems = validate(&too_short, &ready_facts()).unwrap_err().problems;
    assert_eq!(
        problems,
        vec!["postgres.migrationDeadlineSeconds must be at least 60".to_owned()]
    );
}

/// A migration that hangs (a lock it waits on, a server that does not answer) is failed by
/// Kubernetes at the Job's deadline, and the pipeline reports why.
#[test]
fn a_migration_past_its_deadline_is_reported_failed() {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    let mut built = job::build(&valid(&sample()));
    let spec = built.spec.as_ref().unwrap();
    assert_eq!(
        spec.active_deadline_seconds,
        Some(odds_operator::crd::DEFAULT_MIGRATION_DEADLINE_SECONDS)
    );
    built.status = Some(JobStatus {
        conditions: Some(vec![JobCondition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: Some("DeadlineExceeded".into()),
            message: Some("Job was active longer than specified deadline".into()),
            ..JobCondition::default()
        }]),
        ..JobStatus::default()
    });
    assert_eq!(
        job::state(&built),
        MigrationState::Failed("Job was active longer than specified deadline".into())
    );
}

#[test]
fn secret_changes_map_to_the_pipelines_using_them() {
    let other = sample()
        .named("other")
        .edit(|p| p.spec.redis.url_secret_ref.name = "other-redis".into());
    let pipelines = [sample(), other, sample().in_namespace("prod")];
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
    let children = children(&sample().image_tag("1.2.3+build/7"));
    let labels = children.config_map.unwrap().metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/version"], "1.2.3_build_7");
}

#[test]
fn validation_reports_every_problem() {
    let p = sample().replicas(Component::Processor, 9).edit(|p| {
        p.spec.kafka.bootstrap_servers = Some("x:9092".into());
        p.spec.kafka.topic.partitions = 4;
    });
    let problems = validate(&p, &ready_facts()).unwrap_err().problems;
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("exactly one of kafka.clusterRef"));
    assert!(problems[1].contains("may not shrink (topic has 6, spec asks 4)"));
    assert!(problems[2].contains("processor replicas (9) exceed"));
    assert!(validate(&sample(), &ready_facts()).is_ok());
}

#[test]
fn validation_rejects_what_would_fail_later() {
    let problems = |p: OddsPipeline| {
        validate(&p, &ready_facts())
            .unwrap_err()
            .problems
            .join("; ")
    };
    for bad in ["demo.v2", "1demo", "Demo", "demo-", &"a".repeat(45)] {
        assert!(
            problems(sample().named(bad)).contains("metadata.name"),
            "{bad}"
        );
    }
    let collision = sample().edit(|p| p.spec.kafka.dlq_topic.name = "Odds.Updates".into());
    assert!(problems(collision).contains("would be one KafkaTopic"));
    // KafkaTopic names must be DNS-1123 subdomains: the CRD's CEL rule, again.
    let trailing = sample().edit(|p| p.spec.kafka.topic.name = "odds_updates_".into());
    assert!(
        problems(trailing).contains(
            "kafka.topic.name \"odds_updates_\" gives the KafkaTopic name \"demo-odds-updates-\" (18 characters), which is not a DNS-1123 subdomain"
    ));
    let long = sample().edit(|p| p.spec.kafka.dlq_topic.name = "d".repeat(249));
    let too_long = problems(long.clone());
    assert!(
        too_long.contains("kafka.dlqTopic.name \"ddd") && too_long.contains("(254 characters)"),
        "{too_long}"
    );
    let fits = sample().edit(|p| p.spec.kafka.dlq_topic.name = "d".repeat(248));
    assert!(validate(&fits, &ready_facts()).is_ok());
    // Without clusterRef there is no KafkaTopic to name.
    let external = long.external_kafka("kafka:9092");
    assert!(validate(&external, &ready_facts()).is_ok());
    for (events, rate) in [(1_000_001, 10), (4, 1_000_001), (0, 10), (4, 0)] {
        let sim = sample().edit(|p| {
            let sim = p.spec.supplier.simulator.as_mut().unwrap();
            sim.events = events;
            sim.rate = rate;
        });
        let problems = problems(sim);
        assert!(
            problems.contains("must be 1 to 1000000, what the simulator accepts"),
            "{events} {rate}: {problems}"
        );
    }
    let most = sample().edit(|p| {
        let sim = p.spec.supplier.simulator.as_mut().unwrap();
        sim.events = 1_000_000;
        sim.rate = 1_000_000;
    });
    assert!(validate(&most, &ready_facts()).is_ok());
    let no_cpu = sample().edit(|p| p.spec.odds_service.workload.resources = None);
    assert!(problems(no_cpu).contains("oddsService.resources.requests.cpu"));
    let twice = sample()
        .with_env(Component::Ingest, "RUST_LOG", "info")
        .with_env(Component::Ingest, "RUST_LOG", "debug");
    assert!(problems(twice).contains("ingest.podOverrides.env sets RUST_LOG more than once"));
    let mut facts = ready_facts();
    facts.secrets.remove("odds-redis");
    facts.secrets.get_mut("odds-postgres").unwrap().clear();
    let missing = validate(&sample(), &facts).unwrap_err().problems.join("; ");
    assert!(
        missing.contains("missing Secret(s): odds-redis"),
        "{missing}"
    );
    assert!(
        missing.contains("Secret odds-postgres has no key url"),
        "{missing}"
    );
}

#[test]
fn processor_autoscaling_gets_its_own_hpa_and_no_replicas() {
    let p = sample().with_autoscaling(Component::Processor);
    let children = children(&p);
    let targets: Vec<_> = children
        .hpas
        .iter()
        .map(|h| h.spec.as_ref().unwrap().scale_target_ref.name.clone())
        .collect();
    assert_eq!(targets, ["demo-processor", "demo-odds-service"]);
    assert_eq!(replicas(deployment(&children, "demo-processor")), None);
    assert_eq!(replicas(deployment(&children, "demo-ingest")), Some(1));
    assert!(container(deployment(&children, "demo-processor"))
        .resources
        .is_some());
    let too_many = p.edit(|p| p.spec.processor.autoscaling.as_mut().unwrap().max_replicas = 7);
    let problems = validate(&too_many, &ready_facts()).unwrap_err().problems;
    assert!(
        problems[0].contains("processor replicas (7) exceed"),
        "{problems:?}"
    );
}

#[test]
fn network_policies_confine_every_workload_and_the_migration_job_unless_turned_off() {
    let children = children(&sample());
    let names = names(&children.network_policies);
    assert_eq!(names, [&DEPLOYMENTS[..], &["demo-migration"]].concat());
    for policy in &children.network_policies {
        let spec = policy.spec.as_ref().unwrap();
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string(), "Egress".to_string()][..]),
            "both directions are restricted"
        );
    }
    let off = sample().edit(|p| p.spec.network_policy.enabled = false);
    assert!(build::children(&valid(&off), &MigrationState::Succeeded)
        .network_policies
        .is_empty());
}

#[test]
fn network_policies_open_the_ports_of_the_urls_in_the_secrets() {
    let facts = ready_facts_with_url_port("odds-redis", 6390);
    let children = build::children(
        &validate(&sample(), &facts).unwrap(),
        &MigrationState::Succeeded,
    );
    let processor = children
        .network_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("demo-processor"))
        .unwrap();
    let egress = serde_json::to_value(&processor.spec.as_ref().unwrap().egress).unwrap();
    let ports: Vec<u64> = egress
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap().clone())
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert!(ports.contains(&6390) && !ports.contains(&6379), "{ports:?}");
    // 9093: the sample's secured Kafka listener.
    assert!(ports.contains(&5432) && ports.contains(&9093), "{ports:?}");
}

#[test]
fn url_host_and_port_with_credentials_defaults_and_ipv6() {
    use odds_operator::observe::url_host_port;
    assert_eq!(
        url_host_port("postgres://odds:p%40ss@postgres:5433/odds?sslmode=disable"),
        Some(("postgres", 5433))
    );
    assert_eq!(url_host_port("redis://redis"), Some(("redis", 6379)));
    assert_eq!(
        url_host_port("wss://feed.example/ws"),
        Some(("feed.example", 443))
    );
    assert_eq!(url_host_port("redis://[::1]:6390/0"), Some(("[::1]", 6390)));
    assert_eq!(url_host_port("redis://[::1]"), Some(("[::1]", 6379)));
    assert_eq!(url_host_port("unknown://host"), None);
    assert_eq!(url_host_port("not a url"), None);
}

#[test]
fn only_the_odds_service_may_reach_the_read_replica() {
    let facts = ready_facts_with_url_port("ro", 5433);
    let read = sample().edit(|p| {
        p.spec.postgres.read_url_secret_ref = Some(odds_operator::crd::SecretKeyRef {
            name: "ro".into(),
            key: "url".into(),
        })
    });
    let children = build::children(
        &validate(&read, &facts).unwrap(),
        &MigrationState::Succeeded,
    );
    let egress_ports = |name: &str| egress_ports(&children, name);
    assert!(egress_ports("demo-odds-service").contains(&5433));
    assert!(
        !egress_ports("demo-processor").contains(&5433),
        "the processor reads no replica"
    );
    assert!(!egress_ports("demo-migration").contains(&5433));
}
