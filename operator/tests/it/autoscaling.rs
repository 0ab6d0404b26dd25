//! Scaling by what the pipeline says, against the in-memory API: lag and connections modes
//! through KEDA ScaledObjects when KEDA is installed, CPU otherwise, never both autoscalers
//! on one Deployment, and mode switches that never let `replicas` fall.

use crate::fixtures::{replicas, sample};
use crate::harness::{harness, Harness};
use crate::harness::{harness_with, harness_with_objects, Options};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use odds_operator::build::ScaledObject;
use odds_operator::crd::ComponentStatus;
use odds_operator::observe::{lag_seen_by, quantity};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

fn lag_mode() -> Value {
    json!({"spec": {"processor": {
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": {"mode": "Lag", "minReplicas": 2, "maxReplicas": 6,
                        "targetLagPerReplica": 500, "scaleDownStabilizationSeconds": 120,
                        "pollingIntervalSeconds": 10}
    }}})
}

fn cpu_mode() -> Value {
    json!({"spec": {"processor": {
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": {"mode": "Cpu", "minReplicas": 2, "maxReplicas": 6}
    }}})
}

async fn hpa(h: &Harness, name: &str) -> Option<HorizontalPodAutoscaler> {
    h.api::<HorizontalPodAutoscaler>()
        .get_opt(name)
        .await
        .unwrap()
}

async fn scaled_object(h: &Harness, name: &str) -> Option<ScaledObject> {
    h.api::<ScaledObject>().get_opt(name).await.unwrap()
}

async fn processor_status(h: &Harness) -> ComponentStatus {
    h.pipeline()
        .await
        .status
        .unwrap()
        .processor
        .expect("processor status")
}

/// A rolled-out sample whose processor then switches to `patch`'s autoscaling.
async fn rolled_out_then(h: &Harness, patch: Value) {
    h.roll_out().await;
    h.change(patch).await;
}

#[tokio::test]
async fn lag_mode_with_keda_creates_a_scaled_object_and_no_hpa() {
    let h = Harness::with_keda(sample()).await;
    rolled_out_then(&h, lag_mode()).await;
    let so = scaled_object(&h, "demo-processor")
        .await
        .expect("ScaledObject");
    assert!(
        hpa(&h, "demo-processor").await.is_none(),
        "no HPA beside it"
    );
    assert_eq!(so.spec.scale_target_ref.name, "demo-processor");
    assert_eq!(
        (
            so.spec.min_replica_count,
            so.spec.max_replica_count,
            so.spec.polling_interval
        ),
        (Some(2), Some(6), Some(10))
    );
    let trigger = &so.spec.triggers[0];
    assert_eq!(trigger.type_, "kafka");
    let metadata = &trigger.metadata;
    // KEDA runs in its own namespace: the bootstrap Service needs its namespace.
    assert_eq!(
        metadata["bootstrapServers"],
        "odds-kafka-bootstrap.default.svc:9092"
    );
    assert_eq!(metadata["consumerGroup"], "odds-processor.default.demo");
    assert_eq!(metadata["topic"], "odds_updates");
    assert_eq!(metadata["lagThreshold"], "500");
    let behavior = so
        .spec
        .advanced
        .unwrap()
        .horizontal_pod_autoscaler_config
        .unwrap();
    assert_eq!(
        behavior
            .behavior
            .unwrap()
            .scale_down
            .unwrap()
            .stabilization_window_seconds,
        Some(120)
    );
    // The consumer group in the ScaledObject is the one the processor uses.
    let cm = h
        .api::<k8s_openapi::api::core::v1::ConfigMap>()
        .get("demo-config")
        .await
        .unwrap();
    assert_eq!(
        cm.data.unwrap()["KAFKA_GROUP"],
        "odds-processor.default.demo"
    );

    let status = processor_status(&h).await;
    let scaling = status.scaling.unwrap();
    assert_eq!(
        (scaling.mode.as_str(), scaling.reason.as_str()),
        ("Lag", "AsRequested")
    );
    assert_eq!(
        status.lag.as_deref(),
        Some("unknown"),
        "no decision reported yet"
    );
    let autoscaling = h.condition("Autoscaling").await;
    assert_eq!(
        (autoscaling.status.as_str(), autoscaling.reason.as_str()),
        ("True", "AsRequested")
    );

    // Settled: another reconcile writes nothing (the lag and mode are stable).
    let writes = h.status_writes.load(Ordering::SeqCst);
    h.reconcile().await;
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes);

    // KEDA's HPA saw 1500 per replica over 4 replicas: the decision saw a lag of 6000.
    h.keda_hpa_reports("demo-processor", "1500", 4).await;
    h.reconcile().await;
    assert_eq!(processor_status(&h).await.lag.as_deref(), Some("6000"));
    assert!(
        hpa(&h, "keda-hpa-demo-processor").await.is_some(),
        "KEDA's own HPA is not the operator's to prune"
    );
}

