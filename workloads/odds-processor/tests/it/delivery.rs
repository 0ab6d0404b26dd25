//! Delivery guarantees against real Postgres, Redis and the Kafka mock cluster: duplicates,
//! out-of-order versions, poison records, and a crash between the durable write and the commit.

use crate::common::*;
use odds_contracts::names::{dlq_headers, TOPIC_ODDS_UPDATES};
use odds_processor::StepOutcome;
use odds_testkit::{TestKafka, TestRedis};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn duplicates_and_out_of_order_versions_change_nothing() {
    let (kafka, db, redis, mut config) = start_stack(1, 1).await;
    let subscriber = Subscriber::start(&redis).await;
    // Two per batch: the duplicates land both inside one batch and across batches.
    config.batch_max = 2;
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let sequence = [update("E1", 5), update("E1", 3), update("E1", 4)];
    produce(&producer, &sequence).await;
    produce(&producer, &sequence).await; // the same updates delivered again

    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "all six records committed", || async {
        committed_total(&kafka, &group, 1) == 6
    })
    .await;

    assert_eq!(current_version(&db, "E1").await, Some(5));
    assert_eq!(history_versions(&db, "E1").await, vec![3, 4, 5]);
    assert_eq!(cached(&redis, "E1").await.unwrap().version, 5);
    // Give the subscriber time to receive anything (wrongly) published late.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        subscriber.versions_of("E1"),
        vec![5],
        "published once, never 3 or 4"
    );
    assert_eq!(h.metrics.cache_sets.get(), 1);
    assert!(
        h.metrics.stale_skipped.get() >= 1,
        "older versions were skipped"
    );
    assert_eq!(h.metrics.messages_consumed.get(), 6);
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_never_block() {
    let (kafka, db, redis, config) = start_stack(1, 1).await;
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let mut low_odds = update("E2", 1);
    low_odds.odds.home = 0.5;
    produce(&producer, &[update("E1", 1)]).await; // offset 0
    produce_raw(&producer, "junk", Some(b"\x00\xffnot json")).await; // 1
    produce(&producer, &[low_odds]).await; // 2
    produce(&producer, &[update("E3", 1)]).await; // 3
    produce_raw(&producer, "E4", None).await; // 4: tombstone
    produce(&producer, &[update("E5", 1)]).await; // 5

    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "first six committed", || async {
        committed_total(&kafka, &group, 1) == 6
    })
    .await;
    // Consumption continues after the poison.
    produce(&producer, &[update("E6", 1)]).await;
    step_until(&mut h.processor, "seventh committed", || async {
        committed_total(&kafka, &group, 1) == 7
    })
    .await;

    for event in ["E1", "E3", "E5", "E6"] {
        assert_eq!(
            current_version(&db, event).await,
            Some(1),
            "{event} applied"
        );
        assert_eq!(cached(&redis, event).await.unwrap().version, 1);
    }
    assert_eq!(
        current_version(&db, "E2").await,
        None,
        "invalid update not applied"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, 4);

    let by_offset = read_dlq(&kafka, 3).await;
    for letter in by_offset.values() {
        let h = &letter.headers;
        assert_eq!(h[dlq_headers::SOURCE_TOPIC], TOPIC_ODDS_UPDATES);
        assert_eq!(h[dlq_headers::SOURCE_PARTITION], "0");
        assert_eq!(h[dlq_headers::STAGE], "odds-processor");
        assert!(!letter.detail.is_empty());
        assert!(h.contains_key(dlq_headers::REJECTED_AT));
    }
    assert_eq!(by_offset["1"].reason, "invalid_json");
    assert_eq!(
        by_offset["1"].payload.as_deref(),
        Some(&b"\x00\xffnot json"[..]),
        "original bytes kept"
    );
    by_offset["2"].assert_rejected("invalid_update", "odds.home");
    assert_eq!(by_offset["4"].reason, "invalid_json");
    assert_eq!(
        h.metrics
            .dead_lettered
            .with_label_values(&["invalid_json"])
            .get(),
        2
    );
}

