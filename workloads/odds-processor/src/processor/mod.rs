//! The processing loop, in phases a test can drive one at a time.
//!
//! One step is: collect a batch ([`Processor::next_batch`]) → make it durable (DLQ + Postgres,
//! retried while Postgres is down: [`Processor::make_durable`]) → update the cache
//! ([`Processor::update_cache`]) → commit its offsets ([`Processor::commit`]). Offsets are
//! committed only after the durable phase, so a processor that dies anywhere before the
//! commit leaves its batch to be read again, and the version guards make that replay change
//! nothing. Tests stop between phases by calling them separately and dropping the processor.
//!
//! The phases are not cancel-safe: dropping a phase's future mid-way forgets records this
//! consumer has already read, and a later commit would skip them. Stop a running processor
//! with its shutdown token (the phases return at safe points), never by dropping `step`.

mod durable;

use crate::batch::{Batch, SourceRecord};
use crate::cache::{Cache, CacheError, StatusReporter};
use crate::config::ProcessorConfig;
use crate::consumer::{self, CommitLedger, ProcessorConsumer, ProcessorContext};
use crate::dlq::DeadLetters;
use crate::metrics::{phase, Metrics};
use crate::store::{Applied, Store};
use crate::trace::{BatchTrace, REDIS_SPAN};
use crate::ProcessorError;
use futures_util::FutureExt;
use odds_contracts::OddsUpdate;
use odds_runtime::hops;
use odds_runtime::otel::{self, SpanApi as _};
use odds_runtime::Readiness;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

// Readiness check names.
/// False while librdkafka reports every broker unreachable (see [`crate::brokers`]).
pub const CHECK_KAFKA: &str = "kafka";
/// False once the DLQ refused a dead letter for good; the processor then stops.
pub const CHECK_DLQ: &str = "dlq";
pub const CHECK_POSTGRES: &str = "postgres";
/// False while cache writes fail (Redis down, out of memory, read-only) until a repair from
/// Postgres succeeds. Postgres writes and commits go on meanwhile; the check tells whoever
/// looks that readers of the cache are served by Postgres and live updates are stopped.
pub const CHECK_REDIS: &str = "redis";

/// With nothing to read, the loop wakes this often to check its dependencies.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// How often an idle processor checks that Redis still answers (a restart empties it).
const CACHE_CHECK_EVERY: Duration = Duration::from_secs(5);
const DB_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const REPAIR_FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A repair retry costs a PING while Redis is down, so recovery is noticed within seconds.
const REPAIR_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A batch whose effects are durable and whose offsets may be committed.
#[derive(Debug)]
pub struct DurableBatch {
    pub next_offsets: BTreeMap<(String, i32), i64>,
    /// The newest update per event that is also what Postgres now holds: cache candidates.
    pub current: Vec<OddsUpdate>,
    pub applied: Applied,
    pub records: usize,
    pub dead_lettered: usize,
    started: Instant,
    /// The batch's span, when it holds sampled records; ends when the batch is dropped.
    pub trace: Option<BatchTrace>,
}

/// What one [`Processor::step`] did.
#[derive(Debug, PartialEq)]
pub enum StepOutcome {
    /// Nothing arrived within the idle tick.
    Idle,
    Processed {
        records: usize,
        dead_lettered: usize,
        cache_advanced: usize,
    },
    /// Shutdown was requested; the batch in flight (if any) was abandoned uncommitted.
    Stopped,
}

enum Received {
    Record(SourceRecord),
    Timeout,
    Shutdown,
}

pub struct Processor {
    consumer: ProcessorConsumer,
    ledger: CommitLedger,
    store: Store,
    cache: Cache,
    /// Tells readers (on Redis' cache-status channel) while cache writes fail.
    cache_status: StatusReporter,
    dlq: DeadLetters,
    metrics: Metrics,
    readiness: Readiness,
    /// A child of the caller's token: cancelled by the caller, or by [`Processor::halt`].
    shutdown: CancellationToken,
    /// Why the processor stopped by itself, if it did.
    fatal: Option<ProcessorError>,
    batch_max: usize,
    batch_max_wait: Duration,
    db_max_backoff: Duration,
    /// Records received while paused (Postgres down); bounded by librdkafka's prefetch.
    pending: Vec<SourceRecord>,
    next_repair: Instant,
    repair_backoff: Duration,
    next_cache_check: Instant,
}

