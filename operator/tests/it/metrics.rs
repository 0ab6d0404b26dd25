//! The operator's own health: its metrics go through the shared prefixed registry
//! (`odds_operator_*`), the conditions of each pipeline as gauges (gone with the pipeline),
//! API errors by verb and code, reconcile durations up to the deadline, and event notes that
//! fit the API server's limit.

use crate::fixtures::sample;
use crate::harness::harness;
use kube::runtime::watcher;
use odds_operator::controller::{fit_note, RECONCILE_DEADLINE, TRUNCATED_MARKER};
use odds_operator::metrics::{Metrics, PipelineSeries};
use odds_runtime::metrics::{component, missing_queried};
use prometheus::proto::MetricFamily;

use odds_runtime::metrics::QUERIED_METRICS as QUERIED;

fn family(families: &[MetricFamily], name: &str) -> Option<MetricFamily> {
    families.iter().find(|f| f.name() == name).cloned()
}

/// `odds_operator_pipeline_condition` series of pipeline `demo`: `(type, status, value)`.
fn condition_series(
    registry: &odds_runtime::metrics::PrefixedRegistry,
) -> Vec<(String, String, i64)> {
    let families = registry.registry().gather();
    let Some(family) = family(&families, "odds_operator_pipeline_condition") else {
        return Vec::new();
    };
    let mut series: Vec<_> = family
        .get_metric()
        .iter()
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "pipeline" && l.value() == "demo")
        })
        .map(|m| {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            (
                label("type"),
                label("status"),
                m.get_gauge().get_value() as i64,
            )
        })
        .collect();
    series.sort();
    series
}

#[test]
fn the_operators_metrics_are_odds_operator_names_in_the_shared_registry() {
    let registry = Metrics::registry().unwrap();
    let metrics = Metrics::register(&registry).unwrap();
    let names: Vec<String> = registry.names().into_iter().collect();
    assert_eq!(
        names,
        [
            "odds_operator_api_errors_total",
            "odds_operator_canary_age_p99_seconds",
            "odds_operator_canary_frames_total",
            "odds_operator_canary_longest_freeze_seconds",
            "odds_operator_canary_publish_failures_total",
            "odds_operator_canary_slow_frames_total",
            "odds_operator_canary_watching",
            "odds_operator_leader",
            "odds_operator_pipeline_condition",
            "odds_operator_reconcile_duration_seconds",
            "odds_operator_reconcile_errors_total",
            "odds_operator_reconciles_total",
            "odds_operator_slo_freshness_p99_seconds",
            "odds_operator_slo_max_freeze_seconds",
            "odds_operator_watch_errors_total",
        ]
    );
    assert_eq!(
        missing_queried(QUERIED, component::OPERATOR, &[&registry]),
        Vec::<String>::new(),
        "every operator metric the dashboard and alerts query is registered"
    );
    metrics.reconciles.inc();
    metrics.leader.set(1);
    let served = registry.served_names();
    assert!(served.contains(&"odds_operator_reconciles_total".to_string()));
    assert!(
        served.iter().all(|n| n.starts_with("odds_operator_")),
        "{served:?}"
    );
}

#[test]
fn reconcile_duration_buckets_reach_the_reconcile_deadline() {
    let registry = Metrics::registry().unwrap();
    let metrics = Metrics::register(&registry).unwrap();
    metrics.duration.observe(42.0);
    let families = registry.registry().gather();
    let histogram = family(&families, "odds_operator_reconcile_duration_seconds").unwrap();
    let buckets: Vec<(f64, u64)> = histogram.get_metric()[0]
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    let deadline = RECONCILE_DEADLINE.as_secs_f64();
    assert!(
        buckets.iter().any(|(le, _)| *le == deadline),
        "a bucket ends at the deadline: {buckets:?}"
    );
    let below_deadline: Vec<_> = buckets.iter().filter(|(le, _)| *le < 42.0).collect();
    assert!(
        below_deadline.iter().all(|(_, n)| *n == 0) && buckets.iter().any(|(le, n)| *le >= 42.0 && *le <= deadline && *n == 1),
        "a 42 s reconcile lands in a finite bucket below the deadline, not only in +Inf: {buckets:?}"
    );
}

