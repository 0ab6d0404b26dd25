//! Tracing settings from the standard OpenTelemetry environment variables.
//!
//! The stages read the variables every OpenTelemetry SDK reads, so the operator, `make demo`
//! and a user set them the same way for every stage:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector base URL (`http://host:4318`); spans go to `/v1/traces`. Unset: tracing off |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | full traces URL, instead of the above |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | only `http/protobuf` (the default) is supported |
//! | `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` | default `parentbased_traceidratio` with ratio 1.0 |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource (service name defaults to the binary's) |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | tracing off whatever else is set |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, … | the batch exporter, read by the SDK |
//!
//! Unlike the SDK, which falls back to defaults on a value it cannot read, a bad value here is
//! an error naming the variable: a sampling ratio of `1%` silently becoming 100 % would be the
//! expensive kind of surprise.

use crate::RuntimeError;

pub use odds_contracts::env::{
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME, OTEL_TRACES_EXPORTER, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG,
};

/// Which spans are kept, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    /// A new trace is kept with this probability, whatever its parent says.
    Ratio(f64),
    /// Follow the parent's decision; a root is kept with this probability (`parentbased_always_on`
    /// is 1.0, `parentbased_always_off` 0.0).
    ParentBasedRatio(f64),
}

/// Tracing is on: where spans go and which are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The URL spans are posted to (`…/v1/traces`).
    pub endpoint: String,
    pub sampler: SamplerChoice,
    /// `OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, if either is set.
    pub service_name_set: bool,
}

impl TracingConfig {
    /// Reads the settings through `lookup` (the environment in a process, a map in tests).
    /// `Ok(None)` when tracing is off: no endpoint, or switched off explicitly.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TracingConfig>, RuntimeError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if get(OTEL_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get(OTEL_TRACES_EXPORTER).as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(invalid(
                    OTEL_TRACES_EXPORTER,
                    other,
                    "only `otlp` and `none` are supported",
                ))
            }
        }
        let endpoint = match (
            get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
            get(OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(traces), _) => checked_url(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, &traces)?,
            (None, Some(base)) => {
                let base = checked_url(OTEL_EXPORTER_OTLP_ENDPOINT, &base)?;
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, None) => return Ok(None),
        };
        for name in [
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ] {
            if let Some(protocol) = get(name).filter(|p| p.trim() != "http/protobuf") {
                return Err(invalid(
                    name,
                    &protocol,
                    "only `http/protobuf` is supported (send gRPC through a collector)",
                ));
            }
        }
        let service_name_set = get(OTEL_SERVICE_NAME).is_some()
            || get(OTEL_RESOURCE_ATTRIBUTES).is_some_and(|attributes| {
                attributes
                    .split(',')
                    .any(|pair| pair.trim_start().starts_with("service.name="))
            });
        Ok(Some(TracingConfig {
            endpoint,
            sampler: sampler(get(OTEL_TRACES_SAMPLER), get(OTEL_TRACES_SAMPLER_ARG))?,
            service_name_set,
        }))
    }
}

fn invalid(variable: &str, value: &str, why: &str) -> RuntimeError {
    RuntimeError::Tracing(format!("{variable}={value:?}: {why}"))
}

