//! The in-memory API the reconcile tests run against (kube-fake-client), made to behave like
//! a real API server where the operator's correctness depends on it.
//!
//! The fake has no watch and no controllers, so tests call `reconcile` directly and play the
//! other controllers' part through helpers (Strimzi marks topics Ready, the Job controller
//! completes the migration, the Deployment controller reports ready pods, the HPA scales).
//! Where the fake is laxer than the API server, the harness adds the real rule:
//! - server-side apply removes a field its manager applied before and leaves out now, unless
//!   another manager owns it (the fake merges instead): implemented for Deployment
//!   `spec.replicas`, the field the operator hands over to autoscalers, and for
//!   `metadata.ownerReferences` of every kind the operator applies (but KEDA's ScaledObject,
//!   which always carries one), which a KafkaTopic loses when `topicDeletionPolicy` turns to
//!   `Retain`;
//! - a container's `env` is a list map keyed by `name`: an apply naming a variable twice is
//!   rejected with 422 (the fake accepts it);
//! - deleting an object that has finalizers only marks it (`metadata.deletionTimestamp`, in
//!   every read and write that returns it); it goes once a write leaves it without
//!   finalizers (the fake deletes at once). KEDA, where installed, adds its finalizer
//!   `finalizer.keda.sh` to every ScaledObject it sees, as its controller does; tests play
//!   KEDA's cleanup with [`Harness::keda_lets_go`].
//!
//! Garbage collection is the fake's own: deleting an object (with any propagation but
//! `Orphan`) deletes at once every object whose `ownerReferences` name its uid, and theirs in
//! turn ([`Harness::delete_pipeline`]).
//!
//! - an `events.k8s.io` Event whose `note` is over 1 KiB is refused with 422, as the API
//!   server's validation does (the fake stores it).
//!
//! Every request goes through a recording layer: tests inject API errors per verb and
//! resource (403, 422, 404...), hold a request until the test lets it go, answer late (the
//! server has recorded a write before its answer arrives), and the RBAC test reads the verbs
//! the operator used.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::client::Body;
use kube::{Resource, ResourceExt};
use kube_fake_client::{interceptor, ClientBuilder, PatchType};
use odds_operator::build::TriggerAuthentication;
use odds_operator::build::{job, kafkauser, KafkaTopic, KafkaUser, PodMonitor, ScaledObject};
use odds_operator::controller::{reconcile, Context, Error};
use odds_operator::crd::{Condition, OddsPipeline, OddsPipelineStatus};
use odds_operator::metrics::Metrics;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::fixtures::{self, NS};

/// One request the operator made: `(verb, api group, resource[/subresource])`.
pub type Call = (String, String, String);

/// `spec.replicas` of each stored state of a Deployment, in order: `(name, replicas)`.
pub type ReplicaHistory = Arc<Mutex<Vec<(String, Option<i32>)>>>;

/// An injected API error: requests with this verb on this resource get `code`.
#[derive(Clone)]
struct Fault {
    /// A verb, or `*` for all.
    verb: String,
    /// A resource, or `*` for all.
    resource: String,
    code: u16,
    reason: String,
    message: String,
    /// Never answer (a partitioned network) instead of answering `code`.
    hang: bool,
    /// Answer with this body (and `code`) instead of an error Status.
    body: Option<Value>,
    /// Only requests in this API group (`""` for the core group).
    group: Option<String>,
    /// Let the request through once this is cancelled (and answer it normally).
    gate: Option<CancellationToken>,
    /// Let the request through at once (the server records it), but answer it this late.
    delay: Option<Duration>,
    /// With `gate`: once it is cancelled, answer with an empty body instead of letting the
    /// request through (a watch the API server closes without an event).
    close: bool,
}

impl Fault {
    fn new(verb: &str, resource: &str) -> Self {
        Fault {
            verb: verb.into(),
            resource: resource.into(),
            code: 0,
            reason: String::new(),
            message: String::new(),
            hang: false,
            body: None,
            group: None,
            gate: None,
            delay: None,
            close: false,
        }
    }

    fn error(verb: &str, resource: &str, code: u16, reason: &str, message: &str) -> Self {
        Fault {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Fault::new(verb, resource)
        }
    }

    fn matches(&self, call: &Call) -> bool {
        (self.verb == "*" || self.verb == call.0)
            && (self.resource == "*" || self.resource == call.2)
            && self.group.as_ref().is_none_or(|g| *g == call.1)
    }
}

