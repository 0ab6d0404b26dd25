//! `odds-operator render`: what the operator would apply for a pipeline, without a cluster.
//!
//! Reviews and GitOps diffs want to see the children before a cluster does, as `helm
//! template` shows a chart's. Render runs the controller's own steps on a file: the CRD's
//! admission rules (defaults, then its CEL rules, as the API server would), [`validate`], and
//! the pure [`build`], with the discovery answers given as options instead of asked of an API
//! server. It prints the steady state: topics Ready and the migration succeeded, so every
//! workload is present (a live reconcile holds some back until then).

use crate::build::{self, Facts, MigrationState};
use crate::crd::OddsPipeline;
use crate::observe;
use crate::validate::{validate, InvalidSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::CustomResourceExt;
use serde::Deserialize;
use std::collections::BTreeMap;

/// What discovery and the cluster would tell the controller, given by the user instead.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Namespace of pipelines whose file names none (kubectl's default).
    pub namespace: String,
    /// Whether the cluster serves Strimzi's `KafkaTopic` (`kafka.clusterRef` needs it).
    pub strimzi: bool,
    /// Whether the cluster serves KEDA's `ScaledObject` (lag and connections modes need it).
    pub keda: bool,
    /// Whether the cluster serves the Prometheus Operator's `PodMonitor` (connections mode
    /// with `podMonitor`, the default, needs it).
    pub pod_monitors: bool,
    /// The Secrets in the pipelines' namespace; `None` takes every referenced key as present.
    pub secrets: Option<Vec<Secret>>,
}

/// Why a file renders nothing. The messages are the API server's and the controller's own.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index}: not YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error(
        "document {index}: kind {kind:?} is not an OddsPipeline (odds-pipeline.github.io/v1alpha1)"
    )]
    NotAPipeline { index: usize, kind: String },
    #[error("OddsPipeline {name}: the API server would reject it: {message}")]
    Rejected { name: String, message: String },
    #[error("OddsPipeline {name}: {source}")]
    Invalid { name: String, source: InvalidSpec },
    #[error("OddsPipeline {name}: kafka.clusterRef is set, but --strimzi=false says the cluster has no Strimzi KafkaTopic CRD (the controller reports StrimziNotInstalled)")]
    StrimziNotInstalled { name: String },
    #[error("the file holds no OddsPipeline")]
    Empty,
    #[error("serializing the children: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Every child of every `OddsPipeline` in `documents` (multi-document YAML), as YAML
/// documents in the order the controller applies them.
pub fn render(documents: &str, options: &RenderOptions) -> Result<String, RenderError> {
    let schema = admission_schema()?;
    let mut out = String::new();
    let mut pipelines = 0;
    for (index, document) in serde_yaml::Deserializer::from_str(documents).enumerate() {
        let value = serde_json::Value::deserialize(document)
            .map_err(|source| RenderError::Yaml { index, source })?;
        if value.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let pipeline = admit(index, value, &schema, &options.namespace)?;
        for child in children(&pipeline, options)? {
            out.push_str("---\n");
            out.push_str(
                &serde_yaml::to_string(&child)
                    .map_err(|source| RenderError::Yaml { index, source })?,
            );
        }
        pipelines += 1;
    }
    if pipelines == 0 {
        return Err(RenderError::Empty);
    }
    Ok(out)
}

