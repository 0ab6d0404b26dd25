//! Two processors in one consumer group over a multi-partition topic: every update applied
//! exactly once in effect, and each event's versions published in order.

use crate::common::*;
use odds_testkit::TestKafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_split_partitions_and_keep_per_event_order() {
    const PARTITIONS: i32 = 4;
    const EVENTS: u64 = 20;
    const VERSIONS: u64 = 10;
    let (kafka, db, redis, config) = start_stack(1, PARTITIONS).await;
    let subscriber = Subscriber::start(&redis).await;
    let group = config.kafka_group.clone();
    let mut a = processor(&config);
    let mut b = processor(&config);
    // Join both before producing, so the work is actually split.
    step_both_until_split(&mut a, &mut b, PARTITIONS, |_, _| true).await;
    let task_a = tokio::spawn(a.processor.run());
    let task_b = tokio::spawn(b.processor.run());

    let events = event_names("EV", EVENTS);
    produce_rounds(&producer(&kafka), &events, VERSIONS).await;
    let total = (EVENTS * VERSIONS) as i64;
    wait_until("every update committed", || async {
        committed_total(&kafka, &group, PARTITIONS) == total
    })
    .await;

    let consumed = (
        a.metrics.messages_consumed.get(),
        b.metrics.messages_consumed.get(),
    );
    let present: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_id, version FROM odds_history ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let missing: Vec<(String, u64)> = (0..EVENTS)
        .flat_map(|e| (1..=VERSIONS).map(move |v| (format!("EV{e:02}"), v)))
        .filter(|(e, v)| !present.contains(&(e.clone(), *v as i64)))
        .collect();
    eprintln!("MISSING {missing:?}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    eprintln!(
        "LATER {}",
        count(&db, "SELECT count(*) FROM odds_history").await
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM odds_history").await,
        total,
        "consumed {consumed:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM odds_current WHERE version = 10").await,
        EVENTS as i64
    );
    let consumed = (
        a.metrics.messages_consumed.get(),
        b.metrics.messages_consumed.get(),
    );
    assert!(
        consumed.0 > 0 && consumed.1 > 0,
        "both processors worked: {consumed:?}"
    );
    assert_eq!(
        consumed.0 + consumed.1,
        total as u64,
        "each update read once"
    );
    for event in &events {
        assert_eq!(cached(&redis, event).await.unwrap().version, VERSIONS);
    }
    subscriber
        .assert_published_in_order_up_to(&events, VERSIONS)
        .await;
    a.shutdown.cancel();
    b.shutdown.cancel();
    join_cleanly(task_a).await;
    join_cleanly(task_b).await;
    assert_eq!(committed_total(&kafka, &group, PARTITIONS), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_mid_stream_lose_nothing() {
    const PARTITIONS: i32 = 4;
    const EVENTS: u64 = 40;
    const VERSIONS: u64 = 25;
    let (kafka, db, _redis, mut config) = start_stack(1, PARTITIONS).await;
    config.batch_max = 20; // many small batches, so rebalances land mid-batch
    let group = config.kafka_group.clone();
    let producer = producer(&kafka);
    let a = processor(&config);
    let (a_stop, task_a) = (a.shutdown.clone(), tokio::spawn(a.processor.run()));
    let total = (EVENTS * VERSIONS) as i64;
    let mut b = None;
    for version in 1..=VERSIONS {
        let round: Vec<_> = (0..EVENTS)
            .map(|e| update(&format!("EV{e:02}"), version))
            .collect();
        produce(&producer, &round).await;
        if version == 5 {
            let joined = processor(&config); // rebalance while A is busy
            b = Some((
                joined.shutdown.clone(),
                tokio::spawn(joined.processor.run()),
            ));
        }
        if version == 15 {
            a_stop.cancel(); // A leaves mid-stream: its partitions move to B
        }
    }
    join_cleanly(task_a).await;
    wait_until("every update committed", || async {
        committed_total(&kafka, &group, PARTITIONS) == total
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM odds_history").await, total);
    assert_eq!(
        count(&db, "SELECT count(*) FROM odds_current WHERE version = 25").await,
        EVENTS as i64
    );
    let (b_stop, task_b) = b.unwrap();
    stop_cleanly(&b_stop, task_b).await;
}

/// The lag the processor reports (`odds_proc_consumer_lag{topic,partition}`), by partition;
/// only series it actually set (reading a label set through `with_label_values` would create
/// it at 0).
fn reported_lag(metrics: &odds_processor::Metrics) -> std::collections::BTreeMap<i32, i64> {
    use prometheus::core::Collector;
    let mut out = std::collections::BTreeMap::new();
    for family in metrics.consumer_lag.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            if label("topic").as_deref() == Some(odds_contracts::names::TOPIC_ODDS_UPDATES) {
                let partition: i32 = label("partition").unwrap().parse().unwrap();
                out.insert(partition, metric.get_gauge().get_value() as i64);
            }
        }
    }
    out
}

/// The group's lag per partition read independently of the processor: each partition's
/// high watermark minus the group's committed offset (0 when nothing is committed).
fn independent_lag(
    kafka: &TestKafka,
    group: &str,
    partitions: i32,
) -> std::collections::BTreeMap<i32, i64> {
    group_offsets(kafka, group, partitions)
        .into_iter()
        .map(|(p, (committed, high))| (p, high - committed))
        .collect()
}

/// `count` updates on `partition` (explicitly, so each partition gets a known backlog).
async fn produce_on(producer: &rdkafka::producer::FutureProducer, partition: i32, count: u64) {
    use rdkafka::producer::FutureRecord;
    for version in 1..=count {
        let update = update(&format!("P{partition}"), version);
        let json = update.to_json();
        let record = FutureRecord::to(odds_contracts::names::TOPIC_ODDS_UPDATES)
            .partition(partition)
            .key(update.event_id.as_str())
            .payload(json.as_str());
        producer
            .send(record, std::time::Duration::from_secs(30))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_lag_per_partition_is_the_backlog_and_falls_to_zero_as_it_drains() {
    const PARTITIONS: i32 = 4;
    let (kafka, _db, _redis, mut config) = start_stack(1, PARTITIONS).await;
    config.batch_max = 10; // many small commits: the lag falls in steps
                           // Statistics (where the lag comes from) every 10 ms instead of every 5 s.
    report_statistics_every(&mut config, 10);
    let group = config.kafka_group.clone();
    let producer = producer(&kafka);

    // The processor owns every partition and has committed one update on each: the lag it
    // reports and the lag read independently are both 0.
    let mut h = processor(&config);
    for p in 0..PARTITIONS {
        produce_on(&producer, p, 1).await;
    }
    let zero: std::collections::BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    step_until(&mut h.processor, "first updates committed", || async {
        committed_total(&kafka, &group, PARTITIONS) == i64::from(PARTITIONS)
    })
    .await;
    step_until(&mut h.processor, "lag 0 reported everywhere", || async {
        reported_lag(&h.metrics) == zero
    })
    .await;
    assert_eq!(independent_lag(&kafka, &group, PARTITIONS), zero);

    // Stopped (no step runs, so nothing is consumed or committed), the processor falls
    // behind by a different backlog on each partition.
    let backlog: std::collections::BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, 60 * i64::from(p + 1)))
        .collect();
    for (p, n) in &backlog {
        produce_on(&producer, *p, *n as u64).await;
    }
    assert_eq!(independent_lag(&kafka, &group, PARTITIONS), backlog);

    // Started again, it drains. Every value it reports lies between the lag the group has
    // now and the backlog (nothing new arrives, so the lag only falls and a statistics
    // snapshot can only be older than the read that follows it), never rises, and ends at
    // 0 exactly where the independent read says 0.
    let total: i64 = i64::from(PARTITIONS) + backlog.values().sum::<i64>();
    let mut seen: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        h.processor.step().await;
        let reported = reported_lag(&h.metrics);
        let actual = independent_lag(&kafka, &group, PARTITIONS);
        for p in 0..PARTITIONS {
            let value = reported.get(&p).copied().unwrap_or(0);
            assert!(
                actual[&p] <= value && value <= backlog[&p],
                "partition {p}: reported {value}, group lag {}, backlog {}",
                actual[&p],
                backlog[&p]
            );
            let history = seen.entry(p).or_default();
            if history.last() != Some(&value) {
                history.push(value);
            }
        }
        if committed_total(&kafka, &group, PARTITIONS) == total && reported == zero {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never drained: reported {reported:?}, group lag {actual:?}"
        );
    }
    assert_eq!(independent_lag(&kafka, &group, PARTITIONS), zero);
    for (p, history) in &seen {
        assert!(
            history.windows(2).all(|w| w[0] >= w[1]),
            "partition {p}: the reported lag rose while draining: {history:?}"
        );
    }
    // The backlog was reported, not only the start and the end: some partition showed a
    // lag between 0 and its backlog on the way down.
    assert!(
        seen.values().any(|h| h.iter().any(|v| *v > 0)),
        "no backlog was ever reported: {seen:?}"
    );
    h.shutdown.cancel();
    h.processor.close();
}

