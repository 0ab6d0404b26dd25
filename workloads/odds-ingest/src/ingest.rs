//! The ingest loop: each supplier frame becomes a Kafka record, on the topic or on the DLQ.
//!
//! Valid updates are re-encoded from the parsed value, so what goes on the topic is exactly the
//! contract's shape whatever extra fields a supplier sends, stamped with the moment ingest
//! accepted them (`ingested_at`, the clock a client's freshness is measured on). Everything else is dead-lettered
//! with its reason. On shutdown the supplier socket is closed first, frames already read are
//! still produced, and the producer is drained — all within one deadline
//! (`--shutdown-flush-ms`), after which exactly what was accepted and not delivered is counted
//! and logged, so a Kafka outage can delay a stop but never hang it.

use crate::config::IngestConfig;
use crate::metrics::IngestMetrics;
use crate::publisher::Publisher;
use crate::supplier::{
    stream_supplier, ByteBudget, QueuedFrame, Received, SupplierFrame, SupplierLink,
    SupplierReader, READY_SUPPLIER,
};
use crate::versions::{VersionCheck, VersionTracker};
use crate::IngestError;
use odds_contracts::{accept_update, RejectReason};
use odds_runtime::hops;
use odds_runtime::metrics::ComponentMetrics;
use odds_runtime::ops::serve_ops;
use odds_runtime::otel::{self, SpanApi as _};
use odds_runtime::Readiness;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Readiness check name: a Kafka broker answered recently.
pub const READY_KAFKA: &str = "kafka";
/// Readiness check name: false once the DLQ refused a dead letter for good (the stage then
/// stops and the process exits non-zero).
pub const READY_DLQ: &str = "dlq";
/// Readiness check name: false once the producer hit a fatal error (the stage then stops and
/// the process exits non-zero).
pub const READY_PRODUCER: &str = "producer";
/// Frames read ahead of the producer; small, since the in-flight limit is the real buffer.
const FRAME_QUEUE: usize = 1024;
/// Bytes of frames read ahead of the producer: bounds memory whatever the frames' sizes.
const FRAME_QUEUE_BYTES: u32 = 8 * 1024 * 1024;
const KAFKA_PROBE_EVERY: Duration = Duration::from_secs(2);
/// A sampled update's root span: from its frame's arrival until it is handed to the producer.
const RECEIVE_SPAN: &str = "odds-ingest receive";

/// A running ingest stage.
pub struct Ingest {
    /// Health, readiness and metrics server.
    pub ops_addr: SocketAddr,
    pub metrics: IngestMetrics,
    pub readiness: Readiness,
    publisher: Publisher,
    task: JoinHandle<()>,
    ops_task: JoinHandle<()>,
}

/// Stops the stage like a shutdown when the producer hits a fatal error (the idempotent
/// producer can no longer guarantee order or exactly-once) or the DLQ refuses dead letters
/// for good, readiness saying why first; `run` then fails, so the process exits non-zero and
/// the orchestrator starts a fresh producer (and shows the restarts).
fn watch_fatal(watched: Publisher, stop: CancellationToken, readiness: Readiness) {
    tokio::spawn(async move {
        let fatal = watched.fatal_token();
        tokio::select! {
            _ = fatal.cancelled() => {
                let check = if watched.dlq_refusal().is_some() {
                    READY_DLQ
                } else {
                    READY_PRODUCER
                };
                readiness.set(check, false);
                stop.cancel();
            }
            _ = stop.cancelled() => {}
        }
    });
}

/// How the stage reaches its supplier, from the configuration.
fn supplier_link(config: &IngestConfig) -> SupplierLink {
    let (reconnect_min, reconnect_max) = config.reconnect_bounds();
    SupplierLink {
        url: config.supplier_url.clone(),
        max_message_bytes: config.max_ws_message_bytes as usize,
        reconnect_min,
        reconnect_max,
        ping_interval: config.supplier_ping_interval_ms.duration(),
    }
}

/// The end of a stopping stage: waits for Kafka's acknowledgements until the deadline,
/// closes the producer, and counts and reports every record accepted from the supplier that
/// never reached Kafka (`unproduced` were never handed to the producer).
async fn drain_and_report(
    publisher: &Publisher,
    unproduced: u64,
    deadline: &CancellationToken,
    metrics: &IngestMetrics,
) {
    let unacknowledged = publisher.drain_until(deadline).await;
    publisher.close();
    let undelivered = unproduced + unacknowledged;
    metrics.shutdown_undelivered.inc_by(undelivered);
    if undelivered > 0 {
        tracing::error!(
            undelivered,
            unproduced,
            unacknowledged,
            "shutdown: records accepted from the supplier were not delivered to Kafka"
        );
    } else {
        tracing::info!("shutdown: every record acknowledged");
    }
}

