//! A stuck rollout: each cause Kubernetes reports (a bad image, a crash loop, a container it
//! cannot build, a ReplicaSet that cannot create pods, the progress deadline) makes the
//! pipeline `Degraded` with its own reason and the pod's or ReplicaSet's message, published
//! once as a Warning; healing brings `Ready` back with a Normal `Recovered` event.

use crate::fixtures::{assert_contains, sample};
use crate::harness::harness;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use odds_operator::crd::Reason;
use odds_operator::rollout::stuck;
use serde_json::{json, Value};

fn deployment(conditions: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "demo-ingest"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {}},
        "status": {"replicas": 1, "readyReplicas": 0, "conditions": conditions}
    }))
    .unwrap()
}

/// A pod of `demo-ingest` whose container waits with `reason`.
fn pod(name: &str, waiting: &str, message: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/name": "odds-pipeline",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": "ingest"}},
        "spec": {"containers": [{"name": "ingest", "image": "odds-pipeline:dev"}]},
        "status": {"containerStatuses": [{
            "name": "ingest", "image": "odds-pipeline:dev", "imageID": "", "ready": false,
            "restartCount": 7,
            "state": {"waiting": {"reason": waiting, "message": message}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "error: unexpected argument '--nope'"}}
        }]}
    }))
    .unwrap()
}

#[test]
fn each_cause_has_its_reason_and_the_message_kubernetes_gave() {
    let none = deployment(json!([]));
    // (pod, waiting reason, Kubernetes' message, expected reason, what the message must say)
    let pods: [(&str, &str, &str, Reason, &[&str]); 3] = [
        (
            "p1",
            "ImagePullBackOff",
            "Back-off pulling image \"odds-pipeline:typo\"",
            Reason::ImagePullFailed,
            &[
                "pod p1 container ingest: ImagePullBackOff",
                "odds-pipeline:typo",
            ],
        ),
        (
            "p2",
            "CrashLoopBackOff",
            "back-off 5m0s restarting failed container",
            Reason::CrashLoop,
            &["after 7 restarts, last exit code 2 (Error): error: unexpected argument '--nope'"],
        ),
        (
            "p3",
            "CreateContainerConfigError",
            "couldn't find key url in Secret default/odds-redis",
            Reason::ContainerConfigError,
            &["couldn't find key url"],
        ),
    ];
    for (name, waiting, message, reason, says) in pods {
        let failure = stuck(&none, &[pod(name, waiting, message)]).unwrap();
        assert_eq!(failure.reason, reason, "{name}");
        for said in says {
            assert_contains(&failure.message, said);
        }
    }

    let quota = deployment(
        json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
        "message": "pods \"demo-ingest-5d4\" is forbidden: exceeded quota: compute, requested: cpu=500m"}]),
    );
    let deadline = deployment(
        json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"demo-ingest-5d4\" has timed out progressing."}]),
    );
    for (stored, reason, says) in [
        (&quota, Reason::FailedCreate, "exceeded quota"),
        (
            &deadline,
            Reason::ProgressDeadlineExceeded,
            "timed out progressing",
        ),
    ] {
        let failure = stuck(stored, &[]).unwrap();
        assert_eq!(failure.reason, reason);
        assert_contains(&failure.message, says);
    }
    // Pods that cannot start are the cause the deadline only follows.
    let crash = pod("p4", "CrashLoopBackOff", "");
    assert_eq!(
        stuck(&deadline, &[crash]).unwrap().reason,
        Reason::CrashLoop
    );

    // Pods that are merely starting are not stuck.
    let starting = pod("p5", "ContainerCreating", "");
    assert_eq!(stuck(&none, &[starting]), None);
}

#[tokio::test]
async fn a_crash_loop_degrades_the_pipeline_once_and_healing_brings_ready_back() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    assert_eq!(h.condition("Ready").await.status, "True");

    // A new ingest pod crash-loops: the Deployment has one ready pod fewer than desired.
    h.patch_status::<Deployment>(
        "demo-ingest",
        json!({"readyReplicas": 0, "availableReplicas": 0}),
    )
    .await;
    let mut crashing = pod(
        "demo-ingest-7f9-abc",
        "CrashLoopBackOff",
        "back-off 40s restarting failed container",
    );
    crashing.metadata.namespace = Some("default".into());
    h.api::<Pod>()
        .create(&PostParams::default(), &crashing)
        .await
        .unwrap();
    h.reconcile().await;
    h.reconcile().await;

    let degraded = h.assert_condition("Degraded", "True", "CrashLoop").await;
    assert!(
        degraded
            .message
            .starts_with("ingest CrashLoop: pod demo-ingest-7f9-abc"),
        "{}",
        degraded.message
    );
    h.assert_condition("Ready", "False", "CrashLoop").await;
    assert_eq!(
        h.condition("Progressing").await.status,
        "False",
        "stuck is not progressing"
    );
    assert_eq!(
        h.event_count("CrashLoop").await,
        1,
        "{:?}",
        h.events().await
    );

    // Healed: the pod runs, the Deployment is ready again.
    h.delete::<Pod>("demo-ingest-7f9-abc").await;
    h.pods_ready().await;
    h.reconcile().await;
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert_eq!(h.condition("Ready").await.status, "True");
    let recovered: Vec<_> = h
        .events()
        .await
        .into_iter()
        .filter(|(_, reason, _)| reason == "Recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].0, "Normal");
    assert!(
        recovered[0].2.contains("was CrashLoop") && recovered[0].2.contains("Ready=True"),
        "{recovered:?}"
    );
}

#[tokio::test]
async fn a_deadline_exceeded_rollout_is_degraded_with_the_deployment_message() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    h.patch_status::<Deployment>(
        "demo-processor",
        json!({"readyReplicas": 1, "conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"demo-processor-6c\" has timed out progressing."}]}),
    )
    .await;
    h.reconcile().await;
    h.assert_degraded(
        "ProgressDeadlineExceeded",
        "processor ProgressDeadlineExceeded: ReplicaSet",
    )
    .await;
}
