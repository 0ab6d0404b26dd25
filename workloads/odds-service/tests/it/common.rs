//! Shared test harness: real Redis and Postgres, the service started in-process, a
//! processor-style writer, and a WebSocket client.

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use odds_contracts::names::{redis_current_key, REDIS_UPDATES_CHANNEL};
use odds_contracts::{Odds, OddsUpdate};
use odds_service::{RunningService, ServiceConfig};
use odds_testkit::{TestDatabase, TestRedis};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Env {
    pub redis: TestRedis,
    pub db: TestDatabase,
    pub service: Option<RunningService>,
    pub shutdown: CancellationToken,
}

/// The test kit's sample update with teams named after the event and the given home price,
/// so a response shows which event and which write it came from.
pub fn update(event: &str, version: u64, home: f64) -> OddsUpdate {
    OddsUpdate {
        home_team: format!("{event} Home"),
        away_team: format!("{event} Away"),
        odds: Odds {
            home,
            draw: 3.25,
            away: 4.5,
        },
        ..odds_testkit::sample_update(event, version)
    }
}

impl Env {
    pub async fn start(extra: &[&str]) -> Env {
        Self::start_with(TestDatabase::create().await.unwrap(), extra).await
    }

    /// A service started with `extra` flags after `updates` were written as the processor
    /// writes them, its pub/sub subscription up: what a client connecting now is served.
    pub async fn with_written(extra: &[&str], updates: &[OddsUpdate]) -> Env {
        Env::start(extra).await.written(updates).await
    }

    /// [`Env::with_written`] on a Postgres server of the test's own: the test may stop it.
    pub async fn own_postgres_with_written(updates: &[OddsUpdate]) -> Env {
        let db = TestDatabase::on_own_server().await.unwrap();
        Env::start_with(db, &[]).await.written(updates).await
    }

    async fn written(self, updates: &[OddsUpdate]) -> Env {
        for update in updates {
            self.write(update).await;
        }
        self.wait_for_pubsub().await;
        self
    }

