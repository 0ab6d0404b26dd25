//! Shared set-up of the processor's integration tests: real Postgres, Redis and mock Kafka.

use futures_util::StreamExt;
use odds_contracts::names::{redis_current_key, REDIS_UPDATES_CHANNEL, TOPIC_ODDS_UPDATES};
use odds_contracts::{Odds, OddsUpdate};
use odds_processor::processor::{CHECK_KAFKA, CHECK_POSTGRES};
use odds_processor::{Metrics, Processor, ProcessorConfig};
use odds_runtime::cli::Millis;
use odds_runtime::Readiness;
use odds_testkit::{TestDatabase, TestKafka, TestRedis};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Generous: the machine is shared and loaded.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub async fn migrated_database() -> TestDatabase {
    let db = TestDatabase::create().await.unwrap();
    odds_schema::migrate(db.pool()).await.unwrap();
    db
}

/// A mock Kafka cluster (`brokers`, `partitions` per topic), a migrated database, a Redis
/// and a processor configuration over the three: what nearly every test starts from.
pub async fn start_stack(
    brokers: i32,
    partitions: i32,
) -> (TestKafka, TestDatabase, TestRedis, ProcessorConfig) {
    let kafka = TestKafka::start(brokers, partitions).unwrap();
    let db = migrated_database().await;
    let redis = TestRedis::start().await.unwrap();
    let config = config(&kafka, &db, &redis);
    (kafka, db, redis, config)
}

/// Asks librdkafka for statistics (where lag and broker states come from) every
/// `interval_ms` instead of every 5 s, so what they report shows soon in a test.
pub fn report_statistics_every(config: &mut ProcessorConfig, interval_ms: u32) {
    config
        .kafka
        .props
        .push(("statistics.interval.ms".into(), interval_ms.to_string()));
}

