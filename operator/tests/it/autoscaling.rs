//! Scaling by what the pipeline says, against the in-memory API: lag and connections modes
//! through KEDA ScaledObjects when KEDA is installed, CPU otherwise, never both autoscalers
//! on one Deployment, and mode switches that never let `replicas` fall.

use crate::fixtures::{assert_contains, assert_each_begins_a_line, replicas, sample};
use crate::harness::{harness, Harness};
use crate::harness::{harness_with, harness_with_objects, Options};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use odds_operator::build::{PodMonitor, ScaledObject};
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
    h.get::<HorizontalPodAutoscaler>(name).await
}

async fn scaled_object(h: &Harness, name: &str) -> Option<ScaledObject> {
    h.get::<ScaledObject>(name).await
}

async fn pod_monitor(h: &Harness, name: &str) -> Option<PodMonitor> {
    h.get::<PodMonitor>(name).await
}

/// `monitor` scrapes every pod of pipeline `demo` (and only those) on the port they serve
/// `/metrics` on, and adds the labels the connections query selects, as the chart's does.
fn assert_scrapes_the_pipeline_with_its_labels(monitor: &PodMonitor) {
    let selector = monitor.spec.selector.match_labels.clone().unwrap();
    assert_eq!(
        selector,
        [
            ("app.kubernetes.io/instance".to_string(), "demo".to_string()),
            (
                "app.kubernetes.io/name".to_string(),
                "odds-pipeline".to_string()
            ),
        ]
        .into()
    );
    let endpoint = &monitor.spec.pod_metrics_endpoints[0];
    assert_eq!(
        (endpoint.port.as_str(), endpoint.path.as_str()),
        ("metrics", "/metrics")
    );
    let relabelled: Vec<(Vec<String>, String)> = endpoint
        .relabelings
        .iter()
        .map(|r| (r.source_labels.clone(), r.target_label.clone()))
        .collect();
    assert_eq!(
        relabelled,
        [
            (
                vec!["__meta_kubernetes_pod_label_app_kubernetes_io_instance".to_string()],
                "pipeline".to_string()
            ),
            (
                vec!["__meta_kubernetes_pod_label_app_kubernetes_io_component".to_string()],
                "component".to_string()
            ),
        ]
    );
    assert_eq!(monitor.metadata.namespace.as_deref(), Some("default"));
}