impl Processor {
    /// Builds every client and joins the consumer group. Nothing here needs Postgres or Redis
    /// to be up: they are connected on first use and reported through `readiness`.
    pub fn new(
        config: &ProcessorConfig,
        metrics: Metrics,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> Result<Processor, ProcessorError> {
        let ledger = CommitLedger::default();
        let consumer = consumer::subscribe(
            &config.kafka.topic,
            &config.consumer_properties(),
            ProcessorContext::new(ledger.clone(), metrics.clone(), readiness.clone()),
        )
        .map_err(ProcessorError::Kafka)?;
        readiness.set(CHECK_DLQ, true);
        // Not ready until the first repair shows that Redis takes writes.
        readiness.set(CHECK_REDIS, false);
        let now = Instant::now();
        metrics.cache_stale.set(1);
        let cache = Cache::new(&config.redis_url, config.redis_timeout())?;
        Ok(Processor {
            consumer,
            ledger,
            store: Store::connect_lazy(&config.database_url, config.statement_timeout())?,
            cache_status: cache.status_reporter(),
            cache,
            dlq: DeadLetters::new(&config.kafka.dlq_topic, &config.dlq_producer_properties())?,
            metrics,
            readiness,
            shutdown: shutdown.child_token(),
            fatal: None,
            batch_max: usize::try_from(config.batch_max)
                .unwrap_or(usize::MAX)
                .max(1),
            batch_max_wait: config.batch_max_wait(),
            db_max_backoff: config.db_retry_max_backoff(),
            pending: Vec::new(),
            next_repair: now,
            repair_backoff: REPAIR_FIRST_BACKOFF,
            next_cache_check: now + CACHE_CHECK_EVERY,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How many partitions this processor currently owns.
    pub fn assigned_partitions(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }

    /// Whether the Redis cache awaits a repair from Postgres.
    pub fn cache_is_stale(&self) -> bool {
        self.cache.is_stale()
    }

    /// One full round: batch → durable → cache → commit. Idle rounds do maintenance.
    pub async fn step(&mut self) -> StepOutcome {
        let Some(batch) = self.next_batch().await else {
            if self.shutdown.is_cancelled() {
                return StepOutcome::Stopped;
            }
            self.maintain().await;
            return StepOutcome::Idle;
        };
        let Some(durable) = self.make_durable(batch).await else {
            return StepOutcome::Stopped;
        };
        let cache_advanced = self.update_cache(&durable).await;
        self.commit(&durable);
        StepOutcome::Processed {
            records: durable.records,
            dead_lettered: durable.dead_lettered,
            cache_advanced,
        }
    }

    /// Runs steps until shutdown, then commits what is durable and leaves the group. An
    /// error when the processor stopped by itself (see [`Processor::halt`]).
    pub async fn run(mut self) -> Result<(), ProcessorError> {
        while self.step().await != StepOutcome::Stopped {}
        let fatal = self.fatal.take();
        self.close();
        fatal.map_or(Ok(()), Err)
    }

    /// Stops the processor for a reason no retry can change: readiness and the log say so at
    /// once, the step in flight ends at its next safe point, and [`Processor::run`] returns
    /// the error (the binary exits non-zero, and its restart is what the orchestrator shows).
    fn halt(&mut self, check: &'static str, error: ProcessorError) {
        self.readiness.set(check, false);
        tracing::error!(%error, "stopping");
        self.fatal = Some(error);
        self.shutdown.cancel();
    }

    /// Commits the durable offsets synchronously and leaves the group (dropping the consumer
    /// closes it, which revokes its partitions).
    pub fn close(self) {
        match self.ledger.durable_list() {
            Ok(list) if list.count() > 0 => {
                if let Err(error) = self.consumer.commit(&list, CommitMode::Sync) {
                    self.metrics.error(phase::COMMIT);
                    tracing::warn!(%error, "final commit failed; records will be redelivered");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "building the final commit list"),
        }
        self.consumer.unsubscribe();
        tracing::info!("processor stopped");
    }

    /// The next record, waiting at most `timeout`; a zero timeout only takes a record that is
    /// already waiting (no timer: the timer's millisecond tick would be the batch's latency).
    async fn receive(&self, timeout: Duration) -> Received {
        if timeout.is_zero() {
            if self.shutdown.is_cancelled() {
                return Received::Shutdown;
            }
            return match self.consumer.recv().now_or_never() {
                Some(received) => self.received(received),
                None => Received::Timeout,
            };
        }
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Received::Shutdown,
            received = self.consumer.recv() => self.received(received),
            _ = tokio::time::sleep(timeout) => Received::Timeout,
        }
    }

    fn received(&self, received: KafkaResult<BorrowedMessage<'_>>) -> Received {
        match received {
            Ok(message) => {
                self.metrics.messages_consumed.inc();
                if let Some(produced) = message.timestamp().to_millis() {
                    self.metrics
                        .kafka_to_processor
                        .observe(hops::seconds_since_millis(produced));
                }
                Received::Record(SourceRecord {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    trace: crate::trace::record_context(&message),
                })
            }
            Err(error) => {
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
                    self.consumer
                        .context()
                        .brokers()
                        .all_down(&error.to_string());
                }
                self.metrics.error(phase::CONSUME);
                tracing::warn!(%error, "consumer error");
                Received::Timeout
            }
        }
    }

    /// Collects up to `batch_max` records: waits up to the idle tick for the first, then up
    /// to `batch_max_wait` for more, and then takes what is already waiting until the
    /// consumer's queue is empty. With no wait (the default) a batch is exactly what has
    /// arrived while the previous one was written: small and quick at low rates, large at
    /// high ones. `None` when idle or shutting down.
    pub async fn next_batch(&mut self) -> Option<Batch> {
        let mut batch = Batch::default();
        let take = self.pending.len().min(self.batch_max);
        batch.records.extend(self.pending.drain(..take));
        self.drop_revoked(&mut batch);
        if batch.is_empty() {
            let first = self.receive(IDLE_TICK).await;
            self.drop_revoked(&mut batch);
            match first {
                Received::Record(record) => batch.records.push(record),
                Received::Timeout | Received::Shutdown => return None,
            }
        }
        let opened = Instant::now();
        let deadline = opened + self.batch_max_wait;
        while batch.len() < self.batch_max {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = self.receive(left).await;
            // A rebalance runs inside `receive`: drop what was read before it, keep what
            // this call returned (it belongs to the current assignment).
            self.drop_revoked(&mut batch);
            // Past the window, records already waiting are still taken (a zero wait returns
            // them at once): the batch closes when the consumer's queue is empty.
            match received {
                Received::Record(record) => batch.records.push(record),
                Received::Timeout => break,
                Received::Shutdown => return None,
            }
        }
        self.metrics
            .batch_wait
            .observe(opened.elapsed().as_secs_f64());
        (!batch.is_empty()).then_some(batch)
    }

    /// Drops the records of partitions revoked since the last call from `batch` and from the
    /// pending records. Must run right after every `receive`, before its record is kept:
    /// records read after a revoke-and-reassign are new reads and must not be dropped.
    fn drop_revoked(&mut self, batch: &mut Batch) -> usize {
        let revoked = self.ledger.take_revoked();
        if revoked.is_empty() {
            return 0;
        }
        let mut pending = Batch {
            records: std::mem::take(&mut self.pending),
        };
        pending.drop_partitions(&revoked);
        self.pending = pending.records;
        let dropped = batch.drop_partitions(&revoked);
        tracing::info!(
            dropped,
            "records of revoked partitions left for their new owner"
        );
        dropped
    }

    /// Sets and publishes the batch's current updates in Redis; a Redis failure is counted
    /// and leaves the cache stale (repaired later), it never fails the batch. Returns how many
    /// keys advanced.
    pub async fn update_cache(&mut self, durable: &DurableBatch) -> usize {
        if self.cache.is_stale() {
            // A repair reads Postgres after this batch committed, so it covers the batch.
            return self.repair_cache_if_due().await.unwrap_or(0);
        }
        let current: Vec<&OddsUpdate> = durable.current.iter().collect();
        let write = Instant::now();
        let Some(trace) = &durable.trace else {
            let written = self.cache.set_newest(&current).await;
            return self.cache_written(written, write);
        };
        let mut step = trace.child(REDIS_SPAN);
        let step_context = step.as_ref().map(|span| span.span_context().clone());
        let written = self
            .cache
            .set_newest_traced(&current, |update| {
                trace.publish_suffix(update, step_context.as_ref())
            })
            .instrument(trace.log_span())
            .await;
        if let (Some(span), Err(error)) = (step.as_mut(), &written) {
            otel::fail(span, error.to_string());
        }
        let _logs = trace.log_span().entered();
        self.cache_written(written, write)
    }

    /// Accounts for a cache write of the batch's current updates; returns how many advanced.
    fn cache_written(
        &mut self,
        written: Result<Vec<OddsUpdate>, CacheError>,
        write: Instant,
    ) -> usize {
        match written {
            Ok(advanced) => {
                self.metrics
                    .redis_publish
                    .observe(write.elapsed().as_secs_f64());
                self.metrics.cache_sets.inc_by(advanced.len() as u64);
                advanced.len()
            }
            Err(error) => {
                tracing::warn!(%error, "cache update failed; cache will be repaired from Postgres");
                self.cache_failed(&error);
                0
            }
        }
    }

    /// Repairs the cache when a retry is due; `None` if not attempted or failed.
    async fn repair_cache_if_due(&mut self) -> Option<usize> {
        let now = Instant::now();
        if now < self.next_repair {
            return None;
        }
        match self.cache.repair_from(&self.store).await {
            Ok(advanced) => {
                self.metrics.cache_repairs.inc();
                self.metrics.cache_sets.inc_by(advanced as u64);
                self.metrics.cache_stale.set(0);
                self.readiness.set(CHECK_REDIS, true);
                self.cache_status.healthy();
                self.repair_backoff = REPAIR_FIRST_BACKOFF;
                tracing::info!(advanced, "cache repaired from Postgres");
                Some(advanced)
            }
            Err(error) => {
                self.cache_failed(&error);
                self.next_repair = now + self.repair_backoff;
                self.repair_backoff = (self.repair_backoff * 2).min(REPAIR_MAX_BACKOFF);
                tracing::warn!(%error, retry_in = ?self.repair_backoff, "cache repair failed");
                None
            }
        }
    }

    /// A cache write, check or repair failed: count it, fail readiness and tell readers. Only
    /// a successful repair clears this (the cache may have missed writes meanwhile).
    fn cache_failed(&mut self, error: &CacheError) {
        self.metrics.error(phase::CACHE);
        self.metrics.cache_stale.set(1);
        self.readiness.set(CHECK_REDIS, false);
        self.cache_status.failing(error.to_string());
    }

    /// Marks the batch's offsets durable and commits every durable offset.
    pub fn commit(&mut self, durable: &DurableBatch) {
        self.ledger.mark_durable(&durable.next_offsets);
        match self.ledger.durable_list() {
            Ok(list) if list.count() > 0 => {
                // Async: the effects are already durable; a lost commit only means redelivery.
                if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
                    self.metrics.error(phase::COMMIT);
                    tracing::warn!(%error, "offset commit failed; records will be redelivered");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "building the commit list"),
        }
        self.metrics.batch_size.observe(durable.records as f64);
        self.metrics
            .batch_seconds
            .observe(durable.started.elapsed().as_secs_f64());
    }

    /// Idle-time upkeep: readiness of Postgres, liveness of Redis, a due cache repair.
    pub async fn maintain(&mut self) {
        if !self
            .readiness
            .snapshot()
            .get(CHECK_POSTGRES)
            .copied()
            .unwrap_or(false)
        {
            let ok = self.store.ping().await.is_ok();
            self.readiness.set(CHECK_POSTGRES, ok);
        }
        if !self.cache.is_stale() && Instant::now() >= self.next_cache_check {
            self.next_cache_check = Instant::now() + CACHE_CHECK_EVERY;
            if let Err(error) = self.cache.check().await {
                tracing::warn!(%error, "Redis does not answer; cache will be repaired from Postgres");
                self.cache_failed(&error);
            }
        }
        if self.cache.is_stale() {
            self.repair_cache_if_due().await;
        }
    }
}