    pub async fn start_with(db: TestDatabase, extra: &[&str]) -> Env {
        odds_schema::migrate(db.pool()).await.unwrap();
        let redis = TestRedis::start().await.unwrap();
        let shutdown = CancellationToken::new();
        let mut args = vec![
            "odds-service".to_owned(),
            "--listen-addr=127.0.0.1:0".into(),
            "--http-addr=127.0.0.1:0".into(),
            format!("--redis-url={}", redis.url()),
            format!("--database-url={}", db.url()),
        ];
        // Most tests play the processor by hand and never beat: the upstream watch is on only
        // where a test asks for it.
        for off in ["--heartbeat-timeout-ms", "--upstream-max-silence-ms"] {
            if !extra.iter().any(|arg| arg.starts_with(off)) {
                args.push(format!("{off}=0"));
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = ServiceConfig::try_parse_from(args).unwrap();
        let service = odds_service::start(&config, shutdown.clone())
            .await
            .unwrap();
        let env = Env {
            redis,
            db,
            service: Some(service),
            shutdown,
        };
        // Until the first subscription the cache is not trusted (REST reads Postgres):
        // tests start from the steady state.
        env.wait_until_live(true).await;
        env
    }

    /// Waits until the service's live feed is up (`true`) or down (`false`).
    pub async fn wait_until_live(&self, live: bool) {
        let mut feed = self.service.as_ref().unwrap().feed.watch();
        tokio::time::timeout(
            Duration::from_secs(15),
            feed.wait_for(|status| status.is_live() == live),
        )
        .await
        .expect("live feed never changed")
        .unwrap();
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.service.as_ref().unwrap().listen_addr
    }

    pub fn metrics(&self) -> &odds_service::metrics::Metrics {
        &self.service.as_ref().unwrap().metrics
    }

    /// What the processor does for a new version: Postgres, then the cache, then PUBLISH.
    pub async fn write(&self, update: &OddsUpdate) {
        self.write_postgres(update).await;
        self.write_cache(update).await;
        self.publish(update).await;
    }

    /// Writes `u` to the read models with the processor's own statement.
    pub async fn write_postgres(&self, u: &OddsUpdate) {
        self.write_postgres_all(std::slice::from_ref(u)).await;
    }

    /// Writes `updates` to the read models in one statement, the processor's own.
    pub async fn write_postgres_all(&self, updates: &[OddsUpdate]) {
        odds_schema::read_models::apply_batch(updates)
            .execute(self.db.pool())
            .await
            .unwrap();
    }

    /// Writes version 1 of each of `events` (home price 2.0) to the read models, then waits
    /// until the service's pub/sub subscription is up: the image a `*` client is resynced to.
    pub async fn write_image(&self, events: &[String]) {
        let image: Vec<_> = events.iter().map(|e| update(e, 1, 2.0)).collect();
        self.write_postgres_all(&image).await;
        self.wait_for_pubsub().await;
    }

    pub async fn write_cache(&self, u: &OddsUpdate) {
        let mut conn = self.redis.connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(redis_current_key(&u.event_id, &u.market))
            .arg(u.to_json())
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// The cached JSON of `event`'s 1X2 odds.
    pub async fn cached(&self, event: &str) -> Option<String> {
        let mut conn = self.redis.connection().await.unwrap();
        redis::cmd("GET")
            .arg(redis_current_key(event, "1X2"))
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    pub async fn publish(&self, u: &OddsUpdate) {
        let mut conn = self.redis.connection().await.unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(REDIS_UPDATES_CHANNEL)
            .arg(u.to_json())
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// Waits until the service's pub/sub subscription is live (a PUBLISH reaches a subscriber).
    pub async fn wait_for_pubsub(&self) {
        let mut conn = self.redis.connection().await.unwrap();
        for _ in 0..400 {
            let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(REDIS_UPDATES_CHANNEL)
                .query_async(&mut conn)
                .await
                .unwrap();
            if n.first().map(|(_, c)| *c).unwrap_or(0) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("service never subscribed to {REDIS_UPDATES_CHANNEL}");
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(service) = self.service.take() {
            tokio::time::timeout(Duration::from_secs(20), service.wait())
                .await
                .unwrap();
        }
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> Client {
    let (client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/odds"))
        .await
        .unwrap();
    client
}

/// A client reading through a 2 KiB socket buffer, subscribed to `event`: the server cannot
/// park a backlog in TCP, so the client falls behind as soon as it stops reading.
pub async fn small_buffer_client(
    addr: std::net::SocketAddr,
    event: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/odds"), stream)
        .await
        .unwrap();
    let subscribe = format!(r#"{{"type":"subscribe","eventId":"{event}"}}"#);
    client.send(Message::text(subscribe)).await.unwrap();
    client
}

pub async fn send(client: &mut Client, json: &str) {
    client.send(Message::text(json)).await.unwrap();
}

/// Next text frame as JSON (skipping pings), failing after a generous timeout.
pub async fn next_json(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), client.next())
            .await
            .expect("no message within 15 s")
            .expect("connection ended")
            .expect("read error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Asserts nothing but pings arrives within `wait`.
pub async fn assert_silent(client: &mut Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Subscribes and returns the snapshot frame (after checking `subscribed`).
pub async fn subscribe(client: &mut Client, event: &str) -> Value {
    send(
        client,
        &format!(r#"{{"type":"subscribe","eventId":"{event}"}}"#),
    )
    .await;
    let subscribed = next_json(client).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["eventId"], event);
    let snapshot = next_json(client).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    snapshot
}

/// Reads frames (skipping pings) until one satisfies `wanted`, failing after `within`.
/// Returns every frame read, the wanted one last.
pub async fn frames_until(
    client: &mut Client,
    within: Duration,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout_at(deadline, client.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {within:?}; got {seen:?}"))
            .expect("connection ended")
            .expect("read error");
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            let done = wanted(&frame);
            seen.push(frame);
            if done {
                return seen;
            }
        }
    }
}

/// Reads until the server's Close frame (skipping anything before it) and returns it,
/// failing after a generous timeout or if the connection ends without one.
pub async fn close_frame<S>(
    client: &mut S,
) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(15), client.next())
            .await
            .expect("no close frame within 15 s")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A processor embedded in the test, beating like the binary's: it reads `odds_updates` on
/// `kafka` and writes the env's Postgres and Redis.
pub struct TestProcessor {
    shutdown: CancellationToken,
    processor: tokio::task::JoinHandle<Result<(), odds_processor::ProcessorError>>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl TestProcessor {
    pub fn start(kafka: &odds_testkit::TestKafka, env: &Env) -> TestProcessor {
        use odds_processor::{Metrics, Processor, ProcessorConfig};
        use odds_runtime::cli::Millis;
        let mut config =
            ProcessorConfig::new(kafka.bootstrap_servers(), env.db.url(), &env.redis.url());
        config.batch_max = 50;
        config.redis_timeout_ms = Millis(500);
        config.db_retry_max_backoff_ms = Millis(500);
        // A lock held longer is an outage to it (tests stall it that way).
        config.database_statement_timeout_ms = Millis(1000);
        let readiness = odds_runtime::Readiness::default();
        let shutdown = CancellationToken::new();
        let metrics = Metrics::unregistered().unwrap();
        let heartbeat = odds_processor::heartbeat::spawn(
            &config,
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        )
        .unwrap();
        let processor =
            Processor::new(&config, metrics, readiness.clone(), shutdown.clone()).unwrap();
        TestProcessor {
            shutdown,
            processor: tokio::spawn(processor.run()),
            heartbeat,
        }
    }

    /// SIGTERM: the processor finishes, leaves the group and sends its last beat.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let both = async {
            self.processor.await.unwrap().unwrap();
            self.heartbeat.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .unwrap();
    }

    /// SIGKILL: everything stops mid-way, no last beat.
    pub async fn kill(self) {
        self.heartbeat.abort();
        self.processor.abort();
        let _ = self.heartbeat.await;
        let _ = self.processor.await;
    }
}

/// A producer for `odds_updates` on `kafka`.
pub fn producer(kafka: &odds_testkit::TestKafka) -> rdkafka::producer::FutureProducer {
    kafka.client_config().create().unwrap()
}

/// Produces `u` keyed by its event, as ingest does.
pub async fn produce(producer: &rdkafka::producer::FutureProducer, u: &OddsUpdate) {
    use odds_contracts::names::TOPIC_ODDS_UPDATES;
    let json = u.to_json();
    let record = rdkafka::producer::FutureRecord::to(TOPIC_ODDS_UPDATES)
        .key(&u.event_id)
        .payload(&json);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap();
}

/// Reads frames until a `status` frame with `live` arrives (skipping everything else).
pub async fn status_until(client: &mut Client, live: bool, what: &str) -> Value {
    let frames = frames_until(client, Duration::from_secs(30), what, |f| {
        f["type"] == "status" && f["live"] == live
    })
    .await;
    frames.last().cloned().unwrap()
}

/// REST's answer for `event`'s 1X2 odds: (version, x-odds-source).
pub async fn rest_current(env: &Env, event: &str) -> Option<(u64, String)> {
    let response = odds_testkit::http_get(env.addr(), &format!("/v1/events/{event}/odds"))
        .await
        .ok()?;
    if response.status != 200 {
        return None;
    }
    let version = response.json().ok()?["version"].as_u64()?;
    Some((version, response.header("x-odds-source")?.to_owned()))
}

/// Polls REST until it answers `version` from `source` (any source if `None`).
pub async fn rest_until(
    env: &Env,
    event: &str,
    version: u64,
    source: Option<&str>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = rest_current(env, event).await;
        if let Some((v, s)) = &got {
            if *v == version && source.is_none_or(|want| want == s) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "REST never answered {event} v{version} from {source:?} within {within:?}; last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The service's `/readyz` status code.
pub async fn readyz(env: &Env) -> u16 {
    let ops = env.service.as_ref().unwrap().ops_addr;
    odds_testkit::http_get(ops, "/readyz").await.unwrap().status
}

pub async fn readyz_until(env: &Env, status: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while readyz(env).await != status {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
