//! The migration Job: runs `odds-processor migrate` once per image and schema version.
//!
//! Its name carries a hash of the image reference, the newest migration compiled into this
//! operator and the Job's pod template, so a new image (or schema) gets a new Job and an
//! unchanged one never migrates twice. The template is in the hash because a Job's template
//! is immutable: any change to it (a new Secret reference, a newer operator's builder) must
//! become a new Job rather than an apply the API server rejects forever. Migrations are
//! idempotent, so such an extra run is harmless. Processor and odds-service roll out only
//! after it succeeded.
//!
//! A Job that failed stays failed (its pods' logs are the evidence). Recovery is an explicit
//! user action: setting or changing the pipeline's `odds-pipeline.github.io/retry-migration`
//! annotation puts its value into the hash, so a new Job runs; the failed one is pruned once
//! a newer one succeeded. Raising `postgres.migrationDeadlineSeconds` after a Job ran out of
//! time does the same: a deadline other than the default is in the hash too.

use super::deployment::{
    pod_security_context, secret_env, security_context, tmp_mount, tmp_volume,
};
use super::{metadata, short_hex, Component};
use crate::crd::DEFAULT_MIGRATION_DEADLINE_SECONDS;
use crate::validate::ValidPipeline;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

/// Name of the migration Job for the pipeline's current image.
pub fn name(pipeline: &ValidPipeline) -> String {
    let mut hasher = Sha256::new();
    hasher.update(pipeline.image.reference().as_bytes());
    hasher.update(format!("\nschema {}\n", odds_schema::latest_version()).as_bytes());
    // Only when set, so that pipelines that never retried keep their Job names.
    if let Some(retry) = &pipeline.migration_retry {
        hasher.update(format!("retry {retry}\n").as_bytes());
    }
    // A Job failed by its deadline reruns once the deadline is raised; only when it is not
    // the default, so that existing pipelines keep their Job names.
    if pipeline.migration_deadline_seconds != DEFAULT_MIGRATION_DEADLINE_SECONDS {
        let deadline = pipeline.migration_deadline_seconds;
        hasher.update(format!("deadline {deadline}\n").as_bytes());
    }
    // Serializing k8s-openapi types cannot fail; an empty hash input would still be stable.
    hasher.update(serde_json::to_vec(&template(pipeline)).unwrap_or_default());
    let digest = hasher.finalize();
    format!("{}-migrate-{}", pipeline.name, &short_hex(&digest)[..10])
}

/// Builds the Job.
pub fn build(pipeline: &ValidPipeline) -> Job {
    Job {
        metadata: metadata(pipeline, name(pipeline), COMPONENT),
        spec: Some(JobSpec {
            backoff_limit: Some(3),
            active_deadline_seconds: Some(pipeline.migration_deadline_seconds),
            template: template(pipeline),
            ..JobSpec::default()
        }),
        status: None,
    }
}

const COMPONENT: &str = "migration";

/// The Job's pod: the processor binary's `migrate` command with the read-write database URL.
fn template(pipeline: &ValidPipeline) -> PodTemplateSpec {
    let pod_meta = ObjectMeta {
        labels: Some(super::labels(pipeline, COMPONENT)),
        ..ObjectMeta::default()
    };
    PodTemplateSpec {
        metadata: Some(pod_meta),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            security_context: Some(pod_security_context()),
            containers: vec![Container {
                name: "migrate".into(),
                image: Some(pipeline.image.reference()),
                image_pull_policy: Some(pipeline.image.pull_policy.as_str().into()),
                command: Some(vec![Component::Processor.binary().into(), "migrate".into()]),
                env: Some(vec![secret_env(
                    odds_contracts::env::DATABASE_URL,
                    &pipeline.postgres_url,
                )]),
                security_context: Some(security_context()),
                volume_mounts: Some(vec![tmp_mount()]),
                ..Container::default()
            }],
            volumes: Some(vec![tmp_volume()]),
            ..PodSpec::default()
        }),
    }
}

/// The migration outcome a Job reports.
pub fn state(job: &Job) -> super::MigrationState {
    let Some(status) = &job.status else {
        return super::MigrationState::Pending;
    };
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        match condition.type_.as_str() {
            "Complete" => return super::MigrationState::Succeeded,
            "Failed" => {
                let message = condition
                    .message
                    .clone()
                    .or_else(|| condition.reason.clone())
                    .unwrap_or_else(|| "the migration Job failed".into());
                return super::MigrationState::Failed(message);
            }
            _ => {}
        }
    }
    if status.succeeded.unwrap_or(0) > 0 {
        super::MigrationState::Succeeded
    } else {
        super::MigrationState::Pending
    }
}
