//! Distributed tracing with OpenTelemetry: one trace follows a sampled price from ingest to
//! the WebSocket fan-out.
//!
//! The hop histograms say how long hops take on average; a trace says why *this* update was
//! late. Tracing is off unless an OTLP endpoint is configured (the standard `OTEL_*`
//! environment, see [`config`]): then [`tracer`] is `None` and every stage's tracing code is
//! one branch on it, with no span, no header and no allocation. When it is on, spans are
//! exported in batches over OTLP HTTP/protobuf ([`export`]) by a background thread, so a slow
//! or absent collector never slows a stage; an export that fails is logged, never fatal.
//!
//! Stages use the SDK's tracer directly rather than `tracing` spans: the pipeline's spans need
//! explicit parents and links (a processor batch serves many traces), and a stage decides
//! whether an update is sampled before it builds anything for it. Logs carry the trace id
//! through [`log_span`], a `tracing` span entered while a stage works on a sampled update.

pub mod config;
mod export;
mod traceparent;

pub use config::{SamplerChoice, TracingConfig};
/// The span methods (`set_attribute`, `span_context`, `end`): `use otel::SpanApi as _;`. A
/// span ends when it is dropped.
pub use opentelemetry::trace::Span as SpanApi;
pub use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceId};
pub use opentelemetry::KeyValue;
pub use opentelemetry_sdk::trace::Span as TraceSpan;
pub use traceparent::{format_traceparent, parse_traceparent};

use crate::RuntimeError;
use opentelemetry::trace::{TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The process's tracer, `None` when tracing is off (no endpoint configured).
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Whether this process exports traces.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Flushes and stops the exporter when the stage ends. Hold it for the process's life and
/// call [`TracingGuard::shutdown`] before exiting: spans still queued are sent then.
#[derive(Debug, Default)]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

/// How long a stopping stage waits for its last spans to reach the collector.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

impl TracingGuard {
    /// Exports what is queued and stops the exporter, waiting at most [`SHUTDOWN_FLUSH`]. The
    /// wait runs on a blocking thread: the exporter's requests run on this runtime.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH))
                .await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "trace exporter did not stop cleanly"),
            Err(error) => tracing::warn!(%error, "trace exporter shutdown task failed"),
        }
    }
}

/// Sets up tracing from the process environment (see [`config`]), with `default_service` as
/// `service.name` unless the environment names one. Must run inside a Tokio runtime (the
/// exporter's requests run on it). Off (and free) without an endpoint; an invalid setting is
/// an error naming the variable.
pub fn init_from_env(default_service: &'static str) -> Result<TracingGuard, RuntimeError> {
    let Some(config) = TracingConfig::from_lookup(|name| std::env::var(name).ok())? else {
        return Ok(TracingGuard::default());
    };
    let provider = export::provider(&config, default_service)?;
    let tracer = provider.tracer(default_service);
    if TRACER.set(tracer).is_err() {
        return Err(RuntimeError::Tracing("tracing was already set up".into()));
    }
    tracing::info!(
        endpoint = %config.endpoint,
        sampler = ?config.sampler,
        "exporting traces over OTLP/HTTP"
    );
    Ok(TracingGuard {
        provider: Some(provider),
    })
}

/// Starts a root span (a new trace) at `start` if the sampler keeps it: `None` when tracing
/// is off or the update is not sampled, so unsampled work builds nothing more.
pub fn start_root(name: &'static str, kind: SpanKind, start: SystemTime) -> Option<TraceSpan> {
    let tracer = TRACER.get()?;
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(start)
        .start_with_context(tracer, &Context::new());
    span.span_context().is_sampled().then_some(span)
}

/// Starts a span whose parent is `parent` (a span of this process or one read from a
/// `traceparent`), with `links` to other traces. `None` when tracing is off or the parent
/// was not sampled (the parent-based sampler keeps what the root kept).
pub fn start_child(
    name: &'static str,
    kind: SpanKind,
    parent: &SpanContext,
    links: Vec<Link>,
) -> Option<TraceSpan> {
    let tracer = TRACER.get()?;
    let parent = Context::new().with_remote_span_context(parent.clone());
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_links(links)
        .start_with_context(tracer, &parent);
    span.span_context().is_sampled().then_some(span)
}

/// A `tracing` span carrying `trace_id`: log lines emitted inside it name the trace, so a log
/// line leads to its trace in the viewer.
pub fn log_span(context: &SpanContext) -> tracing::Span {
    tracing::info_span!("traced", trace_id = %context.trace_id())
}

/// Marks `span` failed with `message` (shown red in trace viewers).
pub fn fail(span: &mut TraceSpan, message: impl Into<std::borrow::Cow<'static, str>>) {
    span.set_status(Status::error(message));
}

/// The attributes naming an update on its spans.
pub fn update_attributes(event_id: &str, market: &str, version: u64) -> [KeyValue; 3] {
    [
        KeyValue::new("odds.event_id", event_id.to_owned()),
        KeyValue::new("odds.market", market.to_owned()),
        // OTLP integers are signed; versions are at most 2^63 - 1 (the contract's bound).
        KeyValue::new("odds.version", i64::try_from(version).unwrap_or(i64::MAX)),
    ]
}
