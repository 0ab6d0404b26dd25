//! Discovery of Strimzi and KEDA: an error is no answer (the last known one stays), only a
//! 404 for the group version means absent; and the controller restarts without the watch
//! of a CRD removed at run time.

use crate::fixtures::sample;
use crate::harness::{harness_with, Harness, Options};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use odds_operator::build::ScaledObject;
use odds_operator::discovery::{backoff, Discovered, Discovery};
use odds_operator::run::{operate, Scope};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A discovery document (`APIResourceList`) listing `names`.
fn resources(names: &[&str]) -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "x/v1",
        "resources": names.iter().map(|n| json!({
            "name": n, "singularName": "", "namespaced": true, "kind": "K", "verbs": ["get"]
        })).collect::<Vec<_>>()
    })
}

/// Both optional APIs are served.
fn serve_both(h: &Harness) {
    h.answer("list", "", resources(&["kafkatopics", "scaledobjects"]));
}

/// The API server's answer for a group version it does not serve.
fn not_served(h: &Harness, group: &str) {
    h.fail_in(
        "list",
        group,
        "",
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
}

fn lag_mode() -> Value {
    json!({"spec": {"processor": {
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": {"mode": "Lag", "minReplicas": 2, "maxReplicas": 6}
    }}})
}

async fn hpa(h: &Harness) -> Option<HorizontalPodAutoscaler> {
    h.get::<HorizontalPodAutoscaler>("demo-processor").await
}

async fn scaled_object(h: &Harness) -> Option<ScaledObject> {
    h.get::<ScaledObject>("demo-processor").await
}

#[tokio::test(start_paused = true)]
async fn a_keda_discovery_error_keeps_the_scaled_object_and_only_a_404_replaces_it() {
    let h = Harness::with_keda(sample()).await;
    h.roll_out().await;
    h.change(lag_mode()).await;
    assert!(scaled_object(&h).await.is_some());
    let mut discovery = Discovery::new(h.client.clone(), h.ctx.clone());
    serve_both(&h);
    assert!(discovery.refresh().await);
    assert!(h.ctx.keda.load(Ordering::Relaxed));

    // Discovery of keda.sh fails (500), then is not answered at all: nothing is known about
    // KEDA (Strimzi's is answered).
    type Fault<'a> = &'a dyn Fn(&Harness);
    let no_answer: [(&str, Fault); 2] = [
        ("500", &|h| {
            h.fail_in(
                "list",
                "keda.sh",
                "",
                500,
                "InternalError",
                "etcdserver: request timed out",
            )
        }),
        ("timeout", &|h| h.hang_in("list", "keda.sh", "")),
    ];
    for (what, fault) in no_answer {
        h.heal();
        fault(&h);
        serve_both(&h);
        let complete = discovery.refresh().await;
        h.heal();
        h.reconcile().await;
        assert!(
            hpa(&h).await.is_none(),
            "{what}: no CPU HPA beside the live ScaledObject"
        );
        assert!(scaled_object(&h).await.is_some(), "{what}");
        assert_eq!(h.condition("Autoscaling").await.reason, "AsRequested");
        assert!(
            h.ctx.keda.load(Ordering::Relaxed),
            "{what}: the last answer (served) stays"
        );
        assert!(
            !complete,
            "{what}: no complete answer, retried with backoff"
        );
    }

    // KEDA is uninstalled: its group version is gone (404), and its objects with its CRD.
    h.delete::<ScaledObject>("demo-processor").await;
    not_served(&h, "keda.sh");
    serve_both(&h);
    assert!(discovery.refresh().await);
    assert!(!h.ctx.keda.load(Ordering::Relaxed), "a 404 means absent");
    h.heal();
    h.reconcile().await;
    assert!(hpa(&h).await.is_some(), "CPU scaling instead");
    assert_eq!(h.condition("Autoscaling").await.reason, "KedaNotInstalled");
}

#[tokio::test(start_paused = true)]
async fn a_strimzi_discovery_error_is_not_strimzi_not_installed_but_a_404_is() {
    let h = harness_with(sample(), Options::default()).await;
    h.roll_out().await;
    let serve_strimzi = |h: &Harness| h.answer("list", "", resources(&["kafkatopics"]));
    let mut discovery = Discovery::new(h.client.clone(), h.ctx.clone());
    serve_strimzi(&h);
    assert!(discovery.refresh().await);
    for fault in [500, 503] {
        h.heal();
        h.fail("list", "", fault, "ServiceUnavailable", "try again later");
        let complete = discovery.refresh().await;
        h.heal();
        h.reconcile().await;
        let degraded = h.condition("Degraded").await;
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "AsExpected"),
            "{fault}: no StrimziNotInstalled for an unanswered discovery"
        );
        assert!(!complete);
    }
    h.hang("list", "");
    let complete = discovery.refresh().await;
    assert!(
        h.ctx.strimzi.load(Ordering::Relaxed),
        "timeout: still served"
    );
    assert!(!complete);

    h.heal();
    not_served(&h, "kafka.strimzi.io");
    serve_strimzi(&h);
    assert!(discovery.refresh().await);
    h.heal();
    h.reconcile().await;
    assert_eq!(
        h.condition("Degraded").await.reason,
        "StrimziNotInstalled",
        "a 404 for kafka.strimzi.io/v1 means absent"
    );
}

