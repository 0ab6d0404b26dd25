//! The pipeline's Strimzi `KafkaUser`, and the client settings that log in as it.
//!
//! With `kafka.authentication`, ingest and the processor must authenticate to the Strimzi
//! listener, and what they may touch should be this pipeline's topic, DLQ and consumer group
//! only: a pipeline sharing the Kafka cluster with others then cannot read, write or join
//! theirs. One `KafkaUser` per pipeline carries exactly those ACLs; Strimzi's user operator
//! makes its credentials Secret (same name), and the workloads read them from there as
//! `KAFKA_PROP_*` variables, which every Kafka-speaking stage maps to librdkafka properties
//! (`KAFKA_PROP_SASL_PASSWORD` → `sasl.password`). Non-secret settings go to the ConfigMap,
//! secret ones are `secretKeyRef`s, so no credential ever appears in a spec. KEDA's lag
//! trigger logs in as the same user ([`super::triggerauth`]).
//!
//! A small typed mirror of Strimzi's `kafka.strimzi.io/v1` KafkaUser (only the fields the
//! operator sets or reads; the tests check the built objects against Strimzi 1.2's CRD).

use super::metadata;
use super::topic::{StrimziStatus, STRIMZI_CLUSTER_LABEL};
use crate::crd::{KafkaAuthentication, KafkaAuthenticationType, SecretKeyRef};
use crate::validate::{KafkaSource, ValidPipeline};

/// `security.protocol`.
pub const SECURITY_PROTOCOL_ENV: &str = "KAFKA_PROP_SECURITY_PROTOCOL";
/// `sasl.mechanism`.
pub const SASL_MECHANISM_ENV: &str = "KAFKA_PROP_SASL_MECHANISM";
/// `sasl.username`: the KafkaUser's name, which is its SCRAM user name.
pub const SASL_USERNAME_ENV: &str = "KAFKA_PROP_SASL_USERNAME";
/// `sasl.password`, from the KafkaUser's Secret.
pub const SASL_PASSWORD_ENV: &str = "KAFKA_PROP_SASL_PASSWORD";
/// `ssl.ca.pem`: the cluster CA, which signs the brokers' certificates.
pub const SSL_CA_PEM_ENV: &str = "KAFKA_PROP_SSL_CA_PEM";
/// `ssl.certificate.pem`: the client certificate (mutual TLS).
pub const SSL_CERTIFICATE_PEM_ENV: &str = "KAFKA_PROP_SSL_CERTIFICATE_PEM";
/// `ssl.key.pem`: the client certificate's key (mutual TLS).
pub const SSL_KEY_PEM_ENV: &str = "KAFKA_PROP_SSL_KEY_PEM";

foreign_kind! {
    group = "kafka.strimzi.io", version = "v1", kind = "KafkaUser", status = "StrimziStatus";
    /// Strimzi KafkaUser spec (subset).
    pub struct KafkaUserSpec {
        pub authentication: UserAuthentication,
        pub authorization: UserAuthorization,
    }
}

mirror_types! {
    /// `spec.authentication` (subset).
    pub struct UserAuthentication {
        #[serde(rename = "type")]
        pub type_: String,
    }

    /// `spec.authorization` (subset): Kafka's own ACLs.
    pub struct UserAuthorization {
        #[serde(rename = "type")]
        pub type_: String,
        pub acls: Vec<AclRule>,
    }

    /// One ACL rule.
    pub struct AclRule {
        #[serde(rename = "type")]
        pub type_: String,
        pub resource: AclResource,
        pub operations: Vec<String>,
    }

    /// The resource an ACL rule is about.
    pub struct AclResource {
        #[serde(rename = "type")]
        pub type_: String,
        pub name: String,
        pub pattern_type: String,
    }
}

impl KafkaUser {
    /// Strimzi reports `Ready=True` once the user, its ACLs and its Secret exist.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(StrimziStatus::is_ready)
    }
}

/// Name of the KafkaUser of pipeline `pipeline`, which is also its Kafka user name and the
/// name of the Secret Strimzi makes for it. At most 44 + 13 = 57 characters: within the 64
/// an X.509 common name allows (`CN=<name>` for `tls`).
pub fn name_in(pipeline: &str) -> String {
    format!("{pipeline}-kafka-client")
}

