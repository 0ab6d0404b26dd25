//! The reconcile loop: dereference → validate → build → apply → status, and the kube-runtime
//! `Controller` that calls it for every pipeline and every change of a child it owns.

use crate::apply::apply_all;
use crate::build::{self, service, MigrationState};
use crate::crd::{OddsPipeline, OddsPipelineStatus};
use crate::metrics::Metrics;
use crate::observe;
use crate::prune;
use crate::status::{self, Observed};
use crate::validate::validate;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a reconcile failed (all transient: the controller retries with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the pipeline has no namespace")]
    NoNamespace,
}

impl Error {
    /// Short label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::NoNamespace => "no_namespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Option<Metrics>,
    /// Consecutive failures per pipeline (`namespace/name`), for the backoff of
    /// `error_policy`: one failing pipeline must not slow the retries of another.
    pub failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context that reports events as `odds-operator` (instance `instance`).
    pub fn new(client: kube::Client, instance: Option<String>, metrics: Option<Metrics>) -> Self {
        let reporter = Reporter {
            controller: build::FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// Requeue interval while something is still rolling out or waiting.
const REQUEUE_BUSY: Duration = Duration::from_secs(15);
/// Requeue interval of a settled pipeline (drift check).
const REQUEUE_IDLE: Duration = Duration::from_secs(300);

/// Reconciles one pipeline.
pub async fn reconcile(pipeline: Arc<OddsPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.as_ref().map(|m| {
        m.reconciles.inc();
        m.duration.start_timer()
    });
    let result = reconcile_inner(&pipeline, &ctx).await;
    drop(timer);
    if result.is_ok() {
        if let Ok(mut failures) = ctx.failures.lock() {
            failures.remove(&key(&pipeline));
        }
    }
    result
}

async fn reconcile_inner(pipeline: &OddsPipeline, ctx: &Context) -> Result<Action, Error> {
    let namespace = pipeline.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let previous = pipeline.status.clone().unwrap_or_default();
    let now = now();

    if pipeline.metadata.deletion_timestamp.is_some() {
        // Being deleted: garbage collection removes the children; re-applying them would
        // fight a foreground deletion.
        return Ok(Action::await_change());
    }
    if pipeline.is_paused() {
        let paused = status::paused(&previous, pipeline.metadata.generation, &now);
        if paused != previous {
            publish(
                ctx,
                pipeline,
                EventType::Normal,
                "ReconciliationPaused",
                "Paused",
                "reconciliation paused; children are left as they are".into(),
            )
            .await;
            write_status(client, pipeline, &namespace, &paused).await?;
        }
        return Ok(Action::await_change());
    }

    let facts = observe::facts(client, pipeline, &namespace).await?;
    let mut observed = Observed {
        generation: pipeline.metadata.generation,
        topics_ready: facts.topics_ready,
        external_kafka: pipeline.spec.kafka.cluster_ref.is_none(),
        migration: facts.migration.clone(),
        web_socket_url: Some(service::web_socket_url(pipeline)),
        ..Observed::default()
    };

    let missing = observe::missing_secrets(pipeline, &facts);
    let invalid = match validate(&pipeline.spec, &facts) {
        Err(invalid) => Some(invalid.to_string()),
        Ok(()) if !missing.is_empty() => Some(format!("missing Secret(s): {}", missing.join(", "))),
        Ok(()) => None,
    };
    if let Some(why) = invalid {
        // Nothing is applied: what runs keeps running until the spec is fixed.
        if previous
            .conditions
            .iter()
            .all(|c| !(c.type_ == "Degraded" && c.status == "True" && c.message == why))
        {
            publish(
                ctx,
                pipeline,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                why.clone(),
            )
            .await;
        }
        observed.invalid = Some(why);
        observed.components = observe::components(client, pipeline, &namespace).await?;
        return finish(ctx, pipeline, &namespace, &previous, &observed, &now).await;
    }

    let children = build::children(pipeline, &facts);
    for change in apply_all(client, &namespace, &children).await? {
        let action = format!("{:?}", change.outcome);
        let note = format!("{action} {} {}", change.kind, change.name);
        let event = Event {
            type_: EventType::Normal,
            reason: action,
            note: Some(note),
            action: "Apply".into(),
            secondary: Some(change.reference),
        };
        send(ctx, pipeline, &event).await;
    }
    let keep = prune::Keep::of(pipeline, &children);
    let migrated = facts.migration == MigrationState::Succeeded;
    for (what, reference) in prune::prune(client, pipeline, &keep, migrated).await? {
        let event = Event {
            type_: EventType::Normal,
            reason: "Deleted".into(),
            note: Some(format!("Deleted {what}: no longer in the spec")),
            action: "Prune".into(),
            secondary: Some(reference),
        };
        send(ctx, pipeline, &event).await;
    }
    for (component, why) in &children.blocked {
        let was_blocked = previous.conditions.iter().any(|c| {
            c.type_ == "Progressing" && c.message.contains(&format!("{} {why}", component.suffix()))
        });
        if !was_blocked {
            publish(
                ctx,
                pipeline,
                EventType::Normal,
                "RolloutBlocked",
                "Rollout",
                format!("{} waits: {why}", component.suffix()),
            )
            .await;
        }
    }
    if let MigrationState::Failed(why) = &facts.migration {
        if !previous
            .conditions
            .iter()
            .any(|c| c.type_ == "Migrated" && c.reason == "MigrationFailed")
        {
            publish(
                ctx,
                pipeline,
                EventType::Warning,
                "MigrationFailed",
                "Migrate",
                why.clone(),
            )
            .await;
        }
    }

    observed.blocked = children.blocked.clone();
    observed.components = observe::components(client, pipeline, &namespace).await?;
    finish(ctx, pipeline, &namespace, &previous, &observed, &now).await
}

/// Computes and (only if it changed) writes the status; picks the requeue interval.
async fn finish(
    ctx: &Context,
    pipeline: &OddsPipeline,
    namespace: &str,
    previous: &OddsPipelineStatus,
    observed: &Observed,
    now: &str,
) -> Result<Action, Error> {
    let next = status::compute(previous, observed, now);
    if &next != previous {
        write_status(&ctx.client, pipeline, namespace, &next).await?;
    }
    let ready = next
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if observed.invalid.is_some() {
        // A bad spec waits for the user's fix (a spec change triggers a reconcile), with a
        // slow recheck in case a missing Secret appears.
        Ok(Action::requeue(REQUEUE_IDLE))
    } else if ready {
        Ok(Action::requeue(REQUEUE_IDLE))
    } else {
        Ok(Action::requeue(REQUEUE_BUSY))
    }
}

async fn write_status(
    client: &kube::Client,
    pipeline: &OddsPipeline,
    namespace: &str,
    status: &OddsPipelineStatus,
) -> Result<(), Error> {
    let api: Api<OddsPipeline> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": OddsPipeline::api_version(&()),
        "kind": OddsPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        &pipeline.name_any(),
        &PatchParams::apply(build::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Publishes an event about the pipeline itself.
async fn publish(
    ctx: &Context,
    pipeline: &OddsPipeline,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    send(ctx, pipeline, &event).await;
}

/// Publishes `event` about `pipeline`; a failure is logged, never fails the reconcile.
async fn send(ctx: &Context, pipeline: &OddsPipeline, event: &Event) {
    if let Err(error) = ctx.recorder.publish(event, &pipeline.object_ref(&())).await {
        tracing::warn!(%error, reason = %event.reason, "cannot publish event");
    }
}

/// Transient failures retry with exponential backoff (5 s doubling up to 5 min).
pub fn error_policy(pipeline: Arc<OddsPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = match ctx.failures.lock() {
        Ok(mut failures) => {
            let count = failures.entry(key(&pipeline)).or_insert(0);
            *count = count.saturating_add(1);
            *count - 1
        }
        // A poisoned lock only loses the backoff history; retry at the base delay.
        Err(_) => 0,
    };
    if let Some(metrics) = &ctx.metrics {
        metrics
            .failures
            .with_label_values(&[error.metric_label()])
            .inc();
    }
    let delay = backoff(failures);
    tracing::warn!(pipeline = %pipeline.name_any(), %error, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

fn key(pipeline: &OddsPipeline) -> String {
    format!(
        "{}/{}",
        pipeline.namespace().unwrap_or_default(),
        pipeline.name_any()
    )
}

/// Backoff after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_secs(seconds.min(300))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
