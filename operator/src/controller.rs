//! The reconcile loop: dereference → validate → build → apply → status, and what the
//! kube-runtime `Controller` calls for every pipeline and every change of a child it owns.
//!
//! Every outcome lands in the pipeline's status: a bad spec, a child the API server refuses,
//! a missing permission or a missing Strimzi all end as `Degraded=True` with a specific reason
//! and the API server's message, plus one Warning event when that state begins. Failures that
//! may heal on their own (a refused apply, an unreachable API server) are also returned as
//! errors, so the controller retries them with backoff and the error metric counts them by
//! step.

use crate::apply::{self, apply_all, ApplyError};
use crate::build::scaling::Scaler;
use crate::build::{self, service, Component, Facts, MigrationState};
use crate::canaries::Canaries;
use crate::crd::{ConditionType, OddsPipeline, OddsPipelineStatus, Reason};
pub use crate::events::{fit_note, EVENT_NOTE_LIMIT, TRUNCATED_MARKER};
use crate::events::{publish, publish_about_child, EventSink};
use crate::freshness::Objective;
use crate::metrics::Metrics;
use crate::observe::{self, DereferenceError};
use crate::prune::{self, Pruner};
use crate::status::{self, Failure, Observed, LAG_UNKNOWN};
use crate::urls::RedisUrl;
use crate::validate::{validate, ValidPipeline};
use crate::watch::WatchHealth;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a reconcile failed, one variant per step; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the pipeline has no namespace")]
    NoNamespace,
    #[error(transparent)]
    Dereference(#[from] DereferenceError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The API server did not answer in time (kube sets no read timeout by default): the
    /// reconcile is abandoned and retried with backoff rather than held forever, which would
    /// also hold the controller's graceful shutdown.
    #[error("the reconcile did not finish within {0:?}: the Kubernetes API did not answer")]
    TimedOut(Duration),
    /// This replica lost the leader Lease: the reconcile was stopped where it was, before
    /// its next write (another replica may already lead and write).
    #[error("leadership lost: the reconcile was stopped before its next write")]
    NotLeader,
}

/// Writing the pipeline's status failed.
#[derive(Debug, thiserror::Error)]
#[error("writing the status of {name}: {source}")]
pub struct StatusError {
    pub name: String,
    #[source]
    pub source: kube::Error,
}

impl Error {
    /// Label of `odds_operator_reconcile_errors_total`: the step that failed.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoNamespace => "no_namespace",
            Self::Dereference(_) => "dereference",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
            Self::TimedOut(_) => "timeout",
            Self::NotLeader => "not_leader",
        }
    }

    /// The Kubernetes API error behind this failure, with the verb of the request that met
    /// it (`get`, `list`, `patch`, `delete`), for `odds_operator_api_errors_total`.
    pub fn api_error(&self) -> Option<(&'static str, &kube::Error)> {
        match self {
            Self::Dereference(e) => Some(("get", &e.source)),
            Self::Apply(e) => {
                let verb = match e.verb {
                    "get" => "get",
                    "list" => "list",
                    "delete" => "delete",
                    // Serializing the body is no request.
                    "serialize" => return None,
                    // Server-side apply, the replicas hand-over.
                    _ => "patch",
                };
                Some((verb, &e.source))
            }
            Self::Status(e) => Some(("patch", &e.source)),
            Self::NoNamespace | Self::TimedOut(_) | Self::NotLeader => None,
        }
    }

    /// How the failure shows in `Degraded`, when the step could still write the status.
    fn failure(&self) -> Option<Failure> {
        let reason = match self {
            Self::Dereference(e) => match apply::classify("", &e.source) {
                Reason::Forbidden => Reason::Forbidden,
                _ => Reason::ReadFailed,
            },
            Self::Apply(e) => e.reason(),
            // Writing a status would wait on the same API; a replica that lost the Lease
            // writes nothing.
            Self::NoNamespace | Self::Status(_) | Self::TimedOut(_) | Self::NotLeader => {
                return None
            }
        };
        Some(Failure {
            reason,
            message: self.to_string(),
        })
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
    /// Whether the cluster serves Strimzi's `KafkaTopic` (discovered at start-up and
    /// rechecked by `run` until it appears).
    pub strimzi: Arc<AtomicBool>,
    /// Whether the cluster serves KEDA's `ScaledObject` (discovered like Strimzi's).
    pub keda: Arc<AtomicBool>,
    /// Whether the cluster serves the Prometheus Operator's `PodMonitor` (discovered like
    /// KEDA's).
    pub pod_monitors: Arc<AtomicBool>,
    /// Per pipeline (`namespace/name`): its status as last written or confirmed by a
    /// reconcile, while something refreshes it between reconciles ([`refresh_lags`] the LAG
    /// of a processor that scales by lag, [`refresh_freshness`] the figures of a measured
    /// pipeline); `None` otherwise. Each slot's lock serializes the pipeline's status
    /// writes, so a refresh never writes an older status over a reconcile's or another
    /// refresh's.
    lag_slots: Mutex<BTreeMap<String, LagSlot>>,
    /// The freshness canary of every valid, running pipeline.
    pub canaries: Arc<Canaries>,
    /// The time conditions' transitions are stamped with (tests move it on at will).
    pub clock: Clock,
    /// Cancelled when this replica loses the leader Lease: every reconcile stops at once,
    /// wherever it is, and sends no further write (`run` also drops the controller).
    pub lost_leadership: CancellationToken,
    /// Failures of the controller's watches, shown in the status of the pipelines that
    /// depend on them.
    pub watches: Arc<WatchHealth>,
}

