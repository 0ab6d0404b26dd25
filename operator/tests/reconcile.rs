//! Reconcile against an in-memory Kubernetes API (kube-fake-client): state-based checks of
//! which objects exist and what they contain after each reconcile.
//!
//! The fake has no watch and no controllers, so the tests call `reconcile` directly and play
//! the other controllers' part themselves (Strimzi marks topics Ready, the Job controller
//! completes the migration, the Deployment controller reports ready pods).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use kube_fake_client::{interceptor, ClientBuilder, PatchType};
use odds_operator::build::{job, KafkaTopic, CONFIG_HASH_ANNOTATION};
use odds_operator::controller::{reconcile, Context};
use odds_operator::crd::{Condition, OddsPipeline};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const NS: &str = "default";

struct Harness {
    client: kube::Client,
    ctx: Arc<Context>,
    /// Every server-side apply body, by `Kind/name`.
    applies: Arc<Mutex<Vec<(String, Value)>>>,
    status_writes: Arc<AtomicUsize>,
}

fn sample() -> OddsPipeline {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/oddspipeline.yaml");
    let mut pipeline: OddsPipeline =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    pipeline.metadata.uid = Some("0c6f-uid".into());
    pipeline.metadata.generation = Some(1);
    pipeline
}

fn secret(name: &str) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(NS.into());
    secret.string_data = Some([("url".to_string(), "redis://x".to_string())].into());
    secret
}

