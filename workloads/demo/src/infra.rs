//! The infrastructure a cluster would provide: Postgres, Redis and Kafka.
//!
//! Each comes from the environment when set (`DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS`),
//! otherwise it is started here and removed on drop: a throwaway Postgres and Redis from the
//! machine's binaries, and librdkafka's mock cluster for Kafka (real protocol over TCP, so
//! kcat or any client can read the topics while the demo runs), or, when asked for, a fresh
//! Tansu broker ([`crate::broker`]) for the benchmark.

use crate::broker::TansuBroker;
use anyhow::Context;
use odds_contracts::env;
use odds_contracts::names::{TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use odds_testkit::{PostgresDurability, PostgresServer, TestRedis};
use rdkafka::client::Client;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use std::path::{Path, PathBuf};

/// Partitions of `odds_updates` on the mock cluster (demo and tests; the benchmark chooses
/// its own, see `BenchArgs::kafka_partitions`).
pub const DEMO_PARTITIONS: i32 = 6;

/// The hosted broker's consumer-group heartbeat interval (KIP-848 protocol; on a real broker
/// `group.consumer.heartbeat.interval.ms`). A partition that changes owner waits for the old
/// owner's next heartbeat (it is told to release it) and then the new owner's (it is given
/// it): two intervals bound how long a rollout or a scale step holds a partition still.
pub const GROUP_HEARTBEAT_MS: i32 = 250;
/// The hosted broker's consumer-group session timeout (`group.consumer.session.timeout.ms`):
/// how long the partitions of a processor that died without leaving (SIGKILL, a node lost)
/// wait before another member takes them. Above the 2 s of the fault run's Kafka outage, so
/// living members are not fenced by it; 14 heartbeats at the interval above.
pub const GROUP_SESSION_TIMEOUT_MS: i32 = 3500;

pub struct Infra {
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
    // Owned servers, stopped and deleted when the infra is dropped.
    postgres: Option<PostgresServer>,
    redis: Option<TestRedis>,
    /// The client that owns the hosted mock cluster (created with `test.mock.num.brokers`,
    /// which is what gives access to the broker's group settings).
    kafka: Option<BaseProducer>,
    /// The Tansu broker started here, when [`KafkaChoice::Tansu`] asked for one.
    broker: Option<TansuBroker>,
}

/// Where Kafka comes from when `KAFKA_BROKERS` is not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KafkaChoice {
    /// librdkafka's mock cluster, hosted in this process.
    #[default]
    HostedMock,
    /// A fresh Tansu broker started from this binary (memory storage), topics created up
    /// front; it takes precedence over `KAFKA_BROKERS`.
    Tansu(PathBuf),
}

impl Infra {
    /// Uses the URLs from the environment where set, starting the rest; a Postgres started
    /// here runs with `postgres` durability (a Postgres given by URL is used as it is), a
    /// Kafka started here (`kafka`) with `partitions` partitions of `odds_updates`. A broker
    /// started here logs into `log_dir`.
    pub async fn provide(
        postgres: PostgresDurability,
        kafka: &KafkaChoice,
        partitions: i32,
        log_dir: &Path,
    ) -> anyhow::Result<Infra> {
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
        let broker = match kafka {
            KafkaChoice::Tansu(binary) => {
                Some(TansuBroker::start(binary, partitions, log_dir).await?)
            }
            KafkaChoice::HostedMock => None,
        };
        let given = broker
            .as_ref()
            .map(|b| b.bootstrap.clone())
            .or_else(|| set(env::KAFKA_BROKERS));
        let (kafka_brokers, kafka) = match given {
            Some(brokers) => (brokers, None),
            None => {
                let owner: BaseProducer = ClientConfig::new()
                    .set("test.mock.num.brokers", "1")
                    .create()
                    .context("starting the Kafka mock cluster")?;
                let cluster = owner
                    .client()
                    .mock_cluster()
                    .context("the Kafka mock cluster did not start")?;
                cluster.create_topic(TOPIC_ODDS_UPDATES, partitions, 1)?;
                cluster.create_topic(TOPIC_ODDS_UPDATES_DLQ, 1, 1)?;
                let bootstrap = cluster.bootstrap_servers();
                drop(cluster);
                set_consumer_group_timings(
                    owner.client(),
                    GROUP_SESSION_TIMEOUT_MS,
                    GROUP_HEARTBEAT_MS,
                )?;
                (bootstrap, Some(owner))
            }
        };
        Ok(Infra {
            database_url,
            redis_url,
            kafka_brokers,
            postgres,
            redis,
            kafka,
            broker,
        })
    }

    /// The Tansu broker started here, if any.
    pub fn broker(&self) -> Option<&TansuBroker> {
        self.broker.as_ref()
    }

    /// Stops the Tansu broker started here, if any (after the stages have drained into it).
    pub async fn stop_broker(&self) {
        if let Some(broker) = &self.broker {
            broker.stop().await;
        }
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
    pub fn kafka_cluster(&self) -> Option<MockCluster<'_, DefaultProducerContext>> {
        self.kafka.as_ref()?.client().mock_cluster()
    }
}

/// Sets the mock broker's KIP-848 consumer-group heartbeat interval and session timeout, which
/// the rdkafka crate does not expose.
#[allow(unsafe_code)]
fn set_consumer_group_timings(
    owner: &Client<DefaultProducerContext>,
    session_timeout_ms: i32,
    heartbeat_ms: i32,
) -> anyhow::Result<()> {
    // SAFETY: `native_ptr` is the live handle `owner` holds for the duration of this call; the
    // mock cluster it returns (null if none) lives as long as that handle, and both setters
    // only store an integer under the cluster's own lock.
    let set = unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.native_ptr());
        if !cluster.is_null() {
            rdkafka::bindings::rd_kafka_mock_set_group_consumer_session_timeout_ms(
                cluster,
                session_timeout_ms,
            );
            rdkafka::bindings::rd_kafka_mock_set_group_consumer_heartbeat_interval_ms(
                cluster,
                heartbeat_ms,
            );
        }
        !cluster.is_null()
    };
    anyhow::ensure!(set, "the Kafka mock cluster has no handle");
    Ok(())
}