impl EventSink for Context {
    fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }
}

/// A source of the current time.
pub type Clock = Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>;

/// One pipeline's entry in [`Context::lag_slots`].
type LagSlot = Arc<tokio::sync::Mutex<Option<LagWatch>>>;

/// A pipeline whose status is refreshed between reconciles, as its last reconcile left it.
#[derive(Clone, Debug)]
struct LagWatch {
    namespace: String,
    name: String,
    /// The pipeline as reconciled (what events are about).
    pipeline: OddsPipeline,
    /// The stored status (what the reconcile wrote, or found already so).
    status: OddsPipelineStatus,
    /// Whether its processor scales by lag (and the pipeline is not degraded): the LAG
    /// refresh is for it.
    lag_based: bool,
}

impl Context {
    /// A context that reports events as `odds-operator` (instance `instance`); Strimzi is
    /// assumed present until `strimzi` says otherwise, KEDA absent until `keda` says it is
    /// there (the safe side: CPU scaling works everywhere).
    pub fn new(client: kube::Client, instance: Option<String>, metrics: Option<Metrics>) -> Self {
        let reporter = Reporter {
            controller: build::FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            watches: Arc::new(WatchHealth::new(metrics.clone())),
            metrics,
            failures: Mutex::new(HashMap::new()),
            strimzi: Arc::new(AtomicBool::new(true)),
            keda: Arc::new(AtomicBool::new(false)),
            pod_monitors: Arc::new(AtomicBool::new(false)),
            lag_slots: Mutex::new(BTreeMap::new()),
            canaries: Arc::new(Canaries::live()),
            clock: Arc::new(chrono::Utc::now),
            lost_leadership: CancellationToken::new(),
        }
    }

    /// Publishes `status`'s conditions as `odds_operator_pipeline_condition`.
    fn report_conditions(&self, pipeline: &OddsPipeline, status: &OddsPipelineStatus) {
        if let Some(metrics) = &self.metrics {
            metrics.set_conditions(
                &pipeline.namespace().unwrap_or_default(),
                &pipeline.name_any(),
                &status.conditions,
            );
        }
    }

    fn strimzi_installed(&self) -> bool {
        self.strimzi.load(Ordering::Relaxed)
    }

    fn keda_installed(&self) -> bool {
        self.keda.load(Ordering::Relaxed)
    }

    fn pod_monitors_installed(&self) -> bool {
        self.pod_monitors.load(Ordering::Relaxed)
    }

    /// The lag slot of pipeline `key` (created empty on first use).
    fn lag_slot(&self, key: &str) -> LagSlot {
        match self.lag_slots.lock() {
            Ok(mut slots) => slots.entry(key.to_string()).or_default().clone(),
            // A poisoned map only loses the refresh of the LAG column until a restart.
            Err(_) => LagSlot::default(),
        }
    }