async fn processor_status(h: &Harness) -> ComponentStatus {
    h.status().await.processor.expect("processor status")
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
    // The sample's listener: the secured one, which KEDA logs in to as the pipeline's user.
    assert_eq!(
        metadata["bootstrapServers"],
        "odds-kafka-bootstrap.default.svc:9093"
    );
    assert_eq!(
        (metadata["sasl"].as_str(), metadata["tls"].as_str()),
        ("scram_sha512", "enable")
    );
    assert_eq!(
        trigger.authentication_ref.as_ref().map(|r| r.name.as_str()),
        Some("demo-kafka-client")
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
    h.assert_condition("Autoscaling", "True", "AsRequested")
        .await;

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
    let autoscaling = h
        .assert_condition("Autoscaling", "False", "KedaNotInstalled")
        .await;
    assert_contains(&autoscaling.message, "processor");
    let status = processor_status(&h).await;
    let scaling = status.scaling.unwrap();
    assert_eq!(
        (scaling.mode.as_str(), scaling.reason.as_str()),
        ("Cpu", "KedaNotInstalled")
    );
    assert_eq!(status.lag.as_deref(), Some("unknown"));
    assert!(
        !h.asked_group("keda.sh"),
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

    // Lag → CPU: the ScaledObject goes before the HPA comes. KEDA's finalizer keeps it
    // until KEDA has removed its own HPA; only then is the operator's HPA applied.
    h.calls.lock().unwrap().clear();
    h.change(cpu_mode()).await;
    let leaving = scaled_object(&h, "demo-processor")
        .await
        .expect("held by KEDA");
    assert!(leaving.metadata.deletion_timestamp.is_some());
    assert!(
        hpa(&h, "demo-processor").await.is_none(),
        "not beside KEDA's"
    );
    h.keda_lets_go("demo-processor").await;
    h.reconcile().await;
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
    let history = h.replicas_over_time("demo-processor");
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
    assert_each_begins_a_line(
        &modes,
        &[
            "processor scales by Cpu (was Fixed)",
            "processor scales by Lag (was Cpu)",
            "processor scales by Cpu (was Lag)",
        ],
    );
}

#[tokio::test]
async fn turning_lag_autoscaling_off_applies_the_spec_replicas_only_once_keda_let_go() {
    let h = Harness::with_keda(sample()).await;
    rolled_out_then(&h, lag_mode()).await;
    // KEDA's HPA scaled the processor to 5.
    h.keda_hpa_reports("demo-processor", "1500", 5).await;
    h.hpa_scales("demo-processor", 5).await;
    h.replica_history.lock().unwrap().clear();
    h.change(json!({"spec": {"processor": {"autoscaling": null, "replicas": 3}}}))
        .await;

    // KEDA's finalizer holds the ScaledObject while KEDA removes its HPA, which may still
    // scale the Deployment: the spec's 3 replicas wait, nothing is written to `replicas`.
    let leaving = scaled_object(&h, "demo-processor")
        .await
        .expect("held by KEDA");
    assert!(leaving.metadata.deletion_timestamp.is_some());
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(5),
        "replicas stay where KEDA left them"
    );
    let applied = h.applied("Deployment/demo-processor");
    assert!(
        applied.last().unwrap()["spec"].get("replicas").is_none(),
        "the apply leaves replicas to KEDA: {}",
        applied.last().unwrap()["spec"]
    );
    assert_eq!(h.event_count("Scaled").await, 0);
    let scaling = processor_status(&h).await.scaling.unwrap();
    assert_eq!(scaling.mode, "Fixed");
    assert_contains(&scaling.message, "once KEDA has released the Deployment");
    // Another reconcile (a watch event) while KEDA still holds on changes nothing.
    h.reconcile().await;
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(5)
    );

    // KEDA let go: the ScaledObject and its HPA are gone, the spec applies.
    h.keda_lets_go("demo-processor").await;
    h.reconcile().await;
    assert!(scaled_object(&h, "demo-processor").await.is_none());
    assert!(hpa(&h, "keda-hpa-demo-processor").await.is_none());
    assert!(hpa(&h, "demo-processor").await.is_none());
    assert_eq!(
        replicas(&h.deployment("demo-processor").await.unwrap()),
        Some(3)
    );
    let history = h.replicas_over_time("demo-processor");
    assert_eq!(history.last(), Some(&Some(3)));
    assert!(
        !history[..history.len() - 1].contains(&Some(3)),
        "3 was applied before KEDA let go: {history:?}"
    );
    let scaling = processor_status(&h).await.scaling.unwrap();
    assert_eq!(scaling.message, "3 replicas from the spec");
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
    let h = Harness::with_monitoring(sample()).await;
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
    // The gauge odds-service exports, by the labels the operator's PodMonitor adds.
    assert_eq!(
        trigger.metadata["query"],
        r#"sum(odds_ws_connections{namespace="default",pipeline="demo",component="odds-service"})"#
    );
    // No series at all is an error in KEDA, not zero connections.
    assert_eq!(trigger.metadata["ignoreNullValues"], "false");
    let monitor = pod_monitor(&h, "demo-metrics").await.expect("PodMonitor");
    assert_scrapes_the_pipeline_with_its_labels(&monitor);
    let scaling = odds_service_scaling(&h).await;
    assert_eq!(
        (scaling.mode.as_str(), scaling.reason.as_str()),
        ("Connections", "AsRequested")
    );

    // Without an address: CPU, and the condition says why. KEDA still holds the
    // ScaledObject; the HPA comes once it let go. The PodMonitor goes.
    h.change(connections(None)).await;
    h.keda_lets_go("demo-odds-service").await;
    h.reconcile().await;
    assert!(scaled_object(&h, "demo-odds-service").await.is_none());
    assert!(hpa(&h, "demo-odds-service").await.is_some());
    assert!(pod_monitor(&h, "demo-metrics").await.is_none());
    h.assert_condition("Autoscaling", "False", "NoPrometheusAddress")
        .await;
}

