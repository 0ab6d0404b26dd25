//! The pipeline's status, computed from what the reconcile observed.
//!
//! Pure: the same observations give the same status, and a condition keeps its
//! `lastTransitionTime` while its `status` stays the same, so a steady pipeline computes a
//! status equal to the stored one and the reconciler writes nothing (no hot loop).

use crate::build::{Component, MigrationState};
use crate::crd::{ComponentStatus, Condition, ConditionType, HeldBack, OddsPipelineStatus, Reason};
use std::collections::BTreeMap;

/// Why the reconcile could not bring the pipeline into shape: becomes `Degraded=True` with
/// this reason and message, and a Warning event when it first appears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

/// What the reconcile saw, input of [`compute`].
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub generation: Option<i64>,
    /// What stopped the reconcile (bad spec, refused apply, missing Strimzi), if anything.
    pub failure: Option<Failure>,
    pub topics_ready: bool,
    /// True when the topics are managed outside Strimzi (assumed to exist).
    pub external_kafka: bool,
    pub migration: MigrationState,
    /// Ready and desired pods per component, from the Deployments as stored.
    pub components: BTreeMap<Component, ComponentStatus>,
    /// Workloads held back, with the reason.
    pub blocked: Vec<(Component, Reason)>,
    pub web_socket_url: Option<String>,
}

/// `ready/desired` for one Deployment.
pub fn component_status(ready: i32, desired: i32) -> ComponentStatus {
    ComponentStatus {
        ready_replicas: ready,
        desired_replicas: desired,
        summary: format!("{ready}/{desired}"),
    }
}

/// The `Degraded` cause of `observed`, if any: a reconcile failure first, then a failed
/// migration.
pub fn degradation(observed: &Observed) -> Option<Failure> {
    match (&observed.failure, &observed.migration) {
        (Some(failure), _) => Some(failure.clone()),
        (None, MigrationState::Failed(why)) => Some(Failure {
            reason: Reason::MigrationFailed,
            message: format!("migration Job failed: {why}"),
        }),
        _ => None,
    }
}

/// Computes the new status; `previous` supplies stable transition times, `now` the time of
/// transitions that happen in this reconcile.
pub fn compute(
    previous: &OddsPipelineStatus,
    observed: &Observed,
    now: &str,
) -> OddsPipelineStatus {
    let mut conditions = Vec::new();
    let mut set = |type_: ConditionType, ok: bool, reason: Reason, message: String| {
        conditions.push(condition(
            previous,
            type_,
            ok,
            reason,
            message,
            observed.generation,
            now,
        ));
    };

    let not_ready: Vec<String> = observed
        .components
        .iter()
        .filter(|(_, s)| s.ready_replicas < s.desired_replicas)
        .map(|(c, s)| format!("{} {}", c.suffix(), s.summary))
        .collect();
    let blocked: Vec<String> = observed
        .blocked
        .iter()
        .map(|(c, why)| format!("{} {why}", c.suffix()))
        .collect();

    let (topic_reason, topic_message) = match (observed.topics_ready, observed.external_kafka) {
        (true, true) => (
            Reason::ExternalKafka,
            "topics are managed outside Strimzi".to_string(),
        ),
        (true, false) => (Reason::TopicsReady, "KafkaTopics are Ready".to_string()),
        (false, _) => (
            Reason::WaitingForTopic,
            "waiting for the KafkaTopics to become Ready".to_string(),
        ),
    };
    set(
        ConditionType::TopicReady,
        observed.topics_ready,
        topic_reason,
        topic_message,
    );

    let (migrated, migration_reason, migration_message) = match &observed.migration {
        MigrationState::Succeeded => (
            true,
            Reason::Migrated,
            "schema migration succeeded".to_string(),
        ),
        MigrationState::Pending => (
            false,
            Reason::MigrationPending,
            "schema migration has not finished".to_string(),
        ),
        MigrationState::Failed(why) => (false, Reason::MigrationFailed, why.clone()),
    };
    set(
        ConditionType::Migrated,
        migrated,
        migration_reason,
        migration_message,
    );

    let degraded = degradation(observed);
    match &degraded {
        Some(failure) => set(
            ConditionType::Degraded,
            true,
            failure.reason,
            failure.message.clone(),
        ),
        None => set(
            ConditionType::Degraded,
            false,
            Reason::AsExpected,
            "no problems found".into(),
        ),
    }

    let progressing = degraded.is_none() && (!blocked.is_empty() || !not_ready.is_empty());
    if progressing {
        let mut parts = blocked.clone();
        parts.extend(not_ready.iter().map(|s| format!("{s} ready")));
        set(
            ConditionType::Progressing,
            true,
            Reason::RollingOut,
            parts.join(", "),
        );
    } else {
        set(
            ConditionType::Progressing,
            false,
            Reason::Idle,
            "nothing is rolling out".into(),
        );
    }

    let ready = degraded.is_none()
        && observed.topics_ready
        && migrated
        && blocked.is_empty()
        && not_ready.is_empty();
    let (ready_reason, ready_message) = if ready {
        (
            Reason::AllComponentsReady,
            "every component is ready".to_string(),
        )
    } else if let Some(failure) = &degraded {
        (failure.reason, failure.message.clone())
    } else if !blocked.is_empty() {
        (Reason::Waiting, blocked.join(", "))
    } else if !observed.topics_ready {
        (
            Reason::WaitingForTopic,
            "waiting for the KafkaTopics".to_string(),
        )
    } else if !migrated {
        (
            Reason::MigrationPending,
            "waiting for the schema migration".to_string(),
        )
    } else {
        (
            Reason::ComponentsNotReady,
            format!("not ready: {}", not_ready.join(", ")),
        )
    };
    set(ConditionType::Ready, ready, ready_reason, ready_message);

    // A paused pipeline never gets here: its status comes from [`paused`].
    set(
        ConditionType::ReconciliationPaused,
        false,
        Reason::Reconciling,
        "reconciliation is active".into(),
    );

    let component = |c: Component| observed.components.get(&c).cloned();
    OddsPipelineStatus {
        observed_generation: observed.generation,
        conditions,
        ingest: component(Component::Ingest),
        processor: component(Component::Processor),
        odds_service: component(Component::OddsService),
        web_socket_url: observed.web_socket_url.clone(),
        held_back: observed
            .blocked
            .iter()
            .map(|(c, why)| HeldBack {
                component: c.suffix().to_string(),
                reason: why.to_string(),
            })
            .collect(),
    }
}

/// One condition; its transition time is kept from `previous` while its status stays.
fn condition(
    previous: &OddsPipelineStatus,
    type_: ConditionType,
    ok: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .condition(type_)
        .filter(|c| c.status == status)
        .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.as_str().into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// While paused: the previous status with `ReconciliationPaused=True`, nothing else changed.
pub fn paused(
    previous: &OddsPipelineStatus,
    generation: Option<i64>,
    now: &str,
) -> OddsPipelineStatus {
    let mut status = previous.clone();
    let type_ = ConditionType::ReconciliationPaused;
    let pause = condition(
        previous,
        type_,
        true,
        Reason::Paused,
        "reconciliation is paused; children are left as they are".into(),
        generation,
        now,
    );
    status.conditions.retain(|c| c.type_ != type_.as_str());
    status.conditions.push(pause);
    status
}