impl Ingest {
    /// Starts every task of the stage; returns once the ops server listens.
    pub async fn start(
        config: IngestConfig,
        shutdown: CancellationToken,
    ) -> Result<Ingest, IngestError> {
        let (registry, metrics) = IngestMetrics::registered()?;
        let readiness = Readiness::new(&[READY_SUPPLIER, READY_KAFKA, READY_PRODUCER, READY_DLQ]);
        readiness.set(READY_PRODUCER, true);
        readiness.set(READY_DLQ, true);
        let publisher = Publisher::new(&config, metrics.clone())?;
        // A fatal producer error (the idempotent producer can no longer guarantee order or
        // exactly-once) or a DLQ that refuses dead letters for good stops the stage like a
        // shutdown, readiness saying why first; `run` then fails, so the process exits
        // non-zero and the orchestrator starts a fresh producer (and shows the restarts).
        let shutdown = shutdown.child_token();
        watch_fatal(publisher.clone(), shutdown.clone(), readiness.clone());
        let link = supplier_link(&config);
        // The ops server outlives the pipeline a little so /metrics shows the final drain.
        let ops_shutdown = CancellationToken::new();
        let (ops_addr, ops_task) = serve_ops(
            config.ops.http_addr,
            &readiness,
            &registry,
            ops_shutdown.clone(),
        )
        .await?;

        let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
        let reader = tokio::spawn(stream_supplier(SupplierReader {
            link,
            frames: frames_tx,
            budget: ByteBudget::new(FRAME_QUEUE_BYTES),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        }));
        let stage_publisher = publisher.clone();
        let probe = tokio::spawn(probe_kafka(
            publisher.clone(),
            readiness.clone(),
            shutdown.clone(),
        ));
        let deadline = shutdown_deadline(&shutdown, config.shutdown_flush_ms.duration());
        let stage_metrics = metrics.clone();
        let task = tokio::spawn(async move {
            let unproduced = process_frames(frames_rx, &publisher, &stage_metrics, &deadline).await;
            let _ = reader.await;
            probe.abort();
            drain_and_report(&publisher, unproduced, &deadline, &stage_metrics).await;
            ops_shutdown.cancel();
        });
        tracing::info!(%ops_addr, supplier = %config.supplier_url, brokers = %config.kafka.brokers, "odds-ingest started");
        Ok(Ingest {
            ops_addr,
            metrics,
            readiness,
            publisher: stage_publisher,
            task,
            ops_task,
        })
    }

    /// The producer's fatal error, if it had one (the stage then stopped by itself).
    pub fn fatal_error(&self) -> Option<String> {
        self.publisher.fatal_error()
    }

    /// Why the DLQ refused a dead letter for good, if it did (the stage then stopped by itself).
    pub fn dlq_refusal(&self) -> Option<String> {
        self.publisher.dlq_refusal()
    }

    /// Waits for the stage to stop (after shutdown is cancelled and in-flight records drained).
    pub async fn wait(self) {
        let _ = self.task.await;
        let _ = self.ops_task.await;
    }

    /// Waits for the stage to stop and says how: an error when it stopped by itself (what
    /// [`run`] returns, so the process exits non-zero).
    pub async fn finish(self) -> Result<(), IngestError> {
        let publisher = self.publisher.clone();
        self.wait().await;
        if let Some(reason) = publisher.dlq_refusal() {
            return Err(IngestError::DlqRefused(reason));
        }
        match publisher.fatal_error() {
            Some(reason) => Err(IngestError::FatalProducer(reason)),
            None => Ok(()),
        }
    }
}

/// Runs ingest until `shutdown` is cancelled, or until it stops by itself (with the error).
pub async fn run(config: IngestConfig, shutdown: CancellationToken) -> Result<(), IngestError> {
    Ingest::start(config, shutdown).await?.finish().await
}

/// A token cancelled `flush` after `shutdown`: the end of the drain.
fn shutdown_deadline(shutdown: &CancellationToken, flush: Duration) -> CancellationToken {
    let deadline = CancellationToken::new();
    let (shutdown, cancel) = (shutdown.clone(), deadline.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(flush).await;
        cancel.cancel();
    });
    deadline
}

/// Produces every frame until the supplier reader is gone and the queue is empty, or until the
/// shutdown deadline; returns how many frames the deadline left unproduced.
///
/// The deadline is watched only where the loop would wait (an empty queue, a producer out of
/// in-flight slots): a frame that is there and can be handed over right away is, without
/// touching the token's lock, which twice per frame was a visible share of ingest's CPU.
async fn process_frames(
    mut frames: mpsc::Receiver<QueuedFrame>,
    publisher: &Publisher,
    metrics: &IngestMetrics,
    deadline: &CancellationToken,
) -> u64 {
    let mut state = FrameState::default();
    let stopped = deadline.cancelled();
    tokio::pin!(stopped);
    let mut unproduced = loop {
        let queued = match frames.try_recv() {
            Ok(queued) => queued,
            Err(mpsc::error::TryRecvError::Disconnected) => return 0,
            Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                biased;
                _ = &mut stopped => break 0,
                queued = frames.recv() => match queued {
                    Some(queued) => queued,
                    None => return 0,
                },
            },
        };
        tokio::select! {
            biased;
            _ = process_frame(queued.frame, queued.received, publisher, metrics, &mut state) => {}
            _ = &mut stopped => break 1,
        }
    };
    frames.close();
    while frames.try_recv().is_ok() {
        unproduced += 1;
    }
    unproduced
}

