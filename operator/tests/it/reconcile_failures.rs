//! Every reconcile outcome reaches the user: a refused apply, a missing permission, a missing
//! Strimzi, an unreadable cluster and a failed migration each end in `Degraded` with their
//! own reason and the API server's message, one Warning event when it begins, and (for the
//! errors the controller retries) the error metric labelled with the failing step. Also the
//! server-side apply behaviour the harness adds: the autoscaling hand-over and env list maps.

use crate::fixtures::{assert_contains, replicas, sample, PipelineExt};
use crate::harness::{harness, harness_with, Harness, Options};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use odds_operator::build::{Component, FIELD_MANAGER};
use odds_operator::controller::Error;
use odds_operator::crd::OddsPipeline;
use odds_operator::validate::RETRY_MIGRATION_ANNOTATION;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

const WEBHOOK: &str = "admission webhook \"policy.example.com\" denied the request: images must come from registry.example.com";
const RBAC: &str = "jobs.batch \"demo-migrate-x\" is forbidden: User \"system:serviceaccount:odds-system:odds-operator\" cannot patch resource \"jobs\" in API group \"batch\" in the namespace \"default\"";

#[tokio::test]
async fn a_refused_apply_is_degraded_apply_failed_with_the_servers_message() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    h.fail("patch", "deployments", 422, "Invalid", WEBHOOK);
    h.patch_pipeline(json!({"spec": {"image": {"tag": "v2"}}}))
        .await;
    let error = h.try_reconcile().await.unwrap_err();
    assert!(matches!(error, Error::Apply(_)), "{error}");
    let degraded = h.assert_degraded("ApplyFailed", WEBHOOK).await;
    assert_contains(&degraded.message, "Deployment demo-simulator");
    assert_eq!(h.condition("Ready").await.status, "False");
    let warnings: Vec<_> = h
        .events()
        .await
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "ApplyFailed")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].2.contains(WEBHOOK));
    assert_eq!(h.errors("apply"), 1, "the failing step labels the metric");
    assert_eq!(h.errors("dereference"), 0);

    // The controller's retry hits the same refusal: no new event, no status write.
    let (events, writes) = (
        h.event_count("ApplyFailed").await,
        h.status_writes.load(Ordering::SeqCst),
    );
    assert!(h.try_reconcile().await.is_err());
    assert_eq!(h.event_count("ApplyFailed").await, events);
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes);
    assert_eq!(h.errors("apply"), 2);

    h.heal();
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").await.status, "False");
}

/// An API server that stops answering one request (kube sets no read timeout) ends the
/// reconcile at its deadline with an error the controller retries and counts; it does not
/// hold the reconcile, nor the controller's shutdown that waits for it. Time is virtual: the
/// runtime skips ahead while everything waits.
#[tokio::test(start_paused = true)]
async fn an_api_that_does_not_answer_ends_the_reconcile_at_its_deadline() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    h.hang("patch", "deployments");
    h.patch_pipeline(json!({"spec": {"image": {"tag": "v2"}}}))
        .await;
    let error = h.try_reconcile().await.unwrap_err();
    assert!(
        matches!(error, Error::TimedOut(d) if d == odds_operator::controller::RECONCILE_DEADLINE),
        "{error}"
    );
    assert_eq!(h.errors("timeout"), 1);

    h.heal();
    h.reconcile().await;
    assert_eq!(h.errors("timeout"), 1);
}

#[tokio::test]
async fn a_missing_permission_is_degraded_forbidden() {
    let h = harness(sample(), true).await;
    h.fail("patch", "jobs", 403, "Forbidden", RBAC);
    assert!(matches!(h.try_reconcile().await, Err(Error::Apply(_))));
    let degraded = h.assert_condition("Degraded", "True", "Forbidden").await;
    assert!(degraded.message.contains("cannot patch resource \"jobs\""));
    assert!(h
        .events()
        .await
        .iter()
        .any(|(t, r, n)| t == "Warning" && r == "Forbidden" && n.contains("is forbidden")));
    assert_eq!(h.errors("apply"), 1);
}

