//! The end-to-end heartbeat and cache trust, with real processors (embedded, beating as the
//! binary does) in front: clients hear when the pipeline upstream of Redis stops and when it
//! moves again, and REST trusts the cache again only once a processor repaired it.

use crate::common::{
    connect, frames_until, produce, producer, readyz_until, rest_until, status_until, subscribe,
    update, Env, TestProcessor,
};
use odds_testkit::TestKafka;
use rdkafka::producer::FutureProducer;
use std::time::Duration;

/// Generous: the machine is shared and loaded.
const PATIENCE: Duration = Duration::from_secs(30);

/// A service started with `flags` and fed by one processor from a Kafka of its own, through
/// which version 1 of `event` has reached REST (answered from `source`, when given).
async fn fed_service(
    flags: &[&str],
    event: &str,
    source: Option<&str>,
) -> (Env, TestKafka, FutureProducer, TestProcessor) {
    let env = Env::start(flags).await;
    let kafka = TestKafka::start(1, 1).unwrap();
    let producer = producer(&kafka);
    let processor = TestProcessor::start(&kafka, &env);
    produce(&producer, &update(event, 1, 2.0)).await;
    rest_until(&env, event, 1, source, PATIENCE).await;
    (env, kafka, producer, processor)
}

/// A processor killed, one started, Postgres unable to take its writes (a lock held past its
/// statement timeout: the processor's outage path, without restarting a server on a loaded
/// machine) and able again: each time the client is told, with the reason, and the updates
/// flow again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hear_when_the_upstream_stops_and_when_it_moves_again() {
    let (env, kafka, producer, first) =
        fed_service(&["--heartbeat-timeout-ms=2000"], "H1", None).await;
    let mut client = connect(env.addr()).await;
    subscribe(&mut client, "H1").await;

    // SIGKILL: no last beat. Told within the timeout (waited for generously here).
    first.kill().await;
    let status = status_until(&mut client, false, "told the processor stopped").await;
    assert!(
        status["reason"].as_str().unwrap().contains("no heartbeat"),
        "{status}"
    );
    // Readiness is about this replica, which is fine: REST still answers.
    readyz_until(&env, 200, PATIENCE).await;

    let second = TestProcessor::start(&kafka, &env);
    status_until(&mut client, true, "told it resumed").await;
    produce(&producer, &update("H1", 2, 2.1)).await;
    let frames = frames_until(&mut client, PATIENCE, "v2", |f| f["type"] == "odds").await;
    assert_eq!(frames.last().unwrap()["data"]["version"], 2);

    // Postgres out: the processor holds the update and says why.
    let lock = env
        .db
        .lock_table("odds_current", "ACCESS EXCLUSIVE")
        .await
        .unwrap();
    produce(&producer, &update("H1", 3, 2.2)).await;
    frames_until(&mut client, PATIENCE, "told Postgres is out", |f| {
        f["type"] == "status"
            && f["live"] == false
            && f["reason"].as_str().is_some_and(|r| r.contains("Postgres"))
    })
    .await;
    lock.rollback().await.unwrap();
    let frames = frames_until(&mut client, PATIENCE, "v3 after Postgres", |f| {
        f["type"] == "odds"
    })
    .await;
    assert_eq!(frames.last().unwrap()["data"]["version"], 3);
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "status" && f["live"] == true),
        "told live before the update: {frames:?}"
    );
    second.stop().await;
    env.stop().await;
}

/// A processor reports that Redis refuses its writes and stops before it could repair the
/// cache; Redis takes writes again. After the report's lease (5 s) the live feed is back, but
/// the cache still holds the version before the failure: REST keeps reading Postgres until a
/// processor has repaired the cache, then trusts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_trusts_the_cache_again_only_after_a_repair() {
    let (env, kafka, producer, first) =
        fed_service(&["--redis-timeout-ms=300"], "T1", Some("cache")).await;

    env.redis.refuse_writes().await.unwrap();
    produce(&producer, &update("T1", 2, 2.1)).await;
    rest_until(&env, "T1", 2, Some("database"), PATIENCE).await;
    readyz_until(&env, 503, PATIENCE).await;
    first.stop().await;
    env.redis.accept_writes().await.unwrap();
    assert_eq!(
        env.cached("T1")
            .await
            .map(|json| json.contains(r#""version":1"#)),
        Some(true),
        "nobody repaired the cache"
    );

    // The failure report's lease runs out: live updates are back, the cache is still stale.
    readyz_until(&env, 200, PATIENCE).await;
    env.wait_until_live(true).await;
    for _ in 0..5 {
        rest_until(&env, "T1", 2, Some("database"), PATIENCE).await;
    }

    // A new processor repairs the cache at its start: the cache is trusted again.
    let second = TestProcessor::start(&kafka, &env);
    rest_until(&env, "T1", 2, Some("cache"), PATIENCE).await;
    second.stop().await;
    env.stop().await;
}