#[tokio::test]
async fn lag_mode_without_keda_is_a_cpu_hpa_and_says_keda_not_installed() {
    let h = harness(sample(), true).await;
    rolled_out_then(&h, lag_mode()).await;
    let hpa = hpa(&h, "demo-processor").await.expect("the CPU fallback");
    let spec = hpa.spec.unwrap();
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    let autoscaling = h.condition("Autoscaling").await;
    assert_eq!(
        (autoscaling.status.as_str(), autoscaling.reason.as_str()),
        ("False", "KedaNotInstalled")
    );
    assert!(
        autoscaling.message.contains("processor"),
        "{}",
        autoscaling.message
    );
    let status = processor_status(&h).await;
    let scaling = status.scaling.unwrap();
    assert_eq!(
        (scaling.mode.as_str(), scaling.reason.as_str()),
        ("Cpu", "KedaNotInstalled")
    );
    assert_eq!(status.lag.as_deref(), Some("unknown"));
    assert!(
        !h.calls
            .lock()
            .unwrap()
            .iter()
            .any(|(_, group, _)| group == "keda.sh"),
        "without KEDA no ScaledObject is ever asked for"
    );
    // Ready does not depend on the fallback: the pipeline still works.
    h.pods_ready().await;
    h.reconcile().await;
    assert_eq!(h.condition("Ready").await.status, "True");
}

#[tokio::test]
async fn switching_modes_removes_the_other_autoscaler_first_and_never_drops_replicas() {
    let h = Harness::with_keda(sample()).await;
    h.roll_out().await;
    // Fixed (2) → CPU: the HPA takes over and scales to 4.
    h.change(cpu_mode()).await;
    assert!(hpa(&h, "demo-processor").await.is_some());
    h.hpa_scales("demo-processor", 4).await;

    // CPU → Lag: the HPA is deleted before the ScaledObject is written.
    h.calls.lock().unwrap().clear();
    h.change(lag_mode()).await;
    assert!(hpa(&h, "demo-processor").await.is_none());
    assert!(scaled_object(&h, "demo-processor").await.is_some());
    let calls = h.calls.lock().unwrap().clone();
    let position = |verb: &str, resource: &str| {
        calls
            .iter()
            .position(|(v, _, r)| v == verb && r == resource)
            .unwrap_or_else(|| panic!("{verb} {resource}: {calls:?}"))
    };
    assert!(
        position("delete", "horizontalpodautoscalers") < position("patch", "scaledobjects"),
        "{calls:?}"
    );
    let deployment = h.deployment("demo-processor").await.unwrap();
    assert_eq!(
        replicas(&deployment),
        Some(4),
        "KEDA starts from where the HPA left"
    );
    // KEDA's HPA scales through the scale subresource, as the HPA controller does.
    h.hpa_scales("demo-processor", 5).await;

    // Lag → CPU: the ScaledObject goes before the HPA comes.
    h.calls.lock().unwrap().clear();
    h.change(cpu_mode()).await;
    assert!(scaled_object(&h, "demo-processor").await.is_none());
    assert!(hpa(&h, "demo-processor").await.is_some());
    let calls = h.calls.lock().unwrap().clone();
    let delete = calls
        .iter()
        .position(|(v, _, r)| v == "delete" && r == "scaledobjects")
        .expect("ScaledObject deleted");
    let apply = calls
        .iter()
        .position(|(v, _, r)| v == "patch" && r == "horizontalpodautoscalers")
        .expect("HPA applied");
    assert!(delete < apply, "{calls:?}");
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(5)
    );

    // At no point did the Deployment fall below what it had.
    let history: Vec<Option<i32>> = h
        .replica_history
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, _)| name == "demo-processor")
        .map(|(_, r)| *r)
        .collect();
    assert!(!history.is_empty());
    assert!(
        history.iter().all(|r| r.is_some_and(|r| r >= 2)),
        "replicas of demo-processor over time: {history:?}"
    );

    // Each switch was announced.
    let modes: Vec<String> = h
        .events()
        .await
        .into_iter()
        .filter(|(_, reason, note)| reason == "ScalingModeChanged" && note.starts_with("processor"))
        .map(|(_, _, note)| note)
        .collect();
    for expected in [
        "processor scales by Cpu (was Fixed)",
        "processor scales by Lag (was Cpu)",
        "processor scales by Cpu (was Lag)",
    ] {
        assert!(
            modes.iter().any(|n| n.starts_with(expected)),
            "{expected}: {modes:?}"
        );
    }
}

