//! One price followed across the real stages in a trace, as a collector receives it.
//!
//! The stages export to a real OTLP/HTTP receiver (protobuf, [`odds_testkit::OtlpReceiver`])
//! with half of the supplier's updates sampled. A sampled update must yield one trace: ingest's
//! receive (the root) and produce, the processor's batch (a child of that produce span, or
//! linking to it when the batch's span belongs to another sampled update's trace) with its
//! Postgres and Redis steps, and odds-service's publish, each parented as the pipeline passes
//! the context on. An unsampled update must yield no span at all: every span belongs to a
//! trace rooted at a sampled update, and every span naming an update names that root's. And
//! WebSocket clients must receive exactly what they do without tracing.

use futures_util::{SinkExt, StreamExt};
use odds_demo::status::Scrape;
use odds_demo::{Launcher, LauncherOptions, TraceExport};
use odds_testkit::{OtlpReceiver, ReceivedSpan};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const RECEIVE: &str = "odds-ingest receive";
const PRODUCE: &str = "odds-ingest produce";
const BATCH: &str = "odds-processor batch";
const POSTGRES: &str = "odds-processor postgres write";
const REDIS: &str = "odds-processor redis set and publish";
const PUBLISH: &str = "odds-service publish";
const TOTAL: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_update_is_one_trace_across_the_stages_and_an_unsampled_one_none() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut options = LauncherOptions::for_tests(100, 4, TOTAL).unwrap();
    options.tracing = Some(TraceExport {
        endpoint: receiver.endpoint(),
        sampling_ratio: 0.5,
        export_every_ms: Some(200),
    });
    let mut launcher = Launcher::start(options).await.unwrap();
    let frames = tokio::spawn(odds_frames(launcher.service_addr.to_string()));

    odds_demo::bench::wait_sent(&launcher, TOTAL, Instant::now() + Duration::from_secs(120))
        .await
        .unwrap();
    // The stages export what they hold when they stop.
    let scrape = Scrape::take(&launcher).await;
    launcher.stop().await;
    let spans = receiver
        .wait_for(Duration::from_secs(30), |spans| {
            spans.iter().any(|s| s.name == PUBLISH)
        })
        .await;
    assert_eq!(
        scrape.service.sum("odds_ws_updates_invalid_total"),
        0.0,
        "odds-service read every traced pub/sub message as an update"
    );
    let frames = frames.await.unwrap();
    assert!(
        frames.len() >= 5,
        "the client got {} odds frames",
        frames.len()
    );
    for frame in &frames {
        assert!(!frame.contains('\n'), "{frame}");
    }

    let traces = by_trace(&spans);
    let roots = check_every_span_has_a_sampled_root(&traces);
    let sent = scrape.simulator.sum("odds_sim_updates_sent_total");
    assert!(
        roots >= 1 && (roots as f64) < 0.8 * sent,
        "{roots} of {sent} updates sampled at a ratio of 0.5"
    );
    let complete = traces
        .values()
        .filter(|trace| check_trace(trace, &spans))
        .count();
    assert!(
        complete >= 1,
        "no trace went from ingest through a processor batch to odds-service: {spans:#?}"
    );
}

/// The text of the `odds` frames a client following every event receives.
async fn odds_frames(service: String) -> Vec<String> {
    let url = format!("ws://{service}/ws/odds");
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        return Vec::new();
    };
    if ws
        .send(Message::text(r#"{"type":"subscribe","eventId":"*"}"#))
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut frames = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await
    {
        if let Message::Text(text) = message {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "odds" {
                let _: odds_contracts::OddsUpdate =
                    serde_json::from_value(value["data"].clone()).unwrap();
                frames.push(text.to_string());
            }
        }
    }
    frames
}

fn by_trace(spans: &[ReceivedSpan]) -> BTreeMap<String, Vec<&ReceivedSpan>> {
    let mut traces: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in spans {
        traces.entry(span.trace_id.clone()).or_default().push(span);
    }
    traces
}

/// The update a span names, if it names one.
fn update_of(span: &ReceivedSpan) -> Option<(String, String, String)> {
    Some((
        span.attribute("odds.event_id")?.to_owned(),
        span.attribute("odds.market")?.to_owned(),
        span.attribute("odds.version")?.to_owned(),
    ))
}

/// Every trace has exactly one root, ingest's receive span of a sampled update, and every
/// span in it that names an update names the root's: nothing is traced for an unsampled
/// update. Returns how many updates were sampled.
fn check_every_span_has_a_sampled_root(traces: &BTreeMap<String, Vec<&ReceivedSpan>>) -> usize {
    for (trace_id, spans) in traces {
        let roots: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "trace {trace_id} has roots {roots:#?}");
        let root = roots[0];
        assert_eq!(
            (root.name.as_str(), root.service.as_str()),
            (RECEIVE, "odds-ingest")
        );
        let sampled = update_of(root).expect("the receive span names its update");
        for span in spans {
            if let Some(named) = update_of(span) {
                assert_eq!(named, sampled, "{} in trace {trace_id}", span.name);
            }
        }
    }
    traces.len()
}

/// Checks the parenting of one trace; true when it is complete (ingest to odds-service).
fn check_trace(trace: &[&ReceivedSpan], all: &[ReceivedSpan]) -> bool {
    let find = |name: &'static str| trace.iter().copied().filter(move |s| s.name == name);
    let root = find(RECEIVE).next().expect("checked: one root");
    let produce: Vec<_> = find(PRODUCE).collect();
    assert_eq!(produce.len(), 1, "one produce span: {trace:#?}");
    let produce = produce[0];
    assert_eq!(produce.parent_span_id, root.span_id);
    // The processor: a batch span in this trace under the produce span, or a batch elsewhere
    // linking to it.
    let own_batch = find(BATCH).next();
    let linked = all.iter().filter(|s| s.name == BATCH).any(|b| {
        b.links
            .contains(&(produce.trace_id.clone(), produce.span_id.clone()))
    });
    let Some(batch) = own_batch else {
        return linked && publish_under(trace, &produce.span_id);
    };
    assert_eq!(batch.service, "odds-processor");
    assert_eq!(
        batch.parent_span_id, produce.span_id,
        "the batch is the produce span's child"
    );
    let steps: BTreeSet<&str> = trace
        .iter()
        .filter(|s| s.parent_span_id == batch.span_id)
        .map(|s| s.name.as_str())
        .collect();
    assert!(steps.contains(POSTGRES), "the batch's steps: {steps:?}");
    let Some(redis) = find(REDIS).next() else {
        return false;
    };
    assert_eq!(redis.parent_span_id, batch.span_id);
    publish_under(trace, &redis.span_id)
}

/// Whether odds-service's publish span is in `trace`, under `parent`.
fn publish_under(trace: &[&ReceivedSpan], parent: &str) -> bool {
    let publish: Vec<_> = trace.iter().filter(|s| s.name == PUBLISH).collect();
    assert!(publish.len() <= 1, "one publish per update: {publish:#?}");
    publish.first().is_some_and(|span| {
        assert_eq!(span.service, "odds-service");
        assert_eq!(
            span.parent_span_id, parent,
            "publish continues the processor's context"
        );
        true
    })
}
