//! The pipeline's status, computed from what the reconcile observed.
//!
//! Pure: the same observations give the same status, and a condition keeps its
//! `lastTransitionTime` while its `status` stays the same, so a steady pipeline computes a
//! status equal to the stored one and the reconciler writes nothing (no hot loop).

use crate::build::scaling::Scaling;
use crate::build::{Component, MigrationState};
use crate::canaries::Reading;
use crate::crd::{ComponentStatus, Condition, ConditionType, HeldBack, OddsPipelineStatus, Reason};
use crate::freshness;
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
    /// The scaling mode in force per component; empty when the reconcile stopped before
    /// deciding it (the previous status's modes are then kept).
    pub scaling: BTreeMap<Component, Scaling>,
    /// The consumer lag the processor's last scaling decision saw, if one was reported.
    pub lag: Option<i64>,
    /// Workloads whose rollout is stuck, with the cause (`crate::rollout`).
    pub stuck: BTreeMap<Component, Failure>,
    /// The watches this pipeline depends on that have failed for a while, one message each
    /// (`Watching=False`, `WatchFailed`); empty when they all work.
    pub watch_failures: Vec<String>,
    /// What the pipeline's freshness canary says now; `None` when it is not measured (an
    /// invalid spec), and then the status has no freshness and no `Fresh` condition.
    pub freshness: Option<Reading>,
}

/// What `status.processor.lag` says when no lag-based decision was reported.
pub const LAG_UNKNOWN: &str = "unknown";

/// `ready/desired` for one Deployment.
pub fn component_status(ready: i32, desired: i32) -> ComponentStatus {
    ComponentStatus {
        ready_replicas: ready,
        desired_replicas: desired,
        summary: format!("{ready}/{desired}"),
        scaling: None,
        lag: None,
    }
}

/// The `Degraded` cause of `observed`, if any: a reconcile failure first, then a failed
/// migration, then stuck rollouts (the first one's reason; every stuck workload in the
/// message).
pub fn degradation(observed: &Observed) -> Option<Failure> {
    match (&observed.failure, &observed.migration) {
        (Some(failure), _) => Some(failure.clone()),
        (None, MigrationState::Failed(why)) => Some(Failure {
            reason: Reason::MigrationFailed,
            message: format!("migration Job failed: {why}"),
        }),
        _ => {
            let (_, first) = observed.stuck.iter().next()?;
            let message = observed
                .stuck
                .iter()
                .map(|(c, f)| format!("{} {}: {}", c.suffix(), f.reason, f.message))
                .collect::<Vec<_>>()
                .join("; ");
            Some(Failure {
                reason: first.reason,
                message,
            })
        }
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

    if !observed.scaling.is_empty() {
        let fallbacks: Vec<(Reason, String)> = observed
            .scaling
            .iter()
            .filter(|(_, s)| !s.as_requested())
            .map(|(c, s)| (s.reason, format!("{}: {}", c.suffix(), s.message)))
            .collect();
        match fallbacks.first() {
            Some((reason, _)) => set(
                ConditionType::Autoscaling,
                false,
                *reason,
                fallbacks
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            None => set(
                ConditionType::Autoscaling,
                true,
                Reason::AsRequested,
                observed
                    .scaling
                    .iter()
                    .map(|(c, s)| format!("{}: {}", c.suffix(), s.mode))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }

    // Not part of `Ready`: the pipeline runs; the operator only notices changes of the
    // failing kind late (on its periodic requeue).
    if observed.watch_failures.is_empty() {
        set(
            ConditionType::Watching,
            true,
            Reason::AsExpected,
            "every watch the operator keeps for this pipeline works".into(),
        );
    } else {
        set(
            ConditionType::Watching,
            false,
            Reason::WatchFailed,
            observed.watch_failures.join("; "),
        );
    }

    if observed.scaling.is_empty() {
        // Not decided in this reconcile: what the previous one reported still holds.
        conditions.extend(previous.condition(ConditionType::Autoscaling).cloned());
    }
    if let Some(reading) = &observed.freshness {
        conditions.push(fresh_condition(previous, reading, observed.generation, now));
    }

    let component = |c: Component| {
        let before = match c {
            Component::Ingest => previous.ingest.as_ref(),
            Component::Processor => previous.processor.as_ref(),
            Component::OddsService => previous.odds_service.as_ref(),
            Component::Simulator => None,
        };
        observed.components.get(&c).cloned().map(|mut status| {
            status.scaling = match observed.scaling.get(&c) {
                Some(scaling) => Some(scaling.status()),
                None => before.and_then(|b| b.scaling.clone()),
            };
            if c == Component::Processor {
                status.lag = Some(match (observed.lag, observed.scaling.is_empty()) {
                    (Some(lag), _) => lag.to_string(),
                    (None, false) => LAG_UNKNOWN.to_string(),
                    (None, true) => before
                        .and_then(|b| b.lag.clone())
                        .unwrap_or_else(|| LAG_UNKNOWN.to_string()),
                });
            }
            status
        })
    };
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
        freshness: observed
            .freshness
            .as_ref()
            .map(|r| freshness::freshness_status(&r.summary, &r.objective, &r.window)),
    }
}

/// `previous` with the freshness of `reading` (figures and the `Fresh` condition) and
/// nothing else changed: what the canary refresh writes between reconciles.
pub fn with_freshness(
    previous: &OddsPipelineStatus,
    reading: &Reading,
    now: &str,
) -> OddsPipelineStatus {
    let mut status = previous.clone();
    let generation = previous
        .condition(ConditionType::Fresh)
        .and_then(|c| c.observed_generation)
        .or(previous.observed_generation);
    let fresh = fresh_condition(previous, reading, generation, now);
    status
        .conditions
        .retain(|c| c.type_ != ConditionType::Fresh.as_str());
    status.conditions.push(fresh);
    status.freshness = Some(freshness::freshness_status(
        &reading.summary,
        &reading.objective,
        &reading.window,
    ));
    status
}

/// The `Fresh` condition of `reading` ([`freshness::fresh_condition`]).
fn fresh_condition(
    previous: &OddsPipelineStatus,
    reading: &Reading,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let (ok, reason, message) = freshness::fresh_condition(&reading.summary, &reading.objective);
    condition(
        previous,
        ConditionType::Fresh,
        ok,
        reason,
        message,
        generation,
        now,
    )
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
