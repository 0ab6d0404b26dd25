//! The in-memory API harness shared by the reconcile tests (kube-fake-client).
//!
//! The fake has no watch and no controllers, so tests call `reconcile` directly and play the
//! other controllers' part through these helpers (Strimzi marks topics Ready, the Job
//! controller completes the migration, the Deployment controller reports ready pods).
// Each test binary uses a different subset of the helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use kube_fake_client::{interceptor, ClientBuilder, PatchType};
use odds_operator::build::{job, KafkaTopic, CONFIG_HASH_ANNOTATION};
use odds_operator::controller::{reconcile, Context};
use odds_operator::crd::{Condition, OddsPipeline};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const NS: &str = "default";

pub struct Harness {
    pub client: kube::Client,
    pub ctx: Arc<Context>,
    /// Every server-side apply body, by `Kind/name`.
    pub applies: Arc<Mutex<Vec<(String, Value)>>>,
    pub status_writes: Arc<AtomicUsize>,
}

pub fn sample() -> OddsPipeline {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/oddspipeline.yaml");
    let mut pipeline: OddsPipeline =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    pipeline.metadata.uid = Some("0c6f-uid".into());
    pipeline.metadata.generation = Some(1);
    pipeline
}

pub fn secret(name: &str) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(NS.into());
    secret.string_data = Some([("url".to_string(), "redis://x".to_string())].into());
    secret
}

pub async fn harness(pipeline: OddsPipeline, with_secrets: bool) -> Harness {
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
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn pipeline(&self) -> OddsPipeline {
        self.api::<OddsPipeline>().get("demo").await.unwrap()
    }

    pub async fn reconcile(&self) {
        let pipeline = Arc::new(self.pipeline().await);
        reconcile(pipeline, self.ctx.clone()).await.unwrap();
    }

    pub async fn condition(&self, type_: &str) -> Condition {
        let status = self.pipeline().await.status.expect("status written");
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .expect(type_)
    }

    pub async fn deployment(&self, name: &str) -> Option<Deployment> {
        self.api::<Deployment>().get_opt(name).await.unwrap()
    }

    pub async fn patch_status<K>(&self, name: &str, status: Value)
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

    pub async fn topics_ready(&self) {
        for name in ["demo-odds-updates", "demo-odds-updates-dlq"] {
            self.patch_status::<KafkaTopic>(
                name,
                json!({"conditions": [{"type": "Ready", "status": "True"}]}),
            )
            .await;
        }
    }

    pub async fn migration_done(&self) {
        let name = job::name(&self.pipeline().await);
        self.patch_status::<Job>(
            &name,
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        )
        .await;
    }

    pub async fn pods_ready(&self) {
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
    pub async fn roll_out(&self) {
        self.reconcile().await;
        self.topics_ready().await;
        self.migration_done().await;
        self.reconcile().await;
        self.pods_ready().await;
        self.reconcile().await;
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
}

pub fn hash(deployment: &Deployment) -> String {
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

/// Events published for the pipeline, as `(type, reason, note)`.
pub async fn events(h: &Harness) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = h.api();
    api.list(&Default::default())
        .await
        .unwrap()
        .items
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
