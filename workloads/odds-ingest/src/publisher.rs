//! Producing to Kafka without losing anything and without unbounded memory.
//!
//! Every record takes a permit from a semaphore sized `max_in_flight` and gives it back only
//! when Kafka has acknowledged it (or refused it for good). The producer is idempotent with
//! `acks=all` and never times a record out, so while Kafka is away records wait and are
//! retried in order, permits run out, and the caller stops taking input.
//!
//! A record Kafka refuses for good is not retried: an update goes to the DLQ instead, and a
//! dead letter the DLQ refuses (topic missing or denied, a size limit below even the bounded
//! record) stops the stage like a fatal producer error, with the reason ([`Publisher::dlq_refusal`]):
//! every later rejection would meet the same refusal, and retrying one frame forever would
//! stop the stage while it looked alive.

use crate::config::IngestConfig;
use crate::metrics::IngestMetrics;
use chrono::Utc;
use odds_contracts::dead_letter::{bound_detail, bound_payload};
use odds_contracts::names::dlq_headers;
use odds_contracts::traced::TRACEPARENT_HEADER;
use odds_contracts::RejectReason;
use odds_runtime::otel::{self, SpanContext, TraceSpan};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};

/// Name of this stage in DLQ headers.
pub const STAGE: &str = "odds-ingest";
/// A sampled update's span from its hand-off to the producer to Kafka's acknowledgement; its
/// context is the record's `traceparent` header.
const PRODUCE_SPAN: &str = "odds-ingest produce";

#[derive(Clone)]
pub struct Publisher {
    producer: ThreadedProducer<DeliveryContext>,
    topic: Arc<str>,
    dlq_topic: Arc<str>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    metrics: IngestMetrics,
    /// Cancelled when librdkafka reports a fatal error or the DLQ refuses a dead letter for
    /// good: nothing more can be produced (or dead-lettered).
    fatal: tokio_util::sync::CancellationToken,
    /// Set just before `fatal` is cancelled: what every record checks. Asking the token
    /// takes its lock, once per update, a visible share of ingest's CPU.
    stopped: Arc<AtomicBool>,
    /// Why the DLQ refused a dead letter for good, set before `fatal` is cancelled.
    dlq_refusal: Arc<OnceLock<String>>,
    /// Cancelled by [`Publisher::close`]: ends the task that handles refused records (which
    /// holds a clone of the publisher, and so of the producer and its polling thread).
    closed: tokio_util::sync::CancellationToken,
}

/// What became of a record handed to the producer.
enum Enqueued {
    Sent,
    /// The producer is dead (fatal error): the record was counted as undelivered.
    Stopped,
    /// The producer refused the record itself (too large, unknown topic): no retry helps.
    /// What rode with the record comes back with it (a sampled update's span, to fail).
    Refused(KafkaError, Box<Tracked>),
}

/// What a record is, for accounting when Kafka acknowledges it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RecordKind {
    /// A valid update, with when its frame was received (the start of its hop to Kafka).
    Update {
        received: Instant,
    },
    DeadLetter(&'static str),
}

/// What travels with a record through librdkafka to its delivery report.
pub(crate) struct Tracked {
    kind: RecordKind,
    /// When the record was handed to the producer.
    sent: Instant,
    /// A sampled update's produce span, ended by the delivery report.
    produce: Option<TraceSpan>,
}

impl Tracked {
    fn new(kind: RecordKind, produce: Option<TraceSpan>) -> Box<Tracked> {
        Box::new(Tracked {
            kind,
            sent: Instant::now(),
            produce,
        })
    }
}

/// A record Kafka refused, handed from librdkafka's polling thread to the stage's runtime,
/// which decides between the DLQ and stopping.
struct Refusal {
    kind: RecordKind,
    error: KafkaError,
    payload: Vec<u8>,
}

/// Accounts for every delivery report on librdkafka's polling thread: an acknowledged record
/// is counted and its in-flight slot given back right there, with no task, channel or wake-up
/// per record (a spawned task per record was a large share of ingest's CPU). Only the rare
/// refusal goes to the runtime, which dead-letters or stops.
pub(crate) struct DeliveryContext {
    metrics: IngestMetrics,
    permits: Arc<Semaphore>,
    refusals: mpsc::UnboundedSender<Refusal>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Tracked>;

