//! A batch of Kafka records and what it decodes to.
//!
//! Batching is where the throughput comes from (one Postgres statement and one Redis call per
//! batch instead of per update), and a batch is also the unit of offset commits: it remembers
//! the next offset of every partition it read, so the processor can commit exactly what it
//! made durable. Decoding splits it into valid updates and rejections for the DLQ.

use odds_contracts::{parse_update, OddsUpdate, RejectReason};
use odds_schema::read_models;
use std::collections::BTreeMap;
use std::ops::Range;

/// One record as read from Kafka, owned (the consumer's borrowed message can't be kept).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None` for a record without a value (a tombstone): rejected as invalid JSON.
    pub payload: Option<Vec<u8>>,
    /// The sampled trace the record belongs to (its `traceparent` header), if tracing is on.
    pub trace: Option<odds_runtime::otel::SpanContext>,
}

/// Why a record was dead-lettered: the contract's reason code and a readable detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl From<RejectReason> for Rejection {
    fn from(reason: RejectReason) -> Rejection {
        Rejection {
            code: reason.code(),
            detail: reason.to_string(),
        }
    }
}

/// A (topic, partition) pair.
pub type PartitionKey = (String, i32);

/// Records collected for one round of processing.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub records: Vec<SourceRecord>,
}

/// A batch split into what gets applied and what gets dead-lettered.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Every valid update, in the order read (all go to history).
    pub updates: Vec<OddsUpdate>,
    /// For each update, the index of its record in the batch (to dead-letter the record if
    /// storage refuses the update).
    pub sources: Vec<usize>,
    pub rejected: Vec<(SourceRecord, Rejection)>,
}

impl Decoded {
    /// Reorders the updates (and their sources alike) into `writers` contiguous groups of
    /// disjoint events and returns the groups' ranges, empty ones left out: one per Postgres
    /// writer. An event always lands in the same group, and the order read is kept within
    /// each group, so every event's updates keep their order (ties go to the first read).
    pub fn group_by_writer(&mut self, writers: usize) -> Vec<Range<usize>> {
        let writers = writers.max(1);
        let mut groups: Vec<Vec<(OddsUpdate, usize)>> = vec![Vec::new(); writers];
        let updates = std::mem::take(&mut self.updates);
        let sources = std::mem::take(&mut self.sources);
        for (update, source) in updates.into_iter().zip(sources) {
            let group = writer_of(&update.event_id, writers);
            groups[group].push((update, source));
        }
        let mut ranges = Vec::with_capacity(writers);
        for group in groups {
            let start = self.updates.len();
            for (update, source) in group {
                self.updates.push(update);
                self.sources.push(source);
            }
            if self.updates.len() > start {
                ranges.push(start..self.updates.len());
            }
        }
        ranges
    }
}

/// The writer group of an event: FNV-1a of its id, so the same on every run and replica.
fn writer_of(event_id: &str, writers: usize) -> usize {
    let hash = event_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % writers as u64) as usize
}

impl Batch {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops the records of partitions this consumer no longer owns; their new owner reads
    /// them again from the last committed offset.
    pub fn drop_partitions(&mut self, revoked: &[PartitionKey]) -> usize {
        let before = self.records.len();
        self.records.retain(|r| {
            !revoked
                .iter()
                .any(|(t, p)| *t == r.topic && *p == r.partition)
        });
        before - self.records.len()
    }

    /// The offset to commit per partition: one past the highest offset read.
    pub fn next_offsets(&self) -> BTreeMap<PartitionKey, i64> {
        let mut next = BTreeMap::new();
        for r in &self.records {
            let entry = next.entry((r.topic.clone(), r.partition)).or_insert(0);
            *entry = (*entry).max(r.offset + 1);
        }
        next
    }

    /// Decodes and validates every record.
    pub fn decode(&self) -> Decoded {
        let mut decoded = Decoded::default();
        for (index, record) in self.records.iter().enumerate() {
            match decode_record(record) {
                Ok(update) => {
                    decoded.updates.push(update);
                    decoded.sources.push(index);
                }
                Err(rejection) => decoded.rejected.push((record.clone(), rejection)),
            }
        }
        decoded
    }
}

/// One record's update, or why it is not one (the contract's decision, as at ingest).
pub fn decode_record(record: &SourceRecord) -> Result<OddsUpdate, Rejection> {
    let payload = record.payload.as_deref().unwrap_or_default();
    parse_update(payload).map_err(Rejection::from)
}