/// After a rebalance a processor reports the lag of the partitions it owns now, and no longer
/// that of the partitions it lost: the new owner reports those, and a series frozen at the
/// revoke would be what `max by (partition)` (dashboard, alert) reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_removes_the_lag_series_of_the_partitions_a_processor_lost() {
    const PARTITIONS: i32 = 4;
    let (kafka, _db, _redis, mut config) = start_stack(1, PARTITIONS).await;
    report_statistics_every(&mut config, 10);
    let group = config.kafka_group.clone();
    let producer = producer(&kafka);
    let all: std::collections::BTreeSet<i32> = (0..PARTITIONS).collect();
    let partitions = |metrics: &odds_processor::Metrics| -> std::collections::BTreeSet<i32> {
        reported_lag(metrics).into_keys().collect()
    };

    // A alone owns every partition and reports the lag of each (one update committed on
    // each, so every partition has a committed offset and a lag).
    let mut a = processor(&config);
    for p in 0..PARTITIONS {
        produce_on(&producer, p, 1).await;
    }
    step_until(
        &mut a.processor,
        "A committed on every partition",
        || async { committed_total(&kafka, &group, PARTITIONS) == i64::from(PARTITIONS) },
    )
    .await;
    step_until(&mut a.processor, "A reports every partition", || async {
        partitions(&a.metrics) == all
    })
    .await;

    // B joins: the group splits the partitions, and B reports the lag of its share.
    let mut b = processor(&config);
    step_both_until_split(&mut a, &mut b, PARTITIONS, |b, nb| {
        partitions(&b.metrics).len() == nb
    })
    .await;
    // Statistics arrive every 10 ms: give A many rounds to report what it has now.
    let settle = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while tokio::time::Instant::now() < settle {
        a.processor.step().await;
        b.processor.step().await;
    }
    let (na, nb) = (
        a.processor.assigned_partitions(),
        b.processor.assigned_partitions(),
    );
    assert_eq!(na + nb, PARTITIONS as usize, "the group stayed balanced");
    let (reported_a, reported_b) = (partitions(&a.metrics), partitions(&b.metrics));
    assert_eq!(
        reported_a.len(),
        na,
        "A reports {reported_a:?} but owns {na} partitions"
    );
    assert_eq!(reported_b.len(), nb, "B reports {reported_b:?}");
    assert!(
        reported_a.is_disjoint(&reported_b),
        "a partition's lag reported by both: A {reported_a:?}, B {reported_b:?}"
    );
    let union: std::collections::BTreeSet<i32> = reported_a.union(&reported_b).copied().collect();
    assert_eq!(union, all, "every partition reported by its owner");
    a.shutdown.cancel();
    b.shutdown.cancel();
    a.processor.close();
    b.processor.close();
}