#[tokio::test]
async fn lag_mode_is_refused_where_it_means_nothing() {
    let h = harness(sample(), true).await;
    h.change(json!({"spec": {"ingest": {
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": {"mode": "Lag", "minReplicas": 1, "maxReplicas": 2}
    }}}))
    .await;
    h.assert_degraded(
        "InvalidSpec",
        "ingest.autoscaling.mode Lag is not one of Cpu",
    )
    .await;
}

#[tokio::test]
async fn keda_uninstalled_after_start_up_is_reported_then_cpu_takes_over() {
    // Discovery saw KEDA, but the API server no longer serves ScaledObjects (404).
    let h = harness_with(sample(), Options::default()).await;
    h.roll_out().await;
    h.ctx.keda.store(true, Ordering::Relaxed);
    a_gone_crd_falls_back_to_cpu(&h, lag_mode(), "KedaNotInstalled", "demo-processor").await;
}

/// With a mode whose CRD discovery saw but the API server no longer serves: the reconcile
/// fails with `Degraded` for `reason`, and the controller's retry scales `deployment` by CPU,
/// `Autoscaling` saying why.
async fn a_gone_crd_falls_back_to_cpu(h: &Harness, mode: Value, reason: &str, deployment: &str) {
    h.patch_pipeline(mode).await;
    assert!(h.try_reconcile().await.is_err());
    h.assert_condition("Degraded", "True", reason).await;
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert!(hpa(h, deployment).await.is_some());
    assert_eq!(h.condition("Autoscaling").await.reason, reason);
}

#[tokio::test]
async fn keda_is_discovered_by_its_scaled_object_resource() {
    use odds_operator::discovery::keda_installed;
    let resources = |names: &[&str]| crate::fixtures::api_resource_list("keda.sh/v1alpha1", names);
    for (names, installed) in [
        (&["scaledjobs", "scaledobjects"][..], true),
        (&["scaledjobs"][..], false),
    ] {
        let h = harness(sample(), true).await;
        h.answer("list", "", resources(names));
        assert_eq!(keda_installed(&h.client).await.unwrap(), installed);
    }
    let h = harness(sample(), true).await;
    h.fail_not_served("list", "");
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
        keda: true,
        ..Options::default()
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
    h.keda_lets_go("demo-processor").await;
    assert!(scaled_object(&h, "demo-processor").await.is_none());
    h.reconcile().await;
    assert!(hpa(&h, "demo-processor").await.is_some());
}

fn connections_mode(pod_monitor: Option<bool>) -> Value {
    let mut scaling = json!({"mode": "Connections", "minReplicas": 2, "maxReplicas": 8,
                             "prometheusAddress": "http://prometheus.monitoring.svc:9090"});
    if let Some(on) = pod_monitor {
        scaling["podMonitor"] = json!(on);
    }
    json!({"spec": {"oddsService": {"autoscaling": scaling}}})
}

async fn odds_service_scaling(h: &Harness) -> odds_operator::crd::ScalingStatus {
    h.status().await.odds_service.unwrap().scaling.unwrap()
}

#[tokio::test]
async fn connections_mode_without_a_series_source_scales_on_cpu_and_says_metrics_unavailable() {
    // KEDA, but no Prometheus Operator: nothing would scrape odds_ws_connections with the
    // pipeline and component labels, and KEDA would scale on nothing.
    let h = Harness::with_keda(sample()).await;
    rolled_out_then(&h, connections_mode(None)).await;
    assert!(
        scaled_object(&h, "demo-odds-service").await.is_none(),
        "no ScaledObject that would read nothing"
    );
    assert!(hpa(&h, "demo-odds-service").await.is_some(), "CPU instead");
    let autoscaling = h
        .assert_condition("Autoscaling", "False", "MetricsUnavailable")
        .await;
    assert!(
        autoscaling.message.starts_with("odds-service: ")
            && autoscaling.message.contains("PodMonitor"),
        "{}",
        autoscaling.message
    );
    let scaling = odds_service_scaling(&h).await;
    assert_eq!(
        (scaling.mode.as_str(), scaling.reason.as_str()),
        ("Cpu", "MetricsUnavailable")
    );
    assert!(
        !h.asked_group("monitoring.coreos.com"),
        "without the CRD no PodMonitor is ever asked for"
    );

    // The user says their own scrape adds the labels: KEDA, as asked, and no PodMonitor.
    h.change(connections_mode(Some(false))).await;
    assert!(scaled_object(&h, "demo-odds-service").await.is_some());
    let scaling = odds_service_scaling(&h).await;
    assert_eq!(
        (scaling.mode.as_str(), scaling.reason.as_str()),
        ("Connections", "AsRequested")
    );
    assert_contains(
        &scaling.message,
        "a scrape outside the operator (podMonitor: false)",
    );
    assert_eq!(h.condition("Autoscaling").await.reason, "AsRequested");
}

