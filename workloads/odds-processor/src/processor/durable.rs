//! The durable phase of a batch: dead-letter the invalid records, write the valid ones to
//! Postgres, and keep retrying both (consumption paused, readiness false) until they succeed
//! or shutdown abandons the batch. Nothing of a batch is committed before this phase ends.
//!
//! Postgres errors come in two kinds. An outage (connection lost, timeout) is waited out: the
//! whole batch is retried. A refusal of the data itself (a value no column can hold, a broken
//! CHECK) would fail every retry forever, on every replica that takes the partition, so the
//! refused updates are isolated and dead-lettered and the rest is stored.

use super::{DurableBatch, Processor, Received, CHECK_DLQ, CHECK_POSTGRES, DB_FIRST_BACKOFF};
use crate::batch::{newest_per_market, Batch, Decoded, Rejection, SourceRecord};
use crate::dlq::DlqError;
use crate::metrics::Phase;
use crate::store::{Applied, Isolated, StoreError, DB_WRITERS};
use crate::trace::{BatchTrace, POSTGRES_SPAN};
use crate::ProcessorError;
use odds_contracts::{OddsUpdate, STORAGE_REJECTED};
use odds_runtime::otel;
use rdkafka::consumer::Consumer;
use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Where the durable phase of one batch stands between attempts.
struct Durability {
    decoded: Decoded,
    /// The Postgres writers' ranges of `decoded.updates`.
    parts: Vec<Range<usize>>,
    /// Rejections not yet acknowledged by the DLQ.
    undelivered: Vec<(SourceRecord, Rejection)>,
    /// What Postgres applied, once it has.
    stored: Option<Applied>,
}

impl Durability {
    fn new(batch: &Batch) -> Durability {
        let (decoded, parts) = decode_for_writers(batch);
        Durability {
            undelivered: decoded.rejected.clone(),
            decoded,
            parts,
            stored: None,
        }
    }
}

/// The batch decoded, its updates grouped by Postgres writer (see [`crate::store::Store::apply_parts`]).
fn decode_for_writers(batch: &Batch) -> (Decoded, Vec<Range<usize>>) {
    let mut decoded = batch.decode();
    let parts = decoded.group_by_writer(DB_WRITERS);
    (decoded, parts)
}

impl Processor {
    /// Dead-letters the invalid records and writes the valid ones to Postgres, retrying with
    /// capped backoff (consumption paused, readiness false) until both succeed. Updates that
    /// Postgres refuses for good are isolated and dead-lettered as `storage_rejected`, so
    /// they never hold up the partition. `None` when shutdown came first, or when the DLQ
    /// refused a dead letter for good (the processor halts): the batch is abandoned and its
    /// offsets stay uncommitted.
    ///
    /// A batch holding sampled records is traced ([`BatchTrace`]): the returned batch carries
    /// its span, and the batch's log lines name its trace.
    pub async fn make_durable(&mut self, batch: Batch) -> Option<DurableBatch> {
        let trace = BatchTrace::start(&batch.records);
        let logs = trace
            .as_ref()
            .map_or_else(tracing::Span::none, BatchTrace::log_span);
        let mut durable = self
            .write_durably(batch, trace.as_ref())
            .instrument(logs)
            .await?;
        durable.trace = trace;
        Some(durable)
    }

