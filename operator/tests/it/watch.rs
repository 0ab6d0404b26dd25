//! Failures of the controller's watches (a 403 on a secured cluster): logged once per cause,
//! counted by resource and reason, and, once they last, shown in the status of the pipelines
//! that depend on them; the controller runs against the in-memory API.

use crate::fixtures::{assert_contains, sample, NS};
use crate::harness::{harness_with, Harness, Options};
use odds_operator::run::{operate, Scope};
use odds_operator::watch::{depends_on, PERSISTENT_AFTER};
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FORBIDDEN: &str = "kafkatopics.kafka.strimzi.io is forbidden: User \"system:serviceaccount:odds-system:odds-operator\" cannot list resource \"kafkatopics\" in API group \"kafka.strimzi.io\" in the namespace \"default\"";

/// Discovery answers every group version with Strimzi's KafkaTopic (without `list`).
fn discovery_answers(h: &Harness) {
    h.answer(
        "list",
        "",
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "x/v1",
               "resources": [{"name": "kafkatopics", "singularName": "", "namespaced": true,
                              "kind": "KafkaTopic", "verbs": ["get"]}]}),
    );
}

/// The cluster as the operator meets it: discovery answers (Strimzi, no KEDA), watches
/// stay quiet, and listing KafkaTopics is forbidden (the Role lacks `list`).
fn forbid_listing_topics(h: &Harness) {
    h.fail("list", "kafkatopics", 403, "Forbidden", FORBIDDEN);
    discovery_answers(h);
}

fn watch_errors(h: &Harness, resource: &str, reason: &str) -> u64 {
    h.metrics
        .watch_errors
        .with_label_values(&[resource, reason])
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_watch_is_warned_once_counted_and_shown_in_the_status() {
    let h = harness_with(sample(), Options::default()).await;
    let _quiet = h.quiet_watches();
    forbid_listing_topics(&h);
    let shutdown = CancellationToken::new();
    let (client, ctx, stop) = (h.client.clone(), h.ctx.clone(), shutdown.clone());
    let scope = Scope {
        namespaces: vec![NS.into()],
        watch_kafka_topics: true,
    };
    let task = tokio::spawn(async move { operate(&client, &scope, ctx, stop).await });

    // The first reconcile (at once) saw a fresh failure: not yet news for the status.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.condition("Watching").await.status, "True");
    // The controller keeps retrying (pipelines still waiting for their topics requeue every
    // 15 s and see the failure once it lasted).
    tokio::time::sleep(PERSISTENT_AFTER + Duration::from_secs(30)).await;
    let retries = watch_errors(&h, "kafkatopics", "forbidden");
    assert!(retries >= 2, "each failed list is counted: {retries}");
    assert_eq!(h.ctx.watches.warnings(), 1, "warned once, not per retry");
    let watching = h.assert_condition("Watching", "False", "WatchFailed").await;
    assert_contains(&watching.message, "the watch of kafkatopics fails");
    assert_contains(&watching.message, "cannot list resource");
    assert_eq!(
        h.condition("Degraded").await.status,
        "False",
        "the pipeline is not degraded: the operator only notices topic changes late"
    );
    // (How often: the fake's watches deliver no events, so the controller's cache of the
    // pipeline keeps its first status and each requeue sees the transition again; the
    // next test counts them with fresh reads.)
    assert!(h.event_count("WatchFailed").await >= 1);

    // RBAC fixed: the next retry lists, and the status says so again.
    h.heal();
    let failed = watch_errors(&h, "kafkatopics", "forbidden");
    let _quiet = h.quiet_watches();
    discovery_answers(&h);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.condition("Watching").await.status, "True");
    assert_eq!(watch_errors(&h, "kafkatopics", "forbidden"), failed);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lasting_watch_failure_is_one_warning_event_and_clears_when_the_watch_works() {
    use kube::core::Status;
    use kube::runtime::watcher;
    let h = harness_with(sample(), Options::default()).await;
    h.roll_out().await;
    let forbidden = || {
        watcher::Error::InitialListFailed(kube::Error::Api(
            Status::failure(FORBIDDEN, "Forbidden")
                .with_code(403)
                .boxed(),
        ))
    };
    h.ctx.watches.failed("kafkatopics", &forbidden());
    h.reconcile().await;
    assert_eq!(h.condition("Watching").await.status, "True", "not yet");
    for _ in 0..3 {
        tokio::time::sleep(PERSISTENT_AFTER).await;
        h.ctx.watches.failed("kafkatopics", &forbidden());
        h.reconcile().await;
    }
    assert_eq!(h.condition("Watching").await.reason, "WatchFailed");
    assert_eq!(
        h.condition("Ready").await.status,
        "True",
        "not part of Ready"
    );
    assert_eq!(h.ctx.watches.warnings(), 1);
    assert_eq!(
        h.event_count("WatchFailed").await,
        1,
        "one Warning event when the failure shows, not one per reconcile"
    );
    h.ctx.watches.succeeded("kafkatopics");
    h.reconcile().await;
    assert_eq!(h.condition("Watching").await.status, "True");
}

#[test]
fn only_the_pipelines_that_use_an_optional_api_depend_on_its_watch() {
    let strimzi = sample();
    let mut external = sample();
    external.spec.kafka.cluster_ref = None;
    external.spec.kafka.bootstrap_servers = Some("kafka:9092".into());
    assert!(depends_on(&strimzi, "kafkatopics"));
    assert!(!depends_on(&external, "kafkatopics"));
    assert!(depends_on(&external, "deployments"));
    assert!(
        !depends_on(&strimzi, "scaledobjects"),
        "no KEDA mode asked for"
    );
}
