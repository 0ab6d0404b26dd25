//! Reconcile against an in-memory Kubernetes API: changes, steady state, bad specs, pause.
//! State-based: the tests assert which objects exist and what they contain.

use crate::fixtures::{hash, image, replicas, sample, PipelineExt, NS};
use crate::harness::{harness, Harness};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use serde_json::json;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn unchanged_pipeline_writes_no_status_and_changes_no_child() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let before_status = h.pipeline().await.status;
    let before = h.deployment("demo-processor").await.unwrap().spec;
    let writes = h.status_writes.load(Ordering::SeqCst);
    // The harness's clock moves on with every reconcile: a recomputed lastTransitionTime
    // would differ.
    h.reconcile().await;
    h.reconcile().await;
    assert_eq!(
        h.status_writes.load(Ordering::SeqCst),
        writes,
        "steady state must not write status"
    );
    assert_eq!(h.pipeline().await.status, before_status);
    assert_eq!(h.deployment("demo-processor").await.unwrap().spec, before);
    let events = h.events().await;
    assert!(
        !events.iter().any(|(_, reason, _)| reason == "Updated"),
        "steady state changes no child: {events:?}"
    );
}

#[tokio::test]
async fn spec_change_updates_children_and_rolls_pods() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let old_hash = hash(&h.deployment("demo-ingest").await.unwrap());
    h.change(
        json!({"spec": {"supplier": {"simulator": {"rate": 50}}, "processor": {"replicas": 3}}}),
    )
    .await;
    let cm = h.api::<ConfigMap>().get("demo-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["SIM_RATE"], "50");
    let ingest = h.deployment("demo-ingest").await.unwrap();
    assert_ne!(hash(&ingest), old_hash, "config change must roll the pods");
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(3)
    );
    let events = h.events().await;
    for note in [
        "Updated ConfigMap demo-config",
        "Updated Deployment demo-processor",
    ] {
        assert!(
            events.iter().any(|(_, r, n)| r == "Updated" && n == note),
            "{note}: {events:?}"
        );
    }
    let pipeline = h.pipeline().await;
    assert_eq!(
        h.condition("Ready").await.observed_generation,
        pipeline.metadata.generation
    );
}

async fn hashes(h: &Harness) -> (String, String) {
    (
        hash(&h.deployment("demo-ingest").await.unwrap()),
        hash(&h.deployment("demo-processor").await.unwrap()),
    )
}

#[tokio::test]
async fn a_changed_secret_value_rolls_the_pods_that_read_it_and_nothing_else_does() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let (ingest, processor) = hashes(&h).await;
    h.change_secret(
        "odds-postgres",
        json!({"metadata": {"labels": {"team": "odds"}}}),
    )
    .await;
    assert_eq!(
        hashes(&h).await,
        (ingest.clone(), processor.clone()),
        "metadata rolls nothing"
    );
    h.change_secret(
        "odds-postgres",
        json!({"data": {"url": "cG9zdGdyZXM6Ly9uZXc="}}),
    )
    .await;
    let (ingest_after, processor_after) = hashes(&h).await;
    assert_ne!(
        processor_after, processor,
        "the processor reads the database URL"
    );
    assert_eq!(ingest_after, ingest, "ingest reads no Secret");
}

#[tokio::test]
async fn autoscaled_odds_service_is_applied_without_replicas() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let applied = h.applied("Deployment/demo-odds-service");
    assert!(!applied.is_empty());
    assert!(
        applied
            .iter()
            .all(|body| body["spec"].get("replicas").is_none()),
        "the HPA owns replicas"
    );
    assert!(h
        .applied("Deployment/demo-ingest")
        .iter()
        .all(|body| body["spec"]["replicas"] == json!(1)));
    let hpa = h
        .api::<HorizontalPodAutoscaler>()
        .get("demo-odds-service")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 5));
    assert_eq!(hpa.scale_target_ref.name, "demo-odds-service");
}

#[tokio::test]
async fn processor_replicas_above_partitions_are_rejected_with_a_condition() {
    let mut pipeline = sample();
    pipeline.spec.processor.replicas = 10;
    let h = harness(pipeline, true).await;
    h.reconcile().await;
    h.assert_degraded(
        "InvalidSpec",
        "processor replicas (10) exceed kafka.topic.partitions (6)",
    )
    .await;
    assert!(
        h.get::<ConfigMap>("demo-config").await.is_none(),
        "nothing applied"
    );
    assert!(h.applies.lock().unwrap().is_empty());
    let events: Api<k8s_openapi::api::events::v1::Event> = h.api();
    let events = events.list(&Default::default()).await.unwrap().items;
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .expect("InvalidSpec event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning
        .note
        .as_deref()
        .unwrap_or("")
        .contains("exceed kafka.topic.partitions"));
    // Reconciling the same bad spec again neither errors nor rewrites the status.
    let writes = h.status_writes.load(Ordering::SeqCst);
    h.reconcile().await;
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes);
}

#[tokio::test]
async fn missing_secret_is_degraded() {
    let h = harness(sample(), false).await;
    h.reconcile().await;
    h.assert_degraded(
        "InvalidSpec",
        "missing Secret(s): odds-postgres, odds-redis",
    )
    .await;
}