    /// The durable phase's loop: one attempt at the DLQ and Postgres at a time, until both
    /// are done ([`Processor::attempt`], [`Processor::settle_dlq`], [`Processor::settle_db`]),
    /// waiting paused between attempts that met an outage; then the batch's accounting.
    async fn write_durably(
        &mut self,
        mut batch: Batch,
        trace: Option<&BatchTrace>,
    ) -> Option<DurableBatch> {
        let started = Instant::now();
        // Read before any wait below: a revoke while paused counts as after the batch's read.
        let read_in = self.ledger.revocations();
        let mut state = Durability::new(&batch);
        let mut backoff = DB_FIRST_BACKOFF;
        let mut paused = false;
        let applied = loop {
            if state.stored.is_none()
                && batch.len() != state.decoded.sources.len() + state.decoded.rejected.len()
            {
                // A rebalance while waiting took records away: keep only what is still ours.
                (state.decoded, state.parts) = decode_for_writers(&batch);
                state.undelivered.retain(|(r, _)| batch.records.contains(r));
            }
            let (dlq_result, db_result) = self.attempt(&state, trace).await;
            let dlq_ok = self.settle_dlq(dlq_result, &mut state.undelivered)?;
            self.settle_db(db_result, &batch, &mut state, backoff);
            if let (Some(done), true) = (&state.stored, state.undelivered.is_empty()) {
                break done.clone();
            }
            if dlq_ok && state.stored.is_some() {
                continue; // only storage's refusals are left to dead-letter: no outage to wait out
            }
            paused = true;
            if !self.wait_paused(backoff, &mut batch).await {
                return None;
            }
            backoff = (backoff * 2).min(self.db_max_backoff);
        };
        if paused {
            self.set_paused(false);
        }
        self.readiness.set(CHECK_POSTGRES, true);
        let mut durable = self.account(batch, state.decoded, applied, started);
        durable.read_in = read_in;
        Some(durable)
    }

    /// Sends what the DLQ has not acknowledged and, unless the batch is already stored,
    /// writes it to Postgres: both at once.
    async fn attempt(
        &self,
        state: &Durability,
        trace: Option<&BatchTrace>,
    ) -> (Result<(), DlqError>, Result<Option<Isolated>, StoreError>) {
        let dlq = async {
            if state.undelivered.is_empty() {
                return Ok(());
            }
            self.dlq.send_all(&state.undelivered).await
        };
        let db = async {
            if state.stored.is_some() {
                return Ok(None);
            }
            let write = Instant::now();
            let mut span = trace.and_then(|t| t.child(POSTGRES_SPAN));
            let applied = self
                .store
                .apply_parts(&state.decoded.updates, &state.parts)
                .await;
            if let (Some(span), Err(error)) = (span.as_mut(), &applied) {
                otel::fail(span, error.to_string());
            }
            let applied = applied?;
            self.metrics
                .postgres_commit
                .observe(write.elapsed().as_secs_f64());
            Ok(Some(applied))
        };
        tokio::join!(dlq, db)
    }