#[tokio::test(start_paused = true)]
async fn start_up_discovery_waits_for_an_answer_instead_of_guessing() {
    let h = Harness::with_keda(sample()).await;
    h.fail("list", "", 503, "ServiceUnavailable", "try again later");
    let mut discovery = Discovery::new(h.client.clone(), h.ctx.clone());
    let stop = CancellationToken::new();
    let waiting = tokio::spawn(async move { discovery.until_known(&stop).await });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!waiting.is_finished(), "no answer, no guess");
    h.heal();
    serve_both(&h);
    tokio::time::sleep(backoff(10)).await;
    let found = waiting.await.unwrap();
    assert_eq!(
        found,
        Some(Discovered {
            strimzi: true,
            keda: true,
            pod_monitors: false
        })
    );
}

/// `operate` (the leader's discovery and controller loop) on the in-memory API, until the
/// returned token is cancelled.
fn operating(
    h: &Harness,
    watch_kafka_topics: bool,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let (client, ctx, stop) = (h.client.clone(), h.ctx.clone(), shutdown.clone());
    let scope = Scope {
        namespaces: vec![crate::fixtures::NS.into()],
        watch_kafka_topics,
    };
    let task = tokio::spawn(async move { operate(&client, &scope, ctx, stop).await });
    (shutdown, task)
}

/// How many list and watch requests the operator made on `resource`.
fn watch_requests(h: &Harness, resource: &str) -> usize {
    h.calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| (c.0 == "list" || c.0 == "watch") && c.2 == resource)
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_crd_removed_at_run_time_restarts_the_controller_without_its_watch() {
    let h = Harness::with_keda(sample()).await;
    h.operator.store(true, Ordering::SeqCst);
    let watches = h.quiet_watches();
    serve_both(&h);
    let (shutdown, task) = operating(&h, true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(watch_requests(&h, "scaledobjects") > 0, "KEDA is watched");
    let lists = || {
        let calls = h.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.0 == "list" && c.2 == "oddspipelines")
            .count()
    };
    let pipelines = lists();

    // KEDA is uninstalled: the API server closes the watches of its CRD, and every request
    // for its resources, discovery included, meets 404.
    h.heal();
    h.fail_not_served("*", "scaledobjects");
    not_served(&h, "keda.sh");
    serve_both(&h);
    let _quiet = h.quiet_watches();
    watches.cancel();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !h.ctx.keda.load(Ordering::Relaxed),
        "the watch's 404 had discovery asked again at once"
    );
    assert!(
        lists() > pipelines,
        "the controller restarted (a new one lists the pipelines again)"
    );
    let after_restart = watch_requests(&h, "scaledobjects");
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        watch_requests(&h, "scaledobjects"),
        after_restart,
        "the restarted controller does not watch ScaledObjects"
    );
    shutdown.cancel();
    task.await.unwrap();
}
