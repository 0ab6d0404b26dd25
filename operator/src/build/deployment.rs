//! Deployments of the workloads (simulator, ingest, processor, odds service).
//!
//! One builder for all of them: same probes on the shared ops port, same restricted security
//! context, env from the pipeline ConfigMap plus per-container Secret references, and the
//! config hash on the pod template so config and Secret changes roll the pods.

use super::{configmap, metadata, selector_labels, Component, CONFIG_HASH_ANNOTATION};
use super::{API_PORT, OPS_PORT, SIMULATOR_PORT};
use crate::crd::{ComponentSpec, SecretKeyRef};
use crate::validate::ValidPipeline;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use odds_contracts::env;
use std::collections::BTreeMap;

/// Whether an autoscaler owns the component's replica count.
pub fn autoscaled(pipeline: &ValidPipeline, component: Component) -> bool {
    pipeline.component(component).autoscaling.is_some()
}

/// Builds the Deployment of `component`. `config_hash` goes on the pod template.
pub fn build(pipeline: &ValidPipeline, component: Component, config_hash: &str) -> Deployment {
    let spec = pipeline.component(component);
    let labels = super::labels(pipeline, component.suffix());
    let pod_meta = ObjectMeta {
        labels: Some(labels),
        annotations: Some(BTreeMap::from([(
            CONFIG_HASH_ANNOTATION.to_string(),
            config_hash.to_string(),
        )])),
        ..ObjectMeta::default()
    };
    let overrides = &spec.pod_overrides;
    Deployment {
        metadata: metadata(pipeline, component.name(pipeline), component.suffix()),
        spec: Some(DeploymentSpec {
            // Left out while an HPA owns it, so server-side apply never fights the autoscaler
            // (`crate::apply` hands the field over without a drop to one replica).
            replicas: (!autoscaled(pipeline, component)).then_some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(pipeline, component.suffix())),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: Some(PodSpec {
                    containers: vec![container(pipeline, component, &spec)],
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(30),
                    node_selector: (!overrides.node_selector.is_empty())
                        .then(|| overrides.node_selector.clone()),
                    tolerations: (!overrides.tolerations.is_empty())
                        .then(|| overrides.tolerations.clone()),
                    affinity: overrides.affinity.clone(),
                    volumes: Some(vec![tmp_volume()]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn container(pipeline: &ValidPipeline, component: Component, spec: &ComponentSpec) -> Container {
    let mut ports = vec![port("metrics", OPS_PORT)];
    match component {
        Component::OddsService => ports.insert(0, port("http", API_PORT)),
        Component::Simulator => ports.insert(0, port("feed", SIMULATOR_PORT)),
        Component::Ingest | Component::Processor => {}
    }
    Container {
        name: component.suffix().into(),
        image: Some(pipeline.image.reference()),
        image_pull_policy: Some(pipeline.image.pull_policy.as_str().into()),
        command: Some(vec![component.binary().into()]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: configmap::name_in(&pipeline.name),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env(pipeline, component, spec)),
        ports: Some(ports),
        resources: spec.resources.clone(),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        security_context: Some(security_context()),
        volume_mounts: Some(vec![tmp_mount()]),
        ..Container::default()
    }
}

/// The scratch volume at `/tmp` every container gets: the root filesystem is read-only.
pub(super) fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// Where [`tmp_volume`] is mounted.
pub(super) fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }
}

/// Per-container env: listen addresses and Secret references, merged with the user's
/// `podOverrides.env` by name. The merge is deterministic: the operator's entries keep their
/// order, a user entry with the same name replaces the operator's in place, and the user's
/// other entries follow in the order given. The result never holds a name twice (the
/// container's `env` is a list map keyed by name under server-side apply, which rejects
/// duplicates).
fn env(pipeline: &ValidPipeline, component: Component, spec: &ComponentSpec) -> Vec<EnvVar> {
    let mut env = Vec::new();
    match component {
        Component::Simulator => {
            env.push(value(env::LISTEN_ADDR, format!("0.0.0.0:{SIMULATOR_PORT}")))
        }
        Component::OddsService => {
            env.push(value(env::LISTEN_ADDR, format!("0.0.0.0:{API_PORT}")));
        }
        Component::Ingest | Component::Processor => {}
    }
    for (name, secret) in pipeline.secret_env(component) {
        env.push(secret_env(name, &secret));
    }
    merge_env(env, &spec.pod_overrides.env)
}

/// `ours` with `theirs` merged in by name (see [`env`]); a name the user repeats keeps its
/// last entry.
pub fn merge_env(mut ours: Vec<EnvVar>, theirs: &[EnvVar]) -> Vec<EnvVar> {
    for extra in theirs {
        match ours.iter_mut().find(|e| e.name == extra.name) {
            Some(existing) => *existing = extra.clone(),
            None => ours.push(extra.clone()),
        }
    }
    ours
}

fn value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// An env var read from a Secret key (the value never appears in any spec).
pub fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The restricted Pod Security Standard, container part.
pub fn security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The restricted Pod Security Standard, pod part (uid 65532: the image's non-root user).
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}
