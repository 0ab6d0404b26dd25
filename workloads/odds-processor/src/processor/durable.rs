//! The durable phase of a batch: dead-letter the invalid records, write the valid ones to
//! Postgres, and keep retrying both (consumption paused, readiness false) until they succeed
//! or shutdown abandons the batch. Nothing of a batch is committed before this phase ends.

use super::{DurableBatch, Processor, Received, CHECK_POSTGRES, DB_FIRST_BACKOFF};
use crate::batch::{newest_per_event, Batch};
use crate::metrics::phase;
use crate::store::Applied;
use odds_contracts::OddsUpdate;
use rdkafka::consumer::Consumer;
use std::time::Duration;
use tokio::time::Instant;

impl Processor {
    /// Dead-letters the invalid records and writes the valid ones to Postgres, retrying with
    /// capped backoff (consumption paused, readiness false) until both succeed. `None` when
    /// shutdown came first: the batch is abandoned and its offsets stay uncommitted.
    pub async fn make_durable(&mut self, mut batch: Batch) -> Option<DurableBatch> {
        let started = Instant::now();
        let mut decoded = batch.decode();
        let mut dead_lettered = false;
        let mut backoff = DB_FIRST_BACKOFF;
        let mut paused = false;
        let applied = loop {
            if batch.len() != decoded.updates.len() + decoded.rejected.len() {
                decoded = batch.decode(); // a rebalance while waiting took records away
            }
            let dlq = async {
                if dead_lettered || decoded.rejected.is_empty() {
                    return Ok(());
                }
                self.dlq.send_all(&decoded.rejected).await
            };
            let (dlq_result, db_result) =
                tokio::join!(dlq, self.store.apply_batch(&decoded.updates));
            match &dlq_result {
                Ok(()) if !dead_lettered => {
                    dead_lettered = true;
                    for (_, why) in &decoded.rejected {
                        self.metrics
                            .dead_lettered
                            .with_label_values(&[why.code])
                            .inc();
                        self.metrics.error(phase::DECODE);
                    }
                }
                Ok(()) => {}
                Err(error) => {
                    self.metrics.error(phase::DLQ);
                    tracing::warn!(%error, "dead-lettering failed; retrying the batch");
                }
            }
            match db_result {
                Ok(applied) if dlq_result.is_ok() => break applied,
                Ok(_) => {}
                Err(error) => {
                    self.metrics.error(phase::DB);
                    self.readiness.set(CHECK_POSTGRES, false);
                    tracing::warn!(%error, retry_in = ?backoff, "batch not durable; retrying");
                }
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
        self.record_applied(&decoded.updates, &applied);
        let current = newest_per_event(&decoded.updates)
            .into_iter()
            .filter(|u| applied.current_events.contains(&u.event_id))
            .cloned()
            .collect::<Vec<_>>();
        self.metrics
            .stale_skipped
            .inc_by((newest_per_event(&decoded.updates).len() - current.len()) as u64);
        Some(DurableBatch {
            next_offsets: batch.next_offsets(),
            current,
            applied,
            records: batch.len(),
            dead_lettered: decoded.rejected.len(),
            started,
        })
    }

    fn record_applied(&self, updates: &[OddsUpdate], applied: &Applied) {
        if !updates.is_empty() {
            self.metrics.db_writes.inc();
        }
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