/// A value that passes validation but that storage refuses (here a CHECK the contract does not
/// know, as a DBA might add) is isolated from its batch and dead-lettered as
/// `storage_rejected` with the database's message; the rest of the batch is stored and the
/// partition moves on. Values that Postgres could never hold (a NUL in a name, a price that
/// rounds to 1 at storage precision) are refused earlier, by validation.
#[tokio::test]
async fn updates_storage_refuses_are_isolated_and_dead_lettered() {
    let kafka = TestKafka::start(1, 1).unwrap();
    let db = migrated_database().await;
    sqlx::query(
        "ALTER TABLE odds_history ADD CONSTRAINT test_refuses CHECK (event_id <> 'REFUSED')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let redis = TestRedis::start().await.unwrap();
    let config = config(&kafka, &db, &redis);
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let mut nul_team = update("E3", 1);
    nul_team.home_team = "Nul\u{0}United".into();
    let mut rounds_to_one = update("E4", 1);
    rounds_to_one.odds.draw = 1.000_000_000_000_000_2;
    produce(&producer, &[update("E1", 1)]).await; // offset 0
    produce(&producer, &[update("REFUSED", 1)]).await; // 1
    produce(&producer, &[nul_team]).await; // 2
    produce(&producer, &[rounds_to_one]).await; // 3
    produce(&producer, &[update("E2", 1), update("E1", 2)]).await; // 4, 5

    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "all six committed", || async {
        committed_total(&kafka, &group, 1) == 6
    })
    .await;
    assert_eq!(current_version(&db, "E1").await, Some(2));
    assert_eq!(current_version(&db, "E2").await, Some(1));
    assert_eq!(cached(&redis, "E1").await.unwrap().version, 2);
    assert_eq!(current_version(&db, "REFUSED").await, None);
    assert!(cached(&redis, "REFUSED").await.is_none(), "never cached");
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, 3);

    let dead = read_dlq(&kafka, 3).await;
    // The database's own message.
    dead["1"].assert_rejected("storage_rejected", "test_refuses");
    dead["2"].assert_rejected("invalid_update", "home_team");
    dead["3"].assert_rejected("invalid_update", "odds.draw");
    assert_eq!(
        h.metrics
            .dead_lettered
            .with_label_values(&["storage_rejected"])
            .get(),
        1
    );
    assert!(h.readiness.is_ready(), "a refusal is not an outage");
}

#[tokio::test]
async fn crash_after_postgres_commit_before_offset_commit_replays_harmlessly() {
    let (kafka, db, redis, config) = start_stack(1, 1).await;
    let producer = producer(&kafka);
    let updates: Vec<_> = (1..=5)
        .flat_map(|v| [update("A", v), update("B", v)])
        .collect();
    produce(&producer, &updates).await;

    let mut first = processor(&config);
    let mut durable_records = 0;
    while durable_records < updates.len() {
        let batch = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(batch) = first.processor.next_batch().await {
                    break batch;
                }
            }
        })
        .await
        .expect("a batch");
        let durable = first.processor.make_durable(batch).await.unwrap();
        durable_records += durable.records;
        // Crash: neither the cache phase nor the offset commit happens.
    }
    drop(first);
    let snapshot = "SELECT count(*) FROM odds_history";
    assert_eq!(count(&db, snapshot).await, 10, "the batch reached Postgres");
    let before: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT event_id, version, home_odds::text FROM odds_current ORDER BY event_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        committed_total(&kafka, &config.kafka_group, 1),
        0,
        "nothing committed"
    );

    let mut second = processor(&config);
    let group = config.kafka_group.clone();
    step_until(&mut second.processor, "replay committed", || async {
        committed_total(&kafka, &group, 1) == 10
    })
    .await;
    assert_eq!(
        second.metrics.messages_consumed.get(),
        10,
        "the batch was read again"
    );
    let after: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT event_id, version, home_odds::text FROM odds_current ORDER BY event_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(before, after, "replay left odds_current identical");
    // The replay meets history's unique key: a replay, never data storage refuses.
    assert_eq!(
        second
            .metrics
            .dead_lettered
            .with_label_values(&["storage_rejected"])
            .get(),
        0,
        "a replayed version is not dead-lettered"
    );
    assert_eq!(count(&db, snapshot).await, 10, "no duplicate history rows");
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT (event_id, version)) FROM odds_history"
        )
        .await,
        10
    );
    // The replay still brings the cache up to date (the crash skipped the cache phase).
    assert_eq!(cached(&redis, "A").await.unwrap().version, 5);
    assert_eq!(cached(&redis, "B").await.unwrap().version, 5);
    assert!(matches!(second.processor.step().await, StepOutcome::Idle));
}

