//! The infrastructure a cluster would provide: Postgres, Redis and Kafka.
//!
//! Each comes from the environment when set (`DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS`),
//! otherwise it is started here and removed on drop: a throwaway Postgres and Redis from the
//! machine's binaries, and librdkafka's mock cluster for Kafka (real protocol over TCP, so
//! kcat or any client can read the topics while the demo runs).

use anyhow::Context;
use odds_contracts::env;
use odds_contracts::names::{TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use odds_testkit::{PostgresDurability, PostgresServer, TestRedis};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Partitions of `odds_updates` on the mock cluster (demo and tests; the benchmark chooses
/// its own, see `BenchArgs::kafka_partitions`).
pub const DEMO_PARTITIONS: i32 = 6;

pub struct Infra {
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
    // Owned servers, stopped and deleted when the infra is dropped.
    postgres: Option<PostgresServer>,
    redis: Option<TestRedis>,
    kafka: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl Infra {
    /// Uses the URLs from the environment where set, starting the rest; a Postgres started
    /// here runs with `postgres` durability (a Postgres given by URL is used as it is), a
    /// hosted mock Kafka with `partitions` partitions of `odds_updates`.
    pub async fn provide(postgres: PostgresDurability, partitions: i32) -> anyhow::Result<Infra> {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());

        let (database_url, postgres) = match set(env::DATABASE_URL) {
            Some(url) => (url, None),
            None => {
                let server = PostgresServer::start_with(postgres)
                    .await
                    .context("starting a throwaway Postgres (set DATABASE_URL to use yours)")?;
                (server.admin_url(), Some(server))
            }
        };
        let (redis_url, redis) = match set(env::REDIS_URL) {
            Some(url) => (url, None),
            None => {
                let server = TestRedis::start()
                    .await
                    .context("starting a throwaway redis-server (set REDIS_URL to use yours)")?;
                (server.url(), Some(server))
            }
        };
        let (kafka_brokers, kafka) = match set(env::KAFKA_BROKERS) {
            Some(brokers) => (brokers, None),
            None => {
                let cluster = MockCluster::new(1).context("starting the Kafka mock cluster")?;
                cluster.create_topic(TOPIC_ODDS_UPDATES, partitions, 1)?;
                cluster.create_topic(TOPIC_ODDS_UPDATES_DLQ, 1, 1)?;
                (cluster.bootstrap_servers(), Some(cluster))
            }
        };
        Ok(Infra {
            database_url,
            redis_url,
            kafka_brokers,
            postgres,
            redis,
            kafka,
        })
    }

    /// The throwaway Postgres, when this infra started it (fault tests stop and start it).
    pub fn postgres_mut(&mut self) -> Option<&mut PostgresServer> {
        self.postgres.as_mut()
    }

    /// How the throwaway Postgres was started; `None` when `DATABASE_URL` named one.
    pub fn postgres_durability(&self) -> Option<PostgresDurability> {
        self.postgres.as_ref().map(PostgresServer::durability)
    }

    /// The throwaway Redis, when this infra started it.
    pub fn redis_mut(&mut self) -> Option<&mut TestRedis> {
        self.redis.as_mut()
    }

    /// The Kafka mock cluster, when this infra hosts it (fault injection).
    pub fn kafka_cluster(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.kafka.as_ref()
    }
}