    fn delivery(&self, result: &DeliveryResult<'_>, tracked: Box<Tracked>) {
        let Tracked {
            kind,
            sent,
            produce,
        } = *tracked;
        let metrics = &self.metrics;
        metrics.in_flight.dec();
        // One clock reading for both hops: reading the clock is a visible share of the CPU.
        let now = Instant::now();
        metrics
            .produce_latency
            .observe(now.saturating_duration_since(sent).as_secs_f64());
        if let (Some(mut span), Err(_)) = (produce, result) {
            otel::fail(&mut span, "Kafka did not acknowledge the update");
        }
        match (result, kind) {
            (Ok(_), RecordKind::Update { received }) => {
                // The hop first: whoever sees an update counted as produced sees its hop.
                metrics
                    .ingest_to_kafka_ack
                    .observe(now.saturating_duration_since(received).as_secs_f64());
                metrics.updates_produced.inc();
                self.permits.add_permits(1);
            }
            (Ok(_), RecordKind::DeadLetter(code)) => {
                metrics.dead_lettered.with_label_values(&[code]).inc();
                self.permits.add_permits(1);
            }
            (Err((error, message)), kind) => {
                let payload = rdkafka::Message::payload(message)
                    .unwrap_or_default()
                    .to_vec();
                let refusal = Refusal {
                    kind,
                    error: error.clone(),
                    payload,
                };
                // The receiver lives as long as the publisher; if it is gone the stage has
                // stopped and the slot no longer matters.
                if self.refusals.send(refusal).is_err() {
                    self.permits.add_permits(1);
                }
            }
        }
    }
}

impl Publisher {
    /// Creates the producer, and the task (on the current runtime) that handles the records
    /// Kafka refuses, until [`Publisher::close`].
    pub fn new(config: &IngestConfig, metrics: IngestMetrics) -> Result<Publisher, KafkaError> {
        let mut client = ClientConfig::new();
        for (name, value) in config.producer_properties() {
            client.set(name, value);
        }
        let max_in_flight = config.max_in_flight as usize;
        let permits = Arc::new(Semaphore::new(max_in_flight));
        let (refusals, refused) = mpsc::unbounded_channel();
        let context = DeliveryContext {
            metrics: metrics.clone(),
            permits: permits.clone(),
            refusals,
        };
        let publisher = Publisher {
            producer: client.create_with_context(context)?,
            topic: config.kafka.topic.as_str().into(),
            dlq_topic: config.kafka.dlq_topic.as_str().into(),
            permits,
            max_in_flight,
            metrics,
            fatal: tokio_util::sync::CancellationToken::new(),
            stopped: Arc::new(AtomicBool::new(false)),
            dlq_refusal: Arc::new(OnceLock::new()),
            closed: tokio_util::sync::CancellationToken::new(),
        };
        tokio::spawn(handle_refusals(refused, publisher.clone()));
        Ok(publisher)
    }

    /// Ends the refusal task once nothing more will be produced (after the drain), so the
    /// producer and its polling thread go away with the stage.
    pub fn close(&self) {
        self.closed.cancel();
    }
    /// Why the DLQ refused a dead letter for good, if it did (the stage then stopped).
    pub fn dlq_refusal(&self) -> Option<String> {
        self.dlq_refusal.get().cloned()
    }

    /// The DLQ refused a dead letter for good: the record is counted as undelivered and the
    /// stage stops (see the module doc).
    fn refuse_dead_letters(&self, code: &'static str, error: &KafkaError) {
        self.metrics.produce_errors.inc();
        self.metrics.shutdown_undelivered.inc();
        if self.dlq_refusal.set(error.to_string()).is_ok() {
            tracing::error!(%error, code, "the DLQ refused a dead letter for good; stopping");
        }
        self.stop();
    }

    /// Nothing more can be produced: the flag first, then the token the stage watches.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.fatal.cancel();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Cancelled once the producer has hit a fatal error.
    pub fn fatal_token(&self) -> tokio_util::sync::CancellationToken {
        self.fatal.clone()
    }