/// A processor whose committed position retention passed while it was away is moved to the
/// earliest retained record by librdkafka, with only a warning: the records between are
/// never read. That loss must show (metric, consume error, error log), never be silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_that_retention_passed_is_counted_as_skipped_records() {
    let (kafka, _db, _redis, config) = start_stack(1, 1).await;
    let producer = producer(&kafka);
    produce(&producer, &[update("A", 1)]).await;
    let mut first = processor(&config);
    let group = config.kafka_group.clone();
    step_until(
        &mut first.processor,
        "the first record committed",
        || async { committed_total(&kafka, &group, 1) == 1 },
    )
    .await;
    drop(first);

    // The mock broker keeps the last 5 MB of a partition: ~6 MB more pushes offset 1 out.
    let filler = vec![b'x'; 64 * 1024];
    for _ in 0..96 {
        produce_raw(&producer, "FILLER", Some(&filler)).await;
    }
    let second = processor(&config);
    let metrics = second.metrics.clone();
    let mut processor = second.processor;
    step_until(&mut processor, "the skip counted", || async {
        metrics.offset_resets.get() >= 1
    })
    .await;
    assert!(metrics.errors.with_label_values(&["consume"]).get() >= 1);
}

/// Steps `a` and `b` until the group has split all `partitions` between them, each owning
/// some, and `also` holds of B and its share; fails after [`PATIENCE`].
async fn step_both_until_split(
    a: &mut Harness,
    b: &mut Harness,
    partitions: i32,
    also: impl Fn(&Harness, usize) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (na, nb) = (
            a.processor.assigned_partitions(),
            b.processor.assigned_partitions(),
        );
        if na > 0 && nb > 0 && na + nb == partitions as usize && also(b, nb) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group never balanced: A owns {na}, B owns {nb}"
        );
        a.processor.step().await;
        b.processor.step().await;
    }
}

