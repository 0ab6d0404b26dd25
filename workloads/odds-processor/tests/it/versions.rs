//! Versions compare exactly over the whole range the contract accepts (1 ..= 2^63 - 1), in
//! the Redis script as in Postgres: above 2^53 a double can no longer tell neighbours apart.

use crate::common::*;
use odds_contracts::MAX_VERSION;
use odds_processor::cache::Cache;
use odds_testkit::TestRedis;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use std::time::Duration;

/// Caches `first`, then offers `second` of the same key; returns whether `second` advanced
/// and the version cached afterwards.
async fn offer_after(
    cache: &mut Cache,
    redis: &TestRedis,
    key: &str,
    first: u64,
    second: u64,
) -> (bool, u64) {
    let advanced = cache
        .set_newest(&[&odds_testkit::sample_update(key, first)])
        .await
        .unwrap();
    assert_eq!(
        advanced.len(),
        1,
        "{key}: the first version of a key is always cached"
    );
    let advanced = cache
        .set_newest(&[&odds_testkit::sample_update(key, second)])
        .await
        .unwrap();
    let held = cached(redis, key).await.unwrap().version;
    (advanced.len() == 1, held)
}

#[tokio::test]
async fn the_cache_compares_versions_exactly_at_every_boundary_and_across_the_range() {
    let redis = TestRedis::start().await.unwrap();
    let mut cache = Cache::new(&redis.url(), Duration::from_secs(5)).unwrap();
    let mut pairs = Vec::new();
    for &a in &boundary_versions() {
        for &b in &boundary_versions() {
            pairs.push((a, b));
        }
    }
    // Neighbours anywhere in the range, in both orders.
    let mut runner = TestRunner::deterministic();
    let anywhere = (1u64..MAX_VERSION, 0u64..3);
    for _ in 0..300 {
        let (v, step) = anywhere.new_tree(&mut runner).unwrap().current();
        let w = v.saturating_add(step).min(MAX_VERSION);
        pairs.push((v, w));
        pairs.push((w, v));
    }
    for (i, (first, second)) in pairs.into_iter().enumerate() {
        let key = format!("V{i}");
        let (advanced, held) = offer_after(&mut cache, &redis, &key, first, second).await;
        assert_eq!(
            (advanced, held),
            (second > first, first.max(second)),
            "{second} offered after {first}"
        );
    }
}

/// Through the whole processor: Postgres, the cache and the updates channel all move on to
/// each newer version above 2^53, and the end of the range.
#[tokio::test]
async fn updates_above_two_to_the_53_reach_postgres_cache_and_subscribers() {
    let (kafka, db, redis, mut config) = start_stack(1, 1).await;
    let subscriber = Subscriber::start(&redis).await;
    config.batch_max = 1; // one version per batch: each must advance the cache on its own
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let exact = 1u64 << 53;
    let big = [exact, exact + 1, exact + 2];
    let top = [MAX_VERSION - 1, MAX_VERSION];
    produce(
        &producer,
        &big.map(|v| odds_testkit::sample_update("BIG", v)),
    )
    .await;
    produce(
        &producer,
        &top.map(|v| odds_testkit::sample_update("TOP", v)),
    )
    .await;
    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "all five committed", || async {
        committed_total(&kafka, &group, 1) == 5
    })
    .await;
    assert_eq!(current_version(&db, "BIG").await, Some((exact + 2) as i64));
    assert_eq!(cached(&redis, "BIG").await.unwrap().version, exact + 2);
    assert_eq!(cached(&redis, "TOP").await.unwrap().version, MAX_VERSION);
    wait_until("every version published", || async {
        subscriber.versions_of("BIG").len() == 3 && subscriber.versions_of("TOP").len() == 2
    })
    .await;
    assert_eq!(subscriber.versions_of("BIG"), big.to_vec());
    assert_eq!(subscriber.versions_of("TOP"), top.to_vec());
    assert_eq!(
        h.metrics
            .version_regressions
            .with_label_values(&["older"])
            .get()
            + h.metrics
                .version_regressions
                .with_label_values(&["repeated"])
                .get(),
        0
    );
}

/// A regression is counted by the processor with ingest's labels: the same version again
/// (`repeated`) and an older one (`older`), judged against what Postgres held and what the
/// batch read before, and exactly, at the top of the range too.
#[tokio::test]
async fn regressions_are_counted_with_their_reason() {
    let (kafka, _db, _redis, mut config) = start_stack(1, 1).await;
    config.batch_max = 2;
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let top = MAX_VERSION;
    // However the records fall into batches (of at most two), each is judged against the
    // newer of what Postgres held and what the batch read before it: top - 1 is older, the
    // second top repeated, 5 older; R2's rise.
    let sequence = [
        ("R1", top),
        ("R1", top - 1),
        ("R1", top),
        ("R1", 5),
        ("R2", 6),
        ("R2", 7),
    ]
    .map(|(event, version)| odds_testkit::sample_update(event, version));
    produce(&producer, &sequence).await;
    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "all six committed", || async {
        committed_total(&kafka, &group, 1) == 6
    })
    .await;
    let count = |reason: &str| {
        h.metrics
            .version_regressions
            .with_label_values(&[reason])
            .get()
    };
    assert_eq!((count("repeated"), count("older")), (1, 2));
}