#[tokio::test]
async fn condition_gauges_follow_the_status_and_go_with_the_pipeline() {
    let h = harness(sample(), true).await;
    h.reconcile().await;
    let series = condition_series(&h.registry);
    let value = |series: &[(String, String, i64)], type_: &str, status: &str| {
        series
            .iter()
            .find(|(t, s, _)| t == type_ && s == status)
            .map(|(_, _, v)| *v)
    };
    assert_eq!(value(&series, "Ready", "False"), Some(1), "{series:?}");
    assert_eq!(value(&series, "Ready", "True"), Some(0));
    assert_eq!(value(&series, "Ready", "Unknown"), Some(0));
    assert_eq!(value(&series, "Degraded", "False"), Some(1));
    h.topics_ready().await;
    h.migration_done().await;
    h.reconcile().await;
    h.pods_ready().await;
    h.reconcile().await;
    let series = condition_series(&h.registry);
    assert_eq!(value(&series, "Ready", "True"), Some(1), "{series:?}");
    assert_eq!(value(&series, "Ready", "False"), Some(0));

    // The pipelines' watch reports the deletion: its series go.
    let pipeline = h.pipeline().await;
    let mut follow = PipelineSeries::default();
    follow.on_event(&h.metrics, &watcher::Event::Apply(pipeline.clone()));
    follow.on_event(&h.metrics, &watcher::Event::Delete(pipeline.clone()));
    assert_eq!(condition_series(&h.registry), Vec::new());

    // A deletion the watch missed (it restarted and listed again) counts too.
    h.reconcile().await;
    assert!(!condition_series(&h.registry).is_empty());
    let mut follow = PipelineSeries::default();
    follow.on_event(&h.metrics, &watcher::Event::Init);
    follow.on_event(&h.metrics, &watcher::Event::InitApply(pipeline.clone()));
    follow.on_event(&h.metrics, &watcher::Event::InitDone);
    assert!(!condition_series(&h.registry).is_empty(), "still listed");
    follow.on_event(&h.metrics, &watcher::Event::Init);
    follow.on_event(&h.metrics, &watcher::Event::InitDone);
    assert_eq!(
        condition_series(&h.registry),
        Vec::new(),
        "gone from the list"
    );
}

#[tokio::test]
async fn api_errors_the_reconcile_meets_are_counted_by_verb_and_code() {
    let h = harness(sample(), true).await;
    let count =
        |verb: &str, code: &str| h.metrics.api_errors.with_label_values(&[verb, code]).get();
    for (verb, resource, code, reason, message) in [
        (
            "patch",
            "configmaps",
            422,
            "Invalid",
            "the ConfigMap is invalid",
        ),
        (
            "get",
            "secrets",
            503,
            "ServiceUnavailable",
            "try again later",
        ),
        (
            "patch",
            "oddspipelines/status",
            403,
            "Forbidden",
            "cannot patch status",
        ),
    ] {
        h.fail(verb, resource, code, reason, message);
        assert!(h.try_reconcile().await.is_err());
        assert_eq!(count(verb, &code.to_string()), 1, "{verb} {resource}");
        h.heal();
    }
    h.reconcile().await;
    assert_eq!(
        (
            count("patch", "422"),
            count("get", "503"),
            count("patch", "403")
        ),
        (1, 1, 1),
        "a clean reconcile counts nothing"
    );
}

#[tokio::test]
async fn a_warning_longer_than_the_event_limit_is_published_truncated() {
    let h = harness(sample(), true).await;
    // An admission webhook's 5 KiB refusal, in words with multi-byte characters.
    let long = "la validación rechazó el objeto — ".repeat(150);
    assert!(long.len() > 5 * 1024);
    h.fail("patch", "configmaps", 422, "Invalid", &long);
    assert!(h.try_reconcile().await.is_err());
    let degraded = h.condition("Degraded").await;
    assert!(degraded.message.contains(&long), "the status keeps it all");
    let events = h.events().await;
    let (_, _, note) = events
        .iter()
        .find(|(t, r, _)| t == "Warning" && r == "ApplyFailed")
        .expect("the Warning event is published (the API server refuses notes over 1 KiB)");
    assert!(note.len() <= 1024, "{} bytes", note.len());
    assert!(note.ends_with(TRUNCATED_MARKER), "{note}");
    assert!(
        note.starts_with("apply ConfigMap demo-config: la validación"),
        "{note}"
    );
}

#[test]
fn notes_are_cut_at_a_character_boundary() {
    assert_eq!(fit_note("short"), "short");
    let exact = "x".repeat(1024);
    assert_eq!(fit_note(&exact), exact, "1024 bytes fit");
    for filler in ["é", "€", "𝄞"] {
        for pad in 0..4 {
            let note = format!("{}{}", "a".repeat(pad), filler.repeat(600));
            let fitted = fit_note(&note);
            assert!(fitted.len() <= 1024 && fitted.len() > 1024 - 4 - TRUNCATED_MARKER.len());
            assert!(fitted.ends_with(TRUNCATED_MARKER));
        }
    }
}
