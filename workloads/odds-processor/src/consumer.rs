//! The Kafka consumer: group membership, manual offset commits, rebalance handling, lag.
//!
//! Auto-commit is off. The processor records, per partition, the offset up to which records
//! are durable ([`CommitLedger`]) and commits it after every batch. When partitions are
//! revoked (rebalance or shutdown), the context commits what is durable for them, forgets
//! them (committing a stale offset later would move the group backwards), and tells the
//! processor so no batch spans a partition it no longer owns.
//!
//! The lag gauge (`odds_proc_consumer_lag{topic,partition}`) holds series only for the
//! partitions this consumer owns: a revoke removes the series of the partitions it lost (the
//! new owner reports them), and statistics only set the owned ones, so a `max by (partition)`
//! over every processor never reads a value frozen at the moment of a rebalance.

use crate::batch::PartitionKey;
use crate::brokers::BrokerHealth;
use crate::metrics::Metrics;
use odds_runtime::Readiness;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub type ProcessorConsumer = rdkafka::consumer::StreamConsumer<ProcessorContext>;

/// The processor's group consumer. Dropping it leaves the group within [`CLOSE_DEADLINE`]
/// (see [`close`]), however the processor ends: after its run, or dropped by a test.
pub struct GroupConsumer(Option<ProcessorConsumer>);

impl std::ops::Deref for GroupConsumer {
    type Target = ProcessorConsumer;

    // `None` only inside `drop`, after which nothing can reach it.
    #[allow(clippy::expect_used)]
    fn deref(&self) -> &ProcessorConsumer {
        self.0
            .as_ref()
            .expect("the consumer is taken only when dropped")
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        let metrics = consumer.context().metrics.clone();
        if !close(consumer, CLOSE_DEADLINE) {
            metrics.error(crate::metrics::Phase::Consume);
            tracing::error!(
                deadline = ?CLOSE_DEADLINE,
                "leaving the consumer group did not finish in time; going on without it (the \
                 broker expires the membership; durable offsets were committed before)"
            );
        }
    }
}

/// Offsets made durable (next offset to read per partition) and partitions revoked since the
/// processor last looked; shared between the processor and the rebalance callbacks.
#[derive(Clone, Default, Debug)]
pub struct CommitLedger {
    durable: Arc<Mutex<BTreeMap<PartitionKey, i64>>>,
    revoked: Arc<Mutex<Vec<PartitionKey>>>,
    revocations: Arc<Mutex<Revocations>>,
}

/// How many revokes this consumer has seen, and the count at each partition's latest one.
#[derive(Default, Debug)]
struct Revocations {
    count: u64,
    latest: BTreeMap<PartitionKey, u64>,
}

impl CommitLedger {
    /// Records offsets whose records are durable (only ever moves forward). `read_in` is
    /// [`CommitLedger::revocations`] as it was when the records were read: a partition
    /// revoked since then is skipped. Its revoke already committed what was durable then and
    /// forgot it; an offset recorded now would be committed later over whatever its new
    /// owner committed, moving the group backwards (the records are durable either way, and
    /// the new owner reads them again from the committed offset).
    pub fn mark_durable(&self, offsets: &BTreeMap<PartitionKey, i64>, read_in: u64) {
        let revocations = self
            .revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        for (partition, offset) in offsets {
            if revocations
                .latest
                .get(partition)
                .is_some_and(|revoked| *revoked > read_in)
            {
                continue;
            }
            let entry = durable.entry(partition.clone()).or_insert(*offset);
            *entry = (*entry).max(*offset);
        }
    }

    /// How many revokes this consumer has seen: taken when a batch's records are read, and
    /// given back to [`CommitLedger::mark_durable`] with its offsets.
    pub fn revocations(&self) -> u64 {
        self.revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count
    }

    /// The durable offsets as a commit list (empty when nothing is recorded).
    pub fn durable_list(&self) -> KafkaResult<TopicPartitionList> {
        let durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        to_list(durable.iter())
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<PartitionKey> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Removes and returns the durable offsets of `partitions`, remembering them as revoked.
    fn revoke(&self, partitions: &[PartitionKey]) -> KafkaResult<TopicPartitionList> {
        // Taken before `durable`, as in `mark_durable`: a batch marked durable concurrently
        // is either recorded before this revoke commits and forgets it, or skipped.
        let mut revocations = self
            .revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        revocations.count += 1;
        let count = revocations.count;
        revocations
            .latest
            .extend(partitions.iter().map(|p| (p.clone(), count)));
        let mut durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        let mut to_commit = BTreeMap::new();
        for p in partitions {
            if let Some(offset) = durable.remove(p) {
                to_commit.insert(p.clone(), offset);
            }
        }
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(partitions.iter().cloned());
        to_list(to_commit.iter())
    }
}

fn to_list<'a>(
    offsets: impl Iterator<Item = (&'a PartitionKey, &'a i64)>,
) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(list)
}

