//! The processor's part of a sampled update's trace.
//!
//! One batch serves many traces, so a batch with sampled records gets one span, `odds-processor
//! batch`: a child of the first sampled record's producing span (so it lands in that trace and
//! the parent-based sampler keeps it), linked to every other sampled record's. Its children
//! time the Postgres write (one per attempt) and the Redis step. Each sampled update that
//! advances the cache is published with a context in its own trace: the Redis step's for the
//! batch's own trace, the record's producing span for the linked ones. A batch without sampled
//! records (and every batch with tracing off) builds nothing.

use crate::batch::{decode_record, SourceRecord};
use odds_contracts::traced::{pubsub_suffix, TRACEPARENT_HEADER};
use odds_contracts::OddsUpdate;
use odds_runtime::otel::{self, KeyValue, Link, SpanApi as _, SpanContext, SpanKind, TraceSpan};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;

const BATCH_SPAN: &str = "odds-processor batch";
pub const POSTGRES_SPAN: &str = "odds-processor postgres write";
pub const REDIS_SPAN: &str = "odds-processor redis set and publish";

/// The sampled trace context a record carries, if tracing is on and it carries one.
pub fn record_context(message: &BorrowedMessage<'_>) -> Option<SpanContext> {
    if !otel::enabled() {
        return None;
    }
    let headers = message.headers()?;
    let value = headers
        .iter()
        .find(|header| header.key == TRACEPARENT_HEADER)?
        .value?;
    otel::parse_traceparent(value).filter(SpanContext::is_sampled)
}

/// A sampled update of the batch: what identifies it after decoding, and its context.
#[derive(Debug)]
struct Sampled {
    event_id: String,
    market: String,
    version: u64,
    context: SpanContext,
}

/// The span of a batch holding sampled records.
#[derive(Debug)]
pub struct BatchTrace {
    span: TraceSpan,
    sampled: Vec<Sampled>,
}

impl BatchTrace {
    /// The batch's span, or `None` when none of `records` is sampled.
    pub fn start(records: &[SourceRecord]) -> Option<BatchTrace> {
        let mut traced = records.iter().filter(|r| r.trace.is_some()).peekable();
        traced.peek()?;
        let sampled: Vec<Sampled> = traced
            .filter_map(|record| {
                let context = record.trace.clone()?;
                let update = decode_record(record).ok()?;
                Some(Sampled {
                    event_id: update.event_id,
                    market: update.market,
                    version: update.version,
                    context,
                })
            })
            .collect();
        let (parent, others) = sampled.split_first()?;
        let links = others
            .iter()
            .map(|s| Link::with_context(s.context.clone()))
            .collect();
        let mut span = otel::start_child(BATCH_SPAN, SpanKind::Consumer, &parent.context, links)?;
        span.set_attributes([
            KeyValue::new("odds.batch.records", records.len() as i64),
            KeyValue::new("odds.batch.sampled", sampled.len() as i64),
        ]);
        Some(BatchTrace { span, sampled })
    }

    /// A child span of the batch's (a step of it).
    pub fn child(&self, name: &'static str) -> Option<TraceSpan> {
        otel::start_child(
            name,
            SpanKind::Internal,
            self.span.span_context(),
            Vec::new(),
        )
    }

    /// A `tracing` span naming the batch's trace, so the batch's log lines lead to it.
    pub fn log_span(&self) -> tracing::Span {
        otel::log_span(self.span.span_context())
    }

    /// What to append to `update`'s published message: the context the service's span
    /// continues from, if `update` is sampled. `redis_step` is the Redis step's span.
    pub fn publish_suffix(
        &self,
        update: &OddsUpdate,
        redis_step: Option<&SpanContext>,
    ) -> Option<String> {
        let sampled = self.sampled.iter().find(|s| {
            s.version == update.version
                && s.event_id == update.event_id
                && s.market == update.market
        })?;
        let own_trace = self.span.span_context().trace_id();
        let context = match redis_step {
            Some(step) if sampled.context.trace_id() == own_trace => step,
            _ => &sampled.context,
        };
        Some(pubsub_suffix(&otel::format_traceparent(context)))
    }
}
