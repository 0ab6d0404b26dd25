//! `odds-operator run`: ops server, leader election, and the controller.
//!
//! Only the leader runs the controller; a replica that loses the Lease drops its controller
//! at once (its in-flight reconciles stop before their next write, see [`operate`]) and exits
//! non-zero so Kubernetes restarts it as a fresh follower.

use crate::build::TriggerAuthentication;
use crate::build::{topic, KafkaTopic, KafkaUser, PodMonitor, ScaledObject};
use crate::controller::{self, error_policy, reconcile, Context};
use crate::crd::OddsPipeline;
use crate::discovery::{Discovered, Discovery};
use crate::leader::{self, Elector, LeaseConfig};
use crate::metrics::{Metrics, PipelineSeries};
use crate::observe;
use crate::watch::WatchHealth;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::ResourceExt;
use odds_runtime::{ops::ops_router, serve_http, OpsArgs, Readiness};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Flags of `odds-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Namespaces to serve, comma-separated (or the flag repeated); every namespace when
    /// absent. With a list, the operator needs permissions only in those namespaces (the
    /// chart's `watchNamespaces` grants a Role in each and nothing cluster-wide).
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Campaign for the leader Lease before reconciling (turn off only for a single replica).
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "odds-operator-leader")]
    pub lease_name: String,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "odds-operator")]
    pub identity: String,
    /// Watch Strimzi KafkaTopics when the cluster has their CRD (discovered at start-up and
    /// rechecked every minute until it appears); `false` never watches them (topic readiness
    /// is then only seen on the periodic requeue).
    #[arg(long, env = "WATCH_KAFKA_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_kafka_topics: bool,
    #[command(flatten)]
    pub ops: OpsArgs,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Runtime(#[from] odds_runtime::RuntimeError),
    #[error("leadership lost")]
    LeadershipLost,
    #[error("leader election: {0}")]
    Lease(#[from] leader::ConfigError),
}

/// Runs until SIGTERM (Ok) or loss of leadership (Err).
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let registry = Metrics::registry()?;
    let metrics = Metrics::register(&registry)?;
    let readiness = Readiness::new(&["kubernetes"]);
    let (addr, ops_task) = serve_http(
        args.ops.http_addr,
        ops_router(readiness.clone(), registry.registry().clone()),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, "ops server listening");

    let client = kube::Client::try_default().await?;
    // Followers are ready too: a rolling update of the operator must not wait for leadership.
    readiness.set("kubernetes", true);
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
    let lease = LeaseConfig::new(
        args.lease_name.clone(),
        args.lease_namespace.clone(),
        args.identity.clone(),
    );
    lease.check()?;
    let lost = CancellationToken::new();
    // Renewal stops only after the controller drained, not at SIGTERM: reconciles still in
    // flight must finish under a valid lease.
    let stop_renewing = CancellationToken::new();
    let mut keeper = None;
    if args.leader_election {
        tracing::info!(identity = %lease.identity, "waiting for leadership");
        let mut elector = Elector::new(lease_api, lease).with_gauge(metrics.leader.clone());
        if !leader::acquire(&mut elector, &shutdown).await {
            let _ = ops_task.await;
            return Ok(());
        }
        tracing::info!("leading");
        keeper = Some(tokio::spawn(leader::keep(
            elector,
            stop_renewing.clone(),
            lost.clone(),
        )));
    } else {
        metrics.leader.set(1);
    }

    let mut ctx = Context::new(client.clone(), Some(args.identity.clone()), Some(metrics));
    ctx.lost_leadership = lost.clone();
    let scope = Scope {
        namespaces: args.namespaces.clone(),
        watch_kafka_topics: args.watch_kafka_topics,
    };
    let ctx = Arc::new(ctx);
    // The LAG column of lag-scaled pipelines, refreshed between reconciles.
    let lag_refresh = tokio::spawn(controller::refresh_lags_periodically(ctx.clone()));
    // The canaries' figures in the statuses, refreshed between reconciles.
    let freshness_refresh = tokio::spawn(controller::refresh_freshness_periodically(ctx.clone()));
    operate(&client, &scope, ctx, shutdown.clone()).await;
    lag_refresh.abort();
    freshness_refresh.abort();
    stop_renewing.cancel();
    if let Some(keeper) = keeper {
        match keeper.await {
            Ok(mut elector) if !lost.is_cancelled() => {
                if let Err(error) = elector.release().await {
                    tracing::warn!(%error, "cannot release the leader Lease");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "leader election task failed"),
        }
    }
    if lost.is_cancelled() {
        return Err(RunError::LeadershipLost);
    }
    let _ = ops_task.await;
    Ok(())
}

/// Where the controllers list and watch: one per served namespace (each sees only its own),
/// or one for the whole cluster when none is named.
pub fn scopes(namespaces: &[String]) -> Vec<Option<&str>> {
    if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    }
}

/// What the controller watches.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The namespaces served (one controller each), or all when empty.
    pub namespaces: Vec<String>,
    /// Watch Strimzi's KafkaTopics when the cluster serves them (`--watch-kafka-topics`).
    pub watch_kafka_topics: bool,
}

/// Discovers the optional APIs, then runs the controller (on the leader) until `shutdown`
/// or the loss of leadership (`ctx.lost_leadership`).
///
/// - On `shutdown` the controller drains: no new reconcile starts, those in flight finish
///   (the caller keeps renewing the Lease meanwhile).
/// - On the loss of leadership it stops at once: the controller is dropped with its
///   in-flight reconciles, which also stop themselves before their next write (another
///   replica may already lead).
/// - When discovery's answer changes (a CRD installed, or removed: a 404 for its group
///   version), the controller restarts with the watches the new answer implies: a watch of a
///   removed CRD would fail forever and hold every other watch back through the
///   controller's shared backoff.
pub async fn operate(
    client: &kube::Client,
    scope: &Scope,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let lost = ctx.lost_leadership.clone();
    let stop = CancellationToken::new();
    let stopper = tokio::spawn({
        let (stop, stopping) = (
            stop.clone(),
            either_cancelled(shutdown.clone(), lost.clone()),
        );
        async move {
            stopping.await;
            stop.cancel();
        }
    });
    let mut discovery = Discovery::new(client.clone(), ctx.clone());
    let Some(mut found) = discovery.until_known(&stop).await else {
        stopper.abort();
        return;
    };
    let mut warned = Discovered::default();
    loop {
        warned = warn_missing(found, warned);
        let changed = CancellationToken::new();
        let poll = tokio::spawn(discovery.poll(found, changed.clone()));
        run_controllers(client, scope, &ctx, found, &shutdown, &changed).await;
        if !changed.is_cancelled() || stop.is_cancelled() {
            poll.abort();
            break;
        }
        discovery = match poll.await {
            Ok(discovery) => discovery,
            Err(error) => {
                tracing::error!(%error, "discovery task failed");
                break;
            }
        };
        let now = discovery.current();
        tracing::info!(
            strimzi = now.strimzi,
            keda = now.keda,
            "the optional APIs the cluster serves changed: restarting the controller with the watches they need"
        );
        found = now;
    }
    stopper.abort();
}

/// Resolves when `a` or `b` is cancelled.
async fn either_cancelled(a: CancellationToken, b: CancellationToken) {
    tokio::select! {
        () = a.cancelled() => {}
        () = b.cancelled() => {}
    }
}

/// Warns once about each optional API the cluster does not serve (again if it goes missing
/// again after coming back); returns what was warned about.
fn warn_missing(found: Discovered, warned: Discovered) -> Discovered {
    if !found.strimzi && !warned.strimzi {
        tracing::warn!(
            "Strimzi's KafkaTopic CRD (kafka.strimzi.io/v1) is not installed: KafkaTopics are not watched, and pipelines with kafka.clusterRef report Degraded/StrimziNotInstalled until it is"
        );
    }
    if !found.keda && !warned.keda {
        tracing::warn!(
            "KEDA's ScaledObject CRD (keda.sh/v1alpha1) is not installed: lag and connections autoscaling fall back to CPU (Autoscaling/KedaNotInstalled) until it is"
        );
    }
    if !found.pod_monitors && !warned.pod_monitors {
        tracing::warn!(
            "the Prometheus Operator's PodMonitor CRD (monitoring.coreos.com/v1) is not installed: connections autoscaling with podMonitor falls back to CPU (Autoscaling/MetricsUnavailable) until it is"
        );
    }
    Discovered {
        strimzi: !found.strimzi,
        keda: !found.keda,
        pod_monitors: !found.pod_monitors,
    }
}

/// Runs one controller per served namespace (each lists and watches only there), or one for
/// the whole cluster, with the watches `found` allows, until `shutdown` or `changed` (they
/// drain) or the loss of leadership (they stop at once).
async fn run_controllers(
    client: &kube::Client,
    scope: &Scope,
    ctx: &Arc<Context>,
    found: Discovered,
    shutdown: &CancellationToken,
    changed: &CancellationToken,
) {
    let lost = &ctx.lost_leadership;
    let runs = scopes(&scope.namespaces).into_iter().map(|namespace| {
        controller(
            client,
            namespace,
            found.strimzi && scope.watch_kafka_topics,
            found.keda,
            found.pod_monitors,
            ctx,
        )
        .graceful_shutdown_on(either_cancelled(shutdown.clone(), changed.clone()))
        .run(reconcile, error_policy, ctx.clone())
        // Not graceful: dropping the stream aborts the reconciles in flight.
        .take_until(lost.clone().cancelled_owned())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pipeline = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
    });
    futures_util::future::join_all(runs).await;
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// `(api group, plural)` of every kind the controller watches (list + watch): the same types
/// [`controller`] passes to `Controller::new`, `owns` and `watches`.
pub fn watched_resources() -> Vec<(String, String)> {
    fn of<K: kube::Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }
    vec![
        of::<OddsPipeline>(),
        of::<ConfigMap>(),
        of::<Job>(),
        of::<Deployment>(),
        of::<Service>(),
        of::<PodDisruptionBudget>(),
        of::<HorizontalPodAutoscaler>(),
        of::<Ingress>(),
        of::<NetworkPolicy>(),
        of::<KafkaTopic>(),
        of::<KafkaUser>(),
        of::<ScaledObject>(),
        of::<TriggerAuthentication>(),
        of::<PodMonitor>(),
        of::<Secret>(),
    ]
}

/// The controller: pipelines, every kind of child it owns (a child's change reconciles its
/// owner), the pipelines' KafkaTopics (by label), and the Secrets pipelines reference. Every
/// watch stream reports to `ctx.watches` under its resource's name ([`WatchHealth`]); the
/// pipelines' stream also removes a deleted pipeline's condition series.
///
/// A pipeline reconciles when its spec, annotations, labels or deletion change
/// ([`controller::reconcile_trigger`]), not when only its status does: the operator writes
/// the status itself, so each write would otherwise reconcile the pipeline once more.
pub fn controller(
    client: &kube::Client,
    namespace: Option<&str>,
    watch_topics: bool,
    watch_scaled_objects: bool,
    watch_pod_monitors: bool,
    ctx: &Arc<Context>,
) -> Controller<OddsPipeline> {
    let health = &ctx.watches;
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=odds-operator");
    let owned_here = |controller: Controller<OddsPipeline>| Owned {
        controller,
        client,
        namespace,
        config: &children,
        health,
    };
    let mut watching = owned_here(pipelines(client, namespace, ctx))
        .owns::<ConfigMap>()
        .owns::<Job>()
        .owns::<Deployment>()
        .owns::<Service>()
        .owns::<PodDisruptionBudget>()
        .owns::<HorizontalPodAutoscaler>()
        .owns::<Ingress>()
        .owns::<NetworkPolicy>();
    if watch_topics {
        // By label, not owner reference: with `topicDeletionPolicy: Retain` a topic has none,
        // and Strimzi marking it Ready must still reconcile its pipeline.
        let topics = observed(
            health,
            watcher(api::<KafkaTopic>(client, namespace), children.clone()),
        )
        .touched_objects();
        watching.controller = watching
            .controller
            .watches_stream(topics, |kafka_topic| topic::pipeline_of(&kafka_topic));
        // Strimzi's user operator marking the KafkaUser Ready releases ingest and processor.
        watching = watching.owns::<KafkaUser>();
    }
    if watch_scaled_objects {
        watching = watching
            .owns::<ScaledObject>()
            .owns::<TriggerAuthentication>();
    }
    if watch_pod_monitors {
        watching = watching.owns::<PodMonitor>();
    }
    watch_secrets(watching.controller, client, namespace, health)
}

/// The controller of the pipelines: each watch event also keeps the pipelines' condition
/// series (a deleted pipeline's go), and only a change of [`controller::reconcile_trigger`]
/// reconciles.
fn pipelines(
    client: &kube::Client,
    namespace: Option<&str>,
    ctx: &Arc<Context>,
) -> Controller<OddsPipeline> {
    let (reader, writer) = reflector::store();
    let mut series = PipelineSeries::default();
    let metrics = ctx.metrics.clone();
    let pipelines = reflector(
        writer,
        observed(
            &ctx.watches,
            watcher(
                api::<OddsPipeline>(client, namespace),
                watcher::Config::default(),
            ),
        )
        .inspect(move |event| {
            if let (Ok(event), Some(metrics)) = (event, &metrics) {
                series.on_event(metrics, event);
            }
        }),
    )
    .applied_objects()
    .predicate_filter(controller::reconcile_trigger, Default::default());
    Controller::for_stream(pipelines, reader)
}

/// Adds the Secrets pipelines reference: referenced, not owned, so a changed Secret maps to
/// the pipelines using it. Metadata only: a cluster-wide watch of full Secrets would hold
/// every Secret's data in memory (Helm release Secrets alone can be ~1 MiB each). The
/// reconcile reads the few Secrets a pipeline references by name.
fn watch_secrets(
    controller: Controller<OddsPipeline>,
    client: &kube::Client,
    namespace: Option<&str>,
    health: &Arc<WatchHealth>,
) -> Controller<OddsPipeline> {
    let pipelines = controller.store();
    let secrets = observed(
        health,
        watcher(
            api::<PartialObjectMeta<Secret>>(client, namespace),
            watcher::Config::default(),
        ),
    )
    .touched_objects();
    controller.watches_stream(secrets, move |secret| {
        let state = pipelines.state();
        observe::pipelines_using_secret(
            state.iter().map(|p| p.as_ref()),
            secret.namespace().as_deref(),
            &secret.name_any(),
        )
    })
}

/// A controller being given the children it owns, each kind's watch made alike.
struct Owned<'a> {
    controller: Controller<OddsPipeline>,
    client: &'a kube::Client,
    namespace: Option<&'a str>,
    config: &'a watcher::Config,
    health: &'a Arc<WatchHealth>,
}

impl Owned<'_> {
    /// Adds the children of kind `K`: a change of one reconciles its owner. Their watch is
    /// of metadata (what `Controller::owns` runs), reported to `health`.
    fn owns<K>(mut self) -> Self
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let stream = observed(
            self.health,
            watcher(
                api::<PartialObjectMeta<K>>(self.client, self.namespace),
                self.config.clone(),
            ),
        )
        .touched_objects();
        self.controller = self.controller.owns_stream(stream);
        self
    }
}

/// `events` (a watch of `K`), each reported to `health` under `K`'s plural.
pub fn observed<K, S>(
    health: &Arc<WatchHealth>,
    events: S,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Send + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let health = health.clone();
    let resource = K::plural(&()).into_owned();
    events.inspect(move |item| health.observe(&resource, item))
}