    /// Every pipeline's lag slot.
    fn all_lag_slots(&self) -> Vec<LagSlot> {
        self.lag_slots
            .lock()
            .map(|slots| slots.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets pipeline `key`'s slot (it is gone).
    fn drop_lag_slot(&self, key: &str) {
        if let Ok(mut slots) = self.lag_slots.lock() {
            slots.remove(key);
        }
    }
}

/// Longest one reconcile may take. A reconcile makes a few dozen API calls, each answered
/// in milliseconds by a healthy API server.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);
/// Requeue interval while something is still rolling out or waiting.
const REQUEUE_BUSY: Duration = Duration::from_secs(15);
/// How often [`refresh_lags`] reads the lag of pipelines whose processor scales by lag: how
/// fresh the LAG column is (KEDA's own default polling interval).
pub const LAG_REFRESH: Duration = Duration::from_secs(30);
/// Requeue interval of a settled pipeline (drift check), or of one waiting for the user.
const REQUEUE_IDLE: Duration = Duration::from_secs(300);
/// How often [`refresh_freshness`] writes the canaries' figures into the statuses: how
/// fresh FRESH is, and how soon `Fresh` turns (a few status writes a minute per pipeline).
pub const FRESHNESS_REFRESH: Duration = Duration::from_secs(15);

/// Reconciles one pipeline. Stops at once, before its next request, when this replica loses
/// the leader Lease (`ctx.lost_leadership`).
pub async fn reconcile(pipeline: Arc<OddsPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ctx.lost_leadership.is_cancelled() {
        return Err(Error::NotLeader);
    }
    let timer = ctx.metrics.as_ref().map(|m| {
        m.reconciles.inc();
        m.duration.start_timer()
    });
    let result = tokio::select! {
        // Checked first at every wake-up: once the Lease is lost, the reconcile is dropped
        // where it waits, and its next write is never sent.
        biased;
        () = ctx.lost_leadership.cancelled() => Err(Error::NotLeader),
        result = tokio::time::timeout(RECONCILE_DEADLINE, reconcile_inner(&pipeline, &ctx)) => {
            result.unwrap_or(Err(Error::TimedOut(RECONCILE_DEADLINE)))
        }
    };
    drop(timer);
    match &result {
        Ok(_) => {
            if let Ok(mut failures) = ctx.failures.lock() {
                failures.remove(&key(&pipeline));
            }
        }
        Err(error) => {
            if let Some(metrics) = &ctx.metrics {
                metrics
                    .failures
                    .with_label_values(&[error.metric_label()])
                    .inc();
                if let Some((verb, source)) = error.api_error() {
                    metrics.api_error(verb, source);
                }
            }
        }
    }
    result
}

/// One reconcile, as the steps controller-rs and Stackable's operators take: dereference
/// (what the cluster has) → validate → build → apply → observe → status. Each step says
/// what stops the rest ([`Stop`]); [`Report`] turns what was observed up to there into the
/// status.
async fn reconcile_inner(pipeline: &OddsPipeline, ctx: &Context) -> Result<Action, Error> {
    let namespace = pipeline.namespace().ok_or(Error::NoNamespace)?;
    let previous = pipeline.status.clone().unwrap_or_default();
    let now = (ctx.clock)().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    if pipeline.metadata.deletion_timestamp.is_some() {
        // Being deleted: garbage collection removes the children it owns (KafkaTopics only
        // with `topicDeletionPolicy: Delete`); re-applying them would fight a foreground
        // deletion.
        ctx.drop_lag_slot(&key(pipeline));
        ctx.canaries.stop(&key(pipeline));
        return Ok(Action::await_change());
    }
    if pipeline.is_paused() {
        return pause(ctx, pipeline, &namespace, &previous, &now).await;
    }

    let mut observed = Observed {
        generation: pipeline.metadata.generation,
        external_kafka: pipeline.spec.kafka.cluster_ref.is_none(),
        web_socket_url: Some(service::web_socket_url(pipeline)),
        watch_failures: ctx.watches.failures_for(pipeline),
        ..Observed::default()
    };
    let report = Report {
        ctx,
        pipeline,
        namespace: &namespace,
        previous: &previous,
        now: &now,
    };
    match converge(&report, &mut observed).await {
        Ok(()) => report.finish(observed).await,
        Err(Stop::Waits(failure)) => {
            observed.failure = Some(failure);
            report.finish(observed).await
        }
        Err(Stop::Failed(error)) => report.fail(observed, error).await,
    }
}

/// Why a reconcile stopped before its last step.
enum Stop {
    /// The pipeline cannot run as it is (a bad spec, no Strimzi): nothing is applied, the
    /// status says why, and nothing is retried until something changes.
    Waits(Failure),
    /// A step failed: the status says so and the controller retries with backoff.
    Failed(Error),
}

impl From<DereferenceError> for Stop {
    fn from(error: DereferenceError) -> Self {
        Stop::Failed(error.into())
    }
}

impl From<ApplyError> for Stop {
    fn from(error: ApplyError) -> Self {
        Stop::Failed(error.into())
    }
}

/// A paused pipeline: its children are left as they are and its status says so.
async fn pause(
    ctx: &Context,
    pipeline: &OddsPipeline,
    namespace: &str,
    previous: &OddsPipelineStatus,
    now: &str,
) -> Result<Action, Error> {
    let paused = status::paused(previous, pipeline.metadata.generation, now);
    // No LAG refresh writes over the paused status.
    let slot = ctx.lag_slot(&key(pipeline));
    let mut watch = slot.lock().await;
    *watch = None;
    ctx.drop_lag_slot(&key(pipeline));
    // Paused children are not the operator's to judge: the status keeps the last
    // figures (with their `measuredAt`) and nothing is measured until it resumes.
    ctx.canaries.stop(&key(pipeline));
    if &paused != previous {
        publish(
            ctx,
            pipeline,
            EventType::Normal,
            Reason::Paused.as_str(),
            "Paused",
            "reconciliation paused; children are left as they are".into(),
        )
        .await;
        write_status(&ctx.client, &pipeline.name_any(), namespace, &paused).await?;
    }
    ctx.report_conditions(pipeline, &paused);
    Ok(Action::await_change())
}

/// The steps that bring the children into shape, each filling in `observed` as it goes.
async fn converge(report: &Report<'_>, observed: &mut Observed) -> Result<(), Stop> {
    let facts = dereference(report, observed).await?;
    let valid = validated(report, &facts).map_err(Stop::Waits)?;
    measure_freshness(report.ctx, report.pipeline, facts.redis_url.clone());
    let (children, pruner) = build_children(report, &valid, observed).await?;
    apply_children(report, &children, &pruner, observed).await?;
    observe_workloads(report, &valid, &children, observed).await?;
    Ok(())
}

/// Dereference: what the cluster has that the spec refers to (topics, Secrets, the
/// optional APIs).
async fn dereference(report: &Report<'_>, observed: &mut Observed) -> Result<Facts, Stop> {
    let ctx = report.ctx;
    if !observed.external_kafka && !ctx.strimzi_installed() {
        // Nothing is applied: the workloads would only wait for topics nobody creates.
        return Err(Stop::Waits(Failure {
            reason: Reason::StrimziNotInstalled,
            message: "kafka.clusterRef is set, but the cluster has no Strimzi KafkaTopic CRD (kafka.strimzi.io/v1): install Strimzi, or set kafka.bootstrapServers instead".into(),
        }));
    }
    let mut facts = observe::facts(&ctx.client, report.pipeline, report.namespace).await?;
    facts.keda_installed = ctx.keda_installed();
    facts.pod_monitors_installed = ctx.pod_monitors_installed();
    observed.topics_ready = facts.topics_ready;
    Ok(facts)
}

/// Validate: the spec against the rules and the facts.
fn validated(report: &Report<'_>, facts: &Facts) -> Result<ValidPipeline, Failure> {
    validate(report.pipeline, facts).map_err(|invalid| {
        // Nothing is applied: what runs keeps running until the spec is fixed.
        report.ctx.canaries.stop(&key(report.pipeline));
        Failure {
            reason: Reason::InvalidSpec,
            message: invalid.to_string(),
        }
    })
}

/// Build: the children the spec asks for, and the autoscalers it no longer wants removed
/// before anything is applied.
async fn build_children<'a>(
    report: &Report<'a>,
    valid: &'a ValidPipeline,
    observed: &mut Observed,
) -> Result<(build::Children, Pruner<'a>), Stop> {
    let (ctx, pipeline) = (report.ctx, report.pipeline);
    let client = &ctx.client;
    let migration = observe::migration(client, valid).await?;
    observed.migration = migration.clone();
    let mut children = build::children(valid, &migration);
    observed.blocked = children.blocked.clone();
    observed.scaling = children.scaling.clone();
    report.announce_scaling_modes(&children).await;
    let pruner = Pruner::new(client, valid, &children);
    // Before anything is applied: the autoscaler a component no longer wants goes first, so
    // the one it wants now never scales the same Deployment beside it.
    let deleted = pruner.autoscalers().await?;
    announce_deleted(ctx, pipeline, deleted).await;
    // An HPA, or a fixed `replicas`, waits until the ScaledObject it replaces is gone (the
    // ScaledObject's deletion reconciles the pipeline again through the watch): until then
    // KEDA's HPA may still scale the Deployment.
    let leaving = pruner.scaled_objects_leaving().await?;
    children.await_release(valid, &leaving);
    observed.scaling = children.scaling.clone();
    Ok((children, pruner))
}

/// Apply: every child, then what is no longer wanted pruned; each change is an event.
async fn apply_children(
    report: &Report<'_>,
    children: &build::Children,
    pruner: &Pruner<'_>,
    observed: &Observed,
) -> Result<(), Stop> {
    let (ctx, pipeline) = (report.ctx, report.pipeline);
    let (changes, applied) = apply_all(&ctx.client, report.namespace, children).await;
    announce_changes(ctx, pipeline, changes).await;
    applied?;
    let migrated = observed.migration == MigrationState::Succeeded;
    let deleted = pruner.prune(migrated).await?;
    announce_deleted(ctx, pipeline, deleted).await;
    report.announce_blocked(children).await;
    Ok(())
}

/// Observe: the workloads' pods and, for a processor scaled by lag, its lag.
async fn observe_workloads(
    report: &Report<'_>,
    valid: &ValidPipeline,
    children: &build::Children,
    observed: &mut Observed,
) -> Result<(), Stop> {
    let ctx = report.ctx;
    let workloads = observe::components(&ctx.client, &valid.name, report.namespace).await?;
    (observed.components, observed.stuck) = (workloads.components, workloads.stuck);
    let lag_based = children
        .scaling
        .get(&Component::Processor)
        .is_some_and(|s| s.scaler == Scaler::Keda);
    if lag_based {
        // Informational: a failed read leaves the lag unknown rather than failing the
        // reconcile that already brought the children into shape.
        match observe::processor_lag(&ctx.client, &valid.name, report.namespace).await {
            Ok(lag) => observed.lag = lag,
            Err(error) => {
                tracing::warn!(%error, "cannot read the processor's lag");
                if let Some(metrics) = &ctx.metrics {
                    metrics.api_error("get", &error.source);
                }
            }
        }
    }
    Ok(())
}

/// One event per applied change, and one more per Deployment whose `replicas` the spec
/// changed.
async fn announce_changes(ctx: &Context, pipeline: &OddsPipeline, changes: Vec<apply::Change>) {
    for change in changes {
        let action = format!("{:?}", change.outcome);
        let note = format!("{action} {} {}", change.kind, change.name);
        let reference = change.reference.clone();
        publish_about_child(ctx, pipeline, &action, "Apply", note, reference).await;
        if let Some((was, now)) = change.scaled {
            let note = format!(
                "Scaled Deployment {} from {was} to {now} replicas (spec)",
                change.name
            );
            publish_about_child(ctx, pipeline, "Scaled", "Scale", note, change.reference).await;
        }
    }
}

/// Starts (or keeps) the canary of a pipeline that passed validation (so `spec.slo` is
/// valid): the WebSocket of its odds-service Service, judged by `spec.slo`, its figures
/// published to the pipeline's Redis for the odds page.
fn measure_freshness(ctx: &Context, pipeline: &OddsPipeline, redis: Option<RedisUrl>) {
    let pipeline_key = key(pipeline);
    match Objective::of(&pipeline.spec.slo) {
        Ok(objective) => ctx.canaries.ensure(
            &pipeline_key,
            service::web_socket_url(pipeline),
            redis,
            objective,
            pipeline.spec.slo.window.clone(),
        ),
        Err(_) => ctx.canaries.stop(&pipeline_key),
    }
}

/// One event when the `Fresh` verdict changes (status or reason): Warning when it turns
/// bad, Normal when it recovers; a first verdict that is good is not news.
async fn announce_freshness(
    ctx: &Context,
    pipeline: &OddsPipeline,
    previous: &OddsPipelineStatus,
    next: &OddsPipelineStatus,
) {
    let Some(now) = next.condition(ConditionType::Fresh) else {
        return;
    };
    let before = previous.condition(ConditionType::Fresh);
    let same = before.is_some_and(|b| b.status == now.status && b.reason == now.reason);
    let first_and_good = before.is_none() && now.status == "True";
    if same || first_and_good {
        return;
    }
    let type_ = if now.status == "True" {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(
        ctx,
        pipeline,
        type_,
        &now.reason,
        "Measure",
        now.message.clone(),
    )
    .await;
}

/// Writes every measured pipeline's canary figures into its status between reconciles (the
/// status the last reconcile left, with new `freshness` and `Fresh`), announces verdict
/// changes, and publishes the canaries' metrics. No child is read or applied.
pub async fn refresh_freshness(ctx: &Context) {
    let now = (ctx.clock)().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for slot in ctx.all_lag_slots() {
        let mut guard = slot.lock().await;
        let Some(watch) = guard.as_mut() else {
            continue;
        };
        let pipeline_key = key_of(&watch.namespace, &watch.name);
        let Some(reading) = ctx.canaries.reading(&pipeline_key) else {
            continue;
        };
        let next = status::with_freshness(&watch.status, &reading, &now);
        if next != watch.status {
            let written = tokio::time::timeout(
                RECONCILE_DEADLINE,
                write_status(&ctx.client, &watch.name, &watch.namespace, &next),
            )
            .await;
            match written {
                Ok(Ok(())) => {
                    announce_freshness(ctx, &watch.pipeline, &watch.status, &next).await;
                    ctx.report_conditions(&watch.pipeline, &next);
                    watch.status = next;
                }
                Ok(Err(StatusError {
                    source: kube::Error::Api(status),
                    ..
                })) if status.code == 404 => {
                    // Deleted (a pipeline without finalizers is never reconciled again).
                    if let Some(metrics) = &ctx.metrics {
                        metrics.freshness.forget(&watch.namespace, &watch.name);
                    }
                    *guard = None;
                    drop(guard);
                    ctx.drop_lag_slot(&pipeline_key);
                    ctx.canaries.stop(&pipeline_key);
                    continue;
                }
                Ok(Err(error)) => {
                    tracing::warn!(pipeline = %pipeline_key, %error, "cannot write the freshness figures");
                }
                Err(_) => {
                    tracing::warn!(pipeline = %pipeline_key, "writing the freshness figures timed out");
                }
            }
        }
        if let Some(metrics) = &ctx.metrics {
            let freshness = &metrics.freshness;
            ctx.canaries
                .report(freshness, &watch.namespace, &watch.name, &pipeline_key);
        }
    }
}

/// [`refresh_freshness`] every [`FRESHNESS_REFRESH`], for as long as the controller runs.
pub async fn refresh_freshness_periodically(ctx: Arc<Context>) {
    every(FRESHNESS_REFRESH, || refresh_freshness(&ctx)).await
}

/// Runs `step` every `period`, for ever; a step that overruns delays the next rather than
/// bunching the missed ones up.
async fn every<F: std::future::Future<Output = ()>>(period: Duration, mut step: impl FnMut() -> F) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        step().await;
    }
}