/// Validation and storage agree: every update `validate` accepts — names with any Unicode,
/// prices anywhere in range down to the last representable step above 1.0, any version up to
/// the largest `BIGINT`, any time the parser reads (chrono's whole range, signed six-digit
/// years included) — is stored by a real Postgres and read back unchanged (prices to
/// storage's 15 significant digits).
#[tokio::test]
async fn every_update_validation_accepts_is_stored_and_read_back() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let db = migrated_database().await;
    let store = odds_processor::Store::from_pool(db.pool().clone());
    let price = proptest::prop_oneof![
        1.0f64..=1000.0,
        (1u64..1000).prop_map(|ulps| f64::from_bits(1.0f64.to_bits() + ulps)),
        (1u64..1000).prop_map(|ulps| f64::from_bits(1000.0f64.to_bits() - ulps)),
    ];
    let strategy = (
        "\\PC{1,40}",
        "\\PC{1,40}",
        any_text(),
        proptest::sample::select(vec!["1X2", "HT_1X2"]),
        (price.clone(), price.clone(), price),
        proptest::prop_oneof![
            1u64..=odds_contracts::MAX_VERSION,
            proptest::sample::select(boundary_versions()),
        ],
        any_time_seconds(),
    );
    let mut runner = TestRunner::deterministic();
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut refused_times = 0;
    for i in 0..900 {
        let (home, away, source, market, (h, d, a), version, secs) =
            strategy.new_tree(&mut runner).unwrap().current();
        let candidate = odds_contracts::OddsUpdate {
            event_id: format!("P{i}"),
            home_team: home,
            away_team: away,
            market: market.into(),
            odds: odds_contracts::Odds {
                home: h,
                draw: d,
                away: a,
            },
            // Microseconds: what Postgres keeps.
            updated_at: chrono::DateTime::from_timestamp(secs, (i % 1000) as u32 * 1000).unwrap(),
            source,
            version,
            ingested_at: None,
        };
        match candidate.validate() {
            Ok(()) => accepted.push(candidate),
            Err(odds_contracts::ValidationError::UpdatedAtOutOfRange { .. }) => {
                refused_times += 1;
                refused += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        accepted.len() > 300,
        "most candidates are valid ({refused} refused)"
    );
    assert!(refused_times > 50, "times outside the range were tried");
    let edges = accepted_seconds();
    for secs in [edges.0, edges.1] {
        assert!(
            accepted.iter().any(|u| u.updated_at.timestamp() == secs),
            "the edge {secs} was stored"
        );
    }
    // One update per statement: a refusal must name the update that caused it.
    for update in &accepted {
        store
            .apply_batch(std::slice::from_ref(update))
            .await
            .unwrap_or_else(|e| panic!("storage refused a valid update {update:?}: {e}"));
    }
    let stored = store.current_page(("", ""), 10_000).await.unwrap();
    assert_eq!(stored.len(), accepted.len());
    let by_id: HashMap<_, _> = stored.iter().map(|u| (u.event_id.clone(), u)).collect();
    for sent in &accepted {
        let got = by_id[&sent.event_id];
        let stored_odds = |o: odds_contracts::Odds| {
            use odds_contracts::stored_price;
            (
                stored_price(o.home),
                stored_price(o.draw),
                stored_price(o.away),
            )
        };
        assert_eq!(stored_odds(got.odds), stored_odds(sent.odds), "{sent:?}");
        assert!(got.odds.home > 1.0 && got.odds.draw > 1.0 && got.odds.away > 1.0);
        assert_eq!(
            (&got.home_team, &got.away_team, &got.source, got.version),
            (&sent.home_team, &sent.away_team, &sent.source, sent.version)
        );
        assert_eq!(
            (&got.market, got.updated_at),
            (&sent.market, sent.updated_at)
        );
    }
}

/// Seconds of the first and the last `updated_at` validation accepts.
fn accepted_seconds() -> (i64, i64) {
    use chrono::TimeZone;
    let first = chrono::Utc.with_ymd_and_hms(odds_contracts::MIN_UPDATED_AT_YEAR, 1, 1, 0, 0, 0);
    let last =
        chrono::Utc.with_ymd_and_hms(odds_contracts::MAX_UPDATED_AT_YEAR, 12, 31, 23, 59, 59);
    (first.unwrap().timestamp(), last.unwrap().timestamp())
}

/// Any second the parser reads (chrono's whole range, 1 s short of each end so that a few
/// microseconds fit), weighted towards the accepted range and its edges.
fn any_time_seconds() -> impl proptest::strategy::Strategy<Value = i64> {
    let (first, last) = accepted_seconds();
    let min = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp() + 1;
    let max = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp() - 1;
    proptest::prop_oneof![
        min..=max,
        first..=last,
        proptest::sample::select(vec![min, first - 1, first, 0, last, last + 1, max]),
    ]
}

/// Text that includes control characters (NUL too) a fair share of the time.
fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::strategy::Strategy;
    proptest::prop_oneof![
        "\\PC{0,20}",
        proptest::collection::vec(proptest::char::any(), 0..20)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ]
}

