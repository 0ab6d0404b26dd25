//! The Prometheus Operator `PodMonitor` that gives the odds service's connections mode its
//! series: Prometheus scrapes the pipeline's pods on their `metrics` port and labels every
//! series with `pipeline` and `component`, the labels the ScaledObject's query selects
//! ([`super::scaledobject::connections_query`]). Without it (or another scrape adding those
//! labels, such as the chart's `monitoring.podMonitor`) KEDA would read no connections at all.
//!
//! A small typed mirror of `monitoring.coreos.com/v1` PodMonitor (only the fields the operator
//! sets; the tests check the built objects against prometheus-operator 0.93.0's released CRD
//! schema). Built only where [`super::scaling::decide`] chose KEDA for connections and the
//! spec leaves `podMonitor` on; `decide` falls back to CPU when the CRD is missing.

use super::scaling::{self, Scaler};
use super::{metadata, Component};
use crate::crd::ScalingMode;
use crate::validate::ValidPipeline;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// Name of the container port every workload serves `/metrics` on.
pub const METRICS_PORT_NAME: &str = "metrics";
/// How often Prometheus scrapes the pods (as the chart's PodMonitor does).
pub const SCRAPE_INTERVAL: &str = "15s";

foreign_kind! {
    group = "monitoring.coreos.com", version = "v1", kind = "PodMonitor";
    /// PodMonitor spec (subset).
    pub struct PodMonitorSpec {
        /// The pods to scrape (in the PodMonitor's own namespace: no `namespaceSelector`).
        pub selector: LabelSelector,
        pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
    }
}

mirror_types! {
    /// One scraped port (subset).
    pub struct PodMetricsEndpoint {
        pub port: String,
        pub path: String,
        pub interval: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub relabelings: Vec<RelabelConfig>,
    }

    /// A relabelling of the scraped target (subset: the default `replace` action).
    pub struct RelabelConfig {
        pub source_labels: Vec<String>,
        pub target_label: String,
    }
}

/// Name of the pipeline's PodMonitor.
pub fn name(pipeline: &ValidPipeline) -> String {
    format!("{}-metrics", pipeline.name)
}

/// Whether `pipeline` wants the operator's PodMonitor: the odds service scales by
/// connections through KEDA, and the spec leaves `podMonitor` on.
pub fn wanted(pipeline: &ValidPipeline) -> bool {
    let Some(spec) = scaling::spec(pipeline, Component::OddsService) else {
        return false;
    };
    spec.mode == ScalingMode::Connections
        && spec.pod_monitor.unwrap_or(true)
        && scaling::decide(pipeline, Component::OddsService).scaler == Scaler::Keda
}

/// The pipeline's PodMonitor, if it wants one: every pod of the pipeline (all components
/// export on `metrics`; the dashboard reads them too), with the chart's relabellings.
pub fn build(pipeline: &ValidPipeline) -> Option<PodMonitor> {
    if !wanted(pipeline) {
        return None;
    }
    let extra = scaling::spec(pipeline, Component::OddsService)
        .map(|s| s.pod_monitor_labels)
        .unwrap_or_default();
    let mut meta = metadata(pipeline, name(pipeline), METRICS_PORT_NAME);
    // The operator's own labels win: they select and prune it.
    let mut labels = extra;
    labels.extend(meta.labels.take().unwrap_or_default());
    meta.labels = Some(labels);
    let relabel = |pod_label: &str, target: &str| RelabelConfig {
        source_labels: vec![format!("__meta_kubernetes_pod_label_{pod_label}")],
        target_label: target.into(),
    };
    Some(PodMonitor {
        metadata: meta,
        spec: PodMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".into(), "odds-pipeline".into()),
                    ("app.kubernetes.io/instance".into(), pipeline.name.clone()),
                ])),
                ..LabelSelector::default()
            },
            pod_metrics_endpoints: vec![PodMetricsEndpoint {
                port: METRICS_PORT_NAME.into(),
                path: "/metrics".into(),
                interval: Some(SCRAPE_INTERVAL.into()),
                relabelings: vec![
                    relabel("app_kubernetes_io_instance", "pipeline"),
                    relabel("app_kubernetes_io_component", "component"),
                ],
            }],
        },
    })
}