/// Callbacks librdkafka runs inside `poll`: rebalances, statistics and errors.
pub struct ProcessorContext {
    ledger: CommitLedger,
    metrics: Metrics,
    brokers: BrokerHealth,
    /// The partitions assigned to this consumer: the only ones whose lag it reports.
    owned: Mutex<BTreeSet<PartitionKey>>,
}

impl ProcessorContext {
    /// The context of a consumer whose broker reachability sets `readiness`' `kafka` check.
    pub fn new(ledger: CommitLedger, metrics: Metrics, readiness: Readiness) -> Self {
        ProcessorContext {
            ledger,
            metrics,
            brokers: BrokerHealth::new(readiness),
            owned: Mutex::new(BTreeSet::new()),
        }
    }

    /// Whether any broker is reachable, as librdkafka reports it.
    pub fn brokers(&self) -> &BrokerHealth {
        &self.brokers
    }

    /// Records newly assigned partitions (the whole assignment under the eager protocol,
    /// the added ones under the cooperative one): their lag is reported from the next
    /// statistics on.
    fn own(&self, partitions: &[PartitionKey]) {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        owned.extend(partitions.iter().cloned());
    }

    /// Forgets partitions this consumer lost and removes their lag series: another member
    /// reports them now, and a value frozen at the revoke would be read as theirs.
    fn disown(&self, partitions: &[PartitionKey]) {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        for key in partitions {
            owned.remove(key);
            let (topic, partition) = key;
            // Absent when no statistics reported it yet: nothing to remove.
            let _ = self
                .metrics
                .consumer_lag
                .remove_label_values(&[topic.as_str(), &partition.to_string()]);
        }
    }

    /// Every partition this consumer owns.
    fn owned(&self) -> Vec<PartitionKey> {
        let owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        owned.iter().cloned().collect()
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<PartitionKey> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for ProcessorContext {
    /// librdkafka's own log, as rdkafka logs it (through `tracing`), except one message: a
    /// consumer position that fell out of the log is reset to the earliest retained record
    /// with only a warning from librdkafka, and the records in between are never read: that
    /// is data loss, so it is counted and logged as an error.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if is_skipping_offset_reset(level, fac, message) {
            self.metrics.offset_resets.inc();
            self.metrics.error(crate::metrics::Phase::Consume);
            tracing::error!(
                target: "librdkafka",
                librdkafka = message,
                "the consumer's position fell out of the log (retention passed it); \
                 the records between were skipped"
            );
            return;
        }
        DefaultClientContext.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.brokers.all_down(reason);
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
        let owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                // -1 is the internal "unassigned" partition; a negative lag means unknown.
                // Statistics also list partitions this consumer no longer (or never) owned,
                // with the offsets it last knew: not its lag to report.
                let key = (topic_name.clone(), *partition);
                if *partition >= 0 && stats.consumer_lag >= 0 && owned.contains(&key) {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic_name.as_str(), &partition.to_string()])
                        .set(stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions = partitions_of(list);
                tracing::info!(?partitions, "partitions revoked");
                self.disown(&partitions);
                match self.ledger.revoke(&partitions) {
                    Ok(commit) if commit.count() > 0 => {
                        if let Err(error) = consumer.commit(&commit, CommitMode::Sync) {
                            self.metrics.error(crate::metrics::Phase::Commit);
                            tracing::warn!(%error, "commit on revoke failed; records will be redelivered");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "building the revoke commit list"),
                }
            }
            Rebalance::Assign(list) => {
                tracing::info!(partitions = list.count(), "partitions assigned");
                self.own(&partitions_of(list));
            }
            Rebalance::Error(error) => {
                self.metrics.error(crate::metrics::Phase::Consume);
                tracing::warn!(%error, "rebalance error");
                // rdkafka then drops the assignment (under the eager protocol, the
                // processor's); the group's next assign says what this consumer owns.
                let lost = self.owned();
                self.disown(&lost);
            }
        }
    }
}

/// librdkafka logs an offset reset caused by an error (such as "Offset out of range") as a
/// warning of facility `OFFSET`; resets that lose nothing (no committed offset yet) are debug.
fn is_skipping_offset_reset(level: RDKafkaLogLevel, fac: &str, message: &str) -> bool {
    matches!(
        level,
        RDKafkaLogLevel::Warning | RDKafkaLogLevel::Error | RDKafkaLogLevel::Critical
    ) && fac == "OFFSET"
        && message.contains("offset reset")
}

/// Creates the group consumer and subscribes it to `topic`.
pub fn subscribe(
    topic: &str,
    props: &[(String, String)],
    context: ProcessorContext,
) -> KafkaResult<GroupConsumer> {
    let mut config = ClientConfig::new();
    for (name, value) in props {
        config.set(name, value);
    }
    // rdkafka derives librdkafka's log level from the log filter in force when the client is
    // made (only errors without a subscriber, as in tests, or under RUST_LOG=error), but the
    // offset reset that skips records is a warning that feeds a metric: it must always reach
    // [`ProcessorContext::log`].
    config.set_log_level(RDKafkaLogLevel::Warning);
    let consumer: ProcessorConsumer = config.create_with_context(context)?;
    consumer.subscribe(&[topic])?;
    Ok(GroupConsumer(Some(consumer)))
}

