//! PodDisruptionBudgets, so node drains never take a whole stage down at once.

use super::{deployment, metadata, selector_labels};
use crate::crd::OddsPipeline;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One budget per component whose spec enables it.
pub fn build(pipeline: &OddsPipeline) -> Vec<PodDisruptionBudget> {
    deployment::components(pipeline)
        .into_iter()
        .filter_map(|component| {
            let budget = deployment::component_spec(pipeline, component).pod_disruption_budget;
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