/// A consumer context that records its assignment and, on a revoke, waits for the test to
/// let it go: a close that librdkafka never finishes, on demand.
struct StuckOnRevoke {
    assigned: std::sync::atomic::AtomicBool,
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl rdkafka::ClientContext for StuckOnRevoke {}

impl rdkafka::consumer::ConsumerContext for StuckOnRevoke {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(list) if list.count() > 0 => {
                self.assigned
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            rdkafka::consumer::Rebalance::Revoke(_) => {
                let _ = self.gate.lock().unwrap().recv();
            }
            _ => {}
        }
    }
}

/// A consumer of the group in `config` whose revoke waits for `gate`, once it owns the
/// partition (the rebalance callbacks run while it is polled).
async fn assigned_consumer(
    config: &odds_processor::ProcessorConfig,
    gate: std::sync::mpsc::Receiver<()>,
) -> rdkafka::consumer::StreamConsumer<StuckOnRevoke> {
    use rdkafka::consumer::Consumer;
    let mut client = rdkafka::ClientConfig::new();
    for (name, value) in config.consumer_properties() {
        client.set(name, value);
    }
    let consumer: rdkafka::consumer::StreamConsumer<StuckOnRevoke> = client
        .create_with_context(StuckOnRevoke {
            assigned: false.into(),
            gate: std::sync::Mutex::new(gate),
        })
        .unwrap();
    consumer
        .subscribe(&[odds_contracts::names::TOPIC_ODDS_UPDATES])
        .unwrap();
    wait_until("the partition is assigned", || async {
        let wait = std::time::Duration::from_millis(50);
        let _ = tokio::time::timeout(wait, consumer.recv()).await;
        consumer
            .context()
            .assigned
            .load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    consumer
}

/// Leaving the group is given up at its deadline when librdkafka's close never finishes (as
/// seen once: the close-time rebalance waiting forever), so a stopping processor still exits;
/// a close that can finish does, within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_never_finishes_is_given_up_at_its_deadline() {
    use odds_processor::consumer::close;
    use std::time::Duration;
    let (_kafka, _db, _redis, config) = start_stack(1, 1).await;

    // The control: the revoke is let go at once, so the close finishes.
    let (release, gate) = std::sync::mpsc::channel();
    release.send(()).unwrap();
    let consumer = assigned_consumer(&config, gate).await;
    let closing = tokio::task::spawn_blocking(move || close(consumer, PATIENCE));
    assert!(
        closing.await.unwrap(),
        "a close free to finish was given up"
    );

    // Stuck: the revoke cannot finish before the release below, so the deadline ends the wait.
    let (release, gate) = std::sync::mpsc::channel();
    let consumer = assigned_consumer(&config, gate).await;
    let closing = tokio::task::spawn_blocking(move || close(consumer, Duration::from_millis(200)));
    assert!(!closing.await.unwrap(), "the close finished while stuck");
    release.send(()).unwrap();
}