/// How long leaving the group may take at shutdown before the stage gives up waiting.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Leaves the group (librdkafka's close: revoke, rebalance callback, leave) on a thread of its
/// own and waits for it at most `deadline`; whether it finished in time.
///
/// Dropping a consumer runs librdkafka's close, which waits without a timeout for answers
/// from librdkafka's own threads, and one was seen never to come (the close-time rebalance's
/// assign, against the mock cluster). A stage must still exit when told to: its offsets are
/// committed before this, and the broker expires a member that never said goodbye. A close
/// given up on is the caller's to report; its thread is left to finish or die with the
/// process.
pub fn close<C: ConsumerContext + 'static>(
    consumer: rdkafka::consumer::StreamConsumer<C>,
    deadline: Duration,
) -> bool {
    let (closed, done) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            // The caller may have stopped waiting: nobody to tell then.
            let _ = closed.send(());
        });
    // Without a thread (the closure and the consumer in it are gone): nothing to wait for.
    spawned.is_err() || done.recv_timeout(deadline).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        ("odds_updates".to_owned(), partition)
    }

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<PartitionKey, i64> {
        pairs.iter().map(|(p, o)| (key(*p), *o)).collect()
    }

    fn committed(ledger: &CommitLedger) -> Vec<(i32, i64)> {
        let list = ledger.durable_list().unwrap();
        list.elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
            .collect()
    }

    #[test]
    fn durable_offsets_only_move_forward() {
        let ledger = CommitLedger::default();
        ledger.mark_durable(&offsets(&[(0, 10), (1, 4)]), ledger.revocations());
        ledger.mark_durable(&offsets(&[(0, 7)]), ledger.revocations());
        assert_eq!(committed(&ledger), vec![(0, 10), (1, 4)]);
    }

    #[test]
    fn a_batch_read_before_a_revoke_does_not_commit_the_revoked_partition() {
        let ledger = CommitLedger::default();
        ledger.mark_durable(&offsets(&[(0, 5), (1, 5)]), ledger.revocations());
        // Batch N is read, then partition 0 is revoked while N is still being written or
        // published: the revoke commits offset 5 of partition 0 and forgets it.
        let read_in = ledger.revocations();
        let on_revoke = ledger.revoke(&[key(0)]).unwrap();
        assert_eq!(on_revoke.elements()[0].offset().to_raw(), Some(5));
        ledger.mark_durable(&offsets(&[(0, 9), (1, 9)]), read_in);
        // Partition 0's offset would overwrite its new owner's: only partition 1 advances.
        assert_eq!(committed(&ledger), vec![(1, 9)]);
    }

    #[test]
    fn a_partition_assigned_again_before_the_read_is_committed_as_usual() {
        let ledger = CommitLedger::default();
        ledger.revoke(&[key(0)]).unwrap();
        // Reassigned; this batch's records were read after the revoke.
        let read_in = ledger.revocations();
        ledger.mark_durable(&offsets(&[(0, 12)]), read_in);
        assert_eq!(committed(&ledger), vec![(0, 12)]);
        // A later revoke of another partition does not hold back partition 0.
        let read_in = ledger.revocations();
        ledger.revoke(&[key(1)]).unwrap();
        ledger.mark_durable(&offsets(&[(0, 20)]), read_in);
        assert_eq!(committed(&ledger), vec![(0, 20)]);
    }

    /// What librdkafka 2.12 logs when a fetch finds its offset gone (rdkafka_offset.c).
    const OUT_OF_RANGE: &str = "odds_updates [0]: offset reset (at offset 120 (leader epoch \
        -1), broker 1) to offset BEGINNING (leader epoch -1): fetch failed due to requested \
        offset not available on the broker: Broker: Offset out of range";

    #[test]
    fn an_offset_reset_that_skips_records_is_counted_as_a_consume_error() {
        let metrics = Metrics::unregistered().unwrap();
        let context = ProcessorContext::new(
            CommitLedger::default(),
            metrics.clone(),
            Readiness::default(),
        );
        context.log(RDKafkaLogLevel::Warning, "OFFSET", OUT_OF_RANGE);
        assert_eq!(metrics.offset_resets.get(), 1);
        assert_eq!(metrics.errors.with_label_values(&["consume"]).get(), 1);
        // The first assignment's reset (no committed offset) loses nothing: librdkafka logs
        // it at debug level. Other warnings are only logged.
        context.log(RDKafkaLogLevel::Debug, "OFFSET", OUT_OF_RANGE);
        context.log(RDKafkaLogLevel::Warning, "FAIL", "broker down");
        assert_eq!(metrics.offset_resets.get(), 1);
        assert_eq!(metrics.errors.with_label_values(&["consume"]).get(), 1);
    }
}