/// What the frame loop keeps from frame to frame: the versions seen, and the buffer each
/// record is written into (so an update costs no allocation of its own).
#[derive(Default)]
struct FrameState {
    versions: VersionTracker,
    record: Vec<u8>,
}

async fn process_frame(
    frame: SupplierFrame,
    received: Received,
    publisher: &Publisher,
    metrics: &IngestMetrics,
    state: &mut FrameState,
) {
    match frame {
        SupplierFrame::Text(text) => {
            // Ingest's clock, never the supplier's (see `OddsUpdate::ingested_at`).
            match accept_update(text.as_str(), received.wall, &mut state.record) {
                Ok(update) => {
                    metrics
                        .supplier_to_ingest
                        .observe(hops::seconds_between(update.updated_at, received.wall));
                    let check =
                        state
                            .versions
                            .observe(&update.event_id, &update.market, update.version);
                    record_version(check, metrics, &update.event_id);
                    // A root span from the frame's arrival, for sampled updates only: for the
                    // others (and with tracing off) nothing more is built.
                    let receive = otel::start_root(
                        RECEIVE_SPAN,
                        otel::SpanKind::Consumer,
                        received.wall.into(),
                    );
                    let trace = receive.as_ref().map(|span| span.span_context());
                    publisher
                        .publish(&update.event_id, &state.record, received.at, trace)
                        .await;
                    if let Some(mut span) = receive {
                        span.set_attributes(otel::update_attributes(
                            &update.event_id,
                            &update.market,
                            update.version,
                        ));
                    }
                }
                Err(reason) => {
                    tracing::debug!(reason = reason.code(), detail = %reason, "rejecting frame");
                    publisher.dead_letter(text.as_bytes(), &reason).await;
                }
            }
        }
        SupplierFrame::Binary(bytes) => {
            publisher
                .dead_letter(&bytes, &RejectReason::BinaryFrame)
                .await;
        }
        SupplierFrame::Oversize { size, max } => {
            let reason = RejectReason::Oversize { len: size, max };
            publisher.dead_letter_sized(&[], size, &reason).await;
        }
    }
}

fn record_version(check: VersionCheck, metrics: &IngestMetrics, event_id: &str) {
    if let VersionCheck::Gap { skipped } = check {
        metrics.version_gaps.inc();
        metrics.versions_skipped.inc_by(skipped);
        log_gap(event_id, skipped);
    }
    if let Some(reason) = check.regression_reason() {
        metrics
            .version_regressions
            .with_label_values(&[reason])
            .inc();
    }
}

/// Millisecond (since the Unix epoch) of the last version-gap warning, and the gaps since.
static LAST_GAP_WARNING_MS: AtomicU64 = AtomicU64::new(0);
static GAPS_SINCE_WARNING: AtomicU64 = AtomicU64::new(0);

/// Warns about versions the supplier never delivered, at most once a second: after a
/// reconnect every updated event shows a gap at once, and one line per event would flood the
/// log. The line carries the event of the first gap and how many gaps the second had.
fn log_gap(event_id: &str, skipped: u64) {
    let gaps = GAPS_SINCE_WARNING.fetch_add(1, Ordering::Relaxed) + 1;
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let last = LAST_GAP_WARNING_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1_000
        && LAST_GAP_WARNING_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        GAPS_SINCE_WARNING.store(0, Ordering::Relaxed);
        tracing::warn!(
            event_id,
            skipped,
            gaps_in_the_last_second = gaps,
            "versions skipped: the supplier never delivered some updates (ingest fell behind \
             its feed and was disconnected, or the supplier dropped them); they never enter the \
             pipeline (odds_ingest_versions_skipped_total)"
        );
    }
}

async fn probe_kafka(publisher: Publisher, readiness: Readiness, shutdown: CancellationToken) {
    let mut was_reachable = None;
    loop {
        let probe = publisher.clone();
        let reachable =
            tokio::task::spawn_blocking(move || probe.kafka_reachable(KAFKA_PROBE_EVERY))
                .await
                .unwrap_or(false);
        readiness.set(READY_KAFKA, reachable);
        if was_reachable != Some(reachable) {
            if reachable {
                tracing::info!("Kafka reachable");
            } else {
                tracing::warn!("Kafka unreachable");
            }
            was_reachable = Some(reachable);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(KAFKA_PROBE_EVERY) => {}
        }
    }
}
