//! What the fault run does to the pipeline: the operations Kubernetes performs, done as the
//! kubelet does them (the new process started and ready first, then SIGTERM to the old one,
//! SIGKILL after the grace period), and the faults a live system meets.

use super::clients::Endpoints;
use odds_contracts::names::TOPIC_ODDS_UPDATES;
use odds_demo::Launcher;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(2);
/// What a DBA's constraint refuses: the `source` of the storage-rejected record.
const REFUSED_SOURCE: &str = "refused-by-dba";

/// The freeze a fault may cause, from the targets (medians of the runs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Rolling restarts and scale steps.
    Planned,
    ProcessorKill,
    BadRecord,
    /// Counted from the moment the brokers are back.
    BrokersBack,
    /// Measured and reported only.
    Reported,
}

impl Target {
    pub fn limit(self) -> Option<Duration> {
        match self {
            Target::Planned => Some(Duration::from_secs(1)),
            Target::ProcessorKill => Some(Duration::from_secs(5)),
            Target::BadRecord => Some(Duration::from_millis(500)),
            Target::BrokersBack => Some(Duration::from_secs(2)),
            Target::Reported => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Operation {
    RollIngest,
    RollProcessor,
    RollService,
    ScaleProcessorUp,
    ScaleProcessorDown,
    RestartSupplier,
    KillProcessorMidBatch,
    RedisOutage,
    PostgresOutage,
    KafkaOutage,
    PoisonAndNul,
    StorageRejected,
}

impl Operation {
    /// In the order the run performs them: Kubernetes' operations, then the faults.
    pub const ALL: [Operation; 12] = [
        Operation::RollIngest,
        Operation::RollProcessor,
        Operation::RollService,
        Operation::ScaleProcessorUp,
        Operation::ScaleProcessorDown,
        Operation::RestartSupplier,
        Operation::KillProcessorMidBatch,
        Operation::RedisOutage,
        Operation::PostgresOutage,
        Operation::KafkaOutage,
        Operation::PoisonAndNul,
        Operation::StorageRejected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::RollIngest => "rolling restart of odds-ingest",
            Operation::RollProcessor => "rolling restart of odds-processor",
            Operation::RollService => "rolling restart of odds-service (clients move replica)",
            Operation::ScaleProcessorUp => "odds-processor scaled 1 → 3",
            Operation::ScaleProcessorDown => "odds-processor scaled 3 → 1",
            Operation::RestartSupplier => "supplier restarted",
            Operation::KillProcessorMidBatch => "odds-processor SIGKILL mid-batch, restarted",
            Operation::RedisOutage => "Redis stopped 2 s (data lost), from restart",
            Operation::PostgresOutage => "Postgres stopped 2 s (immediate), from restart",
            Operation::KafkaOutage => "every Kafka broker down 2 s, from brokers back",
            Operation::PoisonAndNul => "a poison record and a NUL record",
            Operation::StorageRejected => "a record storage refuses (DBA constraint)",
        }
    }

    pub fn target(self) -> Target {
        match self {
            Operation::RollIngest
            | Operation::RollProcessor
            | Operation::RollService
            | Operation::ScaleProcessorUp
            | Operation::ScaleProcessorDown => Target::Planned,
            Operation::KillProcessorMidBatch => Target::ProcessorKill,
            Operation::PoisonAndNul | Operation::StorageRejected => Target::BadRecord,
            Operation::KafkaOutage => Target::BrokersBack,
            Operation::RestartSupplier | Operation::RedisOutage | Operation::PostgresOutage => {
                Target::Reported
            }
        }
    }

    /// Performs the operation; returns the moment from which its freeze is counted (its
    /// start, or for an outage the moment the dependency is back).
    pub async fn perform(
        self,
        launcher: &mut Launcher,
        endpoints: &Endpoints,
        pool: &PgPool,
    ) -> Instant {
        let started = Instant::now();
        match self {
            Operation::RollIngest => drop(launcher.roll("odds-ingest").await.unwrap()),
            Operation::RollProcessor => drop(launcher.roll("odds-processor").await.unwrap()),
            Operation::RollService => roll_service(launcher, endpoints).await,
            Operation::ScaleProcessorUp => {
                for _ in 0..2 {
                    launcher.start_replica("odds-processor").await.unwrap();
                }
            }
            Operation::ScaleProcessorDown => {
                // A ReplicaSet scaling down removes its newest pods first.
                let newest: Vec<u32> = launcher
                    .replicas("odds-processor")
                    .iter()
                    .skip(1)
                    .map(|c| c.pid)
                    .collect();
                for pid in newest {
                    launcher.stop_replica(pid).await.unwrap();
                }
            }
            Operation::RestartSupplier => launcher.restart("supplier-simulator").await.unwrap(),
            Operation::KillProcessorMidBatch => kill_processor_mid_batch(launcher, pool).await,
            Operation::RedisOutage => {
                let redis = launcher
                    .infra
                    .redis_mut()
                    .expect("the fault run starts its own Redis (unset REDIS_URL)");
                redis.stop();
                tokio::time::sleep(OUTAGE).await;
                redis.start_again().await.unwrap();
                return Instant::now();
            }
            Operation::PostgresOutage => {
                let postgres = launcher
                    .infra
                    .postgres_mut()
                    .expect("the fault run starts its own Postgres (unset DATABASE_URL)");
                postgres.stop().unwrap();
                tokio::time::sleep(OUTAGE).await;
                postgres.start_again().await.unwrap();
                return Instant::now();
            }
            Operation::KafkaOutage => {
                let kafka = launcher
                    .infra
                    .kafka_cluster()
                    .expect("the fault run hosts the Kafka mock cluster (unset KAFKA_BROKERS)");
                kafka.broker_down(1).unwrap();
                tokio::time::sleep(OUTAGE).await;
                kafka.broker_up(1).unwrap();
                return Instant::now();
            }
            Operation::PoisonAndNul => {
                let mut nul = odds_testkit::sample_update("MATCH_001", u64::MAX >> 12);
                nul.home_team = "Nul\u{0}City".into();
                let records = [
                    ("POISON", b"{not json".to_vec()),
                    ("MATCH_001", nul.to_json().into_bytes()),
                ];
                produce(&launcher.infra.kafka_brokers, &records).await;
            }
            Operation::StorageRejected => {
                // Valid, and older than what Postgres holds (so nothing current would change
                // were it stored), on a followed event's partition: a processor that stalled
                // on it would freeze MATCH_002.
                let mut refused = odds_testkit::sample_update("MATCH_002", 1);
                refused.source = REFUSED_SOURCE.into();
                let records = [("MATCH_002", refused.to_json().into_bytes())];
                produce(&launcher.infra.kafka_brokers, &records).await;
            }
        }
        started
    }
}

/// What a DBA might add: a constraint the contract does not know, refusing one `source`.
pub async fn add_refusing_constraint(pool: &PgPool) {
    sqlx::query(&format!(
        "ALTER TABLE odds_history ADD CONSTRAINT chaos_refused_by_dba \
         CHECK (source <> '{REFUSED_SOURCE}')"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// A rolling update of odds-service: the new replica serves first; the old one leaves the
/// Service's endpoints and is stopped, closing its clients' connections (they reconnect to the
/// new replica).
async fn roll_service(launcher: &mut Launcher, endpoints: &Endpoints) {
    let old = launcher.oldest("odds-service").unwrap();
    let old_addr = launcher.service_addrs()[0];
    launcher.start_replica("odds-service").await.unwrap();
    let new_addr = *launcher.service_addrs().last().unwrap();
    endpoints.add(new_addr);
    endpoints.remove(old_addr);
    launcher.stop_replica(old).await.unwrap();
}

/// SIGKILLs the processor while it holds a batch it has read but not committed, then starts a
/// new one (the kubelet restarting a crashed container).
///
/// A batch is in flight for certain when the processor's write waits on a lock: a test
/// connection holds `odds_history` in SHARE mode (readers go on; writers wait) until a writer
/// is seen waiting in `pg_locks`, and lets go once the processor is dead. The processor is not
/// touched; the wait is what a slow disk or a long transaction would cause anyway.
async fn kill_processor_mid_batch(launcher: &mut Launcher, pool: &PgPool) {
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE odds_history IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
             WHERE relation = 'odds_history'::regclass AND NOT granted",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no batch reached the write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let processor = launcher.oldest("odds-processor").unwrap();
    launcher.kill_replica(processor).await.unwrap();
    lock.rollback().await.unwrap();
    launcher.start_replica("odds-processor").await.unwrap();
}

/// Produces records straight to the topic, as a faulty upstream would.
async fn produce(brokers: &str, records: &[(&str, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (key, payload) in records {
        producer
            .send(
                FutureRecord::to(TOPIC_ODDS_UPDATES)
                    .key(*key)
                    .payload(payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
}
