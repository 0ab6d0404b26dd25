//! `odds-operator run`: ops server, leader election, and the controller.
//!
//! Only the leader runs the controller; a replica that loses the Lease stops its controller
//! and exits non-zero so Kubernetes restarts it as a fresh follower (simplest way to be sure
//! no stale reconcile outlives leadership).

use crate::build::KafkaTopic;
use crate::controller::{error_policy, reconcile, Context};
use crate::crd::OddsPipeline;
use crate::leader::{self, LeaseConfig};
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
use kube::runtime::{watcher, Controller};
use kube::ResourceExt;
use odds_runtime::{ops::ops_router, serve_http, OpsArgs, Readiness};
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
    /// Watch Strimzi KafkaTopics (needs Strimzi's CRDs in the cluster).
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
    let lease = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: args.identity.clone(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    let lost = CancellationToken::new();
    if args.leader_election {
        tracing::info!(identity = %lease.identity, "waiting for leadership");
        if !leader::acquire(&lease_api, &lease, &shutdown).await {
            let _ = ops_task.await;
            return Ok(());
        }
        tracing::info!("leading");
        tokio::spawn(leader::keep(
            lease_api.clone(),
            lease.clone(),
            shutdown.clone(),
            lost.clone(),
        ));
    }

    let ctx = Arc::new(Context::new(
        client.clone(),
        Some(args.identity.clone()),
        Some(metrics),
    ));
    let controller = controller(&client, args.namespace.as_deref(), args.watch_kafka_topics)
        .graceful_shutdown_on({
            let (shutdown, lost) = (shutdown.clone(), lost.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = lost.cancelled() => {}
                }
            }
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pipeline = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        });
    controller.await;
    if lost.is_cancelled() {
        return Err(RunError::LeadershipLost);
    }
    if args.leader_election {
        if let Err(error) = leader::release(&lease_api, &lease).await {
            tracing::warn!(%error, "cannot release the leader Lease");
        }
    }
    let _ = ops_task.await;
    Ok(())
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

/// The controller: pipelines, every kind of child it owns (a child's change reconciles its
/// owner), and the Secrets pipelines reference.
fn controller(
    client: &kube::Client,
    namespace: Option<&str>,
    watch_topics: bool,
) -> Controller<OddsPipeline> {
    let config = watcher::Config::default();
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=odds-operator");
    let mut controller = Controller::new(api::<OddsPipeline>(client, namespace), config)
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
        controller = controller.owns(api::<KafkaTopic>(client, namespace), children);
    }
    // Secrets are referenced, not owned: map a changed Secret to the pipelines using it.
    let pipelines = controller.store();
    controller.watches(
        api::<Secret>(client, namespace),
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
