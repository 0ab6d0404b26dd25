//! Reconcile against an in-memory Kubernetes API: a pipeline rolling out, step by step.
//! State-based: the tests assert which objects exist and what they contain.

use crate::fixtures::{assert_contains, container, image, job_container, pod, sample, DEPLOYMENTS};
use crate::harness::harness;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Probe, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use odds_operator::build::KafkaTopic;
use serde_json::json;

#[tokio::test]
async fn create_builds_owned_labelled_children() {
    let h = harness(sample(), true).await;
    h.roll_out().await;

    let cm = h.api::<ConfigMap>().get("demo-config").await.unwrap();
    let data = cm.data.clone().unwrap();
    assert_eq!(data["KAFKA_BROKERS"], "odds-kafka-bootstrap:9093");
    assert_eq!(data["SUPPLIER_URL"], "ws://demo-simulator:8090/ws");
    assert!(
        data.values().all(|v| !v.contains("odds:odds@")),
        "no secret in the ConfigMap"
    );

    let topic = h
        .api::<KafkaTopic>()
        .get("demo-odds-updates")
        .await
        .unwrap();
    assert_eq!(topic.labels()["strimzi.io/cluster"], "odds");
    assert_eq!(topic.spec.partitions, Some(6));
    assert_eq!(topic.spec.config["retention.ms"], json!("604800000"));
    assert!(h.get::<KafkaTopic>("demo-odds-updates-dlq").await.is_some());

    for name in DEPLOYMENTS {
        let d = h.deployment(name).await.expect(name);
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("OddsPipeline", "demo", "0c6f-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(d.labels()["app.kubernetes.io/managed-by"], "odds-operator");
        assert_eq!(d.labels()["app.kubernetes.io/instance"], "demo");
        let c = container(&d);
        assert_eq!(c.image.as_deref(), Some("odds-pipeline:dev"));
        let path = |probe: &Option<Probe>| probe.as_ref()?.http_get.as_ref()?.path.clone();
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.read_only_root_filesystem,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(
            pod(&d).security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
    }
    let processor = h.deployment("demo-processor").await.unwrap();
    let env = crate::fixtures::env(&processor);
    let db = env.iter().find(|e| e.name == "DATABASE_URL").unwrap();
    let from = db
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("odds-postgres", "url")
    );
    assert!(db.value.is_none());

    let svc = h.api::<Service>().get("demo-odds-service").await.unwrap();
    let ports: Vec<i32> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 9000]);
    assert!(h
        .get::<PodDisruptionBudget>("demo-processor")
        .await
        .is_some());
    let events = h.events().await;
    assert!(
        events.iter().any(|(t, r, n)| t == "Normal"
            && r == "Created"
            && n == "Created Deployment demo-processor"),
        "{events:?}"
    );
    let job = h.api::<Job>().get(&h.job_name().await).await.unwrap();
    assert_eq!(
        job_container(&job).command,
        Some(vec!["odds-processor".to_string(), "migrate".to_string()])
    );
}

#[tokio::test]
async fn topic_not_ready_holds_the_workloads_back() {
    let h = harness(sample(), true).await;
    h.reconcile().await;
    h.migration_done().await;
    h.reconcile().await;
    assert!(
        h.deployment("demo-simulator").await.is_some(),
        "the simulator needs no topic"
    );
    for name in ["demo-ingest", "demo-processor", "demo-odds-service"] {
        assert!(
            h.deployment(name).await.is_none(),
            "{name} must wait for the topic"
        );
    }
    assert_eq!(h.condition("TopicReady").await.status, "False");
    assert_eq!(h.condition("Ready").await.status, "False");
    let progressing = h.condition("Progressing").await;
    assert_eq!(progressing.status, "True");
    assert_contains(&progressing.message, "ingest WaitingForTopic");
}

#[tokio::test]
async fn failed_migration_is_degraded_with_the_jobs_message() {
    let h = harness(sample(), true).await;
    h.reconcile_into_a_failed_migration().await;
    h.assert_degraded("MigrationFailed", "backoff limit").await;
    assert_eq!(h.condition("Migrated").await.status, "False");
    assert!(
        h.deployment("demo-ingest").await.is_some(),
        "ingest needs no schema"
    );
    assert!(h.deployment("demo-processor").await.is_none());
    assert!(h.deployment("demo-odds-service").await.is_none());
}

#[tokio::test]
async fn ready_deployments_make_the_pipeline_ready() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let pipeline = h.pipeline().await;
    let status = pipeline.status.clone().unwrap();
    let ready = h.condition("Ready").await;
    assert_eq!(ready.status, "True", "{ready:?}");
    assert_eq!(ready.observed_generation, pipeline.metadata.generation);
    assert_eq!(status.observed_generation, pipeline.metadata.generation);
    assert_eq!(status.processor.unwrap().summary, "2/2");
    assert_eq!(
        status.web_socket_url.as_deref(),
        Some("ws://demo-odds-service.default.svc:8080/ws/odds")
    );
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert_eq!(h.condition("Progressing").await.status, "False");
}

#[tokio::test]
async fn new_image_waits_for_its_migration() {
    let h = harness(sample(), true).await;
    let old_job = h.rolled_out_then_new_image("v2").await;
    let new_job = h.job_name().await;
    assert_ne!(new_job, old_job);
    assert!(h.get::<Job>(&new_job).await.is_some());
    assert_eq!(
        image(&h.deployment("demo-processor").await.unwrap()),
        "odds-pipeline:dev",
        "old image keeps running"
    );
    assert_eq!(
        image(&h.deployment("demo-ingest").await.unwrap()),
        "odds-pipeline:v2"
    );
    h.migration_done().await;
    h.reconcile().await;
    assert_eq!(
        image(&h.deployment("demo-processor").await.unwrap()),
        "odds-pipeline:v2"
    );
    assert_eq!(
        image(&h.deployment("demo-odds-service").await.unwrap()),
        "odds-pipeline:v2"
    );
}