#[tokio::test]
async fn turning_lag_autoscaling_off_removes_the_scaled_object_and_applies_the_spec() {
    let h = Harness::with_keda(sample()).await;
    rolled_out_then(&h, lag_mode()).await;
    h.hpa_scales("demo-processor", 5).await;
    h.change(json!({"spec": {"processor": {"autoscaling": null, "replicas": 3}}}))
        .await;
    assert!(scaled_object(&h, "demo-processor").await.is_none());
    assert!(hpa(&h, "demo-processor").await.is_none());
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(3)
    );
    let scaling = processor_status(&h).await.scaling.unwrap();
    assert_eq!(scaling.mode, "Fixed");
    // The operator caused this replica change: it says so.
    assert!(
        h.events().await.iter().any(|(_, r, n)| r == "Scaled"
            && n == "Scaled Deployment demo-processor from 5 to 3 replicas (spec)"),
        "{:?}",
        h.events().await
    );
}

#[tokio::test]
async fn a_replica_change_of_the_spec_is_an_event_and_a_steady_state_is_not() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    assert_eq!(
        h.event_count("Scaled").await,
        0,
        "creation is not a scaling"
    );
    let modes = h.event_count("ScalingModeChanged").await;
    h.reconcile().await;
    assert_eq!(
        h.event_count("ScalingModeChanged").await,
        modes,
        "no change, no event"
    );
    h.change(json!({"spec": {"processor": {"replicas": 3}}}))
        .await;
    assert!(h.events().await.iter().any(|(_, r, n)| r == "Scaled"
        && n == "Scaled Deployment demo-processor from 2 to 3 replicas (spec)"));
    h.reconcile().await;
    assert_eq!(h.event_count("Scaled").await, 1);
}

#[tokio::test]
async fn connections_mode_scales_on_prometheus_when_an_address_is_given_and_cpu_otherwise() {
    let connections = |address: Option<&str>| {
        let mut scaling = json!({"mode": "Connections", "minReplicas": 2, "maxReplicas": 8,
                                 "targetConnectionsPerReplica": 4000});
        // `null` removes the field in a merge patch.
        scaling["prometheusAddress"] = json!(address);
        json!({"spec": {"oddsService": {"autoscaling": scaling}}})
    };
    let h = Harness::with_keda(sample()).await;
    rolled_out_then(
        &h,
        connections(Some("http://prometheus.monitoring.svc:9090")),
    )
    .await;
    let so = scaled_object(&h, "demo-odds-service")
        .await
        .expect("ScaledObject");
    assert!(hpa(&h, "demo-odds-service").await.is_none());
    let trigger = &so.spec.triggers[0];
    assert_eq!(trigger.type_, "prometheus");
    assert_eq!(
        trigger.metadata["serverAddress"],
        "http://prometheus.monitoring.svc:9090"
    );
    assert_eq!(trigger.metadata["threshold"], "4000");
    // The gauge odds-service exports, by the chart's PodMonitor labels.
    assert_eq!(
        trigger.metadata["query"],
        r#"sum(odds_ws_connections{namespace="default",pipeline="demo",component="odds-service"})"#
    );
    let scaling = h
        .pipeline()
        .await
        .status
        .unwrap()
        .odds_service
        .unwrap()
        .scaling
        .unwrap();
    assert_eq!(
        (scaling.mode.as_str(), scaling.reason.as_str()),
        ("Connections", "AsRequested")
    );

    // Without an address: CPU, and the condition says why.
    h.change(connections(None)).await;
    assert!(scaled_object(&h, "demo-odds-service").await.is_none());
    assert!(hpa(&h, "demo-odds-service").await.is_some());
    let autoscaling = h.condition("Autoscaling").await;
    assert_eq!(
        (autoscaling.status.as_str(), autoscaling.reason.as_str()),
        ("False", "NoPrometheusAddress")
    );
}

#[tokio::test]
async fn lag_mode_is_refused_where_it_means_nothing() {
    let h = harness(sample(), true).await;
    h.change(json!({"spec": {"ingest": {
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": {"mode": "Lag", "minReplicas": 1, "maxReplicas": 2}
    }}}))
    .await;
    let degraded = h.condition("Degraded").await;
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded
            .message
            .contains("ingest.autoscaling.mode Lag is not one of Cpu"),
        "{}",
        degraded.message
    );
}