#[tokio::test]
async fn paused_pipeline_changes_nothing() {
    for annotation in [false, true] {
        let h = harness(sample(), true).await;
        h.roll_out().await;
        let before = h.deployment("demo-ingest").await.unwrap().spec;
        let applies = h.applies.lock().unwrap().len();
        let patch = if annotation {
            json!({"metadata": {"annotations": {"odds-pipeline.github.io/pause-reconciliation": "true"}}, "spec": {"image": {"tag": "v9"}}})
        } else {
            json!({"spec": {"paused": true, "image": {"tag": "v9"}}})
        };
        h.change(patch).await;
        assert_eq!(
            h.applies.lock().unwrap().len(),
            applies,
            "no child applied while paused"
        );
        assert_eq!(h.deployment("demo-ingest").await.unwrap().spec, before);
        h.assert_condition("ReconciliationPaused", "True", "Paused")
            .await;
        // Unpausing applies what changed meanwhile.
        let unpause = if annotation {
            json!({"metadata": {"annotations": {"odds-pipeline.github.io/pause-reconciliation": "false"}}})
        } else {
            json!({"spec": {"paused": false}})
        };
        h.change(unpause).await;
        assert_eq!(
            image(&h.deployment("demo-ingest").await.unwrap()),
            "odds-pipeline:v9"
        );
        assert_eq!(h.condition("ReconciliationPaused").await.status, "False");
    }
}

#[tokio::test]
async fn children_no_longer_wanted_are_pruned() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    h.change(json!({"spec": {
        "supplier": {"simulator": null, "url": "wss://feed.example/ws"},
        "oddsService": {"autoscaling": null, "replicas": 2}
    }}))
    .await;
    assert!(h.deployment("demo-simulator").await.is_none());
    assert!(h.get::<Service>("demo-simulator").await.is_none());
    assert!(h
        .get::<PodDisruptionBudget>("demo-simulator")
        .await
        .is_none());
    assert!(h
        .get::<HorizontalPodAutoscaler>("demo-odds-service")
        .await
        .is_none());
    assert!(
        h.deployment("demo-odds-service").await.is_some(),
        "wanted children stay"
    );
    let events = h.events().await;
    assert!(
        events.iter().any(|(_, r, n)| r == "Deleted"
            && n == "Deleted Deployment demo-simulator: no longer in the spec"),
        "{events:?}"
    );
}

#[tokio::test]
async fn old_migration_job_goes_once_the_new_one_succeeded() {
    let h = harness(sample(), true).await;
    let old = h.rolled_out_then_new_image("v2").await;
    assert!(
        h.get::<Job>(&old).await.is_some(),
        "kept while the new one runs"
    );
    assert!(
        h.deployment("demo-processor").await.is_some(),
        "held-back workloads are never pruned"
    );
    h.migration_done().await;
    h.reconcile().await;
    assert!(h.get::<Job>(&old).await.is_none());
    let new = h.job_name().await;
    assert!(h.get::<Job>(&new).await.is_some());
}

#[tokio::test]
async fn objects_of_others_are_never_pruned() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    // Same labels, but not controlled by this pipeline (e.g. copied by hand).
    let mut stranger = h.deployment("demo-ingest").await.unwrap();
    stranger.metadata = kube::api::ObjectMeta {
        name: Some("demo-copy".into()),
        namespace: Some(NS.into()),
        labels: stranger.metadata.labels.clone(),
        ..Default::default()
    };
    stranger.status = None;
    h.api::<Deployment>()
        .create(&Default::default(), &stranger)
        .await
        .unwrap();
    h.reconcile().await;
    assert!(h.deployment("demo-copy").await.is_some());
}

#[tokio::test]
async fn a_pipeline_being_deleted_is_left_to_garbage_collection() {
    let mut pipeline = sample();
    pipeline.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    pipeline.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    let h = harness(pipeline, true).await;
    h.reconcile().await;
    assert!(
        h.applies.lock().unwrap().is_empty(),
        "nothing re-created during deletion"
    );
    assert_eq!(h.status_writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_pipeline_created_paused_applies_nothing() {
    let h = harness(sample().paused(), true).await;
    h.reconcile().await;
    assert!(h.applies.lock().unwrap().is_empty());
    assert_eq!(h.condition("ReconciliationPaused").await.status, "True");
}

#[tokio::test]
async fn turning_network_policies_off_deletes_them_and_on_brings_them_back() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let h = crate::harness::harness(crate::fixtures::sample(), true).await;
    h.roll_out().await;
    let listed = |h: &crate::harness::Harness| {
        let api = h.api::<NetworkPolicy>();
        async move { api.list(&Default::default()).await.unwrap().items.len() }
    };
    assert_eq!(listed(&h).await, 5);
    h.change(serde_json::json!({"spec": {"networkPolicy": {"enabled": false}}}))
        .await;
    assert_eq!(listed(&h).await, 0, "{:?}", h.events().await);
    h.change(serde_json::json!({"spec": {"networkPolicy": {"enabled": true}}}))
        .await;
    assert_eq!(listed(&h).await, 5);
}
