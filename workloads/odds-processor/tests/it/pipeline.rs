//! The overlapped run loop (`Processor::run`): batch N is published and committed while batch
//! N+1 is made durable. Its offsets must never run ahead of the rows they cover, and each
//! event's versions must still reach Postgres, Redis and subscribers in order.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapped_batches_never_commit_ahead_of_postgres_and_keep_each_events_order() {
    const EVENTS: u64 = 30;
    const VERSIONS: u64 = 12;
    let (kafka, db, redis, mut config) = start_stack(1, 1).await;
    let subscriber = Subscriber::start(&redis).await;
    // Small batches: many of them overlap while the stream is produced.
    config.batch_max = 7;
    let group = config.kafka_group.clone();
    let h = processor(&config);
    let shutdown = h.shutdown.clone();
    let task = tokio::spawn(h.processor.run());
    let events = event_names("P", EVENTS);
    let producing = tokio::spawn({
        let (producer, events) = (producer(&kafka), events.clone());
        async move { produce_rounds(&producer, &events, VERSIONS).await }
    });
    // Every record is a distinct (event, version), read in offset order from one partition:
    // the committed offset counts records, and the history rows count the records stored.
    // The offset is read first and rows only grow, so offset <= rows at every sample.
    let total = (EVENTS * VERSIONS) as i64;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut samples = 0;
    loop {
        let committed = committed_total(&kafka, &group, 1);
        let stored = count(&db, "SELECT count(*) FROM odds_history").await;
        assert!(
            committed <= stored,
            "offset {committed} committed with only {stored} rows durable"
        );
        samples += 1;
        if committed == total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out at {committed} of {total} committed ({samples} samples)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    producing.await.unwrap();
    for event in &events {
        assert_eq!(current_version(&db, event).await, Some(VERSIONS as i64));
        assert_eq!(cached(&redis, event).await.unwrap().version, VERSIONS);
    }
    subscriber
        .assert_published_in_order_up_to(&events, VERSIONS)
        .await;
    stop_cleanly(&shutdown, task).await;
    assert_eq!(committed_total(&kafka, &group, 1), total);
}