#[tokio::test]
async fn keda_uninstalled_after_start_up_is_reported_then_cpu_takes_over() {
    // Discovery saw KEDA, but the API server no longer serves ScaledObjects (404).
    let h = harness_with(
        sample(),
        Options {
            secrets: true,
            strimzi: true,
            keda: false,
        },
    )
    .await;
    h.roll_out().await;
    h.ctx.keda.store(true, Ordering::Relaxed);
    h.patch_pipeline(lag_mode()).await;
    assert!(h.try_reconcile().await.is_err());
    let degraded = h.condition("Degraded").await;
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "KedaNotInstalled")
    );
    // The controller's retry scales by CPU.
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert!(hpa(&h, "demo-processor").await.is_some());
    assert_eq!(h.condition("Autoscaling").await.reason, "KedaNotInstalled");
}

#[tokio::test]
async fn keda_is_discovered_by_its_scaled_object_resource() {
    use odds_operator::discovery::keda_installed;
    let resources = |names: &[&str]| {
        json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "keda.sh/v1alpha1",
            "resources": names.iter().map(|n| json!({
                "name": n, "singularName": "", "namespaced": true, "kind": "K", "verbs": ["get"]
            })).collect::<Vec<_>>()
        })
    };
    for (names, installed) in [
        (&["scaledjobs", "scaledobjects"][..], true),
        (&["scaledjobs"][..], false),
    ] {
        let h = harness(sample(), true).await;
        h.answer("list", "", resources(names));
        assert_eq!(keda_installed(&h.client).await.unwrap(), installed);
    }
    let h = harness(sample(), true).await;
    h.fail(
        "list",
        "",
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    assert!(!keda_installed(&h.client).await.unwrap(), "404: not served");
    let h = harness(sample(), true).await;
    h.fail("list", "", 503, "ServiceUnavailable", "try later");
    assert!(
        keda_installed(&h.client).await.is_err(),
        "a 503 is no answer"
    );
}

#[test]
fn the_lag_is_what_kedas_hpa_saw_in_total() {
    let hpa = |current: Value, replicas: i32| -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({
            "metadata": {"name": "keda-hpa-demo-processor"},
            "status": {"currentReplicas": replicas, "desiredReplicas": replicas,
                       "currentMetrics": [{"type": "External", "external": {
                           "metric": {"name": "s0-kafka-odds_updates"}, "current": current}}]}
        }))
        .unwrap()
    };
    assert_eq!(
        lag_seen_by(&hpa(json!({"averageValue": "1500m"}), 4)),
        Some(6)
    );
    assert_eq!(
        lag_seen_by(&hpa(json!({"averageValue": "2k"}), 3)),
        Some(6000)
    );
    assert_eq!(lag_seen_by(&hpa(json!({"value": "42"}), 3)), Some(42));
    assert_eq!(lag_seen_by(&hpa(json!({}), 3)), None);
    assert_eq!(quantity("250"), Some(250.0));
    assert_eq!(quantity("x"), None);
}

#[tokio::test]
async fn the_cpu_hpa_waits_until_kedas_finalizer_let_the_scaled_object_go() {
    // The processor was switched from Lag to Cpu; its ScaledObject is being deleted, but
    // KEDA's finalizer still holds it (KEDA's HPA may still scale the Deployment).
    let leaving = json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {
            "name": "demo-processor", "namespace": "default",
            "labels": {"app.kubernetes.io/managed-by": "odds-operator",
                       "app.kubernetes.io/instance": "demo"},
            "ownerReferences": [{"apiVersion": "odds-pipeline.github.io/v1alpha1",
                                 "kind": "OddsPipeline", "name": "demo", "uid": "0c6f-uid",
                                 "controller": true}],
            "finalizers": ["finalizer.keda.sh"],
            "deletionTimestamp": "2027-01-15T08:00:00Z"
        },
        "spec": {"scaleTargetRef": {"name": "demo-processor"},
                 "triggers": [{"type": "kafka", "metadata": {}}]}
    });
    let pipeline: odds_operator::crd::OddsPipeline = {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["spec"]["processor"] = cpu_mode()["spec"]["processor"].clone();
        serde_json::from_value(value).unwrap()
    };
    let options = Options {
        secrets: true,
        strimzi: true,
        keda: true,
    };
    let h = harness_with_objects(pipeline, options, vec![leaving]).await;
    h.roll_out().await;
    assert!(h.deployment("demo-processor").await.is_some());
    assert!(
        hpa(&h, "demo-processor").await.is_none(),
        "no HPA while the ScaledObject is still there"
    );
    assert!(
        !h.events()
            .await
            .iter()
            .any(|(_, r, n)| r == "Deleted" && n.contains("ScaledObject")),
        "a ScaledObject already being deleted is not deleted again"
    );
    // KEDA removed its HPA and its finalizer: the ScaledObject is gone.
    h.api::<ScaledObject>()
        .delete("demo-processor", &Default::default())
        .await
        .unwrap();
    h.reconcile().await;
    assert!(hpa(&h, "demo-processor").await.is_some());
}
