//! The OTLP exporter: the SDK's batch span processor, the OTLP HTTP/protobuf encoder, and an
//! HTTP/1 client on the hyper stack the services already carry.
//!
//! The SDK's batch processor exports from a thread of its own, outside any Tokio runtime, and
//! the hyper client needs one; so [`ExportClient`] runs each request as a task on the
//! runtime that set tracing up and waits for it there. A failed export is logged as a warning
//! (at most one line per [`FAILURE_LOG_EVERY`], with how many failed meanwhile) and the spans
//! are dropped: tracing must never hold or stop a stage.

use super::config::{SamplerChoice, TracingConfig};
use crate::RuntimeError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One export request's deadline, connection included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is a small protobuf message; anything larger is not one.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// The tracer provider for `config`, exporting in batches over OTLP/HTTP.
pub(super) fn provider(
    config: &TracingConfig,
    default_service: &'static str,
) -> Result<SdkTracerProvider, RuntimeError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        RuntimeError::Tracing("tracing must be set up inside the Tokio runtime".into())
    })?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(ExportClient::new(runtime, config.endpoint.clone()))
        .build()
        .map_err(|error| RuntimeError::Tracing(format!("OTLP exporter: {error}")))?;
    let mut resource = Resource::builder();
    if !config.service_name_set {
        resource = resource.with_service_name(default_service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(config.sampler))
        .with_resource(resource.build())
        .build())
}

fn sampler(choice: SamplerChoice) -> Sampler {
    match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        SamplerChoice::ParentBasedRatio(ratio) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// Posts export requests with hyper on the stage's runtime and reports failures.
#[derive(Debug)]
struct ExportClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    endpoint: String,
    failures: FailureLog,
}

impl ExportClient {
    fn new(runtime: tokio::runtime::Handle, endpoint: String) -> ExportClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
        ExportClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            runtime,
            endpoint,
            failures: FailureLog::default(),
        }
    }

    async fn post(
        client: Client<HttpConnector, Full<Bytes>>,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let exchange = async {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        tokio::time::timeout(EXPORT_TIMEOUT, exchange)
            .await
            .map_err(|_| HttpError::from("no answer from the collector within 10 s"))?
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let task = self.runtime.spawn(Self::post(self.client.clone(), request));
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(error) => Err(HttpError::from(format!("export task failed: {error}"))),
        };
        match &outcome {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => self
                .failures
                .record(&self.endpoint, &format!("HTTP {}", response.status())),
            Err(error) => self.failures.record(&self.endpoint, &error.to_string()),
        }
        outcome
    }
}

/// Rate-limited warnings for failed exports.
#[derive(Debug, Default)]
struct FailureLog {
    since_last_line: AtomicU64,
    last_line: Mutex<Option<Instant>>,
}

impl FailureLog {
    fn record(&self, endpoint: &str, reason: &str) {
        let failed = self.since_last_line.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_line
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < FAILURE_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.since_last_line.store(0, Ordering::Relaxed);
        tracing::warn!(
            endpoint,
            reason,
            failed_exports = failed,
            "exporting spans failed; those spans are lost (the stage carries on)"
        );
    }
}
