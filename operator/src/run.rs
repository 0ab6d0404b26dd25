//! `odds-operator run`: ops server, leader election, and the controller.
//!
//! Only the leader runs the controller; a replica that loses the Lease stops its controller
//! and exits non-zero so Kubernetes restarts it as a fresh follower (simplest way to be sure
//! no stale reconcile outlives leadership).

use crate::build::{topic, KafkaTopic, PodMonitor, ScaledObject};
use crate::controller::{self, error_policy, reconcile, Context};
use crate::crd::OddsPipeline;
use crate::leader::{self, Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::observe;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::ResourceExt;
use odds_runtime::{ops::ops_router, serve_http, OpsArgs, Readiness};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags of `odds-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Namespace to watch; all namespaces when absent.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
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
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let readiness = Readiness::new(&["kubernetes"]);
    let (addr, ops_task) = serve_http(
        args.ops.http_addr,
        ops_router(readiness.clone(), registry),
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
        let mut elector = Elector::new(lease_api, lease);
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
    }

    let ctx = Arc::new(Context::new(
        client.clone(),
        Some(args.identity.clone()),
        Some(metrics),
    ));
    // The LAG column of lag-scaled pipelines, refreshed between reconciles.
    let lag_refresh = tokio::spawn(controller::refresh_lags_periodically(ctx.clone()));
    let mut warned = Discovered::default();
    loop {
        let found = discover(&client).await;
        ctx.strimzi.store(found.strimzi, Ordering::Relaxed);
        ctx.keda.store(found.keda, Ordering::Relaxed);
        ctx.pod_monitors
            .store(found.pod_monitors, Ordering::Relaxed);
        if !found.strimzi && !warned.strimzi {
            tracing::warn!(
                "Strimzi's KafkaTopic CRD (kafka.strimzi.io/v1) is not installed: KafkaTopics are not watched, and pipelines with kafka.clusterRef report Degraded/StrimziNotInstalled until it is"
            );
            warned.strimzi = true;
        }
        if !found.keda && !warned.keda {
            tracing::warn!(
                "KEDA's ScaledObject CRD (keda.sh/v1alpha1) is not installed: lag and connections autoscaling fall back to CPU (Autoscaling/KedaNotInstalled) until it is"
            );
            warned.keda = true;
        }
        if !found.pod_monitors && !warned.pod_monitors {
            tracing::warn!(
                "the Prometheus Operator's PodMonitor CRD (monitoring.coreos.com/v1) is not installed: connections autoscaling with podMonitor falls back to CPU (Autoscaling/MetricsUnavailable) until it is"
            );
            warned.pod_monitors = true;
        }
        // While an API is missing, a poll notices its installation and restarts the
        // controller with its watch (a controller's watches are fixed once it runs).
        let appeared = CancellationToken::new();
        let poll = (!found.strimzi || !found.keda || !found.pod_monitors)
            .then(|| tokio::spawn(poll_apis(client.clone(), found, appeared.clone())));
        controller(
            &client,
            args.namespace.as_deref(),
            found.strimzi && args.watch_kafka_topics,
            found.keda,
            found.pod_monitors,
        )
        .graceful_shutdown_on({
            let (shutdown, lost, appeared) = (shutdown.clone(), lost.clone(), appeared.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = lost.cancelled() => {}
                    () = appeared.cancelled() => {}
                }
            }
        })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pipeline = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
        .await;
        if let Some(poll) = poll {
            poll.abort();
        }
        if appeared.is_cancelled() && !shutdown.is_cancelled() && !lost.is_cancelled() {
            tracing::info!("a CRD the operator uses (Strimzi's KafkaTopic, KEDA's ScaledObject or the Prometheus Operator's PodMonitor) appeared: restarting the controller with its watch");
            continue;
        }
        break;
    }
    lag_refresh.abort();
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

/// Which optional APIs the cluster serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Strimzi's `kafkatopics` in `kafka.strimzi.io/v1`.
    pub strimzi: bool,
    /// KEDA's `scaledobjects` in `keda.sh/v1alpha1`.
    pub keda: bool,
    /// The Prometheus Operator's `podmonitors` in `monitoring.coreos.com/v1`.
    pub pod_monitors: bool,
}

/// Discovers the optional APIs.
pub async fn discover(client: &kube::Client) -> Discovered {
    Discovered {
        strimzi: strimzi_installed(client).await,
        keda: keda_installed(client).await,
        pod_monitors: pod_monitors_installed(client).await,
    }
}

/// Whether the API server serves Strimzi's `kafkatopics` in `kafka.strimzi.io/v1`. An
/// error other than "not found" counts as absent too, and is logged: the poll retries.
pub async fn strimzi_installed(client: &kube::Client) -> bool {
    serves(client, "kafka.strimzi.io/v1", "kafkatopics").await
}

/// Whether the API server serves KEDA's `scaledobjects` in `keda.sh/v1alpha1` (same rules).
pub async fn keda_installed(client: &kube::Client) -> bool {
    serves(client, "keda.sh/v1alpha1", "scaledobjects").await
}

/// Whether the API server serves the Prometheus Operator's `podmonitors` in
/// `monitoring.coreos.com/v1` (same rules).
pub async fn pod_monitors_installed(client: &kube::Client) -> bool {
    serves(client, "monitoring.coreos.com/v1", "podmonitors").await
}

async fn serves(client: &kube::Client, group_version: &str, plural: &str) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(error) => {
            tracing::warn!(%error, group_version, "cannot discover an optional API");
            false
        }
    }
}

/// Cancels `appeared` once an API missing from `found` is served.
async fn poll_apis(client: kube::Client, found: Discovered, appeared: CancellationToken) {
    loop {
        tokio::time::sleep(DISCOVERY_POLL).await;
        let now = discover(&client).await;
        if (now.strimzi && !found.strimzi)
            || (now.keda && !found.keda)
            || (now.pod_monitors && !found.pod_monitors)
        {
            appeared.cancel();
            return;
        }
    }
}

/// How often an operator without Strimzi, KEDA or the Prometheus Operator checks whether they
/// have been installed.
const DISCOVERY_POLL: Duration = Duration::from_secs(60);

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
        of::<KafkaTopic>(),
        of::<ScaledObject>(),
        of::<PodMonitor>(),
        of::<Secret>(),
    ]
}

/// The controller: pipelines, every kind of child it owns (a child's change reconciles its
/// owner), the pipelines' KafkaTopics (by label), and the Secrets pipelines reference.
///
/// A pipeline reconciles when its spec, annotations, labels or deletion change
/// ([`controller::reconcile_trigger`]), not when only its status does: the operator writes
/// the status itself, so each write would otherwise reconcile the pipeline once more.
fn controller(
    client: &kube::Client,
    namespace: Option<&str>,
    watch_topics: bool,
    watch_scaled_objects: bool,
    watch_pod_monitors: bool,
) -> Controller<OddsPipeline> {
    let (reader, writer) = reflector::store();
    let pipelines = watcher(
        api::<OddsPipeline>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(controller::reconcile_trigger, Default::default());
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=odds-operator");
    let mut controller = Controller::for_stream(pipelines, reader)
        .owns(api::<ConfigMap>(client, namespace), children.clone())
        .owns(api::<Job>(client, namespace), children.clone())
        .owns(api::<Deployment>(client, namespace), children.clone())
        .owns(api::<Service>(client, namespace), children.clone())
        .owns(
            api::<PodDisruptionBudget>(client, namespace),
            children.clone(),
        )
        .owns(
            api::<HorizontalPodAutoscaler>(client, namespace),
            children.clone(),
        )
        .owns(api::<Ingress>(client, namespace), children.clone());
    if watch_topics {
        // By label, not owner reference: with `topicDeletionPolicy: Retain` a topic has none,
        // and Strimzi marking it Ready must still reconcile its pipeline.
        controller = controller.watches(
            api::<KafkaTopic>(client, namespace),
            children.clone(),
            |kafka_topic| topic::pipeline_of(&kafka_topic),
        );
    }
    if watch_scaled_objects {
        controller = controller.owns(api::<ScaledObject>(client, namespace), children.clone());
    }
    if watch_pod_monitors {
        controller = controller.owns(api::<PodMonitor>(client, namespace), children);
    }
    // Secrets are referenced, not owned: map a changed Secret to the pipelines using it.
    // Metadata only: a cluster-wide watch of full Secrets would hold every Secret's data in
    // memory (Helm release Secrets alone can be ~1 MiB each). The reconcile reads the few
    // Secrets a pipeline references by name.
    let pipelines = controller.store();
    controller.watches(
        api::<PartialObjectMeta<Secret>>(client, namespace),
        watcher::Config::default(),
        move |secret| {
            let state = pipelines.state();
            observe::pipelines_using_secret(
                state.iter().map(|p| p.as_ref()),
                secret.namespace().as_deref(),
                &secret.name_any(),
            )
        },
    )
}