/// Two contents at one version (a supplier bug, or two ingest replicas fed differently): one
/// rule, the first read wins, is applied alike by odds_history, odds_current, Redis and what
/// is published to the service's clients, for every event, both within one batch and across
/// batches. (odds-service's `first_read_wins_on_websocket_clients_too` follows the same ties
/// through to WebSocket clients.)
#[tokio::test]
async fn same_version_different_content_first_read_wins_everywhere() {
    let (kafka, db, redis, mut config) = start_stack(1, 1).await;
    let subscriber = Subscriber::start(&redis).await;
    config.batch_max = 2_000;
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let variant = |event: &str, draw: f64| {
        let mut u = update(event, 7);
        u.odds.draw = draw;
        u
    };
    let firsts: Vec<_> = (0..500).map(|i| variant(&format!("T{i}"), 3.0)).collect();
    let seconds: Vec<_> = (0..500).map(|i| variant(&format!("T{i}"), 9.0)).collect();
    // Interleaved so that half the ties fall inside a batch and half across batches.
    for (a, b) in firsts.iter().zip(&seconds) {
        produce(&producer, &[a.clone(), b.clone()]).await;
    }
    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "all 1000 committed", || async {
        committed_total(&kafka, &group, 1) == 1000
    })
    .await;
    let disagree: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT c.event_id, c.draw_odds::float8, h.draw_odds::float8
         FROM odds_current c JOIN odds_history h USING (event_id, market, version)
         WHERE c.draw_odds <> h.draw_odds OR c.draw_odds <> 3.0",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(
        disagree.is_empty(),
        "first read wins in Postgres: {disagree:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, 500);
    for i in 0..500 {
        let cached = cached(&redis, &format!("T{i}")).await.unwrap();
        assert_eq!(cached.odds.draw, 3.0, "T{i}: Redis agrees with Postgres");
    }
    wait_until("every event published", || async {
        subscriber.seen.lock().unwrap().len() >= 500
    })
    .await;
    // Anything (wrongly) published for the second contents comes after the firsts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = subscriber.seen.lock().unwrap().clone();
    let mut events: Vec<&str> = published.iter().map(|u| u.event_id.as_str()).collect();
    events.sort_unstable();
    events.dedup();
    assert_eq!(
        (published.len(), events.len()),
        (500, 500),
        "each event published once"
    );
    let second: Vec<_> = published.iter().filter(|u| u.odds.draw != 3.0).collect();
    assert!(second.is_empty(), "published the later content: {second:?}");
}

#[tokio::test]
async fn each_market_of_an_event_has_its_own_current_odds() {
    let (kafka, db, redis, config) = start_stack(1, 1).await;
    let subscriber = Subscriber::start(&redis).await;
    let mut h = processor(&config);
    let producer = producer(&kafka);
    let match_result = update("E1", 1);
    let half_time = odds_contracts::OddsUpdate {
        market: "HT_1X2".into(),
        ..update("E1", 2)
    };
    // Versions are compared within a market: HT_1X2 v2 does not make 1X2 v1 stale, and the
    // replayed 1X2 v1 after both changes nothing.
    produce(
        &producer,
        &[match_result.clone(), half_time.clone(), update("E1", 1)],
    )
    .await;
    let group = config.kafka_group.clone();
    step_until(&mut h.processor, "all three committed", || async {
        committed_total(&kafka, &group, 1) == 3
    })
    .await;

    let current = db.current_market_versions("E1").await.unwrap();
    assert_eq!(current, vec![("1X2".into(), 1), ("HT_1X2".into(), 2)]);
    assert_eq!(history_versions(&db, "E1").await, vec![1, 2]);
    assert_eq!(cached_in(&redis, "E1", "1X2").await, Some(match_result));
    assert_eq!(cached_in(&redis, "E1", "HT_1X2").await, Some(half_time));
    step_until(&mut h.processor, "both markets published", || async {
        subscriber.versions_of("E1").len() >= 2
    })
    .await;
    assert_eq!(subscriber.versions_of("E1"), vec![1, 2]);
}