/// The exporter speaks plain HTTP: an `https` URL would fail on every export, so it is
/// refused at start (a collector in the pod or the cluster terminates TLS instead).
fn checked_url(variable: &str, url: &str) -> Result<String, RuntimeError> {
    let url = url.trim();
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(invalid(
            variable,
            url,
            "must be an http:// URL (TLS is not supported: export to a collector in the \
             cluster)",
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(variable, url, "names no host"));
    }
    url.parse::<http::Uri>()
        .map_err(|error| invalid(variable, url, &error.to_string()))?;
    Ok(url.to_owned())
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<SamplerChoice, RuntimeError> {
    let ratio = || -> Result<f64, RuntimeError> {
        let Some(arg) = arg.as_deref().map(str::trim) else {
            return Ok(1.0);
        };
        match arg.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
            _ => Err(invalid(
                OTEL_TRACES_SAMPLER_ARG,
                arg,
                "must be a number from 0 to 1 (0.01 keeps 1 % of traces)",
            )),
        }
    };
    let name = name.unwrap_or_else(|| "parentbased_traceidratio".to_owned());
    Ok(match name.trim() {
        "always_on" => SamplerChoice::AlwaysOn,
        "always_off" => SamplerChoice::AlwaysOff,
        "traceidratio" => SamplerChoice::Ratio(ratio()?),
        "parentbased_always_on" => SamplerChoice::ParentBasedRatio(1.0),
        "parentbased_always_off" => SamplerChoice::ParentBasedRatio(0.0),
        "parentbased_traceidratio" => SamplerChoice::ParentBasedRatio(ratio()?),
        other => {
            return Err(invalid(
                OTEL_TRACES_SAMPLER,
                other,
                "use always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<TracingConfig>, RuntimeError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TracingConfig::from_lookup(|name| map.get(name).cloned())
    }

    fn on(pairs: &[(&str, &str)]) -> TracingConfig {
        match read(pairs) {
            Ok(Some(config)) => config,
            other => panic!("expected tracing on for {pairs:?}, got {other:?}"),
        }
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        match read(pairs) {
            Err(error) => error.to_string(),
            other => panic!("expected an error for {pairs:?}, got {other:?}"),
        }
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(matches!(read(&[]), Ok(None)));
        assert!(matches!(
            read(&[(OTEL_EXPORTER_OTLP_ENDPOINT, " ")]),
            Ok(None)
        ));
        assert!(matches!(
            read(&[(OTEL_TRACES_SAMPLER, "always_on")]),
            Ok(None)
        ));
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318");
        assert!(matches!(
            read(&[endpoint, (OTEL_SDK_DISABLED, "TRUE")]),
            Ok(None)
        ));
        assert!(matches!(
            read(&[endpoint, (OTEL_TRACES_EXPORTER, "none")]),
            Ok(None)
        ));
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_kept() {
        let base = on(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/")]);
        assert_eq!(base.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(base.sampler, SamplerChoice::ParentBasedRatio(1.0));
        assert!(!base.service_name_set);
        let full = on(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://ignored:4318"),
            (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://c:9/custom"),
        ]);
        assert_eq!(full.endpoint, "http://c:9/custom");
    }

    #[test]
    fn samplers_follow_the_standard_names() {
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318");
        let cases = [
            (
                "parentbased_traceidratio",
                "0.01",
                SamplerChoice::ParentBasedRatio(0.01),
            ),
            ("traceidratio", "0.5", SamplerChoice::Ratio(0.5)),
            ("always_on", "", SamplerChoice::AlwaysOn),
            ("always_off", "", SamplerChoice::AlwaysOff),
            (
                "parentbased_always_off",
                "",
                SamplerChoice::ParentBasedRatio(0.0),
            ),
        ];
        for (name, arg, expected) in cases {
            let config = on(&[
                endpoint,
                (OTEL_TRACES_SAMPLER, name),
                (OTEL_TRACES_SAMPLER_ARG, arg),
            ]);
            assert_eq!(config.sampler, expected, "{name} {arg}");
        }
        let ratio_only = on(&[endpoint, (OTEL_TRACES_SAMPLER_ARG, "0.25")]);
        assert_eq!(ratio_only.sampler, SamplerChoice::ParentBasedRatio(0.25));
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318");
        for arg in ["1%", "1.5", "-0.1", "NaN"] {
            let message = error(&[endpoint, (OTEL_TRACES_SAMPLER_ARG, arg)]);
            assert!(message.contains(OTEL_TRACES_SAMPLER_ARG), "{message}");
        }
        assert!(error(&[endpoint, (OTEL_TRACES_SAMPLER, "jaeger_remote")])
            .contains(OTEL_TRACES_SAMPLER));
        assert!(error(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4318")]).contains("TLS"));
        assert!(error(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318")]).contains("http://"));
        assert!(error(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://")]).contains("no host"));
        assert!(error(&[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")])
            .contains(OTEL_EXPORTER_OTLP_PROTOCOL));
        assert!(error(&[endpoint, (OTEL_TRACES_EXPORTER, "zipkin")]).contains(OTEL_TRACES_EXPORTER));
    }

    #[test]
    fn a_service_name_in_either_variable_counts() {
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318");
        assert!(on(&[endpoint, (OTEL_SERVICE_NAME, "x")]).service_name_set);
        assert!(
            on(&[endpoint, (OTEL_RESOURCE_ATTRIBUTES, "a=b, service.name=y")]).service_name_set
        );
        assert!(!on(&[endpoint, (OTEL_RESOURCE_ATTRIBUTES, "a=b")]).service_name_set);
    }
}
