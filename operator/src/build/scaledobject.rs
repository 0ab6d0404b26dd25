//! KEDA `ScaledObject`s for the workloads that scale by what the pipeline says: the
//! processor by its consumer lag (Kafka trigger), the odds service by open WebSocket
//! connections (Prometheus trigger).
//!
//! A small typed mirror of KEDA's `keda.sh/v1alpha1` ScaledObject (only the fields the
//! operator sets or reads; the tests check the built objects against KEDA 2.20.2's released
//! CRD schema). Built only where [`super::scaling::decide`] chose KEDA, so a Deployment never
//! has both a ScaledObject and the operator's HPA.

use super::scaling::{
    self, Autoscaled, Scaler, DEFAULT_POLLING_INTERVAL, DEFAULT_SCALE_DOWN_WINDOW,
};
use super::scaling::{DEFAULT_TARGET_CONNECTIONS, DEFAULT_TARGET_LAG};
use super::{configmap, metadata, triggerauth, Component};
use crate::crd::ScalingMode;
use crate::validate::{KafkaSource, ValidPipeline};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};
use std::collections::BTreeMap;

foreign_kind! {
    group = "keda.sh", version = "v1alpha1", kind = "ScaledObject", status = "ScaledObjectStatus";
    /// KEDA ScaledObject spec (subset).
    pub struct ScaledObjectSpec {
        pub scale_target_ref: ScaleTargetRef,
        pub polling_interval: Option<i32>,
        pub min_replica_count: Option<i32>,
        pub max_replica_count: Option<i32>,
        pub advanced: Option<AdvancedConfig>,
        pub triggers: Vec<ScaleTrigger>,
    }
}

mirror_types! {
    /// The workload a ScaledObject scales.
    pub struct ScaleTargetRef {
        pub api_version: Option<String>,
        pub kind: Option<String>,
        pub name: String,
    }

    /// `spec.advanced` (subset).
    pub struct AdvancedConfig {
        pub horizontal_pod_autoscaler_config: Option<HpaConfig>,
        pub restore_to_original_replica_count: Option<bool>,
    }

    /// `spec.advanced.horizontalPodAutoscalerConfig` (subset).
    pub struct HpaConfig {
        pub behavior: Option<HorizontalPodAutoscalerBehavior>,
    }

    /// One trigger: a scaler type and its metadata (all values are strings in KEDA).
    pub struct ScaleTrigger {
        #[serde(rename = "type")]
        pub type_: String,
        pub name: Option<String>,
        pub metric_type: Option<String>,
        pub metadata: BTreeMap<String, String>,
        /// The TriggerAuthentication the trigger logs in with.
        pub authentication_ref: Option<AuthenticationRef>,
    }

    /// `triggers[].authenticationRef`.
    pub struct AuthenticationRef {
        pub name: String,
    }

    /// KEDA ScaledObject status (subset).
    pub struct ScaledObjectStatus {
        /// The HorizontalPodAutoscaler KEDA created for this ScaledObject.
        pub hpa_name: Option<String>,
    }
}

impl ScaledObject {
    /// The HPA KEDA drives this ScaledObject with: named in the status, else KEDA's default
    /// name `keda-hpa-<name>`.
    pub fn hpa_name(&self) -> String {
        self.status
            .as_ref()
            .and_then(|s| s.hpa_name.clone())
            .unwrap_or_else(|| format!("keda-hpa-{}", self.metadata.name.as_deref().unwrap_or("")))
    }
}

/// Kafka bootstrap address as KEDA must see it: KEDA's operator runs in its own namespace,
/// so Strimzi's bootstrap Service needs its namespace-qualified name there.
pub fn keda_bootstrap_servers(pipeline: &ValidPipeline) -> String {
    match &pipeline.kafka {
        KafkaSource::Strimzi { cluster, .. } => odds_contracts::ports::strimzi_bootstrap(
            cluster,
            Some(&pipeline.namespace),
            pipeline.kafka.listener_port(),
        ),
        KafkaSource::External { .. } => configmap::bootstrap_servers(pipeline),
    }
}

/// The PromQL query of the odds service's open connections: the gauge every pod exports
/// (`odds_ws_connections`, odds-service's metrics), summed over this pipeline's pods by the
/// labels the operator's PodMonitor ([`super::podmonitor`]) or the chart's adds.
pub fn connections_query(pipeline: &ValidPipeline) -> String {
    format!(
        "sum(odds_ws_connections{{namespace=\"{}\",pipeline=\"{}\",component=\"{}\"}})",
        pipeline.namespace,
        pipeline.name,
        Component::OddsService.suffix()
    )
}