    /// librdkafka's fatal error, if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Records that `error` ended the producer, if it is the fatal kind: the record is counted
    /// as undelivered (never dead-lettered: the DLQ goes through the same dead producer).
    fn is_fatal(&self, error: &KafkaError) -> bool {
        let fatal = matches!(
            error,
            KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)
        ) || self.producer.client().fatal_error().is_some();
        if fatal {
            self.metrics.shutdown_undelivered.inc();
            if !self.is_stopped() {
                tracing::error!(error = ?self.fatal_error(), "fatal Kafka producer error; stopping");
                self.stop();
            }
        }
        fatal
    }

    /// Produces a valid update to the updates topic, keyed by its event id. Returns once the
    /// record is handed to the producer (waiting for a permit if too many are in flight).
    /// `received` is when its frame came in: the acknowledgement is timed from there.
    /// `payload` is the update's JSON as it goes on the topic. `trace` is the update's span
    /// when it is sampled: the record then carries a `traceparent` header and a produce span
    /// that ends with Kafka's answer (nothing more is done for unsampled updates).
    pub async fn publish(
        &self,
        key: &str,
        payload: &[u8],
        received: Instant,
        trace: Option<&SpanContext>,
    ) {
        let permit = self.permit().await;
        let kind = RecordKind::Update { received };
        let produce = trace.and_then(|parent| {
            otel::start_child(PRODUCE_SPAN, otel::SpanKind::Producer, parent, Vec::new())
        });
        let traceparent = produce
            .as_ref()
            .map(|span| otel::format_traceparent(otel::SpanApi::span_context(span)));
        let enqueued = self
            .send_retrying_when_full(Tracked::new(kind, produce), |tracked| {
                let record = BaseRecord::with_opaque_to(&self.topic, tracked)
                    .key(key)
                    .payload(payload);
                match &traceparent {
                    Some(value) => record.headers(
                        OwnedHeaders::new_with_capacity(1)
                            .insert(header(TRACEPARENT_HEADER, value)),
                    ),
                    None => record,
                }
            })
            .await;
        match enqueued {
            Enqueued::Sent => self.in_flight(permit),
            Enqueued::Stopped => {}
            Enqueued::Refused(error, tracked) => {
                if let Some(mut span) = tracked.produce {
                    otel::fail(&mut span, "the producer refused the update");
                }
                self.metrics.produce_errors.inc();
                tracing::error!(%error, "the producer refused an update for good; dead-lettering it");
                drop(permit);
                self.dead_letter_code(payload, payload.len(), "produce_failed", &error.to_string())
                    .await;
            }
        }
    }

    /// Produces rejected input to the DLQ with the reason, detail and time as headers.
    pub async fn dead_letter(&self, payload: &[u8], reason: &RejectReason) {
        self.dead_letter_sized(payload, payload.len(), reason).await;
    }

    /// [`Publisher::dead_letter`] for input of which only a prefix (maybe none) was kept:
    /// `original_size` goes in the original-size header.
    pub async fn dead_letter_sized(
        &self,
        payload: &[u8],
        original_size: usize,
        reason: &RejectReason,
    ) {
        self.dead_letter_code(payload, original_size, reason.code(), &reason.to_string())
            .await;
    }

    async fn dead_letter_code(
        &self,
        payload: &[u8],
        original_size: usize,
        code: &'static str,
        detail: &str,
    ) {
        let bounded = bound_payload(payload);
        // Only a stage that held every byte can vouch for the digest.
        let digest = (payload.len() == original_size).then_some(bounded.sha256.as_str());
        let detail = bound_detail(detail);
        let rejected_at = Utc::now().to_rfc3339();
        let original = original_size.to_string();
        let headers = || {
            let headers = OwnedHeaders::new()
                .insert(header(dlq_headers::REASON, code))
                .insert(header(dlq_headers::DETAIL, detail))
                .insert(header(dlq_headers::REJECTED_AT, &rejected_at))
                .insert(header(dlq_headers::STAGE, STAGE))
                .insert(header(dlq_headers::ORIGINAL_BYTES, &original));
            match digest {
                Some(digest) => headers.insert(header(dlq_headers::ORIGINAL_SHA256, digest)),
                None => headers,
            }
        };
        let permit = self.permit().await;
        let kind = RecordKind::DeadLetter(code);
        let enqueued = self
            .send_retrying_when_full(Tracked::new(kind, None), |tracked| {
                BaseRecord::<(), [u8], _>::with_opaque_to(&self.dlq_topic, tracked)
                    .payload(bounded.kept)
                    .headers(headers())
            })
            .await;
        match enqueued {
            Enqueued::Sent => self.in_flight(permit),
            Enqueued::Stopped => {}
            Enqueued::Refused(error, _) => self.refuse_dead_letters(code, &error),
        }
    }

    /// A slot for one record in flight. The semaphore is never closed, so `None` cannot
    /// happen in practice; if it did, sending without a slot is still correct.
    /// Borrowed, not owned: an owned permit clones (and drops) the semaphore's `Arc`, two
    /// atomic operations more per record.
    async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.permits.acquire().await.ok()
    }

    /// librdkafka's local queue can still fill (e.g. tiny `queue.buffering.max.messages`):
    /// wait briefly and try again rather than drop. Any other refusal is about the record
    /// itself (larger than `message.max.bytes`, an unknown topic) and would come back on
    /// every retry: it is returned.
    async fn send_retrying_when_full<'a, K, P>(
        &self,
        mut tracked: Box<Tracked>,
        record: impl Fn(Box<Tracked>) -> BaseRecord<'a, K, P, Box<Tracked>>,
    ) -> Enqueued
    where
        K: rdkafka::message::ToBytes + ?Sized + 'a,
        P: rdkafka::message::ToBytes + ?Sized + 'a,
    {
        loop {
            if self.is_stopped() {
                self.metrics.shutdown_undelivered.inc();
                return Enqueued::Stopped;
            }
            match self.producer.send(record(tracked)) {
                Ok(()) => return Enqueued::Sent,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    tracked = returned.delivery_opaque;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // Timed from the attempt that is taken: waiting for room in the local
                    // queue is not Kafka's. (The first attempt's time is `Tracked::new`'s:
                    // one clock reading per record.)
                    tracked.sent = Instant::now();
                }
                Err((error, _)) if self.is_fatal(&error) => return Enqueued::Stopped,
                Err((error, returned)) => {
                    return Enqueued::Refused(error, returned.delivery_opaque)
                }
            }
        }
    }

    /// A record is with librdkafka: its slot is given back by the delivery report
    /// ([`DeliveryContext`]), not by dropping the permit.
    fn in_flight(&self, permit: Option<SemaphorePermit<'_>>) {
        self.metrics.in_flight.inc();
        if let Some(permit) = permit {
            permit.forget();
        }
    }

    /// A record Kafka refused for good: an update goes to the DLQ, a dead letter stops the
    /// stage. Its slot is given back first, so re-routing can never wait on itself.
    async fn refused(&self, refusal: Refusal) {
        self.permits.add_permits(1);
        let Refusal {
            kind,
            error,
            payload,
        } = refusal;
        if self.is_fatal(&error) {
            return;
        }
        match kind {
            RecordKind::Update { .. } => {
                self.metrics.produce_errors.inc();
                tracing::error!(%error, "Kafka refused an update for good; dead-lettering it");
                self.dead_letter_code(
                    &payload,
                    payload.len(),
                    "produce_failed",
                    &error.to_string(),
                )
                .await;
            }
            // The producer never times a record out: only a refusal gets here.
            RecordKind::DeadLetter(code) => self.refuse_dead_letters(code, &error),
        }
    }

    /// Waits until every in-flight record is acknowledged or `deadline` is cancelled; returns
    /// how many were still unacknowledged.
    pub async fn drain_until(&self, deadline: &tokio_util::sync::CancellationToken) -> u64 {
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        tokio::select! {
            biased;
            drained = self.permits.acquire_many(all) => {
                if drained.is_ok() {
                    return 0;
                }
            }
            _ = deadline.cancelled() => {}
        }
        (self.max_in_flight - self.permits.available_permits()) as u64
    }

    /// Whether a broker answers a metadata request for our topic within `timeout` (blocking).
    pub fn kafka_reachable(&self, timeout: Duration) -> bool {
        self.producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .is_ok()
    }
}

/// Handles the records Kafka refused, one at a time in the order refused, until the
/// publisher is closed.
async fn handle_refusals(mut refused: mpsc::UnboundedReceiver<Refusal>, publisher: Publisher) {
    loop {
        let refusal = tokio::select! {
            _ = publisher.closed.cancelled() => return,
            refusal = refused.recv() => match refusal {
                Some(refusal) => refusal,
                None => return,
            },
        };
        publisher.refused(refusal).await;
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