#[tokio::test]
async fn an_unreadable_cluster_is_degraded_read_failed_and_counted_as_dereference() {
    let h = harness(sample(), true).await;
    h.fail(
        "get",
        "secrets",
        500,
        "InternalError",
        "etcdserver: request timed out",
    );
    assert!(matches!(
        h.try_reconcile().await,
        Err(Error::Dereference(_))
    ));
    let degraded = h.condition("Degraded").await;
    assert_eq!(degraded.reason, "ReadFailed");
    assert!(degraded.message.contains("etcdserver: request timed out"));
    assert_eq!(h.errors("dereference"), 1);
    assert_eq!(h.errors("apply"), 0);
}

/// A cluster without Strimzi's KafkaTopic CRD.
async fn without_strimzi(pipeline: OddsPipeline) -> Harness {
    harness_with(
        pipeline,
        Options {
            strimzi: false,
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn without_strimzi_a_cluster_ref_pipeline_is_degraded_and_nothing_is_applied() {
    let h = without_strimzi(sample()).await;
    h.reconcile().await;
    let degraded = h
        .assert_condition("Degraded", "True", "StrimziNotInstalled")
        .await;
    assert!(degraded.message.contains("kafka.bootstrapServers"));
    assert!(h.applies.lock().unwrap().is_empty());
    assert!(h
        .events()
        .await
        .iter()
        .any(|(t, r, _)| t == "Warning" && r == "StrimziNotInstalled"));
    // Brokers managed elsewhere need no Strimzi.
    let h = without_strimzi(sample().external_kafka("kafka:9092")).await;
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert!(h.deployment("demo-ingest").await.is_some());
}

#[tokio::test]
async fn a_kafka_topic_crd_removed_after_start_up_is_strimzi_not_installed() {
    let h = without_strimzi(sample()).await;
    // Discovery saw Strimzi, but the API server no longer serves KafkaTopics (404).
    h.ctx.strimzi.store(true, Ordering::Relaxed);
    assert!(matches!(h.try_reconcile().await, Err(Error::Apply(_))));
    h.assert_degraded("StrimziNotInstalled", "KafkaTopic demo-odds-updates")
        .await;
}

#[tokio::test]
async fn a_failed_migration_is_reported_once_and_recovers_through_the_retry_annotation() {
    let h = harness(sample(), true).await;
    h.reconcile_into_a_failed_migration().await;
    let failed_job = h.job_name().await;
    assert_eq!(h.condition("Degraded").await.reason, "MigrationFailed");
    let (blocked, failed) = (
        h.event_count("RolloutBlocked").await,
        h.event_count("MigrationFailed").await,
    );
    assert_eq!(failed, 1);
    for _ in 0..3 {
        h.reconcile().await;
    }
    assert_eq!(
        h.event_count("RolloutBlocked").await,
        blocked,
        "a workload that stays held back is not news"
    );
    assert_eq!(h.event_count("MigrationFailed").await, failed);
    let held = h.status().await.held_back;
    assert!(held
        .iter()
        .any(|h| h.component == "processor" && h.reason == "WaitingForMigration"));

    h.change(json!({"metadata": {"annotations": {RETRY_MIGRATION_ANNOTATION: "1"}}}))
        .await;
    let retry_job = h.job_name().await;
    assert_ne!(retry_job, failed_job, "the retry is a new Job");
    assert!(h.get::<Job>(&retry_job).await.is_some());
    assert_eq!(
        h.condition("Migrated").await.reason,
        "MigrationPending",
        "the new Job's state counts, not the failed one's"
    );
    h.migration_done().await;
    h.reconcile().await;
    assert!(h.deployment("demo-processor").await.is_some());
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert!(
        h.get::<Job>(&failed_job).await.is_none(),
        "the failed Job is pruned once a newer one succeeded"
    );
}

#[tokio::test]
async fn turning_on_autoscaling_never_drops_below_the_current_replicas() {
    let h = harness(sample().replicas(Component::Processor, 4), true).await;
    h.roll_out().await;
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(4)
    );
    h.replica_history.lock().unwrap().clear();

    h.change(json!({"spec": {"processor": {
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
        "resources": {"requests": {"cpu": "100m"}}
    }}}))
    .await;
    let stored = replicas(&h.deployment("demo-processor").await.unwrap());
    let mut history = h.replicas_over_time("demo-processor");
    history.push(stored);
    assert!(
        history.iter().all(|r| r.is_some_and(|r| r >= 4)),
        "replicas over the hand-over: {history:?}"
    );
    assert!(
        h.applied("Deployment/demo-processor")
            .last()
            .is_some_and(|body| body["spec"].get("replicas").is_none()),
        "the operator no longer applies replicas"
    );

    // The HPA scales; the operator leaves its value alone from then on.
    h.hpa_scales("demo-processor", 5).await;
    h.reconcile().await;
    h.reconcile().await;
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(5)
    );

    // Autoscaling off: the spec's replicas apply again and the HPA goes.
    h.change(json!({"spec": {"processor": {"autoscaling": null, "replicas": 3}}}))
        .await;
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(3)
    );
    assert!(h
        .get::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>("demo-processor")
        .await
        .is_none());
}