async fn harness(pipeline: OddsPipeline, with_secrets: bool) -> Harness {
    let applies = Arc::new(Mutex::new(Vec::new()));
    let status_writes = Arc::new(AtomicUsize::new(0));
    let (recorded, writes) = (applies.clone(), status_writes.clone());
    let name = pipeline.name_any();
    let funcs = interceptor::Funcs::new()
        .patch(move |ctx| {
            if ctx.patch_type != PatchType::ApplyPatch {
                return Ok(None);
            }
            let kind = ctx.patch.get("kind").and_then(Value::as_str).unwrap_or("?");
            recorded
                .lock()
                .unwrap()
                .push((format!("{kind}/{}", ctx.name), ctx.patch.clone()));
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
        .with_resource::<KafkaTopic>()
        .with_object(pipeline)
        .with_interceptor_funcs(funcs);
    if with_secrets {
        builder = builder
            .with_object(secret("odds-redis"))
            .with_object(secret("odds-postgres"));
    }
    let client = builder.build().await.unwrap();
    let ctx = Arc::new(Context::new(client.clone(), Some("test".into()), None));
    Harness {
        client,
        ctx,
        applies,
        status_writes,
    }
}

impl Harness {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn pipeline(&self) -> OddsPipeline {
        self.api::<OddsPipeline>().get("demo").await.unwrap()
    }

    async fn reconcile(&self) {
        let pipeline = Arc::new(self.pipeline().await);
        reconcile(pipeline, self.ctx.clone()).await.unwrap();
    }

    async fn condition(&self, type_: &str) -> Condition {
        let status = self.pipeline().await.status.expect("status written");
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .expect(type_)
    }

    async fn deployment(&self, name: &str) -> Option<Deployment> {
        self.api::<Deployment>().get_opt(name).await.unwrap()
    }

    async fn patch_status<K>(&self, name: &str, status: Value)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    async fn topics_ready(&self) {
        for name in ["demo-odds-updates", "demo-odds-updates-dlq"] {
            self.patch_status::<KafkaTopic>(
                name,
                json!({"conditions": [{"type": "Ready", "status": "True"}]}),
            )
            .await;
        }
    }

    async fn migration_done(&self) {
        let name = job::name(&self.pipeline().await);
        self.patch_status::<Job>(
            &name,
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        )
        .await;
    }

    async fn pods_ready(&self) {
        for name in [
            "demo-simulator",
            "demo-ingest",
            "demo-processor",
            "demo-odds-service",
        ] {
            let deployment = self.deployment(name).await.expect(name);
            let n = deployment.spec.unwrap().replicas.unwrap_or(1);
            self.patch_status::<Deployment>(name, json!({"replicas": n, "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n})).await;
        }
    }

    /// Reconciles, plays Strimzi and the Job controller, reconciles, marks pods ready, and
    /// reconciles once more: a fully rolled-out pipeline.
    async fn roll_out(&self) {
        self.reconcile().await;
        self.topics_ready().await;
        self.migration_done().await;
        self.reconcile().await;
        self.pods_ready().await;
        self.reconcile().await;
    }

    fn applied(&self, key: &str) -> Vec<Value> {
        self.applies
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn hash(deployment: &Deployment) -> String {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

#[tokio::test]
async fn create_builds_owned_labelled_children() {
    let h = harness(sample(), true).await;
    h.roll_out().await;

    let cm = h.api::<ConfigMap>().get("demo-config").await.unwrap();
    let data = cm.data.clone().unwrap();
    assert_eq!(data["KAFKA_BROKERS"], "odds-kafka-bootstrap:9092");
    assert_eq!(data["SUPPLIER_URL"], "ws://demo-simulator:8090/ws");
    assert!(
        data.values().all(|v| !v.contains("odds:odds@")),
        "no secret in the ConfigMap"
    );

    let topic = h
        .api::<KafkaTopic>()
        .get("demo-odds-updates")
        .await
        .unwrap();
    assert_eq!(topic.labels()["strimzi.io/cluster"], "odds");
    assert_eq!(topic.spec.partitions, Some(6));
    assert_eq!(topic.spec.config["retention.ms"], json!("604800000"));
    assert!(h
        .api::<KafkaTopic>()
        .get_opt("demo-odds-updates-dlq")
        .await
        .unwrap()
        .is_some());

    for name in [
        "demo-simulator",
        "demo-ingest",
        "demo-processor",
        "demo-odds-service",
    ] {
        let d = h.deployment(name).await.expect(name);
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("OddsPipeline", "demo", "0c6f-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(d.labels()["app.kubernetes.io/managed-by"], "odds-operator");
        assert_eq!(d.labels()["app.kubernetes.io/instance"], "demo");
        let pod = d.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("odds-pipeline:dev"));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.read_only_root_filesystem,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    }
    let processor = h.deployment("demo-processor").await.unwrap();
    let env = processor.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let db = env.iter().find(|e| e.name == "DATABASE_URL").unwrap();
    let from = db
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("odds-postgres", "url")
    );
    assert!(db.value.is_none());

    let svc = h.api::<Service>().get("demo-odds-service").await.unwrap();
    let ports: Vec<i32> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 9000]);
    assert!(h
        .api::<PodDisruptionBudget>()
        .get_opt("demo-processor")
        .await
        .unwrap()
        .is_some());
    let job = h.api::<Job>().get(&job::name(&sample())).await.unwrap();
    assert_eq!(
        job.spec.unwrap().template.spec.unwrap().containers[0].command,
        Some(vec!["odds-processor".to_string(), "migrate".to_string()])
    );
}

#[tokio::test]
async fn topic_not_ready_holds_the_workloads_back() {
    let h = harness(sample(), true).await;
    h.reconcile().await;
    h.migration_done().await;
    h.reconcile().await;
    assert!(
        h.deployment("demo-simulator").await.is_some(),
        "the simulator needs no topic"
    );
    for name in ["demo-ingest", "demo-processor", "demo-odds-service"] {
        assert!(
            h.deployment(name).await.is_none(),
            "{name} must wait for the topic"
        );
    }
    assert_eq!(h.condition("TopicReady").await.status, "False");
    assert_eq!(h.condition("Ready").await.status, "False");
    let progressing = h.condition("Progressing").await;
    assert_eq!(progressing.status, "True");
    assert!(
        progressing.message.contains("ingest WaitingForTopic"),
        "{}",
        progressing.message
    );
}

#[tokio::test]
async fn failed_migration_is_degraded_with_the_jobs_message() {
    let h = harness(sample(), true).await;
    h.reconcile().await;
    h.topics_ready().await;
    let name = job::name(&h.pipeline().await);
    h.patch_status::<Job>(&name, json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})).await;
    h.reconcile().await;
    let degraded = h.condition("Degraded").await;
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "MigrationFailed")
    );
    assert!(
        degraded.message.contains("backoff limit"),
        "{}",
        degraded.message
    );
    assert_eq!(h.condition("Migrated").await.status, "False");
    assert!(
        h.deployment("demo-ingest").await.is_some(),
        "ingest needs no schema"
    );
    assert!(h.deployment("demo-processor").await.is_none());
    assert!(h.deployment("demo-odds-service").await.is_none());
}

#[tokio::test]
async fn ready_deployments_make_the_pipeline_ready() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let pipeline = h.pipeline().await;
    let status = pipeline.status.clone().unwrap();
    let ready = h.condition("Ready").await;
    assert_eq!(ready.status, "True", "{ready:?}");
    assert_eq!(ready.observed_generation, pipeline.metadata.generation);
    assert_eq!(status.observed_generation, pipeline.metadata.generation);
    assert_eq!(status.processor.unwrap().summary, "2/2");
    assert_eq!(
        status.web_socket_url.as_deref(),
        Some("ws://demo-odds-service.default.svc:8080/ws/odds")
    );
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert_eq!(h.condition("Progressing").await.status, "False");
}