/// The network between one client and the fake API: faults injected per client.
#[derive(Clone, Default)]
pub struct Network {
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl Network {
    /// Every request of this client hangs from now on.
    pub fn partition(&self) {
        self.faults.lock().unwrap().push(Fault {
            hang: true,
            ..Fault::new("*", "*")
        });
    }

    /// Every request of this client fails with 503 from now on.
    pub fn refuse(&self) {
        self.faults.lock().unwrap().push(Fault::error(
            "*",
            "*",
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ));
    }

    /// From now on, `verb` requests on `resource` reach the API server at once (it records
    /// a write when it arrives) but their answers come `delay` later.
    pub fn slow(&self, verb: &str, resource: &str, delay: Duration) {
        self.faults.lock().unwrap().push(Fault {
            delay: Some(delay),
            ..Fault::new(verb, resource)
        });
    }

    pub fn heal(&self) {
        self.faults.lock().unwrap().clear();
    }
}

/// A client of `api` (a fake API's client) with its own [`Network`].
pub fn client_of(api: &kube::Client) -> (kube::Client, Network) {
    let network = Network::default();
    let client = kube::Client::new(
        Recording {
            inner: api.clone(),
            calls: Arc::default(),
            faults: network.faults.clone(),
            operator: Arc::default(),
            terminating: Arc::default(),
            finalizers: Arc::default(),
        },
        NS,
    );
    (client, network)
}

/// The API server's validation of an `events.k8s.io/v1` Event's note: at most 1 KiB.
fn reject_long_note(event: &Value) -> kube_fake_client::Result<()> {
    let is_event = event.get("kind").and_then(Value::as_str) == Some("Event");
    let note = event.get("note").and_then(Value::as_str).unwrap_or("");
    if is_event && note.len() > 1024 {
        return Err(kube_fake_client::Error::InvalidRequest(format!(
            "note: Too long: may not be more than 1024 bytes (it has {})",
            note.len()
        )));
    }
    Ok(())
}

pub struct Harness {
    pub client: kube::Client,
    pub ctx: Arc<Context>,
    pub metrics: Metrics,
    /// The registry `metrics` are registered in (what `/metrics` serves).
    pub registry: odds_runtime::metrics::PrefixedRegistry,
    /// Every server-side apply body, by `Kind/name`.
    pub applies: Arc<Mutex<Vec<(String, Value)>>>,
    pub status_writes: Arc<AtomicUsize>,
    /// Every request the operator made (inside [`Harness::try_reconcile`] or while
    /// `operator` is set), in order; the tests' own reads and writes are not in it.
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// Whether requests now come from the operator's code.
    pub operator: Arc<AtomicBool>,
    /// `spec.replicas` of every stored state of each Deployment, in order, by name.
    pub replica_history: ReplicaHistory,
    faults: Arc<Mutex<Vec<Fault>>>,
}

/// Options of [`harness_with`].
pub struct Options {
    pub secrets: bool,
    /// Whether Strimzi's KafkaTopic CRD is installed (registered with the fake API, and
    /// what the operator's start-up discovery found).
    pub strimzi: bool,
    /// Whether KEDA's ScaledObject CRD is installed (likewise), and KEDA runs (it puts its
    /// finalizer on each ScaledObject).
    pub keda: bool,
    /// Whether the Prometheus Operator's PodMonitor CRD is installed (likewise).
    pub pod_monitors: bool,
}

/// A cluster with Strimzi and the sample's Secrets, without KEDA or the Prometheus Operator
/// (what [`harness`] builds).
impl Default for Options {
    fn default() -> Self {
        Options {
            secrets: true,
            strimzi: true,
            keda: false,
            pod_monitors: false,
        }
    }
}

pub fn secret(name: &str, value: &str) -> Secret {
    secret_with(name, &[("url", value)])
}

/// A Secret with the given keys and values.
pub fn secret_with(name: &str, keys: &[(&str, &str)]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(NS.into());
    secret.data = Some(
        keys.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    secret
}

pub async fn harness(pipeline: OddsPipeline, secrets: bool) -> Harness {
    harness_with(
        pipeline,
        Options {
            secrets,
            ..Options::default()
        },
    )
    .await
}

pub async fn harness_with(pipeline: OddsPipeline, options: Options) -> Harness {
    harness_with_objects(pipeline, options, Vec::new()).await
}

/// A harness whose cluster also holds `objects` from the start (as JSON: an object being
/// deleted, held by a finalizer, can only be stored this way).
pub async fn harness_with_objects(
    pipeline: OddsPipeline,
    options: Options,
    objects: Vec<Value>,
) -> Harness {
    let applies = Arc::new(Mutex::new(Vec::new()));
    let status_writes = Arc::new(AtomicUsize::new(0));
    let replica_history = Arc::new(Mutex::new(Vec::new()));
    let (recorded, writes, history) = (
        applies.clone(),
        status_writes.clone(),
        replica_history.clone(),
    );
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let funcs = interceptor::Funcs::new()
        .create(|ctx| {
            reject_long_note(ctx.object)?;
            Ok(None)
        })
        .patch(move |ctx| {
            reject_long_note(ctx.patch)?;
            if ctx.patch_type != PatchType::ApplyPatch {
                return Ok(None);
            }
            let kind = ctx.patch.get("kind").and_then(Value::as_str).unwrap_or("?");
            recorded
                .lock()
                .unwrap()
                .push((format!("{kind}/{}", ctx.name), ctx.patch.clone()));
            release_owner_references(&ctx, kind)?;
            if kind == "Deployment" {
                reject_duplicate_env(ctx.patch)?;
                let manager = ctx.params.field_manager.clone().unwrap_or_default();
                if let Ok(mut live) = ctx.client.get::<Deployment>(ctx.namespace, ctx.name) {
                    history
                        .lock()
                        .unwrap()
                        .push((ctx.name.to_string(), fixtures::replicas(&live)));
                    let applies_replicas = ctx.patch["spec"].get("replicas").is_some();
                    if !applies_replicas && sole_owner_of_replicas(&live, &manager) {
                        // What the API server does: the field goes, and defaulting puts 1.
                        live.spec.as_mut().unwrap().replicas = Some(1);
                        ctx.client
                            .update(ctx.namespace, &live, &PostParams::default())?;
                        history
                            .lock()
                            .unwrap()
                            .push((ctx.name.to_string(), Some(1)));
                    }
                }
                if let Some(replicas) = ctx.patch["spec"].get("replicas").and_then(Value::as_i64) {
                    history
                        .lock()
                        .unwrap()
                        .push((ctx.name.to_string(), i32::try_from(replicas).ok()));
                }
            }
            Ok(None)
        })
        .patch_status(move |ctx| {
            if ctx.name == name {
                writes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(None)
        });
    let mut builder = ClientBuilder::new()
        .with_resource::<OddsPipeline>()
        .with_object(pipeline)
        .with_runtime_objects(objects)
        .with_return_managed_fields()
        .with_interceptor_funcs(funcs);
    if options.strimzi {
        builder = builder
            .with_resource::<KafkaTopic>()
            .with_resource::<KafkaUser>();
    }
    if options.keda {
        builder = builder
            .with_resource::<ScaledObject>()
            .with_resource::<TriggerAuthentication>();
    }
    if options.pod_monitors {
        builder = builder.with_resource::<PodMonitor>();
    }
    if options.secrets {
        builder = builder
            .with_object(secret("odds-redis", "redis://redis:6379"))
            .with_object(secret("odds-postgres", "postgres://odds@postgres/odds"));
    }
    if options.strimzi {
        // What Strimzi keeps: the cluster CA's Secret, and the Secret its user operator makes
        // for the sample's KafkaUser (the user itself turns Ready in `topics_ready`).
        builder = builder
            .with_object(secret_with("odds-cluster-ca-cert", &[("ca.crt", "CA")]))
            .with_object(secret_with(
                "demo-kafka-client",
                &[("password", "secret"), ("sasl.jaas.config", "...")],
            ));
    }
    let fake = builder.build().await.unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let faults = Arc::new(Mutex::new(Vec::new()));
    let operator = Arc::new(AtomicBool::new(false));
    let finalizers = Arc::new(Mutex::new(BTreeMap::new()));
    if options.keda {
        finalizers
            .lock()
            .unwrap()
            .insert("scaledobjects".to_string(), KEDA_FINALIZER.to_string());
    }
    let client = kube::Client::new(
        Recording {
            inner: fake,
            calls: calls.clone(),
            faults: faults.clone(),
            operator: operator.clone(),
            terminating: Arc::default(),
            finalizers,
        },
        NS,
    );
    let registry = Metrics::registry().unwrap();
    let metrics = Metrics::register(&registry).unwrap();
    let mut context = Context::new(client.clone(), Some("test".into()), Some(metrics.clone()));
    // No Service to connect to: the tests hand the canaries their summaries (`feed`).
    context.canaries = Arc::new(odds_operator::canaries::Canaries::fed());
    // Each reading is a minute later than the one before: a status recomputed with a new
    // transition time would differ from the stored one, which the steady-state test catches.
    let minutes = Arc::new(AtomicUsize::new(0));
    context.clock = Arc::new(move || {
        let minute = minutes.fetch_add(1, Ordering::SeqCst);
        let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        start + chrono::Duration::minutes(i64::try_from(minute).unwrap())
    });
    let ctx = Arc::new(context);
    ctx.strimzi.store(options.strimzi, Ordering::Relaxed);
    ctx.keda.store(options.keda, Ordering::Relaxed);
    ctx.pod_monitors
        .store(options.pod_monitors, Ordering::Relaxed);
    Harness {
        client,
        ctx,
        metrics,
        registry,
        applies,
        status_writes,
        calls,
        operator,
        replica_history,
        faults,
    }
}

/// The API server's list-map rule for a container's `env`: each name once.
fn reject_duplicate_env(patch: &Value) -> kube_fake_client::Result<()> {
    let containers = patch["spec"]["template"]["spec"]["containers"].as_array();
    for container in containers.into_iter().flatten() {
        let mut seen = BTreeSet::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or_default();
            if !seen.insert(name.to_string()) {
                return Err(kube_fake_client::Error::InvalidRequest(format!(
                    ".spec.template.spec.containers[name=\"{}\"].env: duplicate entries for key [name=\"{name}\"]",
                    container["name"].as_str().unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

/// Whether a managedFields entry owns the field at `path` (fieldsV1 keys, outermost first).
fn owns(entry: &ManagedFieldsEntry, path: &[&str]) -> bool {
    path.iter()
        .try_fold(entry.fields_v1.as_ref().map(|f| &f.0), |node, key| {
            node.map(|n| n.get(*key))
        })
        .flatten()
        .is_some()
}

/// Whether `manager` owns the field at `path` of `live` and no other manager does.
fn sole_owner<K: Resource>(live: &K, manager: &str, path: &[&str]) -> bool {
    let entries = live.meta().managed_fields.iter().flatten();
    let owners: Vec<_> = entries.filter(|e| owns(e, path)).collect();
    owners.iter().any(|e| e.manager.as_deref() == Some(manager))
        && owners.iter().all(|e| e.manager.as_deref() == Some(manager))
}

/// Whether `manager` owns `spec.replicas` and no other manager does.
fn sole_owner_of_replicas(live: &Deployment, manager: &str) -> bool {
    sole_owner(live, manager, &["f:spec", "f:replicas"])
}

/// Server-side apply's rule for `metadata.ownerReferences`, before the fake merges the apply
/// into the live object (which would keep them): references this manager applied before and
/// leaves out now are removed, unless another manager also owns them. The API server tracks
/// the list's entries by `uid`; the fake's field sets hold the list as one field, and so does
/// this rule (the same outcome here: the operator is the only writer of its children's
/// references, and sets at most one).
fn release_owner_references(
    ctx: &interceptor::PatchContext,
    kind: &str,
) -> kube_fake_client::Result<()> {
    match kind {
        "ConfigMap" => drop_unapplied_owner_references::<ConfigMap>(ctx),
        "Deployment" => drop_unapplied_owner_references::<Deployment>(ctx),
        "HorizontalPodAutoscaler" => {
            drop_unapplied_owner_references::<HorizontalPodAutoscaler>(ctx)
        }
        "Ingress" => drop_unapplied_owner_references::<Ingress>(ctx),
        "Job" => drop_unapplied_owner_references::<Job>(ctx),
        "KafkaTopic" => drop_unapplied_owner_references::<KafkaTopic>(ctx),
        "PodDisruptionBudget" => drop_unapplied_owner_references::<PodDisruptionBudget>(ctx),
        "Service" => drop_unapplied_owner_references::<Service>(ctx),
        _ => Ok(()),
    }
}

fn drop_unapplied_owner_references<K>(
    ctx: &interceptor::PatchContext,
) -> kube_fake_client::Result<()>
where
    K: Resource + Clone + Default + serde::Serialize + serde::de::DeserializeOwned,
{
    if ctx.patch["metadata"].get("ownerReferences").is_some() {
        return Ok(());
    }
    // Absent: this apply creates it, with what it applies.
    let Ok(mut live) = ctx.client.get::<K>(ctx.namespace, ctx.name) else {
        return Ok(());
    };
    let manager = ctx.params.field_manager.clone().unwrap_or_default();
    let referenced = live
        .meta()
        .owner_references
        .as_ref()
        .is_some_and(|refs| !refs.is_empty());
    if referenced && sole_owner(&live, &manager, &["f:metadata", "f:ownerReferences"]) {
        live.meta_mut().owner_references = None;
        ctx.client
            .update(ctx.namespace, &live, &PostParams::default())?;
    }
    Ok(())
}

/// The finalizer KEDA puts on every ScaledObject, and removes once it has deleted its HPA.
pub const KEDA_FINALIZER: &str = "finalizer.keda.sh";

/// When an object with finalizers was deleted (what the API server stamps).
const DELETION_TIMESTAMP: &str = "2030-01-01T00:00:00Z";

/// A tower Service in front of the fake API: records each request, injects faults, and keeps
/// deleted objects that have finalizers until their finalizers are gone.
#[derive(Clone)]
struct Recording {
    inner: kube::Client,
    calls: Arc<Mutex<Vec<Call>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
    operator: Arc<AtomicBool>,
    /// Objects deleted while they had finalizers, by URL path: still stored in the fake, and
    /// shown with a `deletionTimestamp` until a write leaves them without finalizers.
    terminating: Arc<Mutex<BTreeSet<String>>>,
    /// The finalizer a controller adds to every object of a resource it runs, by resource
    /// (`scaledobjects` → KEDA's).
    finalizers: Arc<Mutex<BTreeMap<String, String>>>,
}

/// The URL path of one object, from a request's path (a subresource's object) or from a
/// collection's path and an item's name.
fn object_path(path: &str, named: bool, name: Option<&str>) -> String {
    let base = path.trim_end_matches('/');
    if named {
        let parts: Vec<&str> = base.split('/').collect();
        // `.../<resource>/<name>/<subresource>`: a subresource follows a name.
        let resource_at = parts
            .iter()
            .rposition(|p| *p == "namespaces")
            .map_or(3, |i| i + 2);
        parts[..(resource_at + 2).min(parts.len())].join("/")
    } else {
        format!("{base}/{}", name.unwrap_or_default())
    }
}

/// `GET path` against the fake: the object, if it exists.
async fn get_json(inner: &kube::Client, path: &str) -> Result<Option<Value>, kube::Error> {
    let request = http::Request::get(path).body(Body::empty()).unwrap();
    let response = inner.send(request).await?;
    if !response.status().is_success() {
        return Ok(None);
    }
    let bytes = response.into_body().collect_bytes().await?;
    Ok(serde_json::from_slice(&bytes).ok())
}

/// A JSON answer of `status`.
fn json_response(status: http::StatusCode, body: &Value) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Body::from(body.to_string().into_bytes()))
        .unwrap()
}

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

impl Recording {
    /// The API server's deletion of an object with finalizers: it stays, marked.
    async fn delete_with_finalizers(
        &self,
        path: &str,
    ) -> Result<Option<http::Response<Body>>, kube::Error> {
        let Some(mut live) = get_json(&self.inner, path).await? else {
            return Ok(None);
        };
        if !has_finalizers(&live) && live["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None);
        }
        if live["metadata"]["deletionTimestamp"].is_null() {
            self.terminating.lock().unwrap().insert(path.to_string());
            live["metadata"]["deletionTimestamp"] = json!(DELETION_TIMESTAMP);
        }
        Ok(Some(json_response(http::StatusCode::OK, &live)))
    }

    /// What follows a successful request: a terminating object left without finalizers
    /// goes; a controller adds its finalizer to an object it runs; objects still terminating
    /// are shown so.
    async fn after(
        &self,
        verb: &str,
        resource: &str,
        path: &str,
        response: http::Response<Body>,
    ) -> Result<http::Response<Body>, kube::Error> {
        if !response.status().is_success()
            || !matches!(verb, "get" | "list" | "create" | "update" | "patch")
        {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let bytes = body.collect_bytes().await?;
        let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(http::Response::from_parts(
                parts,
                Body::from(bytes.to_vec()),
            ));
        };
        let finalizer = self.finalizers.lock().unwrap().get(resource).cloned();
        let items: Vec<&mut Value> = if verb == "list" {
            value["items"]
                .as_array_mut()
                .into_iter()
                .flatten()
                .collect()
        } else {
            vec![&mut value]
        };
        for item in items {
            let name = item["metadata"]["name"].as_str().map(str::to_string);
            // A create and a list name the collection, the others the object.
            let named = !matches!(verb, "create" | "list");
            let object = object_path(path, named, name.as_deref());
            let terminating = self.terminating.lock().unwrap().contains(&object);
            if terminating && !has_finalizers(item) {
                // The last finalizer went: the API server deletes the object now.
                let request = http::Request::delete(object.as_str())
                    .body(Body::empty())
                    .unwrap();
                self.inner.send(request).await?;
                self.terminating.lock().unwrap().remove(&object);
            } else if terminating {
                item["metadata"]["deletionTimestamp"] = json!(DELETION_TIMESTAMP);
            } else if let Some(finalizer) = finalizer
                .as_deref()
                .filter(|_| verb != "get" && verb != "list")
            {
                let present = item["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|v| v == finalizer));
                if !present && item["metadata"]["deletionTimestamp"].is_null() {
                    // The controller saw the object and claims it, as KEDA does.
                    let patch = json!({"metadata": {"finalizers": [finalizer]}});
                    let request = http::Request::patch(object.as_str())
                        .header("Content-Type", "application/merge-patch+json")
                        .body(Body::from(patch.to_string().into_bytes()))
                        .unwrap();
                    self.inner.send(request).await?;
                }
            }
        }
        Ok(http::Response::from_parts(
            parts,
            Body::from(value.to_string().into_bytes()),
        ))
    }
}

/// `(verb, group, resource[/subresource])` of a request, as RBAC names them.
fn describe(request: &http::Request<Body>) -> Call {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => ("", &[][..]),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => (String::new(), false),
    };
    let verb = match (request.method().as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    };
    (verb.to_string(), group.to_string(), resource)
}

impl tower::Service<http::Request<Body>> for Recording {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = describe(&request);
        let path = request.uri().path().to_string();
        let this = self.clone();
        let record = self.operator.load(Ordering::SeqCst);
        if record {
            self.calls.lock().unwrap().push(call.clone());
        }
        // An apply that creates its object is also authorized as `create`.
        let probe = (record && call.0 == "patch" && !call.2.contains('/')).then(|| {
            http::Request::get(request.uri().path())
                .body(Body::empty())
                .unwrap()
        });
        let calls = self.calls.clone();
        let fault = self
            .faults
            .lock()
            .unwrap()
            .iter()
            .find(|f| f.matches(&call))
            .cloned();
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some(probe) = probe {
                if inner.send(probe).await?.status() == 404 {
                    calls
                        .lock()
                        .unwrap()
                        .push(("create".into(), call.1.clone(), call.2.clone()));
                }
            }
            if fault.as_ref().is_some_and(|f| f.hang) {
                std::future::pending::<()>().await;
            }
            if let Some(gate) = fault.as_ref().and_then(|f| f.gate.clone()) {
                gate.cancelled().await;
                if fault.as_ref().is_some_and(|f| f.close) {
                    return Ok(http::Response::builder()
                        .status(200)
                        .header("Content-Type", "application/json")
                        .body(Body::empty())
                        .unwrap());
                }
                return inner.send(request).await;
            }
            if let Some(delay) = fault.as_ref().and_then(|f| f.delay) {
                let response = inner.send(request).await;
                tokio::time::sleep(delay).await;
                return response;
            }
            if let Some(fault) = fault {
                let body = fault.body.unwrap_or_else(|| {
                    json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": fault.message, "reason": fault.reason, "code": fault.code,
                    })
                });
                let response = http::Response::builder()
                    .status(fault.code)
                    .header("Content-Type", "application/json")
                    .body(Body::from(body.to_string().into_bytes()))
                    .unwrap();
                return Ok(response);
            }
            if call.0 == "delete" {
                if let Some(kept) = this.delete_with_finalizers(&path).await? {
                    return Ok(kept);
                }
            }
            let response = inner.send(request).await?;
            let resource = call.2.split('/').next().unwrap_or_default();
            this.after(&call.0, resource, &path, response).await
        })
    }
}

/// A namespaced kind the in-memory API stores and lists.
pub trait Stored:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Stored for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

impl Harness {
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Every stored object of kind `K` in the test namespace.
    pub async fn all<K: Stored>(&self) -> Vec<K> {
        self.api::<K>()
            .list(&Default::default())
            .await
            .unwrap()
            .items
    }

    /// Whether the operator made any request to API group `group`.
    pub fn asked_group(&self, group: &str) -> bool {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .any(|(_, g, _)| g == group)
    }

    /// Deletes the stored object of kind `K` named `name`, as a user or another controller
    /// would.
    pub async fn delete<K: Stored>(&self, name: &str) {
        self.api::<K>()
            .delete(name, &Default::default())
            .await
            .unwrap();
    }

    /// The stored object of kind `K` named `name`, if there is one.
    pub async fn get<K: Stored>(&self, name: &str) -> Option<K> {
        self.api::<K>().get_opt(name).await.unwrap()
    }

    /// `spec.replicas` of every stored state of Deployment `name`, in order.
    pub fn replicas_over_time(&self, name: &str) -> Vec<Option<i32>> {
        self.replica_history
            .lock()
            .unwrap()
            .iter()
            .filter(|(stored, _)| stored == name)
            .map(|(_, replicas)| *replicas)
            .collect()
    }

    /// From now on, `verb` requests on `resource` (e.g. `patch`, `deployments`) fail with
    /// `code` and the API server's `message`.
    pub fn fail(&self, verb: &str, resource: &str, code: u16, reason: &str, message: &str) {
        self.faults
            .lock()
            .unwrap()
            .push(Fault::error(verb, resource, code, reason, message));
    }

    /// [`Harness::fail`] with the API server's 404 for what it does not serve (an uninstalled
    /// CRD's resources, or a group version in discovery).
    pub fn fail_not_served(&self, verb: &str, resource: &str) {
        self.fail(
            verb,
            resource,
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }

    /// [`Harness::fail`] for requests in API `group` only (discovery of one group version is
    /// a `list` of resource `""` in that group).
    pub fn fail_in(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        code: u16,
        reason: &str,
        message: &str,
    ) {
        self.faults.lock().unwrap().push(Fault {
            group: Some(group.into()),
            ..Fault::error(verb, resource, code, reason, message)
        });
    }

    /// From now on, `verb` requests on `resource` are never answered (a partitioned network,
    /// an API server that stalls).
    pub fn hang(&self, verb: &str, resource: &str) {
        self.faults.lock().unwrap().push(Fault {
            hang: true,
            ..Fault::new(verb, resource)
        });
    }

    /// [`Harness::hang`] for requests in API `group` only.
    pub fn hang_in(&self, verb: &str, group: &str, resource: &str) {
        self.faults.lock().unwrap().push(Fault {
            hang: true,
            group: Some(group.into()),
            ..Fault::new(verb, resource)
        });
    }

    /// Watches as the API server keeps them while nothing changes: a `watch` request gets
    /// no event (the fake has no watch, and would answer with a list) until the returned
    /// token is cancelled; then the API server closes them (the watcher watches again, and
    /// meets the faults in force then). Lists work as before.
    pub fn quiet_watches(&self) -> CancellationToken {
        let gate = CancellationToken::new();
        self.faults.lock().unwrap().push(Fault {
            gate: Some(gate.clone()),
            close: true,
            ..Fault::new("watch", "*")
        });
        gate
    }

    /// From now on, `verb` requests on `resource` wait until the returned token is
    /// cancelled, then go through (an API server that answers late, a request stuck
    /// mid-way).
    pub fn hold(&self, verb: &str, resource: &str) -> CancellationToken {
        let gate = CancellationToken::new();
        self.faults.lock().unwrap().push(Fault {
            gate: Some(gate.clone()),
            ..Fault::new(verb, resource)
        });
        gate
    }

    /// From now on, `verb` requests on `resource` are answered with `body` (the fake API
    /// serves no discovery documents, for instance). Discovery of an API group version is a
    /// `list` of resource `""`.
    pub fn answer(&self, verb: &str, resource: &str, body: Value) {
        self.faults.lock().unwrap().push(Fault {
            code: 200,
            body: Some(body),
            ..Fault::new(verb, resource)
        });
    }

    pub fn heal(&self) {
        self.faults.lock().unwrap().clear();
    }

    pub async fn pipeline(&self) -> OddsPipeline {
        self.api::<OddsPipeline>().get("demo").await.unwrap()
    }

    /// The pipeline's status, which must have been written.
    pub async fn status(&self) -> OddsPipelineStatus {
        self.pipeline().await.status.unwrap()
    }

    /// Reconciles once; the reconcile must succeed.
    pub async fn reconcile(&self) {
        self.try_reconcile().await.unwrap();
    }

    pub async fn try_reconcile(&self) -> Result<kube::runtime::controller::Action, Error> {
        let pipeline = Arc::new(self.pipeline().await);
        self.operator.store(true, Ordering::SeqCst);
        let result = reconcile(pipeline, self.ctx.clone()).await;
        self.operator.store(false, Ordering::SeqCst);
        result
    }

    /// `kubectl delete oddspipeline demo`: the pipeline goes, and with it (the fake's garbage
    /// collection, at once) every object whose owner references name its uid.
    pub async fn delete_pipeline(&self) {
        self.api::<OddsPipeline>()
            .delete("demo", &DeleteParams::background())
            .await
            .unwrap();
        assert!(self.get::<OddsPipeline>("demo").await.is_none());
    }

    /// `kubectl apply` of `pipeline` after [`Harness::delete_pipeline`]: a new object of the
    /// same name, so the API server gives it a new uid (returned).
    pub async fn create_pipeline(&self, mut pipeline: OddsPipeline) -> String {
        pipeline.metadata.uid = None;
        pipeline.metadata.resource_version = None;
        pipeline.metadata.creation_timestamp = None;
        pipeline.status = None;
        let created = self
            .api::<OddsPipeline>()
            .create(&PostParams::default(), &pipeline)
            .await
            .unwrap();
        created.metadata.uid.expect("the API server sets a uid")
    }

    /// Merge-patches the pipeline (what `kubectl patch --type merge` does).
    pub async fn patch_pipeline(&self, patch: Value) {
        self.api::<OddsPipeline>()
            .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Patches the pipeline and reconciles.
    pub async fn change(&self, patch: Value) {
        self.patch_pipeline(patch).await;
        self.reconcile().await;
    }

    /// Merges `patch` into Secret `name`, then reconciles.
    pub async fn change_secret(&self, name: &str, patch: Value) {
        self.api::<Secret>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        self.reconcile().await;
    }

    /// A rolled-out pipeline whose image then changes to `tag`, reconciled once (the new
    /// migration Job exists, not yet finished). Returns the old migration Job's name.
    pub async fn rolled_out_then_new_image(&self, tag: &str) -> String {
        self.roll_out().await;
        let old = self.job_name().await;
        self.change(json!({"spec": {"image": {"tag": tag}}})).await;
        old
    }

    pub async fn condition(&self, type_: &str) -> Condition {
        let status = self.pipeline().await.status.expect("status written");
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .expect(type_)
    }

    /// The condition `type_`, asserted to have `status` and `reason` (the failure shows the
    /// whole condition, message included).
    pub async fn assert_condition(&self, type_: &str, status: &str, reason: &str) -> Condition {
        let condition = self.condition(type_).await;
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            (status, reason),
            "{type_}: {condition:?}"
        );
        condition
    }

    /// Asserts that the pipeline is `Degraded` for `reason`, its message saying `says`.
    pub async fn assert_degraded(&self, reason: &str, says: &str) -> Condition {
        let degraded = self.assert_condition("Degraded", "True", reason).await;
        fixtures::assert_contains(&degraded.message, says);
        degraded
    }

    pub async fn deployment(&self, name: &str) -> Option<Deployment> {
        self.get::<Deployment>(name).await
    }

    pub async fn job_name(&self) -> String {
        job::name(&fixtures::valid(&self.pipeline().await))
    }

    pub async fn patch_status<K: Stored>(&self, name: &str, status: Value) {
        self.api::<K>()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    /// Strimzi has created the topics and, where the pipeline has one, its KafkaUser.
    pub async fn topics_ready(&self) {
        for name in ["demo-odds-updates", "demo-odds-updates-dlq"] {
            self.patch_status::<KafkaTopic>(
                name,
                json!({"conditions": [{"type": "Ready", "status": "True"}]}),
            )
            .await;
        }
        let user = kafkauser::name_in("demo");
        if self.get::<KafkaUser>(&user).await.is_some() {
            self.kafka_user_ready().await;
        }
    }

    /// Strimzi's user operator has made the pipeline's KafkaUser and its ACLs.
    pub async fn kafka_user_ready(&self) {
        self.patch_status::<KafkaUser>(
            &kafkauser::name_in("demo"),
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        )
        .await;
    }

    pub async fn migration_done(&self) {
        let name = self.job_name().await;
        self.patch_status::<Job>(
            &name,
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        )
        .await;
    }

    pub async fn migration_failed(&self) {
        let name = self.job_name().await;
        self.patch_status::<Job>(&name, json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})).await;
    }

    /// From a new pipeline to a failed migration, reconciled: the topics are Ready and the
    /// migration Job gave up.
    pub async fn reconcile_into_a_failed_migration(&self) {
        self.reconcile().await;
        self.topics_ready().await;
        self.migration_failed().await;
        self.reconcile().await;
    }

    pub async fn pods_ready(&self) {
        for name in fixtures::DEPLOYMENTS {
            let deployment = self.deployment(name).await.expect(name);
            let n = fixtures::replicas(&deployment).unwrap_or(1);
            self.patch_status::<Deployment>(name, json!({"replicas": n, "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n})).await;
        }
    }

    /// What the HPA controller does when it scales: writes `replicas` through the scale
    /// subresource, which moves the field's ownership to it.
    pub async fn hpa_scales(&self, name: &str, replicas: i32) {
        let mut deployment = self.deployment(name).await.unwrap();
        deployment.spec.as_mut().unwrap().replicas = Some(replicas);
        let entries = deployment
            .metadata
            .managed_fields
            .get_or_insert_with(Vec::new);
        for entry in entries.iter_mut() {
            if let Some(spec) = entry
                .fields_v1
                .as_mut()
                .and_then(|f| f.0.get_mut("f:spec"))
                .and_then(Value::as_object_mut)
            {
                spec.remove("f:replicas");
            }
        }
        entries.push(ManagedFieldsEntry {
            manager: Some("kube-controller-manager".into()),
            operation: Some("Update".into()),
            api_version: Some("apps/v1".into()),
            subresource: Some("scale".into()),
            fields_v1: Some(FieldsV1(json!({"f:spec": {"f:replicas": {}}}))),
            ..ManagedFieldsEntry::default()
        });
        deployment.status = None;
        self.api::<Deployment>()
            .replace(name, &PostParams::default(), &deployment)
            .await
            .unwrap();
    }

    /// Reconciles, plays Strimzi and the Job controller, reconciles, marks pods ready, and
    /// reconciles once more: a fully rolled-out pipeline.
    pub async fn roll_out(&self) {
        self.reconcile().await;
        self.topics_ready().await;
        self.migration_done().await;
        self.reconcile().await;
        self.pods_ready().await;
        self.reconcile().await;
    }

    /// What KEDA does once a ScaledObject it runs is being deleted: deletes the HPA it made
    /// for it (`keda-hpa-<name>`), then removes its finalizer, so the API server deletes the
    /// ScaledObject.
    pub async fn keda_lets_go(&self, name: &str) {
        let hpas = self.api::<HorizontalPodAutoscaler>();
        let hpa = format!("keda-hpa-{name}");
        if hpas.get_opt(&hpa).await.unwrap().is_some() {
            hpas.delete(&hpa, &DeleteParams::default()).await.unwrap();
        }
        let leaving = self.api::<ScaledObject>().get(name).await.unwrap();
        assert!(
            leaving.metadata.deletion_timestamp.is_some(),
            "KEDA lets go of a ScaledObject being deleted, not of {name}"
        );
        let finalizers: Vec<String> = leaving
            .metadata
            .finalizers
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != KEDA_FINALIZER)
            .collect();
        self.api::<ScaledObject>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
            )
            .await
            .unwrap();
    }

    /// One pass of the operator's LAG refresh ([`odds_operator::controller::refresh_lags`]),
    /// its requests recorded like a reconcile's.
    pub async fn refresh_lags(&self) {
        self.operator.store(true, Ordering::SeqCst);
        odds_operator::controller::refresh_lags(&self.ctx).await;
        self.operator.store(false, Ordering::SeqCst);
    }

    /// One pass of the operator's freshness refresh
    /// ([`odds_operator::controller::refresh_freshness`]).
    pub async fn refresh_freshness(&self) {
        self.operator.store(true, Ordering::SeqCst);
        odds_operator::controller::refresh_freshness(&self.ctx).await;
        self.operator.store(false, Ordering::SeqCst);
    }

    /// A harness whose cluster has KEDA and the Prometheus Operator's PodMonitor CRD (and
    /// Strimzi, and the Secrets).
    pub async fn with_monitoring(pipeline: OddsPipeline) -> Harness {
        harness_with(
            pipeline,
            Options {
                keda: true,
                pod_monitors: true,
                ..Options::default()
            },
        )
        .await
    }

    /// A harness whose cluster has KEDA (and Strimzi, and the Secrets).
    pub async fn with_keda(pipeline: OddsPipeline) -> Harness {
        harness_with(
            pipeline,
            Options {
                keda: true,
                ..Options::default()
            },
        )
        .await
    }

    /// What KEDA does once it runs a ScaledObject: creates its HPA (`keda-hpa-<name>`, once),
    /// which reports the trigger's metric in its status. Here the HPA saw an average of
    /// `average` per replica over `replicas` replicas.
    pub async fn keda_hpa_reports(&self, name: &str, average: &str, replicas: i32) {
        use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": format!("keda-hpa-{name}"), "namespace": NS},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": 1, "maxReplicas": 6},
        }))
        .unwrap();
        let hpas = self.api::<HorizontalPodAutoscaler>();
        if hpas.get_opt(&hpa.name_any()).await.unwrap().is_none() {
            hpas.create(&PostParams::default(), &hpa).await.unwrap();
        }
        self.patch_status::<HorizontalPodAutoscaler>(
            &format!("keda-hpa-{name}"),
            json!({"currentReplicas": replicas, "desiredReplicas": replicas, "currentMetrics": [{
                "type": "External",
                "external": {"metric": {"name": "s0-kafka-odds_updates"},
                             "current": {"averageValue": average}}
            }]}),
        )
        .await;
    }

    pub fn applied(&self, key: &str) -> Vec<Value> {
        self.applies
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `odds_operator_reconcile_errors_total{error=label}`.
    pub fn errors(&self, label: &str) -> u64 {
        self.metrics.failures.with_label_values(&[label]).get()
    }

    /// Every event stored for the pipeline.
    pub async fn stored_events(&self) -> Vec<k8s_openapi::api::events::v1::Event> {
        self.all().await
    }

    /// Events published for the pipeline, as `(type, reason, note)`.
    pub async fn events(&self) -> Vec<(String, String, String)> {
        self.stored_events()
            .await
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// How many events with `reason` were published (a series counts once per publish).
    pub async fn event_count(&self, reason: &str) -> i32 {
        self.stored_events()
            .await
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum()
    }
}
