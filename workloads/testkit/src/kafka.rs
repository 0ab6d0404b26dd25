//! Kafka for tests: librdkafka's mock cluster, which speaks the real protocol over TCP.
//!
//! It supports idempotent producers, consumer groups with committed offsets, and fault
//! injection (brokers down, request errors), which is what the pipeline's delivery tests need.
//! The cluster lives as long as this value; it is not `Send`, so keep it in the test's body.

use crate::Result;
use odds_contracts::names::{TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub struct TestKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl TestKafka {
    /// A cluster of `brokers` brokers with `odds_updates` (`partitions` partitions) and
    /// `odds_updates_dlq` (one partition) created, replicated to every broker.
    pub fn start(brokers: i32, partitions: i32) -> Result<TestKafka> {
        let cluster = MockCluster::new(brokers)?;
        cluster.create_topic(TOPIC_ODDS_UPDATES, partitions, brokers)?;
        cluster.create_topic(TOPIC_ODDS_UPDATES_DLQ, 1, brokers)?;
        let bootstrap = cluster.bootstrap_servers();
        Ok(TestKafka { cluster, bootstrap })
    }

    /// The `host:port,...` list to give a client as `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A client's configuration with `bootstrap.servers` set to this cluster: each test adds
    /// what makes its producer or consumer its own.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// The mock cluster, for fault injection (`broker_down`, `request_errors`, ...).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

/// A record read back from a topic, owned.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp in milliseconds since the epoch (the producer's CreateTime):
    /// a producer's retry of a request carries its records' original timestamps.
    pub timestamp_ms: Option<i64>,
}

impl ReadRecord {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

impl TestKafka {
    /// Reads `topic` from the beginning of every partition until at least `expected` records
    /// arrived and then none for `quiet` (so extra, duplicate records are caught too), or
    /// until `timeout`. Records come in partition order, offsets rising within each.
    pub async fn read_topic(
        &self,
        topic: &str,
        expected: usize,
        quiet: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Result<Vec<ReadRecord>> {
        read_topic(&self.bootstrap, topic, expected, quiet, timeout).await
    }
}

/// [`TestKafka::read_topic`] for any bootstrap address.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    quiet: std::time::Duration,
    timeout: std::time::Duration,
) -> Result<Vec<ReadRecord>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("testkit-reader-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    loop {
        let wait = if records.len() >= expected {
            quiet
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => records.push(ReadRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                timestamp_ms: m.timestamp().to_millis(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}
