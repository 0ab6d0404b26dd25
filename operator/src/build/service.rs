//! Services: the odds service's (the pipeline's "API gateway": HTTP, WebSocket, metrics)
//! and, with the simulator enabled, the simulator feed's.

use super::{metadata, selector_labels, Component, OPS_PORT, SIMULATOR_PORT};
use crate::crd::OddsPipeline;
use crate::validate::{Supplier, ValidPipeline};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

/// In-cluster WebSocket URL of the odds service.
pub fn web_socket_url(pipeline: &OddsPipeline) -> String {
    format!(
        "ws://{}.{}.svc:{}/ws/odds",
        Component::OddsService.name_in(&pipeline.name_any()),
        pipeline.namespace().unwrap_or_else(|| "default".into()),
        pipeline.spec.odds_service.service.port
    )
}

/// Builds the Services.
pub fn build(pipeline: &ValidPipeline) -> Vec<Service> {
    let exposure = &pipeline.odds_service.service;
    let mut out = vec![service(
        pipeline,
        Component::OddsService,
        exposure.type_.as_str(),
        vec![
            service_port("http", exposure.port, "http"),
            service_port("metrics", OPS_PORT, "metrics"),
        ],
    )];
    if matches!(pipeline.supplier, Supplier::Simulator(_)) {
        out.push(service(
            pipeline,
            Component::Simulator,
            "ClusterIP",
            vec![service_port("feed", SIMULATOR_PORT, "feed")],
        ));
    }
    out
}

fn service(
    pipeline: &ValidPipeline,
    component: Component,
    type_: &str,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: metadata(pipeline, component.name(pipeline), component.suffix()),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector_labels(pipeline, component.suffix())),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn service_port(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}