/// Applies `body` to Deployment demo-ingest as the operator's field manager.
async fn apply_ingest(h: &Harness, body: &Value) -> Result<Deployment, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    h.api::<Deployment>()
        .patch("demo-ingest", &params, &Patch::Apply(body))
        .await
}

#[tokio::test]
async fn the_harness_applies_real_ssa_rules() {
    let h = harness(sample().replicas(Component::Ingest, 3), true).await;
    h.roll_out().await;
    // Dropping an owned field without a hand-over loses it, as on a real API server.
    let mut body = h.applied("Deployment/demo-ingest").last().cloned().unwrap();
    body["spec"].as_object_mut().unwrap().remove("replicas");
    apply_ingest(&h, &body).await.unwrap();
    assert_eq!(
        replicas(&h.deployment("demo-ingest").await.unwrap()),
        Some(1),
        "removed, then defaulted"
    );
    // A container env naming a variable twice is refused (list map keyed by name).
    let mut twice = h.applied("Deployment/demo-ingest").last().cloned().unwrap();
    twice["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]);
    let error = apply_ingest(&h, &twice).await.unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 422),
        "{error}"
    );
}

#[tokio::test]
async fn user_env_overriding_the_operators_applies_cleanly() {
    let pipeline = sample()
        .with_env(Component::OddsService, "LISTEN_ADDR", "0.0.0.0:8081")
        .with_env(Component::OddsService, "RUST_LOG", "debug");
    let h = harness(pipeline, true).await;
    h.roll_out().await;
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert!(h.get::<ConfigMap>("demo-config").await.is_some());
}

#[tokio::test]
async fn strimzi_is_discovered_by_its_kafka_topic_resource() {
    use odds_operator::discovery::strimzi_installed;
    let resources =
        |names: &[&str]| crate::fixtures::api_resource_list("kafka.strimzi.io/v1", names);
    type Serve<'a> = &'a dyn Fn(&crate::harness::Harness);
    let cases: [(Serve, Option<bool>); 4] = [
        (
            &|h| h.answer("list", "", resources(&["kafkas", "kafkatopics"])),
            Some(true),
        ),
        (
            &|h| h.answer("list", "", resources(&["kafkas"])),
            Some(false),
        ),
        (&|h| h.fail_not_served("list", ""), Some(false)),
        // No answer: says nothing about Strimzi.
        (
            &|h| h.fail("list", "", 503, "ServiceUnavailable", "try later"),
            None,
        ),
    ];
    for (serve, installed) in cases {
        let h = harness(sample(), true).await;
        serve(&h);
        assert_eq!(strimzi_installed(&h.client).await.ok(), installed);
    }
}
