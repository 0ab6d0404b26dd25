//! The pipeline's status, computed from what the reconcile observed.
//!
//! Pure: the same observations give the same status, and a condition keeps its
//! `lastTransitionTime` while its `status` stays the same, so a steady pipeline computes a
//! status equal to the stored one and the reconciler writes nothing (no hot loop).

use crate::build::{Component, MigrationState};
use crate::crd::{ComponentStatus, Condition, OddsPipelineStatus};
use std::collections::BTreeMap;

/// What the reconcile saw, input of [`compute`].
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub generation: Option<i64>,
    /// Why the spec was rejected (validation or missing Secrets), if it was.
    pub invalid: Option<String>,
    pub topics_ready: bool,
    /// True when the topics are managed outside Strimzi (assumed to exist).
    pub external_kafka: bool,
    pub migration: MigrationState,
    /// Ready and desired pods per component, from the Deployments as stored.
    pub components: BTreeMap<Component, ComponentStatus>,
    /// Workloads held back, with the reason.
    pub blocked: Vec<(Component, &'static str)>,
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

/// Computes the new status; `previous` supplies stable transition times, `now` the time of
/// transitions that happen in this reconcile.
pub fn compute(
    previous: &OddsPipelineStatus,
    observed: &Observed,
    now: &str,
) -> OddsPipelineStatus {
    let mut conditions = Vec::new();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let last_transition_time = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
        conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: observed.generation,
            last_transition_time,
        });
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
            "ExternalKafka",
            "topics are managed outside Strimzi".to_string(),
        ),
        (true, false) => ("TopicsReady", "KafkaTopics are Ready".to_string()),
        (false, _) => (
            "WaitingForTopic",
            "waiting for the KafkaTopics to become Ready".to_string(),
        ),
    };
    set(
        "TopicReady",
        observed.topics_ready,
        topic_reason,
        topic_message,
    );

    let (migrated, migration_reason, migration_message) = match &observed.migration {
        MigrationState::Succeeded => (true, "Migrated", "schema migration succeeded".to_string()),
        MigrationState::Pending => (
            false,
            "MigrationPending",
            "schema migration has not finished".to_string(),
        ),
        MigrationState::Failed(why) => (false, "MigrationFailed", why.clone()),
    };
    set("Migrated", migrated, migration_reason, migration_message);

    let degraded = match (&observed.invalid, &observed.migration) {
        (Some(why), _) => Some(("InvalidSpec", why.clone())),
        (None, MigrationState::Failed(why)) => {
            Some(("MigrationFailed", format!("migration Job failed: {why}")))
        }
        _ => None,
    };
    match &degraded {
        Some((reason, message)) => set("Degraded", true, reason, message.clone()),
        None => set("Degraded", false, "AsExpected", "no problems found".into()),
    }

    let progressing = degraded.is_none() && (!blocked.is_empty() || !not_ready.is_empty());
    if progressing {
        let mut parts = blocked.clone();
        parts.extend(not_ready.iter().map(|s| format!("{s} ready")));
        set("Progressing", true, "RollingOut", parts.join(", "));
    } else {
        set(
            "Progressing",
            false,
            "Idle",
            "nothing is rolling out".into(),
        );
    }

    let ready = degraded.is_none()
        && observed.topics_ready
        && migrated
        && blocked.is_empty()
        && not_ready.is_empty();
    let (ready_reason, ready_message) = if ready {
        ("AllComponentsReady", "every component is ready".to_string())
    } else if let Some((reason, message)) = &degraded {
        (*reason, message.clone())
    } else if !blocked.is_empty() {
        ("Waiting", blocked.join(", "))
    } else if !observed.topics_ready {
        ("WaitingForTopic", "waiting for the KafkaTopics".to_string())
    } else if !migrated {
        (
            "MigrationPending",
            "waiting for the schema migration".to_string(),
        )
    } else {
        (
            "ComponentsNotReady",
            format!("not ready: {}", not_ready.join(", ")),
        )
    };
    set("Ready", ready, ready_reason, ready_message);

    // A paused pipeline never gets here: its status comes from [`paused`].
    set(
        "ReconciliationPaused",
        false,
        "Reconciling",
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
    }
}

/// While paused: the previous status with `ReconciliationPaused=True`, nothing else changed.
pub fn paused(
    previous: &OddsPipelineStatus,
    generation: Option<i64>,
    now: &str,
) -> OddsPipelineStatus {
    let mut status = previous.clone();
    let already = status
        .conditions
        .iter()
        .any(|c| c.type_ == "ReconciliationPaused" && c.status == "True");
    status
        .conditions
        .retain(|c| c.type_ != "ReconciliationPaused");
    let time = if already {
        previous
            .conditions
            .iter()
            .find(|c| c.type_ == "ReconciliationPaused")
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone())
    } else {
        now.to_string()
    };
    status.conditions.push(Condition {
        type_: "ReconciliationPaused".into(),
        status: "True".into(),
        reason: "Paused".into(),
        message: "reconciliation is paused; children are left as they are".into(),
        observed_generation: generation,
        last_transition_time: time,
    });
    status
}