/// Publishes one event per deleted child.
async fn announce_deleted(ctx: &Context, pipeline: &OddsPipeline, deleted: Vec<prune::Deleted>) {
    for (what, reference) in deleted {
        let note = format!("Deleted {what}: no longer in the spec");
        publish_about_child(ctx, pipeline, "Deleted", "Prune", note, reference).await;
    }
}

/// Writes what a reconcile found into the status.
struct Report<'a> {
    ctx: &'a Context,
    pipeline: &'a OddsPipeline,
    namespace: &'a str,
    previous: &'a OddsPipelineStatus,
    now: &'a str,
}

impl Report<'_> {
    /// Computes and (only if it changed) writes the status, publishes a Warning event when a
    /// degradation begins or changes, and picks the requeue interval.
    async fn finish(&self, mut observed: Observed) -> Result<Action, Error> {
        observed.freshness = self.ctx.canaries.reading(&key(self.pipeline));
        let next = status::compute(self.previous, &observed, self.now);
        announce_freshness(self.ctx, self.pipeline, self.previous, &next).await;
        self.announce_degradation(&observed, &next).await;
        self.announce_watch_failure(&observed, &next).await;
        self.store(&observed, &next).await?;
        // A degraded pipeline waits for a change (the spec, a Secret, a retry annotation,
        // or the controller's own retry of a transient error), with a slow recheck.
        if next.is_true(ConditionType::Ready) || next.is_true(ConditionType::Degraded) {
            Ok(Action::requeue(REQUEUE_IDLE))
        } else {
            Ok(Action::requeue(REQUEUE_BUSY))
        }
    }

    /// A `RolloutBlocked` event for each workload newly held back.
    async fn announce_blocked(&self, children: &build::Children) {
        let (ctx, pipeline, previous) = (self.ctx, self.pipeline, self.previous);
        for (component, why) in &children.blocked {
            // On transitions only: a workload that stays held back is not news.
            let was = previous
                .held_back
                .iter()
                .any(|h| h.component == component.suffix() && h.reason == why.as_str());
            if !was {
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
    }

    /// Publishes a `ScalingModeChanged` event for each component whose mode in force (or the
    /// reason for it) differs from what the previous status reported.
    async fn announce_scaling_modes(&self, children: &build::Children) {
        let (ctx, pipeline, previous) = (self.ctx, self.pipeline, self.previous);
        for (component, scaling) in &children.scaling {
            let before = match component {
                Component::Ingest => previous.ingest.as_ref(),
                Component::Processor => previous.processor.as_ref(),
                Component::OddsService => previous.odds_service.as_ref(),
                Component::Simulator => None,
            }
            .and_then(|s| s.scaling.as_ref());
            // The first mode of a component is in its status, not news; a change is.
            let Some(before) = before else { continue };
            let now = scaling.status();
            if before.mode == now.mode && before.reason == now.reason {
                continue;
            }
            let was = &before.mode;
            // Events fold into a series by reason, action and related object, not by note: the
            // transition as the action and the Deployment as the related object keep each
            // change of each component its own event.
            let deployment = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: Some(component.name_in(&pipeline.name_any())),
                namespace: pipeline.namespace(),
                ..Default::default()
            };
            let note = format!(
                "{} scales by {} (was {was}), {}: {}",
                component.suffix(),
                now.mode,
                now.reason,
                now.message
            );
            let action = format!("{was}To{}", now.mode);
            publish_about_child(
                ctx,
                pipeline,
                "ScalingModeChanged",
                &action,
                note,
                deployment,
            )
            .await;
        }
    }

    /// A Warning event when a degradation begins or changes, a Normal one when it heals.
    async fn announce_degradation(&self, observed: &Observed, next: &OddsPipelineStatus) {
        let was_degraded = self
            .previous
            .condition(ConditionType::Degraded)
            .filter(|c| c.status == "True");
        if let Some(failure) = status::degradation(observed) {
            let news = was_degraded.is_none_or(|c| {
                c.reason != failure.reason.as_str() || c.message != failure.message
            });
            if news {
                publish(
                    self.ctx,
                    self.pipeline,
                    EventType::Warning,
                    failure.reason.as_str(),
                    action_of(failure.reason),
                    failure.message.clone(),
                )
                .await;
            }
        } else if let Some(was) = was_degraded {
            // Healed: said once, on the transition, as the degradation was.
            publish(
                self.ctx,
                self.pipeline,
                EventType::Normal,
                "Recovered",
                "Reconcile",
                format!(
                    "no longer degraded (was {}): {}",
                    was.reason,
                    ready_summary(next)
                ),
            )
            .await;
        }
    }

    /// A Warning event when a watch the pipeline depends on starts failing.
    async fn announce_watch_failure(&self, observed: &Observed, next: &OddsPipelineStatus) {
        let watch_failed = |status: &OddsPipelineStatus| {
            status
                .condition(ConditionType::Watching)
                .is_some_and(|c| c.status == "False")
        };
        if watch_failed(next) && !watch_failed(self.previous) {
            publish(
                self.ctx,
                self.pipeline,
                EventType::Warning,
                Reason::WatchFailed.as_str(),
                "Watch",
                observed.watch_failures.join("; "),
            )
            .await;
        }
    }

    /// Writes `next` (only if it changed) under the pipeline's lag slot, and leaves in that
    /// slot what the refreshes between reconciles need.
    async fn store(&self, observed: &Observed, next: &OddsPipelineStatus) -> Result<(), Error> {
        let pipeline_key = key(self.pipeline);
        let degraded = next.is_true(ConditionType::Degraded);
        let lag_based = observed
            .scaling
            .get(&Component::Processor)
            .is_some_and(|s| s.scaler == Scaler::Keda);
        let name = self.pipeline.name_any();
        let slot = self.ctx.lag_slot(&pipeline_key);
        let mut watch = slot.lock().await;
        if next != self.previous {
            write_status(&self.ctx.client, &name, self.namespace, next).await?;
        }
        self.ctx.report_conditions(self.pipeline, next);
        // Between reconciles the LAG column follows KEDA's decisions through
        // [`refresh_lags`] (a degraded pipeline waits for a change instead), and the
        // freshness figures follow the canary through [`refresh_freshness`].
        let lag_based = lag_based && !degraded;
        let measured = self.ctx.canaries.measures(&pipeline_key);
        *watch = (lag_based || measured).then(|| LagWatch {
            namespace: self.namespace.to_string(),
            name,
            pipeline: self.pipeline.clone(),
            status: next.clone(),
            lag_based,
        });
        if watch.is_none() {
            self.ctx.drop_lag_slot(&pipeline_key);
        }
        Ok(())
    }

    /// Reports `error` in the status (as far as the API server lets us) and returns it, so
    /// the controller retries with backoff.
    async fn fail(&self, mut observed: Observed, error: Error) -> Result<Action, Error> {
        observed.failure = error.failure();
        match observed.failure.as_ref().map(|f| f.reason) {
            Some(Reason::KedaNotInstalled) => {
                // KEDA was uninstalled after start-up: scale by CPU from the next reconcile
                // on (its retry comes with backoff) rather than failing until a restart.
                tracing::warn!("KEDA's ScaledObject API is gone: falling back to CPU autoscaling");
                self.ctx.keda.store(false, Ordering::Relaxed);
            }
            Some(Reason::MetricsUnavailable) => {
                // Likewise for the Prometheus Operator's PodMonitor: connections mode scales
                // by CPU from the next reconcile on.
                tracing::warn!(
                    "the PodMonitor API is gone: connections autoscaling falls back to CPU"
                );
                self.ctx.pod_monitors.store(false, Ordering::Relaxed);
            }
            _ => {}
        }
        if observed.failure.is_some() {
            match observe::components(&self.ctx.client, &self.pipeline.name_any(), self.namespace)
                .await
            {
                Ok(workloads) => observed.components = workloads.components,
                Err(_) => keep_components(&mut observed, self.previous),
            }
            if let Err(status_error) = self.finish(observed).await {
                tracing::warn!(error = %status_error, "cannot report the failure in the status");
            }
        }
        Err(error)
    }
}