#[tokio::test]
async fn the_pod_monitor_follows_the_spec_and_carries_its_labels() {
    let h = Harness::with_monitoring(sample()).await;
    h.roll_out().await;
    let mut asked = connections_mode(None);
    asked["spec"]["oddsService"]["autoscaling"]["podMonitorLabels"] =
        json!({"release": "kube-prometheus-stack", "app.kubernetes.io/instance": "other"});
    h.change(asked).await;
    let monitor = pod_monitor(&h, "demo-metrics").await.expect("PodMonitor");
    assert_scrapes_the_pipeline_with_its_labels(&monitor);
    let labels = monitor.metadata.labels.clone().unwrap();
    assert_eq!(labels["release"], "kube-prometheus-stack");
    assert_eq!(
        labels["app.kubernetes.io/instance"], "demo",
        "the operator's own labels win (they select and prune it)"
    );
    let scaling = odds_service_scaling(&h).await;
    assert!(
        scaling
            .message
            .ends_with("scraped by PodMonitor demo-metrics"),
        "{}",
        scaling.message
    );
    // Settled: nothing more is written.
    let writes = h.status_writes.load(Ordering::SeqCst);
    h.reconcile().await;
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes);

    // Another scrape takes over (e.g. the chart's PodMonitor): the operator's goes, and the
    // ScaledObject stays.
    h.change(connections_mode(Some(false))).await;
    assert!(pod_monitor(&h, "demo-metrics").await.is_none());
    assert!(scaled_object(&h, "demo-odds-service").await.is_some());
    assert!(h
        .events()
        .await
        .iter()
        .any(|(_, r, n)| r == "Deleted" && n.starts_with("Deleted PodMonitor demo-metrics")));
}

#[tokio::test]
async fn the_pod_monitor_crd_uninstalled_after_start_up_is_reported_then_cpu_takes_over() {
    // Discovery saw the CRD, but the API server no longer serves PodMonitors (404).
    let h = Harness::with_keda(sample()).await;
    h.roll_out().await;
    h.ctx.pod_monitors.store(true, Ordering::Relaxed);
    let mode = connections_mode(None);
    a_gone_crd_falls_back_to_cpu(&h, mode, "MetricsUnavailable", "demo-odds-service").await;
}

#[tokio::test]
async fn pod_monitors_are_discovered_by_their_resource() {
    use odds_operator::discovery::pod_monitors_installed;
    let resources =
        |names: &[&str]| crate::fixtures::api_resource_list("monitoring.coreos.com/v1", names);
    for (names, installed) in [
        (&["podmonitors", "servicemonitors"][..], true),
        (&["servicemonitors", "prometheusrules"][..], false),
    ] {
        let h = harness(sample(), true).await;
        h.answer("list", "", resources(names));
        assert_eq!(pod_monitors_installed(&h.client).await.unwrap(), installed);
    }
    let h = harness(sample(), true).await;
    h.fail_not_served("list", "");
    assert!(!pod_monitors_installed(&h.client).await.unwrap());
}

/// The requests one LAG refresh made: `(verb, resource)`.
fn refresh_calls(h: &Harness) -> Vec<(String, String)> {
    h.calls
        .lock()
        .unwrap()
        .drain(..)
        .map(|(verb, _, resource)| (verb, resource))
        .collect()
}

