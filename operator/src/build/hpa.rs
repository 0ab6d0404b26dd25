//! The odds service's HorizontalPodAutoscaler (CPU), when autoscaling is set.
//!
//! Client load lands on the odds service; ingest replicas are duplicates for availability and
//! processor parallelism is bounded by partitions, so only the odds service scales on load.

use super::{metadata, Component};
use crate::crd::OddsPipeline;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};

/// The autoscaler, if the odds service has `autoscaling`.
pub fn build(pipeline: &OddsPipeline) -> Vec<HorizontalPodAutoscaler> {
    let Some(scaling) = &pipeline.spec.odds_service.workload.autoscaling else {
        return Vec::new();
    };
    let component = Component::OddsService;
    vec![HorizontalPodAutoscaler {
        metadata: metadata(pipeline, component.name(pipeline), component.suffix()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: component.name(pipeline),
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        status: None,
    }]
}
