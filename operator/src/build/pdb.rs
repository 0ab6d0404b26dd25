//! PodDisruptionBudgets, so node drains never take a whole stage down at once.

use super::{metadata, selector_labels};
use crate::validate::ValidPipeline;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One budget per component whose spec enables it.
pub fn build(pipeline: &ValidPipeline) -> Vec<PodDisruptionBudget> {
    pipeline
        .components()
        .into_iter()
        .filter_map(|component| {
            let budget = pipeline.component(component).pod_disruption_budget;
            budget.enabled.then(|| PodDisruptionBudget {
                metadata: metadata(pipeline, component.name(pipeline), component.suffix()),
                spec: Some(PodDisruptionBudgetSpec {
                    max_unavailable: Some(IntOrString::Int(budget.max_unavailable)),
                    selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(pipeline, component.suffix())),
                        ..LabelSelector::default()
                    }),
                    ..PodDisruptionBudgetSpec::default()
                }),
                status: None,
            })
        })
        .collect()
}
