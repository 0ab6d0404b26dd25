//! The chart grants exactly the permissions the operator uses, no more and no fewer.
//!
//! The verbs are derived from the code, not listed by hand: every request the reconciler and
//! the leader election make in scenarios that exercise each path (create, update, prune of
//! every child kind, status, events, hand-over) is recorded by the harness; the controller's
//! watches come from `run::watched_resources`. Creating a child with `blockOwnerDeletion`
//! needs `update` on the owner's `finalizers` (clusters with the
//! `OwnerReferencesPermissionEnforcement` admission plugin enforce it).

use crate::fixtures::{repo_file, sample, PipelineExt};
use crate::harness::{harness, Harness};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use odds_operator::build::{Component, KafkaUser, PodMonitor, ScaledObject, TriggerAuthentication};
use odds_operator::leader::{Elector, LeaseConfig};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

type Grant = (String, String, String);

/// `(api group, resource, verb)` the operator needs, from what it did.
async fn used() -> BTreeSet<Grant> {
    let mut used = BTreeSet::new();
    let mut collect = |h: &Harness| {
        for (verb, group, resource) in h.calls.lock().unwrap().iter() {
            used.insert((group.clone(), resource.clone(), verb.clone()));
        }
        let blocks = h.applies.lock().unwrap().iter().any(|(_, body)| {
            body["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["blockOwnerDeletion"] == json!(true))
        });
        if blocks {
            used.insert((
                "odds-pipeline.github.io".into(),
                "oddspipelines/finalizers".into(),
                "update".into(),
            ));
        }
    };

    // Every child kind created, changed, pruned; status and events written.
    let h = harness(sample().with_autoscaling(Component::Processor), true).await;
    h.roll_out().await;
    h.change(json!({"spec": {"oddsService": {"ingress": {"host": "odds.example"}}}}))
        .await;
    h.change(json!({"spec": {
        "image": {"tag": "v2"},
        "supplier": {"simulator": null, "url": "wss://feed.example/ws"},
        "processor": {"autoscaling": null, "replicas": 2},
        "oddsService": {"ingress": null}
    }}))
    .await;
    h.migration_done().await;
    h.reconcile().await;
    // A ConfigMap of this pipeline under a name the current version no longer uses.
    let mut stray = h.api::<ConfigMap>().get("demo-config").await.unwrap();
    stray.metadata = ObjectMeta {
        name: Some("demo-settings".into()),
        ..stray.metadata
    };
    stray.metadata.resource_version = None;
    stray.metadata.uid = None;
    h.api::<ConfigMap>()
        .create(&Default::default(), &stray)
        .await
        .unwrap();
    h.reconcile().await;
    assert!(h.get::<ConfigMap>("demo-settings").await.is_none());
    h.change(json!({"spec": {"paused": true}})).await;
    collect(&h);

    // The autoscaling hand-over.
    let h = harness(sample(), true).await;
    h.roll_out().await;
    h.change(json!({"spec": {"processor": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}, "resources": {"requests": {"cpu": "1"}}}}}))
        .await;
    collect(&h);

    // KEDA: a lag-scaled processor (ScaledObject created, its HPA read for the lag), then
    // back to CPU (the ScaledObject deleted before the HPA is applied).
    let h = Harness::with_keda(sample()).await;
    h.roll_out().await;
    let lag = json!({"resources": {"requests": {"cpu": "1"}},
                     "autoscaling": {"mode": "Lag", "minReplicas": 2, "maxReplicas": 6}});
    h.change(json!({"spec": {"processor": lag}})).await;
    h.keda_hpa_reports("demo-processor", "10", 2).await;
    h.reconcile().await;
    h.change(json!({"spec": {"processor": {"autoscaling": {"mode": "Cpu"}}}}))
        .await;
    // KEDA's finalizer holds the ScaledObject until KEDA removed its HPA.
    h.keda_lets_go("demo-processor").await;
    h.reconcile().await;
    assert!(h.get::<ScaledObject>("demo-processor").await.is_none());
    // The lag trigger's login went with it; the KafkaUser goes with the authentication.
    assert!(h
        .get::<TriggerAuthentication>("demo-kafka-client")
        .await
        .is_none());
    h.change(json!({"spec": {"kafka": {"authentication": null}}}))
        .await;
    assert!(h.get::<KafkaUser>("demo-kafka-client").await.is_none());
    collect(&h);

    // Connections mode with the Prometheus Operator: the PodMonitor created, then pruned
    // when another scrape takes over; the lag refreshed between reconciles.
    let h = Harness::with_monitoring(sample()).await;
    h.roll_out().await;
    let connections = |pod_monitor: bool| {
        json!({"spec": {"oddsService": {"autoscaling": {
            "mode": "Connections", "minReplicas": 2, "maxReplicas": 5,
            "prometheusAddress": "http://prometheus:9090", "podMonitor": pod_monitor}}}})
    };
    h.change(connections(true)).await;
    assert!(h.get::<PodMonitor>("demo-metrics").await.is_some());
    h.change(connections(false)).await;
    assert!(h.get::<PodMonitor>("demo-metrics").await.is_none());
    h.change(
        json!({"spec": {"processor": {"resources": {"requests": {"cpu": "1"}},
        "autoscaling": {"mode": "Lag", "minReplicas": 2, "maxReplicas": 6}}}}),
    )
    .await;
    h.keda_hpa_reports("demo-processor", "10", 2).await;
    h.refresh_lags().await;
    assert_eq!(
        h.status().await.processor.unwrap().lag.as_deref(),
        Some("20")
    );
    collect(&h);

    // Leader election: campaign, renew, take over, release.
    let h = harness(sample(), true).await;
    let api: Api<Lease> = h.api();
    let mut a = Elector::new(
        api.clone(),
        LeaseConfig::new("odds-operator-leader".into(), "default".into(), "a".into()),
    );
    h.operator.store(true, Ordering::SeqCst);
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap());
    a.release().await.unwrap();
    h.operator.store(false, Ordering::SeqCst);
    collect(&h);

    for (group, resource) in odds_operator::run::watched_resources() {
        for verb in ["list", "watch"] {
            used.insert((group.clone(), resource.clone(), verb.into()));
        }
    }
    used
}