/// The `Ready` condition's status and message, for an event.
fn ready_summary(status: &OddsPipelineStatus) -> String {
    status
        .condition(ConditionType::Ready)
        .map(|c| format!("Ready={}: {}", c.status, c.message))
        .unwrap_or_default()
}

/// Keeps the pod counts of the previous status when they cannot be read now.
fn keep_components(observed: &mut Observed, previous: &OddsPipelineStatus) {
    for (component, status) in [
        (Component::Ingest, &previous.ingest),
        (Component::Processor, &previous.processor),
        (Component::OddsService, &previous.odds_service),
    ] {
        if let Some(status) = status {
            observed.components.insert(component, status.clone());
        }
    }
}

/// The event `action` of a degradation.
fn action_of(reason: Reason) -> &'static str {
    match reason {
        Reason::InvalidSpec => "Validate",
        Reason::MigrationFailed => "Migrate",
        Reason::ReadFailed => "Read",
        _ => "Apply",
    }
}

/// Writes the whole status of pipeline `name` (server-side apply: what it leaves out goes).
async fn write_status(
    client: &kube::Client,
    name: &str,
    namespace: &str,
    status: &OddsPipelineStatus,
) -> Result<(), StatusError> {
    let api: Api<OddsPipeline> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": OddsPipeline::api_version(&()),
        "kind": OddsPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(build::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| StatusError {
        name: name.to_string(),
        source,
    })?;
    Ok(())
}