/// One ScaledObject per component whose scaling decision is KEDA.
pub fn build(pipeline: &ValidPipeline) -> Vec<ScaledObject> {
    scaling::autoscaled_by(pipeline, Scaler::Keda)
        .into_iter()
        .filter_map(|scaled| scaled_object(pipeline, scaled))
        .collect()
}

/// The ScaledObject of one component KEDA scales, with the trigger of its mode.
fn scaled_object(pipeline: &ValidPipeline, scaled: Autoscaled) -> Option<ScaledObject> {
    let (component, spec) = (scaled.component, &scaled.spec);
    let trigger = match spec.mode {
        ScalingMode::Lag => kafka_trigger(pipeline, spec.target_lag_per_replica),
        ScalingMode::Connections => prometheus_trigger(
            pipeline,
            spec.prometheus_address.as_deref().unwrap_or_default(),
            spec.target_connections_per_replica,
        ),
        ScalingMode::Cpu => return None,
    };
    let window = spec
        .scale_down_stabilization_seconds
        .unwrap_or(DEFAULT_SCALE_DOWN_WINDOW);
    Some(ScaledObject {
        metadata: metadata(pipeline, component.name(pipeline), component.suffix()),
        spec: ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: component.name(pipeline),
            },
            polling_interval: Some(
                spec.polling_interval_seconds
                    .unwrap_or(DEFAULT_POLLING_INTERVAL),
            ),
            min_replica_count: Some(scaled.min),
            max_replica_count: Some(scaled.max),
            advanced: Some(AdvancedConfig {
                horizontal_pod_autoscaler_config: Some(HpaConfig {
                    behavior: Some(scale_down_behavior(window)),
                }),
                // Deleting the ScaledObject (a switch to CPU or fixed replicas) leaves the
                // replicas where they are; the next owner takes them from there.
                restore_to_original_replica_count: Some(false),
            }),
            triggers: vec![trigger],
        },
        status: None,
    })
}

/// The HPA behaviour with a scale-down stabilisation window of `seconds`.
pub fn scale_down_behavior(seconds: i32) -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(seconds),
            ..HPAScalingRules::default()
        }),
        ..HorizontalPodAutoscalerBehavior::default()
    }
}

fn kafka_trigger(pipeline: &ValidPipeline, target: Option<i64>) -> ScaleTrigger {
    let mut metadata = BTreeMap::from([
        ("bootstrapServers".into(), keda_bootstrap_servers(pipeline)),
        // Exactly the processor's group (`KAFKA_GROUP` in the ConfigMap): the lag of any
        // other group would scale the processor on someone else's backlog.
        ("consumerGroup".into(), pipeline.consumer_group.clone()),
        ("topic".into(), pipeline.topic.name.clone()),
        (
            "lagThreshold".into(),
            target.unwrap_or(DEFAULT_TARGET_LAG).to_string(),
        ),
        // The processor starts a new group at the earliest offset, so that is the lag it
        // really has before its first commit.
        ("offsetResetPolicy".into(), "earliest".into()),
        // A consumer beyond the partition count would sit idle.
        ("allowIdleConsumers".into(), "false".into()),
    ]);
    metadata.extend(triggerauth::trigger_metadata(pipeline));
    // The TriggerAuthentication exists exactly when the pipeline logs in to Kafka.
    let authentication_ref =
        super::kafkauser::authentication(pipeline).map(|_| AuthenticationRef {
            name: triggerauth::name_in(&pipeline.name),
        });
    ScaleTrigger {
        type_: "kafka".into(),
        name: Some("consumer-lag".into()),
        metric_type: Some("AverageValue".into()),
        metadata,
        authentication_ref,
    }
}

fn prometheus_trigger(
    pipeline: &ValidPipeline,
    address: &str,
    target: Option<i64>,
) -> ScaleTrigger {
    let metadata = BTreeMap::from([
        ("serverAddress".into(), address.to_string()),
        ("query".into(), connections_query(pipeline)),
        (
            "threshold".into(),
            target.unwrap_or(DEFAULT_TARGET_CONNECTIONS).to_string(),
        ),
        // No series at all means nothing scrapes the pods (a PodMonitor missing or not
        // selected by this Prometheus), not zero connections (a scraped pod reports 0): an
        // error KEDA shows on the ScaledObject, instead of scaling to minReplicas on a 0.
        ("ignoreNullValues".into(), "false".into()),
    ]);
    ScaleTrigger {
        type_: "prometheus".into(),
        name: Some("websocket-connections".into()),
        metric_type: Some("AverageValue".into()),
        metadata,
        authentication_ref: None,
    }
}