/// `(api group, resource, verb)` the chart grants: the operator's rules (files/rbac-rules.yaml,
/// its ClusterRole or its Role per served namespace) and the leader-election Role.
fn granted() -> BTreeSet<Grant> {
    let rules =
        std::fs::read_to_string(repo_file("charts/odds-operator/files/rbac-rules.yaml")).unwrap();
    let text =
        std::fs::read_to_string(repo_file("charts/odds-operator/templates/rbac.yaml")).unwrap();
    // The templates only fill in names and labels, and include the rules file; the
    // leader-election Role's rules are plain YAML.
    let plain: String = text
        .lines()
        .filter(|l| !l.contains("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut granted = BTreeSet::new();
    let documents = serde_yaml::Deserializer::from_str(&rules)
        .chain(serde_yaml::Deserializer::from_str(&plain));
    for document in documents {
        let object: Value = serde::Deserialize::deserialize(document).unwrap();
        for rule in object["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    granted
}

/// `used()` awaits every scenario in one future, larger than a test thread's default stack
/// in a debug build: it runs on a thread of its own with room for it.
fn used_with_room() -> BTreeSet<Grant> {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(Box::pin(used()))
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn the_chart_grants_exactly_what_the_operator_uses() {
    let used = used_with_room();
    let granted = granted();
    let missing: Vec<_> = used.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "charts/odds-operator/templates/rbac.yaml\n  lacks: {missing:?}\n  grants unused: {extra:?}"
    );
    // Every kind the operator writes is watched too (a change to a child must reconcile
    // its owner).
    let watched: BTreeSet<(String, String)> = odds_operator::run::watched_resources()
        .into_iter()
        .collect();
    for (group, resource, verb) in &used {
        let child = verb == "patch" && !resource.contains('/');
        let own = !matches!(resource.as_str(), "events" | "leases");
        if child && own {
            assert!(
                watched.contains(&(group.clone(), resource.clone())),
                "{group}/{resource} is written but not watched"
            );
        }
    }
    // The derivation itself saw what matters.
    for grant in [
        (
            "odds-pipeline.github.io",
            "oddspipelines/finalizers",
            "update",
        ),
        ("", "secrets", "get"),
        ("apps", "deployments", "create"),
        ("networking.k8s.io", "ingresses", "delete"),
        ("coordination.k8s.io", "leases", "update"),
        ("keda.sh", "scaledobjects", "delete"),
        ("keda.sh", "scaledobjects", "create"),
        ("monitoring.coreos.com", "podmonitors", "create"),
        ("monitoring.coreos.com", "podmonitors", "delete"),
        ("kafka.strimzi.io", "kafkausers", "delete"),
        ("keda.sh", "triggerauthentications", "delete"),
    ] {
        let grant = (
            grant.0.to_string(),
            grant.1.to_string(),
            grant.2.to_string(),
        );
        assert!(used.contains(&grant), "{grant:?}");
    }
}