/// Refreshes the LAG column of every pipeline whose processor scales by lag, between
/// reconciles: reads the lag KEDA's HPA last saw (the ScaledObject and that HPA, two GETs)
/// and writes the status only when the lag changed, with nothing else changed (the status
/// the last reconcile left, with the new lag). No child is read or applied: changes to the
/// spec or the children reconcile through the watches, as always.
pub async fn refresh_lags(ctx: &Context) {
    for slot in ctx.all_lag_slots() {
        let mut guard = slot.lock().await;
        let Some(watch) = guard.as_mut().filter(|w| w.lag_based) else {
            continue;
        };
        let refreshed =
            tokio::time::timeout(RECONCILE_DEADLINE, refresh_lag(&ctx.client, watch)).await;
        match refreshed {
            Ok(Ok(())) => {}
            Ok(Err(RefreshError::Gone)) => {
                let gone = key_of(&watch.namespace, &watch.name);
                *guard = None;
                drop(guard);
                ctx.drop_lag_slot(&gone);
            }
            Ok(Err(RefreshError::Failed(error))) => {
                tracing::warn!(pipeline = %watch.name, %error, "cannot refresh the processor's lag");
            }
            Err(_) => {
                tracing::warn!(pipeline = %watch.name, "refreshing the processor's lag timed out");
            }
        }
    }
}

