//! The test kit's own test: each server starts, answers, and is isolated from the next one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use odds_testkit::{TestDatabase, TestKafka, TestRedis};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use std::time::Duration;

#[tokio::test]
async fn postgres_database_is_fresh_and_usable() {
    let db = TestDatabase::create().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "a new database has no tables");
    sqlx::query("CREATE TABLE t (x int)")
        .execute(db.pool())
        .await
        .unwrap();
    let other = TestDatabase::create().await.unwrap();
    assert_ne!(db.url(), other.url());
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(other.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "databases are isolated");
}

#[tokio::test]
async fn own_postgres_server_stops_and_starts() {
    let mut db = TestDatabase::on_own_server().await.unwrap();
    sqlx::query("CREATE TABLE t (x int)")
        .execute(db.pool())
        .await
        .unwrap();
    db.server_mut().unwrap().stop().unwrap();
    use sqlx::Connection;
    assert!(
        sqlx::PgConnection::connect(db.url()).await.is_err(),
        "server is down"
    );
    db.server_mut().unwrap().start_again().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "the table survived the restart");
}

#[tokio::test]
async fn redis_answers_and_restarts_empty_on_the_same_port() {
    let mut redis = TestRedis::start().await.unwrap();
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "v");
    let port = redis.port();
    redis.stop();
    assert!(redis.connection().await.is_err());
    redis.start_again().await.unwrap();
    assert_eq!(redis.port(), port);
    let mut conn = redis.connection().await.unwrap();
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, None, "no persistence");
}

#[tokio::test]
async fn kafka_mock_cluster_round_trips_a_keyed_record() {
    let kafka = TestKafka::start(3, 4).unwrap();
    let producer: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("odds_updates")
                .key("MATCH_001")
                .payload("hello"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", "selftest")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["odds_updates"]).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30s")
        .unwrap();
    assert_eq!(msg.key(), Some(&b"MATCH_001"[..]));
    assert_eq!(msg.payload(), Some(&b"hello"[..]));
}

/// A peer that reads back the request (what a client connected to itself sees) makes the GET
/// fail (the echoed request is no response; or at the deadline) instead of hanging the test
/// that polls.
#[tokio::test]
async fn http_get_to_a_peer_that_never_answers_fails_at_its_deadline() {
    let (addr, peer) = odds_testkit::echo_peer().await.unwrap();
    let error = odds_testkit::http_get_within(addr, "/readyz", Duration::from_millis(300))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("timed out") || message.contains("GET /readyz"),
        "{message}"
    );
    peer.abort();
}
