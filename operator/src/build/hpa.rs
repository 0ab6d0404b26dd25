//! HorizontalPodAutoscalers (CPU) for the workloads whose spec sets `autoscaling` in `Cpu`
//! mode, or asks for lag or connections where that cannot be had (no KEDA, no Prometheus):
//! [`super::scaling::decide`] says which.
//!
//! Client load lands on the odds service, so that is where autoscaling matters most; the
//! processor may scale too, up to the partition count (the CRD and [`crate::validate`] bound
//! `maxReplicas` by it), and extra ingest replicas only duplicate the feed, which the
//! version-guarded processor absorbs.

use super::metadata;
use super::scaledobject::scale_down_behavior;
use super::scaling::{self, Autoscaled, Scaler};
use crate::validate::ValidPipeline;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};

/// One autoscaler per component whose scaling decision is an HPA.
pub fn build(pipeline: &ValidPipeline) -> Vec<HorizontalPodAutoscaler> {
    scaling::autoscaled_by(pipeline, Scaler::Hpa)
        .into_iter()
        .map(|scaled| autoscaler(pipeline, scaled))
        .collect()
}

fn autoscaler(pipeline: &ValidPipeline, scaled: Autoscaled) -> HorizontalPodAutoscaler {
    let (component, spec) = (scaled.component, &scaled.spec);
    HorizontalPodAutoscaler {
        metadata: metadata(pipeline, component.name(pipeline), component.suffix()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: component.name(pipeline),
            },
            min_replicas: Some(scaled.min),
            max_replicas: scaled.max,
            // Only when asked: the HPA's default (300 s) applies otherwise.
            behavior: spec
                .scale_down_stabilization_seconds
                .map(scale_down_behavior),
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(spec.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
        }),
        status: None,
    }
}