/// The CRD's openAPIV3Schema, whose CEL rules admission evaluates.
fn admission_schema() -> Result<serde_json::Value, RenderError> {
    let crd = serde_json::to_value(OddsPipeline::crd())?;
    Ok(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
}

/// What the API server does on create: the schema's types and defaults (serde applies the
/// same defaults the schema was generated from), then the CEL rules on the defaulted object.
fn admit(
    index: usize,
    value: serde_json::Value,
    schema: &serde_json::Value,
    namespace: &str,
) -> Result<OddsPipeline, RenderError> {
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    if kind != "OddsPipeline" || api_version != "odds-pipeline.github.io/v1alpha1" {
        return Err(RenderError::NotAPipeline { index, kind });
    }
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or("(no name)")
        .to_string();
    let rejected = |message: String| RenderError::Rejected {
        name: name.clone(),
        message,
    };
    let mut pipeline: OddsPipeline =
        serde_json::from_value(value).map_err(|e| rejected(e.to_string()))?;
    if pipeline.metadata.namespace.is_none() {
        pipeline.metadata.namespace = Some(namespace.to_string());
    }
    let defaulted = serde_json::to_value(&pipeline)?;
    kube::core::cel::Validator::new()
        .validate(schema, &defaulted, None)
        .map_err(|errors| rejected(errors.to_string()))?;
    Ok(pipeline)
}

/// The controller's validate → build for one admitted pipeline.
fn children(
    pipeline: &OddsPipeline,
    options: &RenderOptions,
) -> Result<Vec<serde_json::Value>, RenderError> {
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    if pipeline.spec.kafka.cluster_ref.is_some() && !options.strimzi {
        return Err(RenderError::StrimziNotInstalled { name });
    }
    let facts = Facts {
        secrets: secret_facts(pipeline, options.secrets.as_deref()),
        ports: secrets_of(pipeline, options.secrets.as_deref())
            .filter_map(|s| Some((s.metadata.name.clone()?, observe::url_ports(s))))
            .collect(),
        // As the cluster will have them once Strimzi caught up: every workload rendered.
        topics_ready: true,
        kafka_user_ready: true,
        existing_partitions: None,
        keda_installed: options.keda,
        pod_monitors_installed: options.pod_monitors,
        // Nothing is measured while rendering.
        redis_url: None,
    };
    let valid =
        validate(pipeline, &facts).map_err(|source| RenderError::Invalid { name, source })?;
    Ok(build::children(&valid, &MigrationState::Succeeded).objects()?)
}

/// Key digests of the Secrets the pipeline references: from the given Secrets, or, when none
/// were given, every referenced key present with an unknown value.
fn secret_facts(
    pipeline: &OddsPipeline,
    secrets: Option<&[Secret]>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    match secrets {
        Some(_) => secrets_of(pipeline, secrets)
            .filter_map(|s| Some((s.metadata.name.clone()?, observe::key_digests(s))))
            .collect(),
        None => {
            let spec = &pipeline.spec;
            let mut facts: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            let refs = [&spec.redis.url_secret_ref, &spec.postgres.url_secret_ref]
                .into_iter()
                .chain(spec.postgres.read_url_secret_ref.as_ref());
            for reference in refs {
                facts
                    .entry(reference.name.clone())
                    .or_default()
                    .insert(reference.key.clone(), String::new());
            }
            facts
        }
    }
}

/// The given Secrets that live in `pipeline`'s namespace (or name none, as a file of samples
/// for one namespace may not).
fn secrets_of<'a>(
    pipeline: &'a OddsPipeline,
    secrets: Option<&'a [Secret]>,
) -> impl Iterator<Item = &'a Secret> {
    let namespace = pipeline.metadata.namespace.as_deref();
    secrets.into_iter().flatten().filter(move |s| {
        s.metadata.namespace.is_none() || s.metadata.namespace.as_deref() == namespace
    })
}

/// Reads the Secrets of a multi-document YAML file (other kinds are ignored: a file of
/// samples may hold more than Secrets).
pub fn secrets_from_yaml(documents: &str) -> Result<Vec<Secret>, serde_yaml::Error> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(documents) {
        let value = serde_json::Value::deserialize(document)?;
        if value["kind"] == "Secret" && value["apiVersion"] == "v1" {
            out.push(
                serde_json::from_value(value)
                    .map_err(<serde_yaml::Error as serde::de::Error>::custom)?,
            );
        }
    }
    Ok(out)
}