/// The Secret with the CA certificate of Strimzi cluster `cluster`.
pub fn cluster_ca_secret(cluster: &str) -> String {
    format!("{cluster}-cluster-ca-cert")
}

/// The cluster and authentication when the pipeline logs in to a Strimzi cluster.
pub fn authentication(pipeline: &ValidPipeline) -> Option<(&str, &KafkaAuthentication)> {
    match &pipeline.kafka {
        KafkaSource::Strimzi {
            cluster,
            authentication: Some(auth),
        } => Some((cluster, auth)),
        _ => None,
    }
}

/// The KafkaUser, when `kafka.authentication` is set. It carries the controller owner
/// reference: the credentials go with the pipeline.
pub fn build(pipeline: &ValidPipeline) -> Option<KafkaUser> {
    let (cluster, auth) = authentication(pipeline)?;
    let mut meta = metadata(pipeline, name_in(&pipeline.name), "kafka-user");
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(STRIMZI_CLUSTER_LABEL.into(), cluster.to_string());
    let rule = |type_: &str, name: &str, operations: &[&str]| AclRule {
        type_: "allow".into(),
        resource: AclResource {
            type_: type_.into(),
            name: name.into(),
            pattern_type: "literal".into(),
        },
        operations: operations.iter().map(|op| op.to_string()).collect(),
    };
    let acls = vec![
        // Ingest writes, the processor reads; Describe is metadata and KEDA's offsets.
        // Write on a topic also allows the idempotent producer's id (Kafka >= 3.0).
        rule(
            "topic",
            &pipeline.topic.name,
            &["Describe", "Read", "Write"],
        ),
        // Both stages dead-letter; nothing of the pipeline reads the DLQ back.
        rule("topic", &pipeline.dlq_topic.name, &["Describe", "Write"]),
        // The processor joins and commits; KEDA reads the committed offsets.
        rule("group", &pipeline.consumer_group, &["Describe", "Read"]),
    ];
    Some(KafkaUser {
        metadata: meta,
        spec: KafkaUserSpec {
            authentication: UserAuthentication {
                type_: auth.type_.as_str().into(),
            },
            authorization: UserAuthorization {
                type_: "simple".into(),
                acls,
            },
        },
        status: None,
    })
}

/// `security.protocol` for a listener with or without TLS, with or without SASL.
fn security_protocol(auth: &KafkaAuthentication) -> &'static str {
    match (auth.type_, auth.tls) {
        (KafkaAuthenticationType::ScramSha512, true) => "SASL_SSL",
        (KafkaAuthenticationType::ScramSha512, false) => "SASL_PLAINTEXT",
        (KafkaAuthenticationType::Tls, _) => "SSL",
    }
}

/// The ConfigMap entries of the client settings: nothing secret.
pub fn config_entries(pipeline: &ValidPipeline) -> Vec<(&'static str, String)> {
    let Some((_, auth)) = authentication(pipeline) else {
        return Vec::new();
    };
    let mut out = vec![(SECURITY_PROTOCOL_ENV, security_protocol(auth).to_string())];
    if auth.type_ == KafkaAuthenticationType::ScramSha512 {
        out.push((SASL_MECHANISM_ENV, "SCRAM-SHA-512".into()));
        out.push((SASL_USERNAME_ENV, name_in(&pipeline.name)));
    }
    out
}

/// The Secret keys of the client settings, as `(env var, Secret key)`: the password or the
/// client certificate from the KafkaUser's Secret, the cluster CA for a TLS listener.
pub fn secret_env(pipeline: &ValidPipeline) -> Vec<(&'static str, SecretKeyRef)> {
    let Some((cluster, auth)) = authentication(pipeline) else {
        return Vec::new();
    };
    let user = |key: &str| SecretKeyRef {
        name: name_in(&pipeline.name),
        key: key.into(),
    };
    let mut out = match auth.type_ {
        KafkaAuthenticationType::ScramSha512 => vec![(SASL_PASSWORD_ENV, user("password"))],
        KafkaAuthenticationType::Tls => vec![
            (SSL_CERTIFICATE_PEM_ENV, user("user.crt")),
            (SSL_KEY_PEM_ENV, user("user.key")),
        ],
    };
    if auth.tls {
        out.push((
            SSL_CA_PEM_ENV,
            SecretKeyRef {
                name: cluster_ca_secret(cluster),
                key: "ca.crt".into(),
            },
        ));
    }
    out
}
