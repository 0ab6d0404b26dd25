//! KEDA's `TriggerAuthentication` for the processor's lag trigger on a secured Kafka.
//!
//! KEDA's operator reads the consumer group's lag itself, so with `kafka.authentication` it
//! must log in too, or the trigger errors and the processor stops scaling. It logs in as the
//! pipeline's own KafkaUser (whose ACLs allow describing the topic and group): the password
//! or client certificate and the cluster CA come from the Secrets Strimzi makes, and the SCRAM
//! user name, which Strimzi's Secret does not hold, from the pipeline's ConfigMap. Built only
//! beside the lag ScaledObject that refers to it.
//!
//! A small typed mirror of KEDA's `keda.sh/v1alpha1` TriggerAuthentication (the tests check
//! the built objects against KEDA 2.20.2's CRD).

use super::kafkauser::{self, SASL_USERNAME_ENV};
use super::{configmap, metadata, Component};
use crate::crd::KafkaAuthenticationType;
use crate::validate::ValidPipeline;

foreign_kind! {
    group = "keda.sh", version = "v1alpha1", kind = "TriggerAuthentication";
    /// KEDA TriggerAuthentication spec (subset).
    pub struct TriggerAuthenticationSpec {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub secret_target_ref: Vec<TargetRef>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub config_map_target_ref: Vec<TargetRef>,
    }
}

mirror_types! {
    /// One trigger parameter read from a key of a Secret or ConfigMap.
    pub struct TargetRef {
        pub parameter: String,
        pub name: String,
        pub key: String,
    }
}

/// Name of the TriggerAuthentication: the KafkaUser's, whose credentials it uses.
pub fn name_in(pipeline: &str) -> String {
    kafkauser::name_in(pipeline)
}

/// The kafka trigger's metadata for the authentication: `sasl` and `tls`, which KEDA takes
/// from the trigger (the credentials come from the TriggerAuthentication).
pub fn trigger_metadata(pipeline: &ValidPipeline) -> Vec<(String, String)> {
    let Some((_, auth)) = kafkauser::authentication(pipeline) else {
        return Vec::new();
    };
    let sasl = match auth.type_ {
        KafkaAuthenticationType::ScramSha512 => "scram_sha512",
        KafkaAuthenticationType::Tls => "none",
    };
    let tls = if auth.tls { "enable" } else { "disable" };
    vec![
        ("sasl".to_string(), sasl.to_string()),
        ("tls".to_string(), tls.to_string()),
    ]
}

/// The TriggerAuthentication, when the pipeline authenticates to Kafka.
pub fn build(pipeline: &ValidPipeline) -> Option<TriggerAuthentication> {
    let (cluster, auth) = kafkauser::authentication(pipeline)?;
    let user = kafkauser::name_in(&pipeline.name);
    let target = |parameter: &str, name: &str, key: &str| TargetRef {
        parameter: parameter.into(),
        name: name.into(),
        key: key.into(),
    };
    let mut spec = TriggerAuthenticationSpec::default();
    match auth.type_ {
        KafkaAuthenticationType::ScramSha512 => {
            spec.secret_target_ref
                .push(target("password", &user, "password"));
            spec.config_map_target_ref.push(target(
                "username",
                &configmap::name_in(&pipeline.name),
                SASL_USERNAME_ENV,
            ));
        }
        KafkaAuthenticationType::Tls => {
            spec.secret_target_ref
                .push(target("cert", &user, "user.crt"));
            spec.secret_target_ref
                .push(target("key", &user, "user.key"));
        }
    }
    if auth.tls {
        spec.secret_target_ref.push(target(
            "ca",
            &kafkauser::cluster_ca_secret(cluster),
            "ca.crt",
        ));
    }
    Some(TriggerAuthentication {
        metadata: metadata(
            pipeline,
            name_in(&pipeline.name),
            Component::Processor.suffix(),
        ),
        spec,
    })
}
