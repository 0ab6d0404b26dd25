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
/// transitions that happen in this reconcile. Each condition is decided by a function of its
/// own below, from what was observed; this one puts them in their order and the components'
/// statuses beside them.
pub fn compute(
    previous: &OddsPipelineStatus,
    observed: &Observed,
    now: &str,
) -> OddsPipelineStatus {
    let waiting = Waiting::of(observed);
    let degraded = degradation(observed);
    let migration = migrated(observed);
    let is_migrated = migration.ok;
    let mut verdicts = vec![
        (ConditionType::TopicReady, topic_ready(observed)),
        (ConditionType::Migrated, migration),
        (ConditionType::Degraded, degraded_verdict(&degraded)),
        (ConditionType::Progressing, progressing(&degraded, &waiting)),
        (
            ConditionType::Ready,
            ready(observed, &degraded, is_migrated, &waiting),
        ),
        // A paused pipeline never gets here: its status comes from [`paused`].
        (
            ConditionType::ReconciliationPaused,
            Verdict::new(false, Reason::Reconciling, "reconciliation is active"),
        ),
    ];
    verdicts.extend(autoscaling(observed).map(|v| (ConditionType::Autoscaling, v)));
    verdicts.push((ConditionType::Watching, watching(observed)));
    let mut conditions: Vec<Condition> = verdicts
        .into_iter()
        .map(|(type_, v)| {
            condition(
                previous,
                type_,
                v.ok,
                v.reason,
                v.message,
                observed.generation,
                now,
            )
        })
        .collect();
    if observed.scaling.is_empty() {
        // Not decided in this reconcile: what the previous one reported still holds.
        conditions.extend(previous.condition(ConditionType::Autoscaling).cloned());
    }
    if let Some(reading) = &observed.freshness {
        conditions.push(fresh_condition(previous, reading, observed.generation, now));
    }
    OddsPipelineStatus {
        observed_generation: observed.generation,
        conditions,
        ingest: status_of_component(previous, observed, Component::Ingest),
        processor: status_of_component(previous, observed, Component::Processor),
        odds_service: status_of_component(previous, observed, Component::OddsService),
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

/// One condition's decision, before it becomes a [`Condition`] with its transition time.
struct Verdict {
    ok: bool,
    reason: Reason,
    message: String,
}

impl Verdict {
    fn new(ok: bool, reason: Reason, message: impl Into<String>) -> Verdict {
        Verdict {
            ok,
            reason,
            message: message.into(),
        }
    }
}

/// What still keeps components from being up: those held back (with why) and those with
/// fewer ready replicas than desired.
struct Waiting {
    blocked: Vec<String>,
    not_ready: Vec<String>,
}

impl Waiting {
    fn of(observed: &Observed) -> Waiting {
        Waiting {
            blocked: observed
                .blocked
                .iter()
                .map(|(c, why)| format!("{} {why}", c.suffix()))
                .collect(),
            not_ready: observed
                .components
                .iter()
                .filter(|(_, s)| s.ready_replicas < s.desired_replicas)
                .map(|(c, s)| format!("{} {}", c.suffix(), s.summary))
                .collect(),
        }
    }

    fn nothing(&self) -> bool {
        self.blocked.is_empty() && self.not_ready.is_empty()
    }
}

fn topic_ready(observed: &Observed) -> Verdict {
    match (observed.topics_ready, observed.external_kafka) {
        (true, true) => Verdict::new(
            true,
            Reason::ExternalKafka,
            "topics are managed outside Strimzi",
        ),
        (true, false) => Verdict::new(true, Reason::TopicsReady, "KafkaTopics are Ready"),
        (false, _) => Verdict::new(
            false,
            Reason::WaitingForTopic,
            "waiting for the KafkaTopics to become Ready",
        ),
    }
}

fn migrated(observed: &Observed) -> Verdict {
    match &observed.migration {
        MigrationState::Succeeded => {
            Verdict::new(true, Reason::Migrated, "schema migration succeeded")
        }
        MigrationState::Pending => Verdict::new(
            false,
            Reason::MigrationPending,
            "schema migration has not finished",
        ),
        MigrationState::Failed(why) => Verdict::new(false, Reason::MigrationFailed, why.clone()),
    }
}

fn degraded_verdict(degraded: &Option<Failure>) -> Verdict {
    match degraded {
        Some(failure) => Verdict::new(true, failure.reason, failure.message.clone()),
        None => Verdict::new(false, Reason::AsExpected, "no problems found"),
    }
}

/// Rolling out: something is held back or not ready yet, and nothing is wrong.
fn progressing(degraded: &Option<Failure>, waiting: &Waiting) -> Verdict {
    if degraded.is_none() && !waiting.nothing() {
        let mut parts = waiting.blocked.clone();
        parts.extend(waiting.not_ready.iter().map(|s| format!("{s} ready")));
        Verdict::new(true, Reason::RollingOut, parts.join(", "))
    } else {
        Verdict::new(false, Reason::Idle, "nothing is rolling out")
    }
}

/// Ready when nothing is wrong or pending; otherwise the first thing in the way, most
/// serious first.
fn ready(
    observed: &Observed,
    degraded: &Option<Failure>,
    migrated: bool,
    waiting: &Waiting,
) -> Verdict {
    if let Some(failure) = degraded {
        Verdict::new(false, failure.reason, failure.message.clone())
    } else if !waiting.blocked.is_empty() {
        Verdict::new(false, Reason::Waiting, waiting.blocked.join(", "))
    } else if !observed.topics_ready {
        Verdict::new(
            false,
            Reason::WaitingForTopic,
            "waiting for the KafkaTopics",
        )
    } else if !migrated {
        Verdict::new(
            false,
            Reason::MigrationPending,
            "waiting for the schema migration",
        )
    } else if !waiting.not_ready.is_empty() {
        Verdict::new(
            false,
            Reason::ComponentsNotReady,
            format!("not ready: {}", waiting.not_ready.join(", ")),
        )
    } else {
        Verdict::new(true, Reason::AllComponentsReady, "every component is ready")
    }
}

/// As requested, or the first fallback with every component's reason; `None` when this
/// reconcile did not decide scaling (the previous condition stands).
fn autoscaling(observed: &Observed) -> Option<Verdict> {
    if observed.scaling.is_empty() {
        return None;
    }
    let fallbacks: Vec<(Reason, String)> = observed
        .scaling
        .iter()
        .filter(|(_, s)| !s.as_requested())
        .map(|(c, s)| (s.reason, format!("{}: {}", c.suffix(), s.message)))
        .collect();
    let joined = |parts: Vec<String>, sep: &str| parts.join(sep);
    Some(match fallbacks.first() {
        Some((reason, _)) => Verdict::new(
            false,
            *reason,
            joined(fallbacks.iter().map(|(_, m)| m.clone()).collect(), "; "),
        ),
        None => Verdict::new(
            true,
            Reason::AsRequested,
            joined(
                observed
                    .scaling
                    .iter()
                    .map(|(c, s)| format!("{}: {}", c.suffix(), s.mode))
                    .collect(),
                ", ",
            ),
        ),
    })
}

/// Not part of `Ready`: the pipeline runs; the operator only notices changes of the failing
/// kind late (on its periodic requeue).
fn watching(observed: &Observed) -> Verdict {
    if observed.watch_failures.is_empty() {
        Verdict::new(
            true,
            Reason::AsExpected,
            "every watch the operator keeps for this pipeline works",
        )
    } else {
        Verdict::new(
            false,
            Reason::WatchFailed,
            observed.watch_failures.join("; "),
        )
    }
}

/// A component's status as observed, with its scaling (this reconcile's, or the previous
/// one's when not decided now) and, for the processor, its lag.
fn status_of_component(
    previous: &OddsPipelineStatus,
    observed: &Observed,
    c: Component,
) -> Option<ComponentStatus> {
    let before = match c {
        Component::Ingest => previous.ingest.as_ref(),
        Component::Processor => previous.processor.as_ref(),
        Component::OddsService => previous.odds_service.as_ref(),
        Component::Simulator => None,
    };
    let mut status = observed.components.get(&c).cloned()?;
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
    Some(status)
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
