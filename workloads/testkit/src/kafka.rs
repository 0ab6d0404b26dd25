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

    /// The mock cluster, for fault injection (`broker_down`, `request_errors`, ...).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