#[tokio::test]
async fn the_lag_is_refreshed_between_reconciles_without_applying_anything() {
    use kube::runtime::controller::Action;
    let h = Harness::with_keda(sample()).await;
    rolled_out_then(&h, lag_mode()).await;
    h.pods_ready().await;
    h.reconcile().await;
    assert_eq!(h.condition("Ready").await.status, "True");
    // A settled lag-scaled pipeline waits like any other: no full reconcile every 30 s.
    let action = h.try_reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(300)));
    let before = h.status().await;
    assert_eq!(
        before.processor.as_ref().unwrap().lag.as_deref(),
        Some("unknown")
    );

    // Nothing changed: the refresh reads the lag (the ScaledObject, the HPA it names) and
    // writes nothing.
    h.calls.lock().unwrap().clear();
    let writes = h.status_writes.load(Ordering::SeqCst);
    h.refresh_lags().await;
    let get = |resource: &str| ("get".to_string(), resource.to_string());
    assert_eq!(
        refresh_calls(&h),
        [get("scaledobjects"), get("horizontalpodautoscalers")]
    );
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes);

    // KEDA decided on a lag of 6000: one status write, the lag, nothing else.
    h.keda_hpa_reports("demo-processor", "1500", 4).await;
    h.refresh_lags().await;
    assert_eq!(
        refresh_calls(&h),
        [
            get("scaledobjects"),
            get("horizontalpodautoscalers"),
            ("patch".to_string(), "oddspipelines/status".to_string())
        ]
    );
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes + 1);
    let after = h.status().await;
    assert_eq!(
        after.processor.as_ref().unwrap().lag.as_deref(),
        Some("6000")
    );
    let mut expected = before.clone();
    expected.processor.as_mut().unwrap().lag = Some("6000".into());
    assert_eq!(after, expected, "only the lag changed");

    // Same lag: no write. A full reconcile agrees with what the refresh wrote.
    h.refresh_lags().await;
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes + 1);
    h.reconcile().await;
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes + 1);
    h.calls.lock().unwrap().clear();

    // A paused pipeline's status is left alone; so is one no longer scaled by lag.
    h.change(json!({"spec": {"paused": true}})).await;
    h.calls.lock().unwrap().clear();
    h.keda_hpa_reports("demo-processor", "2000", 4).await;
    h.refresh_lags().await;
    assert_eq!(refresh_calls(&h), []);
    h.change(json!({"spec": {"paused": false}})).await;
    assert_eq!(processor_status(&h).await.lag.as_deref(), Some("8000"));
    h.change(cpu_mode()).await;
    h.calls.lock().unwrap().clear();
    h.refresh_lags().await;
    assert_eq!(refresh_calls(&h), []);
}

#[test]
fn a_status_change_alone_does_not_reconcile_a_pipeline() {
    use odds_operator::controller::reconcile_trigger;
    let pipeline = sample();
    let mut status_only = pipeline.clone();
    status_only.status = Some(Default::default());
    status_only.metadata.resource_version = Some("42".into());
    assert_eq!(
        reconcile_trigger(&pipeline),
        reconcile_trigger(&status_only)
    );
    let mut spec = pipeline.clone();
    spec.metadata.generation = Some(pipeline.metadata.generation.unwrap_or(1) + 1);
    let mut annotated = pipeline.clone();
    annotated.metadata.annotations = Some(
        [(
            "odds-pipeline.github.io/pause-reconciliation".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let mut labelled = pipeline.clone();
    labelled.metadata.labels = Some([("team".to_string(), "odds".to_string())].into());
    for changed in [spec, annotated, labelled] {
        assert_ne!(reconcile_trigger(&pipeline), reconcile_trigger(&changed));
    }
}

#[tokio::test]
async fn the_api_keeps_a_deleted_object_while_it_has_finalizers() {
    // The harness's API, as the API server: a delete only marks an object that has
    // finalizers; it goes when the last finalizer is removed.
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    let h = harness(sample(), true).await;
    let api = h.api::<ConfigMap>();
    let mut held = ConfigMap::default();
    held.metadata.name = Some("held".into());
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    api.delete("held", &DeleteParams::background())
        .await
        .unwrap();
    let marked = api.get("held").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let listed = api.list(&Default::default()).await.unwrap();
    assert!(listed
        .items
        .iter()
        .any(|c| c.metadata.name.as_deref() == Some("held")
            && c.metadata.deletion_timestamp.is_some()));
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_none());
}
