//! HorizontalPodAutoscalers (CPU) for the workloads whose spec sets `autoscaling`.
//!
//! Client load lands on the odds service, so that is where autoscaling matters most; the
//! processor may scale too, up to the partition count (the CRD and [`crate::validate`] bound
//! `maxReplicas` by it), and extra ingest replicas only duplicate the feed, which the
//! version-guarded processor absorbs.

use super::metadata;
use crate::validate::ValidPipeline;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};

/// One autoscaler per component with `autoscaling`.
pub fn build(pipeline: &ValidPipeline) -> Vec<HorizontalPodAutoscaler> {
    pipeline
        .components()
        .into_iter()
        .filter_map(|component| {
            let scaling = pipeline.component(component).autoscaling?;
            Some(HorizontalPodAutoscaler {
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
            })
        })
        .collect()
}