/// The newest update of each (event, market) in `updates`, ordered by that key (a stable
/// order keeps row locks in Postgres and keys in Redis in the same order for every batch).
/// Ties go to the first read, as in Postgres and Redis (the batch statement marks the same
/// updates: [`read_models::newest_indices`]).
pub fn newest_per_market(updates: &[OddsUpdate]) -> Vec<&OddsUpdate> {
    read_models::newest_indices(updates)
        .into_iter()
        .map(|index| &updates[index])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn update(id: &str, version: u64) -> OddsUpdate {
        odds_testkit::sample_update(id, version)
    }

    fn record(partition: i32, offset: i64, payload: &[u8]) -> SourceRecord {
        SourceRecord {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            payload: Some(payload.to_vec()),
            trace: None,
        }
    }

    #[test]
    fn newest_wins_per_event_and_market_in_key_order() {
        let half_time = |id, version| odds_testkit::sample_update_in(id, "HT_1X2", version);
        let updates = vec![
            update("B", 5),
            half_time("B", 6),
            update("A", 1),
            update("B", 3),
            update("B", 7),
            half_time("B", 2),
        ];
        let newest = newest_per_market(&updates);
        let got: Vec<(&str, &str, u64)> = newest
            .iter()
            .map(|u| (u.event_id.as_str(), u.market.as_str(), u.version))
            .collect();
        assert_eq!(
            got,
            vec![("A", "1X2", 1), ("B", "1X2", 7), ("B", "HT_1X2", 6)]
        );
    }

    #[test]
    fn writer_groups_hold_disjoint_events_each_in_the_order_read() {
        let events = ["A", "B", "C", "D", "E", "F", "G"];
        let mut decoded = Decoded::default();
        for round in 0..3_u64 {
            for event in events {
                decoded.updates.push(update(event, 10 - round));
                decoded.sources.push(decoded.sources.len());
            }
        }
        let before: Vec<(String, u64, usize)> = decoded
            .updates
            .iter()
            .zip(&decoded.sources)
            .map(|(u, s)| (u.event_id.clone(), u.version, *s))
            .collect();
        let ranges = decoded.group_by_writer(3);
        assert!(ranges.len() > 1, "seven events should spread over writers");
        // The ranges tile the updates, and each source still points at its own update.
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(decoded.updates.len()));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        for (update, source) in decoded.updates.iter().zip(&decoded.sources) {
            assert_eq!(before[*source].0, update.event_id);
            assert_eq!(before[*source].1, update.version);
        }
        // No event in two groups; within an event, the order read (falling versions here).
        let mut owner = HashMap::new();
        for (group, range) in ranges.iter().enumerate() {
            for update in &decoded.updates[range.clone()] {
                assert_eq!(
                    *owner.entry(update.event_id.clone()).or_insert(group),
                    group
                );
            }
        }
        for event in events {
            let versions: Vec<u64> = decoded
                .updates
                .iter()
                .filter(|u| u.event_id == event)
                .map(|u| u.version)
                .collect();
            assert_eq!(versions, vec![10, 9, 8]);
        }
    }

    #[test]
    fn one_writer_keeps_the_batch_as_read() {
        let mut decoded = Decoded {
            updates: vec![update("B", 2), update("A", 1)],
            sources: vec![0, 1],
            rejected: Vec::new(),
        };
        assert_eq!(decoded.group_by_writer(1), vec![0..2]);
        assert_eq!(decoded.updates[0].event_id, "B");
        assert!(Decoded::default().group_by_writer(4).is_empty());
    }

    #[test]
    fn next_offsets_are_one_past_the_highest_per_partition() {
        let batch = Batch {
            records: vec![record(0, 5, b""), record(1, 2, b""), record(0, 9, b"")],
        };
        let next = batch.next_offsets();
        assert_eq!(next.get(&("t".to_owned(), 0)), Some(&10));
        assert_eq!(next.get(&("t".to_owned(), 1)), Some(&3));
    }

    #[test]
    fn revoked_partitions_leave_the_batch() {
        let mut batch = Batch {
            records: vec![record(0, 5, b""), record(1, 2, b""), record(0, 9, b"")],
        };
        assert_eq!(batch.drop_partitions(&[("t".to_owned(), 0)]), 2);
        assert_eq!(batch.records, vec![record(1, 2, b"")]);
    }

    #[test]
    fn decode_splits_valid_and_rejected_with_reasons() {
        let good = update("A", 1).to_json();
        let mut huge = update("A", 1);
        huge.version = u64::MAX;
        let batch = Batch {
            records: vec![
                record(0, 0, good.as_bytes()),
                record(0, 1, b"not json"),
                SourceRecord {
                    payload: None,
                    ..record(0, 2, b"")
                },
                record(0, 3, huge.to_json().as_bytes()),
                record(0, 4, update("", 1).to_json().as_bytes()),
            ],
        };
        let decoded = batch.decode();
        assert_eq!(decoded.updates.len(), 1);
        let codes: Vec<(i64, &str)> = decoded
            .rejected
            .iter()
            .map(|(r, why)| (r.offset, why.code))
            .collect();
        assert_eq!(
            codes,
            vec![
                (1, "invalid_json"),
                (2, "invalid_json"),
                (3, "invalid_update"),
                (4, "invalid_update")
            ]
        );
        assert!(decoded.rejected[2].1.detail.contains("version"));
        assert!(decoded.rejected[3].1.detail.contains("event_id"));
    }
}