pub fn config(kafka: &TestKafka, db: &TestDatabase, redis: &TestRedis) -> ProcessorConfig {
    let mut config = ProcessorConfig::new(kafka.bootstrap_servers(), db.url(), &redis.url());
    config.kafka_group = format!("test-{}", uuid_like());
    config.batch_max = 50;
    config.db_retry_max_backoff_ms = Millis(500);
    config.redis_timeout_ms = Millis(1000);
    // A crashed member is noticed after its session timeout: keep it short in tests. The
    // classic protocol, whose timings the client sets: the test kit's mock broker keeps the
    // KIP-848 protocol's 30 s session (`make chaos` measures that protocol, with the broker
    // settings of the demo's hosted broker).
    config.kafka.props = vec![
        ("group.protocol".into(), "classic".into()),
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
    ];
    config
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

pub struct Harness {
    pub processor: Processor,
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

pub fn processor(config: &ProcessorConfig) -> Harness {
    let readiness = Readiness::new(&[CHECK_KAFKA, CHECK_POSTGRES]);
    let metrics = Metrics::unregistered().unwrap();
    let shutdown = CancellationToken::new();
    let processor =
        Processor::new(config, metrics.clone(), readiness.clone(), shutdown.clone()).unwrap();
    Harness {
        processor,
        readiness,
        metrics,
        shutdown,
    }
}

/// The test kit's sample update with teams named after the event and a home price that
/// moves with the version, so a stored row shows which write it came from.
pub fn update(event: &str, version: u64) -> OddsUpdate {
    OddsUpdate {
        home_team: format!("{event} home"),
        away_team: format!("{event} away"),
        odds: Odds {
            home: 1.5 + version as f64 / 100.0,
            draw: 3.25,
            away: 4.75,
        },
        ..odds_testkit::sample_update(event, version)
    }
}

pub fn producer(kafka: &TestKafka) -> FutureProducer {
    kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

pub async fn produce_raw(producer: &FutureProducer, key: &str, payload: Option<&[u8]>) {
    let mut record = FutureRecord::<str, [u8]>::to(TOPIC_ODDS_UPDATES).key(key);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap();
}

pub async fn produce(producer: &FutureProducer, updates: &[OddsUpdate]) {
    for u in updates {
        produce_raw(producer, &u.event_id, Some(u.to_json().as_bytes())).await;
    }
}

/// Steps the processor until `done` holds (checked after every step).
pub async fn step_until<F, Fut>(processor: &mut Processor, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if done().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        processor.step().await;
    }
}

/// Cancels a running processor and waits for `run` to return `Ok` (within [`PATIENCE`]).
pub async fn stop_cleanly(
    shutdown: &CancellationToken,
    task: tokio::task::JoinHandle<Result<(), odds_processor::ProcessorError>>,
) {
    shutdown.cancel();
    join_cleanly(task).await;
}

/// Waits for a processor's `run`, already told to stop, to return `Ok` (within [`PATIENCE`]).
pub async fn join_cleanly(
    task: tokio::task::JoinHandle<Result<(), odds_processor::ProcessorError>>,
) {
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Waits (within [`PATIENCE`]) for a child process to exit; `what` names the wait on timeout.
pub async fn wait_for_exit(
    child: &mut std::process::Child,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `done` until it holds.
pub async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per partition of odds_updates (0..`partitions`): the group's committed offset (0 when
/// none) and the high watermark, read by a client of its own, independently of the processor.
pub fn group_offsets(
    kafka: &TestKafka,
    group: &str,
    partitions: i32,
) -> std::collections::BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(TOPIC_ODDS_UPDATES, p);
    }
    let timeout = Duration::from_secs(30);
    let committed = consumer.committed_offsets(list, timeout).unwrap();
    (0..partitions)
        .map(|p| {
            let done = match committed
                .find_partition(TOPIC_ODDS_UPDATES, p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            let (_, high) = consumer
                .fetch_watermarks(TOPIC_ODDS_UPDATES, p, timeout)
                .unwrap();
            (p, (done, high))
        })
        .collect()
}

/// Sum of the group's committed offsets over `partitions` partitions of odds_updates.
pub fn committed_total(kafka: &TestKafka, group: &str, partitions: i32) -> i64 {
    group_offsets(kafka, group, partitions)
        .values()
        .map(|(committed, _)| committed)
        .sum()
}

pub async fn count(db: &TestDatabase, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db.pool()).await.unwrap();
    n
}

pub async fn current_version(db: &TestDatabase, event: &str) -> Option<i64> {
    let sql = "SELECT version FROM odds_current WHERE event_id = $1";
    versions(db, sql, event).await.into_iter().next()
}

pub async fn history_versions(db: &TestDatabase, event: &str) -> Vec<i64> {
    let sql = "SELECT version FROM odds_history WHERE event_id = $1 ORDER BY version";
    versions(db, sql, event).await
}

/// The versions `sql` selects for `event`, its one parameter.
async fn versions(db: &TestDatabase, sql: &'static str, event: &str) -> Vec<i64> {
    sqlx::query_scalar(sql)
        .bind(event)
        .fetch_all(db.pool())
        .await
        .unwrap()
}

/// The cached update of `event`, if any.
pub async fn cached(redis: &TestRedis, event: &str) -> Option<OddsUpdate> {
    cached_in(redis, event, "1X2").await
}

/// The cached current odds of `event` in `market`.
pub async fn cached_in(redis: &TestRedis, event: &str, market: &str) -> Option<OddsUpdate> {
    let mut conn = redis.connection().await.ok()?;
    let json: Option<String> = redis::cmd("GET")
        .arg(redis_current_key(event, market))
        .query_async(&mut conn)
        .await
        .ok()?;
    json.map(|j| serde_json::from_str(&j).unwrap())
}

/// `events` events named `{prefix}00`, `{prefix}01`, ...
pub fn event_names(prefix: &str, events: u64) -> Vec<String> {
    (0..events).map(|e| format!("{prefix}{e:02}")).collect()
}

/// Produces versions 1 to `versions` of each of `events`, one round of every event per
/// version.
pub async fn produce_rounds(producer: &FutureProducer, events: &[String], versions: u64) {
    for version in 1..=versions {
        let round: Vec<_> = events.iter().map(|e| update(e, version)).collect();
        produce(producer, &round).await;
    }
}

/// Everything published on the updates channel, collected in the background.
#[derive(Clone, Default)]
pub struct Subscriber {
    pub seen: Arc<Mutex<Vec<OddsUpdate>>>,
}

impl Subscriber {
    pub async fn start(redis: &TestRedis) -> Subscriber {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(REDIS_UPDATES_CHANNEL).await.unwrap();
        let subscriber = Subscriber::default();
        let seen = subscriber.seen.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().unwrap();
                // The payload must be exactly an OddsUpdate.
                let update: OddsUpdate = serde_json::from_str(&payload).unwrap();
                seen.lock().unwrap().push(update);
            }
        });
        subscriber
    }

    /// Waits until every one of `events` has had version `last` published, then asserts that
    /// each event's versions were published rising, each once.
    pub async fn assert_published_in_order_up_to(&self, events: &[String], last: u64) {
        wait_until("every event's last version published", || async {
            events
                .iter()
                .all(|event| self.versions_of(event).last() == Some(&last))
        })
        .await;
        for event in events {
            let versions = self.versions_of(event);
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{event} published out of order or twice: {versions:?}"
            );
        }
    }

    pub fn versions_of(&self, event: &str) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|u| u.event_id == event)
            .map(|u| u.version)
            .collect()
    }
}