#[tokio::test]
async fn unchanged_pipeline_writes_no_status_and_changes_no_child() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let before_status = h.pipeline().await.status;
    let before = h.deployment("demo-processor").await.unwrap().spec;
    let writes = h.status_writes.load(Ordering::SeqCst);
    // Let the clock move on: a recomputed lastTransitionTime would now differ.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    h.reconcile().await;
    h.reconcile().await;
    assert_eq!(
        h.status_writes.load(Ordering::SeqCst),
        writes,
        "steady state must not write status"
    );
    assert_eq!(h.pipeline().await.status, before_status);
    assert_eq!(h.deployment("demo-processor").await.unwrap().spec, before);
}

#[tokio::test]
async fn spec_change_updates_children_and_rolls_pods() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let old_hash = hash(&h.deployment("demo-ingest").await.unwrap());
    let patch =
        json!({"spec": {"supplier": {"simulator": {"rate": 50}}, "processor": {"replicas": 3}}});
    h.api::<OddsPipeline>()
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    h.reconcile().await;
    let cm = h.api::<ConfigMap>().get("demo-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["SIM_RATE"], "50");
    let ingest = h.deployment("demo-ingest").await.unwrap();
    assert_ne!(hash(&ingest), old_hash, "config change must roll the pods");
    assert_eq!(
        h.deployment("demo-processor")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(3)
    );
    let pipeline = h.pipeline().await;
    assert_eq!(
        h.condition("Ready").await.observed_generation,
        pipeline.metadata.generation
    );
}

#[tokio::test]
async fn secret_change_rolls_pods() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let old_hash = hash(&h.deployment("demo-processor").await.unwrap());
    let patch = json!({"stringData": {"url": "postgres://new"}});
    h.api::<Secret>()
        .patch(
            "odds-postgres",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    h.reconcile().await;
    assert_ne!(
        hash(&h.deployment("demo-processor").await.unwrap()),
        old_hash
    );
}

