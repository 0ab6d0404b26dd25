//! Status computation: conditions, stable transition times, backoff.

use crate::fixtures::{assert_contains, sample, PipelineExt};
use odds_operator::build::{Component, MigrationState};
use odds_operator::controller::backoff;
use odds_operator::crd::{OddsPipelineStatus, Reason};
use odds_operator::status::{component_status, compute, paused, Failure, Observed};
use std::time::Duration;

fn healthy() -> Observed {
    Observed {
        generation: Some(3),
        topics_ready: true,
        migration: MigrationState::Succeeded,
        components: [
            (Component::Ingest, component_status(1, 1)),
            (Component::Processor, component_status(2, 2)),
            (Component::OddsService, component_status(2, 2)),
        ]
        .into(),
        web_socket_url: Some("ws://x/ws/odds".into()),
        ..Observed::default()
    }
}

/// The first status computed for `observed`, at `now`.
fn first_status(observed: &Observed, now: &str) -> OddsPipelineStatus {
    compute(&OddsPipelineStatus::default(), observed, now)
}

fn condition<'a>(status: &'a OddsPipelineStatus, type_: &str) -> &'a odds_operator::crd::Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn healthy_pipeline_is_ready_and_not_progressing() {
    let status = first_status(&healthy(), "2026-01-01T00:00:00Z");
    assert_eq!(condition(&status, "Ready").status, "True");
    assert_eq!(condition(&status, "Progressing").status, "False");
    assert_eq!(condition(&status, "Degraded").status, "False");
    assert_eq!(condition(&status, "ReconciliationPaused").status, "False");
    assert!(status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(3)));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.odds_service.unwrap().summary, "2/2");
}

#[test]
fn transition_time_is_kept_while_status_stays() {
    let first = first_status(&healthy(), "2026-01-01T00:00:00Z");
    let again = compute(&first, &healthy(), "2026-01-01T01:00:00Z");
    assert_eq!(
        again, first,
        "same observations at a later time give the same status"
    );
    let mut slow = healthy();
    slow.components
        .insert(Component::Processor, component_status(1, 2));
    let changed = compute(&first, &slow, "2026-01-01T02:00:00Z");
    let ready = condition(&changed, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.last_transition_time.as_str()),
        ("False", "2026-01-01T02:00:00Z")
    );
    assert_contains(&ready.message, "processor 1/2");
    assert_eq!(
        condition(&changed, "TopicReady").last_transition_time,
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(condition(&changed, "Progressing").status, "True");
}

#[test]
fn invalid_spec_and_failed_migration_are_degraded() {
    let mut invalid = healthy();
    invalid.failure = Some(Failure {
        reason: Reason::InvalidSpec,
        message: "invalid spec: x".into(),
    });
    let status = first_status(&invalid, "t");
    assert_eq!(
        (
            condition(&status, "Degraded").status.as_str(),
            condition(&status, "Degraded").reason.as_str()
        ),
        ("True", "InvalidSpec")
    );
    assert_eq!(condition(&status, "Ready").status, "False");
    assert_eq!(
        condition(&status, "Progressing").status,
        "False",
        "a bad spec is not progress"
    );

    let mut failed = healthy();
    failed.migration = MigrationState::Failed("relation exists".into());
    let status = first_status(&failed, "t");
    assert_eq!(condition(&status, "Degraded").reason, "MigrationFailed");
    assert!(condition(&status, "Degraded")
        .message
        .contains("relation exists"));
    assert_eq!(condition(&status, "Migrated").status, "False");
}

#[test]
fn pausing_keeps_the_rest_of_the_status() {
    let before = first_status(&healthy(), "t0");
    let status = paused(&before, Some(4), "t1");
    let pause = condition(&status, "ReconciliationPaused");
    assert_eq!(
        (pause.status.as_str(), pause.last_transition_time.as_str()),
        ("True", "t1")
    );
    assert_eq!(condition(&status, "Ready"), condition(&before, "Ready"));
    assert_eq!(
        status.observed_generation,
        Some(3),
        "a paused generation is not observed"
    );
    assert_eq!(
        paused(&status, Some(4), "t2"),
        status,
        "pausing again changes nothing"
    );
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    assert_eq!(backoff(0), Duration::from_secs(5));
    assert_eq!(backoff(1), Duration::from_secs(10));
    assert_eq!(backoff(3), Duration::from_secs(40));
    assert_eq!(backoff(30), Duration::from_secs(300));
}

#[tokio::test]
async fn error_backoff_is_counted_per_pipeline_and_reset_by_success() {
    use odds_operator::controller::{error_policy, Context, Error};
    use std::sync::Arc;
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let ctx = Arc::new(Context::new(client, None, None));
    let pipeline = |name: &str| Arc::new(sample().named(name));
    let error = Error::NoNamespace;
    let a1 = error_policy(pipeline("a"), &error, ctx.clone());
    let a2 = error_policy(pipeline("a"), &error, ctx.clone());
    let b1 = error_policy(pipeline("b"), &error, ctx.clone());
    assert_eq!(a1, kube::runtime::controller::Action::requeue(backoff(0)));
    assert_eq!(a2, kube::runtime::controller::Action::requeue(backoff(1)));
    assert_eq!(
        b1,
        kube::runtime::controller::Action::requeue(backoff(0)),
        "b has its own count"
    );
    // A successful reconcile of `a` (one being deleted returns at once) resets its count.
    let mut deleting = sample().named("a");
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    odds_operator::controller::reconcile(Arc::new(deleting), ctx.clone())
        .await
        .unwrap();
    let a3 = error_policy(pipeline("a"), &error, ctx.clone());
    assert_eq!(a3, kube::runtime::controller::Action::requeue(backoff(0)));
}
