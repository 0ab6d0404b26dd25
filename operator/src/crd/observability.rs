//! `spec.observability`: what the workloads report besides their metrics. For now, where
//! they send traces (OpenTelemetry over OTLP/HTTP) and how many updates they trace.
//!
//! The operator turns it into the standard `OTEL_*` variables of every workload (see
//! `build::configmap`), so a trace backend needs no other wiring; the workloads' NetworkPolicies
//! let them reach the collector's port.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Observability settings of the pipeline's workloads.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// Distributed tracing: each sampled update becomes one trace from ingest through the
    /// processor to the odds service's fan-out. Off when absent.
    pub tracing: Option<TracingSpec>,
}

/// Where traces go and which updates are traced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "self.endpoint.matches('^http://[^/:?#]+(:[0-9]{1,5})?(/.*)?$')"
).message("observability.tracing.endpoint must be an http:// URL of an OTLP/HTTP collector, such as http://jaeger-collector.observability:4318 (TLS is not supported: use a collector in the cluster)"))]
#[x_kube(validation = Rule::new("self.samplingRatio >= 0.0 && self.samplingRatio <= 1.0")
    .message("observability.tracing.samplingRatio must be from 0 to 1 (0.01 traces 1 % of updates)"))]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// Base URL of the OTLP/HTTP collector (`OTEL_EXPORTER_OTLP_ENDPOINT`); spans are posted
    /// to `<endpoint>/v1/traces` as protobuf.
    #[schemars(length(min = 8, max = 2048))]
    pub endpoint: String,
    /// Share of the supplier's updates traced, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG` of a
    /// parent-based ratio sampler: a traced update is traced in every stage).
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
}

/// 1 % of updates: enough to find a slow one, cheap at thousands of updates per second.
pub fn default_sampling_ratio() -> f64 {
    0.01
}

/// Why `tracing` is invalid, one line per problem (the CRD's CEL rules, for clusters without
/// CEL and for the operator's own checks).
pub fn tracing_problems(tracing: &TracingSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let authority = tracing
        .endpoint
        .strip_prefix("http://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    let valid_authority = authority.is_some_and(|authority| {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        !host.is_empty()
            && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.parse::<u16>().is_ok())
    });
    if !valid_authority {
        problems.push(format!(
            "observability.tracing.endpoint {:?} must be an http:// URL of an OTLP/HTTP \
             collector, such as http://jaeger-collector.observability:4318",
            tracing.endpoint
        ));
    }
    if !(0.0..=1.0).contains(&tracing.sampling_ratio) {
        problems.push(format!(
            "observability.tracing.samplingRatio {} must be from 0 to 1",
            tracing.sampling_ratio
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: &str, sampling_ratio: f64) -> TracingSpec {
        TracingSpec {
            endpoint: endpoint.into(),
            sampling_ratio,
        }
    }

    #[test]
    fn http_collectors_and_ratios_from_0_to_1_pass() {
        for ok in [
            spec("http://jaeger-collector.observability:4318", 0.01),
            spec("http://collector", 0.0),
            spec("http://10.0.0.1:4318/otlp", 1.0),
        ] {
            assert_eq!(tracing_problems(&ok), Vec::<String>::new(), "{ok:?}");
        }
    }

    #[test]
    fn anything_else_is_named() {
        for (bad, field) in [
            (spec("https://collector:4318", 0.5), "endpoint"),
            (spec("collector:4318", 0.5), "endpoint"),
            (spec("http://:4318", 0.5), "endpoint"),
            (spec("http://collector:99999", 0.5), "endpoint"),
            (spec("http://collector:4318", 1.5), "samplingRatio"),
            (spec("http://collector:4318", -0.1), "samplingRatio"),
            (spec("http://collector:4318", f64::NAN), "samplingRatio"),
        ] {
            let problems = tracing_problems(&bad);
            assert_eq!(problems.len(), 1, "{bad:?}: {problems:?}");
            assert!(problems[0].contains(field), "{problems:?}");
        }
    }
}