    /// Accounts for a DLQ attempt: `Some(true)` when everything undelivered is now
    /// acknowledged, `Some(false)` after an outage (retried), `None` when the DLQ refused for
    /// good (the processor halts).
    fn settle_dlq(
        &mut self,
        result: Result<(), DlqError>,
        undelivered: &mut Vec<(SourceRecord, Rejection)>,
    ) -> Option<bool> {
        match result {
            Ok(()) => {
                for (_, why) in undelivered.drain(..) {
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[why.code])
                        .inc();
                    self.metrics.error(if why.code == STORAGE_REJECTED {
                        Phase::Db
                    } else {
                        Phase::Decode
                    });
                }
                Some(true)
            }
            Err(error) if error.is_permanent() => {
                self.metrics.error(Phase::Dlq);
                self.halt(CHECK_DLQ, ProcessorError::DlqRefused(error));
                None
            }
            Err(error) => {
                self.metrics.error(Phase::Dlq);
                tracing::warn!(%error, "dead-lettering failed; retrying the batch");
                Some(false)
            }
        }
    }

    /// Accounts for a Postgres attempt: a stored batch hands what storage refused to the
    /// DLQ; an outage fails readiness until a write succeeds.
    fn settle_db(
        &mut self,
        result: Result<Option<Isolated>, StoreError>,
        batch: &Batch,
        state: &mut Durability,
        retry_in: Duration,
    ) {
        match result {
            Ok(Some(isolated)) => {
                let refused = self.set_aside_refused(batch, &mut state.decoded, isolated.refused);
                state.undelivered.extend(refused);
                state.stored = Some(isolated.applied);
                self.readiness.set(CHECK_POSTGRES, true);
            }
            Ok(None) => {}
            Err(error) => {
                self.metrics.error(Phase::Db);
                self.readiness.set(CHECK_POSTGRES, false);
                tracing::warn!(%error, ?retry_in, "batch not durable; retrying");
            }
        }
    }

    /// The metrics of a durable batch and what it hands on: its offsets, and the newest
    /// update per market that Postgres now holds (the cache's candidates).
    fn account(
        &self,
        batch: Batch,
        decoded: Decoded,
        applied: Applied,
        started: Instant,
    ) -> DurableBatch {
        self.record_applied(&decoded.updates, &applied);
        let newest = newest_per_market(&decoded.updates);
        let candidates = newest.len();
        let current = newest
            .into_iter()
            .filter(|u| applied.is_current(u))
            .cloned()
            .collect::<Vec<_>>();
        self.metrics
            .stale_skipped
            .inc_by((candidates - current.len()) as u64);
        DurableBatch {
            next_offsets: batch.next_offsets(),
            read_in: 0,
            current,
            applied,
            records: batch.len(),
            dead_lettered: decoded.rejected.len(),
            started,
            trace: None,
        }
    }

    /// Moves the updates storage refused out of `decoded` (so nothing downstream treats them
    /// as stored) and returns their records with the database's reason, for the DLQ.
    fn set_aside_refused(
        &self,
        batch: &Batch,
        decoded: &mut Decoded,
        refused: Vec<(usize, String)>,
    ) -> Vec<(SourceRecord, Rejection)> {
        let mut dead = Vec::with_capacity(refused.len());
        let mut drop = vec![false; decoded.updates.len()];
        for (index, message) in refused {
            let update = &decoded.updates[index];
            tracing::error!(
                event_id = %update.event_id,
                version = update.version,
                %message,
                "Postgres refused an update for good; dead-lettering it"
            );
            drop[index] = true;
            let record = batch.records[decoded.sources[index]].clone();
            let rejection = Rejection {
                code: STORAGE_REJECTED,
                detail: message,
            };
            decoded.rejected.push((record.clone(), rejection.clone()));
            dead.push((record, rejection));
        }
        let mut keep = drop.iter().map(|d| !d);
        decoded.updates.retain(|_| keep.next().unwrap_or(true));
        let mut keep = drop.iter().map(|d| !d);
        decoded.sources.retain(|_| keep.next().unwrap_or(true));
        dead
    }

    fn record_applied(&self, updates: &[OddsUpdate], applied: &Applied) {
        if !updates.is_empty() {
            self.metrics.db_writes.inc();
        }
        self.record_regressions(updates, applied);
        self.metrics
            .db_rows
            .with_label_values(&["odds_history"])
            .inc_by(applied.history_inserted);
        self.metrics
            .db_rows
            .with_label_values(&["odds_current"])
            .inc_by(applied.current_advanced);
        let now = chrono::Utc::now();
        for update in updates {
            let age = (now - update.updated_at).num_microseconds().unwrap_or(0);
            self.metrics
                .update_age_seconds
                .observe(age.max(0) as f64 / 1e6);
        }
    }

    /// Counts (and logs) each update not newer than what its market had: the version stored
    /// before the batch, or an earlier record of the batch, whichever is newer.
    fn record_regressions(&self, updates: &[OddsUpdate], applied: &Applied) {
        let mut newest: HashMap<(&str, &str), u64> = HashMap::new();
        for update in updates {
            let key = (update.event_id.as_str(), update.market.as_str());
            let seen = newest.get(&key).copied().or(applied.stored_before(update));
            if let Some(seen) = seen {
                self.metrics.regressions.record(
                    &update.event_id,
                    &update.market,
                    update.version,
                    seen,
                );
            }
            let held = newest.entry(key).or_insert(update.version);
            *held = (*held).max(update.version).max(seen.unwrap_or(0));
        }
    }

    /// Pauses fetching and keeps polling for `delay` (so the group membership and rebalances
    /// stay serviced). `false` on shutdown.
    async fn wait_paused(&mut self, delay: Duration, held: &mut Batch) -> bool {
        self.set_paused(true);
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            let received = self.receive(left).await;
            self.drop_revoked(held);
            // A rebalance may have assigned new partitions: keep the whole assignment paused.
            self.set_paused(true);
            match received {
                Received::Record(record) => self.pending.push(record),
                Received::Timeout => return true,
                Received::Shutdown => return false,
            }
        }
    }

    fn set_paused(&self, paused: bool) {
        let result = self.consumer.assignment().and_then(|assignment| {
            if paused {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            }
        });
        if let Err(error) = result {
            tracing::warn!(%error, paused, "pausing/resuming the assignment failed");
        }
    }
}
