//! The processing loop, in phases a test can drive one at a time.
//!
//! One step is: collect a batch ([`Processor::next_batch`]) → make it durable (DLQ + Postgres,
//! retried while Postgres is down: [`Processor::make_durable`]) → update the cache
//! ([`Processor::update_cache`]) → commit its offsets ([`Processor::commit`]). Offsets are
//! committed only after the durable phase, so a processor that dies anywhere before the
//! commit leaves its batch to be read again, and the version guards make that replay change
//! nothing. Tests stop between phases by calling them separately and dropping the processor.
//!
//! [`Processor::run`] overlaps two batches: while batch N+1 is collected and made durable,
//! batch N, already durable, is published to Redis, and N's offsets are committed once both
//! are done. Doing the phases one after another left Postgres idle while Redis published
//! and Redis idle while Postgres committed (issue #26). Batches are still made durable,
//! published and committed one at a time and in the order read, so per-event order and the
//! commit-after-durable rule hold as in `step`; a partition revoked while a durable batch
//! waited for its publish is not committed by it (see [`CommitLedger::mark_durable`]).
//!
//! The phases are not cancel-safe: dropping a phase's future mid-way forgets records this
//! consumer has already read, and a later commit would skip them. Stop a running processor
//! with its shutdown token (the phases return at safe points), never by dropping `step`.

mod durable;
mod publish;

use crate::batch::{Batch, SourceRecord};
use crate::cache::Cache;
pub use crate::checks::{CHECK_DLQ, CHECK_KAFKA, CHECK_POSTGRES, CHECK_REDIS};
use crate::config::ProcessorConfig;
use crate::consumer::{self, CommitLedger, GroupConsumer, ProcessorContext};
use crate::dlq::DeadLetters;
use crate::metrics::{Metrics, Phase};
use crate::store::{Applied, Store};
use crate::trace::BatchTrace;
use crate::ProcessorError;
use futures_util::FutureExt;
use odds_contracts::OddsUpdate;
use odds_runtime::hops;
use odds_runtime::Readiness;
use publish::CacheWriter;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// With nothing to read, the loop wakes this often to check its dependencies.
const IDLE_TICK: Duration = Duration::from_millis(500);
const DB_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A batch whose effects are durable and whose offsets may be committed.
#[derive(Debug)]
pub struct DurableBatch {
    pub next_offsets: BTreeMap<(String, i32), i64>,
    /// The ledger's revocation count when the batch's records were read: partitions revoked
    /// after it are not this batch's to commit ([`CommitLedger::mark_durable`]).
    pub read_in: u64,
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

/// What one round of [`Processor::run`] made of the next batch.
enum Round {
    Durable(Box<DurableBatch>),
    Idle,
    Stopped,
}

enum Received {
    Record(SourceRecord),
    Timeout,
    Shutdown,
}

pub struct Processor {
    consumer: GroupConsumer,
    ledger: CommitLedger,
    store: Store,
    /// Shared with the publish of the previous batch, which runs beside the next one's
    /// durable phase; only one of them holds it at a time.
    cache: Arc<tokio::sync::Mutex<CacheWriter>>,
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
        metrics.cache_stale.set(1);
        let cache = Cache::new(&config.redis_url, config.redis_timeout_ms.duration())?;
        let store = Store::connect_lazy(
            &config.database_url,
            config.database_statement_timeout_ms.duration(),
        )?;
        let cache = CacheWriter::new(cache, store.clone(), metrics.clone(), readiness.clone());
        Ok(Processor {
            consumer,
            ledger,
            store,
            cache: Arc::new(tokio::sync::Mutex::new(cache)),
            dlq: DeadLetters::new(&config.kafka.dlq_topic, &config.dlq_producer_properties())?,
            metrics,
            readiness,
            shutdown: shutdown.child_token(),
            fatal: None,
            batch_max: usize::try_from(config.batch_max)
                .unwrap_or(usize::MAX)
                .max(1),
            batch_max_wait: config.batch_max_wait_ms.duration(),
            db_max_backoff: config.db_retry_max_backoff_ms.duration(),
            pending: Vec::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How many partitions this processor currently owns.
    pub fn assigned_partitions(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }

    /// Whether the Redis cache awaits a repair from Postgres (also while a publish holds the
    /// cache: it may be failing right now).
    pub fn cache_is_stale(&self) -> bool {
        self.cache.try_lock().map_or(true, |cache| cache.is_stale())
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

    /// Runs rounds until shutdown, then publishes and commits what is durable and leaves the
    /// group. Each round makes the next batch durable while the previous one is published
    /// (see the module doc); a batch's offsets are committed after both its durable write and
    /// its publish. An error when the processor stopped by itself (see [`Processor::halt`]).
    pub async fn run(mut self) -> Result<(), ProcessorError> {
        // Durable, not yet published nor committed.
        let mut unpublished: Option<DurableBatch> = None;
        loop {
            let publish = self.publish_beside(unpublished.take());
            let (round, published) = tokio::join!(self.durable_round(), publish);
            if let Some(published) = published {
                self.commit(&published);
            }
            match round {
                Round::Durable(durable) => unpublished = Some(*durable),
                Round::Idle => self.maintain().await,
                Round::Stopped => break,
            }
        }
        let fatal = self.fatal.take();
        self.close();
        fatal.map_or(Ok(()), Err)
    }

    /// Collects the next batch and makes it durable.
    async fn durable_round(&mut self) -> Round {
        let Some(batch) = self.next_batch().await else {
            if self.shutdown.is_cancelled() {
                return Round::Stopped;
            }
            return Round::Idle;
        };
        match self.make_durable(batch).await {
            Some(durable) => Round::Durable(Box::new(durable)),
            None => Round::Stopped,
        }
    }

    /// Publishes `durable` (when there is one) without borrowing the processor, so that it
    /// can run beside [`Processor::durable_round`]; hands the batch back for its commit.
    fn publish_beside(
        &self,
        durable: Option<DurableBatch>,
    ) -> impl std::future::Future<Output = Option<DurableBatch>> + 'static {
        let cache = Arc::clone(&self.cache);
        async move {
            let durable = durable?;
            cache.lock().await.publish(&durable).await;
            Some(durable)
        }
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
    /// closes it, which revokes its partitions; see [`GroupConsumer`]).
    pub fn close(self) {
        self.commit_durable(CommitMode::Sync, "final commit");
        self.consumer.unsubscribe();
        drop(self.consumer);
        tracing::info!("processor stopped");
    }

    /// Commits every durable offset; a failed commit is counted and logged, never fatal: what
    /// it would have committed is only redelivered, and the version guards make that harmless.
    fn commit_durable(&self, mode: CommitMode, what: &str) {
        match self.ledger.durable_list() {
            Ok(list) if list.count() > 0 => {
                if let Err(error) = self.consumer.commit(&list, mode) {
                    self.metrics.error(Phase::Commit);
                    tracing::warn!(%error, "{what} failed; records will be redelivered");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "building the list for the {what}"),
        }
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
                self.metrics.error(Phase::Consume);
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
        self.cache.lock().await.publish(durable).await
    }

    /// Marks the batch's offsets durable and commits every durable offset.
    pub fn commit(&mut self, durable: &DurableBatch) {
        self.ledger
            .mark_durable(&durable.next_offsets, durable.read_in);
        // Async: the effects are already durable; a lost commit only means redelivery.
        self.commit_durable(CommitMode::Async, "offset commit");
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
        self.cache.lock().await.maintain().await;
    }
}