#[tokio::test]
async fn new_image_waits_for_its_migration() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let old_job = job::name(&h.pipeline().await);
    let patch = json!({"spec": {"image": {"tag": "v2"}}});
    h.api::<OddsPipeline>()
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    h.reconcile().await;
    let new_job = job::name(&h.pipeline().await);
    assert_ne!(new_job, old_job);
    assert!(h.api::<Job>().get_opt(&new_job).await.unwrap().is_some());
    let image = |d: Deployment| {
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(
        image(h.deployment("demo-processor").await.unwrap()),
        "odds-pipeline:dev",
        "old image keeps running"
    );
    assert_eq!(
        image(h.deployment("demo-ingest").await.unwrap()),
        "odds-pipeline:v2"
    );
    h.migration_done().await;
    h.reconcile().await;
    assert_eq!(
        image(h.deployment("demo-processor").await.unwrap()),
        "odds-pipeline:v2"
    );
    assert_eq!(
        image(h.deployment("demo-odds-service").await.unwrap()),
        "odds-pipeline:v2"
    );
}

#[tokio::test]
async fn autoscaled_odds_service_is_applied_without_replicas() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let applied = h.applied("Deployment/demo-odds-service");
    assert!(!applied.is_empty());
    assert!(
        applied
            .iter()
            .all(|body| body["spec"].get("replicas").is_none()),
        "the HPA owns replicas"
    );
    assert!(h
        .applied("Deployment/demo-ingest")
        .iter()
        .all(|body| body["spec"]["replicas"] == json!(1)));
    let hpa = h
        .api::<HorizontalPodAutoscaler>()
        .get("demo-odds-service")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 5));
    assert_eq!(hpa.scale_target_ref.name, "demo-odds-service");
}

#[tokio::test]
async fn processor_replicas_above_partitions_are_rejected_with_a_condition() {
    let mut pipeline = sample();
    pipeline.spec.processor.replicas = 10;
    let h = harness(pipeline, true).await;
    h.reconcile().await;
    let degraded = h.condition("Degraded").await;
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded
            .message
            .contains("processor replicas (10) exceed kafka.topic.partitions (6)"),
        "{}",
        degraded.message
    );
    assert!(
        h.api::<ConfigMap>()
            .get_opt("demo-config")
            .await
            .unwrap()
            .is_none(),
        "nothing applied"
    );
    assert!(h.applies.lock().unwrap().is_empty());
    let events: Api<k8s_openapi::api::events::v1::Event> = h.api();
    let events = events.list(&Default::default()).await.unwrap().items;
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .expect("InvalidSpec event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning
        .note
        .as_deref()
        .unwrap_or("")
        .contains("exceed kafka.topic.partitions"));
    // Reconciling the same bad spec again neither errors nor rewrites the status.
    let writes = h.status_writes.load(Ordering::SeqCst);
    h.reconcile().await;
    assert_eq!(h.status_writes.load(Ordering::SeqCst), writes);
}

#[tokio::test]
async fn missing_secret_is_degraded() {
    let h = harness(sample(), false).await;
    h.reconcile().await;
    let degraded = h.condition("Degraded").await;
    assert_eq!(degraded.status, "True");
    assert!(
        degraded
            .message
            .contains("missing Secret(s): odds-postgres, odds-redis"),
        "{}",
        degraded.message
    );
}

#[tokio::test]
async fn paused_pipeline_changes_nothing() {
    for annotation in [false, true] {
        let h = harness(sample(), true).await;
        h.roll_out().await;
        let before = h.deployment("demo-ingest").await.unwrap().spec;
        let applies = h.applies.lock().unwrap().len();
        let patch = if annotation {
            json!({"metadata": {"annotations": {"odds-pipeline.github.io/pause-reconciliation": "true"}}, "spec": {"image": {"tag": "v9"}}})
        } else {
            json!({"spec": {"paused": true, "image": {"tag": "v9"}}})
        };
        h.api::<OddsPipeline>()
            .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        h.reconcile().await;
        assert_eq!(
            h.applies.lock().unwrap().len(),
            applies,
            "no child applied while paused"
        );
        assert_eq!(h.deployment("demo-ingest").await.unwrap().spec, before);
        let paused = h.condition("ReconciliationPaused").await;
        assert_eq!(
            (paused.status.as_str(), paused.reason.as_str()),
            ("True", "Paused")
        );
    }
}