/// One dead-lettered record: reason, detail, payload, and every header.
#[derive(Debug)]
pub struct DeadLetter {
    pub reason: String,
    pub detail: String,
    pub payload: Option<Vec<u8>>,
    pub headers: std::collections::HashMap<String, String>,
}

impl DeadLetter {
    /// Asserts that the record was rejected for `reason`, with `detail` in its detail.
    pub fn assert_rejected(&self, reason: &str, detail: &str) {
        assert_eq!(self.reason, reason);
        assert!(self.detail.contains(detail), "{}", self.detail);
    }
}

/// Denies every produce request from now on (as an ACL on the topics would).
pub fn deny_produce(kafka: &TestKafka) {
    kafka.cluster().request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64],
    );
}

/// The `odds-processor` binary configured for the test stack by environment, in consumer
/// group `group`, with a free ops address (returned).
pub fn processor_binary(
    kafka: &TestKafka,
    db: &TestDatabase,
    redis: &TestRedis,
    group: &str,
) -> (std::process::Command, std::net::SocketAddr) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", odds_testkit::free_port().unwrap())
        .parse()
        .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_odds-processor"));
    command
        .env("KAFKA_BROKERS", kafka.bootstrap_servers())
        .env("KAFKA_GROUP", group)
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", redis.url())
        .env("HTTP_ADDR", addr.to_string());
    (command, addr)
}

/// Reads `n` records of the DLQ topic, by the source offset they were rejected at.
pub async fn read_dlq(
    kafka: &TestKafka,
    n: usize,
) -> std::collections::HashMap<String, DeadLetter> {
    use odds_contracts::names::{dlq_headers, TOPIC_ODDS_UPDATES_DLQ};
    let records = kafka
        .read_topic(
            TOPIC_ODDS_UPDATES_DLQ,
            n,
            Duration::from_millis(500),
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(records.len(), n, "DLQ records");
    records
        .into_iter()
        .map(|r| {
            let headers: std::collections::HashMap<_, _> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            let letter = DeadLetter {
                reason: headers[dlq_headers::REASON].clone(),
                detail: headers[dlq_headers::DETAIL].clone(),
                payload: r.payload,
                headers,
            };
            (letter.headers[dlq_headers::SOURCE_OFFSET].clone(), letter)
        })
        .collect()
}

/// Versions where a double stops being exact, and the ends of the contract's range.
pub fn boundary_versions() -> Vec<u64> {
    let exact = 1u64 << 53;
    vec![
        1,
        exact - 1,
        exact,
        exact + 1,
        exact + 2,
        odds_contracts::MAX_VERSION - 1,
        odds_contracts::MAX_VERSION,
    ]
}