/// [`refresh_lags`] every [`LAG_REFRESH`], for as long as the controller runs.
pub async fn refresh_lags_periodically(ctx: Arc<Context>) {
    every(LAG_REFRESH, || refresh_lags(&ctx)).await
}

/// Why one pipeline's lag was not refreshed.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    /// The pipeline was deleted.
    #[error("the pipeline is gone")]
    Gone,
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

async fn refresh_lag(client: &kube::Client, watch: &mut LagWatch) -> Result<(), RefreshError> {
    let lag = observe::processor_lag(client, &watch.name, &watch.namespace)
        .await
        .map_err(|e| RefreshError::Failed(Box::new(e)))?;
    let lag = lag.map_or_else(|| LAG_UNKNOWN.to_string(), |lag| lag.to_string());
    let mut next = watch.status.clone();
    // The lag lives in the processor's status, there once its Deployment is.
    let Some(processor) = next.processor.as_mut() else {
        return Ok(());
    };
    if processor.lag.as_deref() == Some(lag.as_str()) {
        return Ok(());
    }
    processor.lag = Some(lag);
    match write_status(client, &watch.name, &watch.namespace, &next).await {
        Ok(()) => {
            watch.status = next;
            Ok(())
        }
        Err(StatusError {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 404 => Err(RefreshError::Gone),
        Err(error) => Err(RefreshError::Failed(Box::new(error))),
    }
}

/// What decides whether a change of a pipeline reconciles it: its spec (through
/// `metadata.generation`), annotations (pause, migration retry), labels and deletion. Its
/// status is left out: the operator writes it itself (every status write would otherwise
/// reconcile the pipeline once more, and a LAG refresh every 30 s would cost a full
/// reconcile).
pub fn reconcile_trigger(pipeline: &OddsPipeline) -> Option<u64> {
    let meta = &pipeline.metadata;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
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
    let delay = backoff(failures);
    tracing::warn!(pipeline = %pipeline.name_any(), %error, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

fn key(pipeline: &OddsPipeline) -> String {
    key_of(
        &pipeline.namespace().unwrap_or_default(),
        &pipeline.name_any(),
    )
}

fn key_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Backoff after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_secs(seconds.min(300))
}
