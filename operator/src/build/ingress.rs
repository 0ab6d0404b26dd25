//! Optional Ingress to the odds service (REST and WebSocket on one host).

use super::{metadata, Component};
use crate::validate::ValidPipeline;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};

/// The Ingress, if the spec asks for one.
pub fn build(pipeline: &ValidPipeline) -> Option<Ingress> {
    let ingress = pipeline.odds_service.ingress.as_ref()?;
    let component = Component::OddsService;
    Some(Ingress {
        metadata: metadata(pipeline, component.name(pipeline), component.suffix()),
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(ingress.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: component.name(pipeline),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        status: None,
    })
}
