//! Freshness in the status, from a fed canary: `status.freshness`, the `Fresh` condition and
//! its transitions (Events on each), the metrics, and the canary's life with the pipeline
//! (started when valid, stopped when paused, invalid or deleted).

use crate::fixtures::{assert_contains, sample, NS};
use crate::harness::{harness, Harness};
use chrono::TimeZone;
use odds_canary::{Blindness, Sight, Summary};
use serde_json::json;
use std::time::Duration;

const KEY: &str = "default/demo";

fn summary(p99_ms: Option<u64>, freeze_ms: u64, sight: Sight) -> Summary {
    Summary {
        measured_at: chrono::Utc
            .with_ymd_and_hms(2027, 1, 15, 8, 0, 0)
            .single()
            .unwrap(),
        window: Duration::from_secs(300),
        frames_sampled: if p99_ms.is_some() { 4_000 } else { 0 },
        p50_ms: p99_ms.map(|p| p / 3),
        p99_ms,
        longest_freeze: Duration::from_millis(freeze_ms),
        longest_freeze_key: (freeze_ms > 0).then(|| ("MATCH_001".into(), "1X2".into())),
        supplier_skew_p50_ms: Some(2),
        sight,
    }
}

async fn reconciled() -> Harness {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    assert!(
        h.ctx.canaries.measures(KEY),
        "a valid pipeline gets its canary"
    );
    h
}

/// The canary measured `summary`, and the operator has read it.
async fn measured(h: &Harness, summary: Summary) {
    h.ctx.canaries.feed(KEY, summary);
    h.refresh_freshness().await;
}

async fn fresh_summary(h: &Harness) -> String {
    h.pipeline()
        .await
        .status
        .and_then(|s| s.freshness)
        .map(|f| f.summary)
        .unwrap_or_default()
}

/// `odds_operator_<name>{namespace="default",pipeline="demo"}` as exposed.
fn series(h: &Harness, name: &str) -> Option<f64> {
    let families = h.registry.registry().gather();
    let family = families.iter().find(|f| f.name() == name)?;
    family
        .get_metric()
        .iter()
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "pipeline" && l.value() == "demo")
                && m.get_label()
                    .iter()
                    .any(|l| l.name() == "namespace" && l.value() == NS)
        })
        .map(|m| {
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            }
        })
}

#[tokio::test]
async fn fresh_follows_the_canary_through_frozen_and_stale_and_back_with_events() {
    let h = reconciled().await;
    // Nothing measured yet: no figures and no verdict.
    let status = h.status().await;
    assert!(status.freshness.is_none());
    assert!(!status.conditions.iter().any(|c| c.type_ == "Fresh"));

    measured(&h, summary(Some(90), 150, Sight::Watching)).await;
    let fresh = h.assert_condition("Fresh", "True", "WithinObjective").await;
    assert_contains(&fresh.message, "p99 age 90ms (objective 250ms)");
    assert_eq!(fresh_summary(&h).await, "90ms");
    let freshness = h.status().await.freshness.unwrap();
    assert_eq!(
        (freshness.p50_ms, freshness.p99_ms, freshness.frames_sampled),
        (Some(30), Some(90), 4_000)
    );
    assert_eq!(freshness.measured_at, "2027-01-15T08:00:00Z");
    assert_eq!(freshness.window, "5m");
    assert_eq!(
        h.event_count("WithinObjective").await,
        0,
        "a good start is not news"
    );

    // The processor is killed: odds-service says live updates stopped, and the freeze in
    // progress passes slo.maxFreezeSeconds.
    let stopped = Sight::Blind {
        since: chrono::Utc::now(),
        why: Blindness::NotLive("no processor heartbeat for 3s".into()),
    };
    let mut frozen = summary(Some(90), 7_300, stopped);
    frozen.longest_freeze_key = None;
    measured(&h, frozen).await;
    let condition = h.assert_condition("Fresh", "False", "Frozen").await;
    assert_contains(
        &condition.message,
        "7.3s (in progress: odds-service says live updates stopped: no processor heartbeat for 3s)",
    );
    assert_eq!(fresh_summary(&h).await, "frozen 7.3s");
    assert_eq!(h.event_count("Frozen").await, 1);
    assert_eq!(
        series(&h, "odds_operator_canary_longest_freeze_seconds"),
        Some(7.3)
    );
    assert_eq!(series(&h, "odds_operator_canary_watching"), Some(0.0));
    assert_eq!(
        series(&h, "odds_operator_slo_max_freeze_seconds"),
        Some(5.0)
    );

    // The same verdict again is not news; a reconcile keeps the verdict and its time.
    h.refresh_freshness().await;
    h.reconcile().await;
    let again = h.assert_condition("Fresh", "False", "Frozen").await;
    assert_eq!(again.last_transition_time, condition.last_transition_time);
    assert_eq!(h.event_count("Frozen").await, 1);

    // Prices flow again, but late.
    measured(&h, summary(Some(900), 1_000, Sight::Watching)).await;
    let stale = h.assert_condition("Fresh", "False", "Stale").await;
    assert_contains(&stale.message, "p99 age 900ms");
    assert_eq!(h.event_count("Stale").await, 1);

    // And on time again.
    measured(&h, summary(Some(60), 200, Sight::Watching)).await;
    h.assert_condition("Fresh", "True", "WithinObjective").await;
    assert_eq!(h.event_count("WithinObjective").await, 1);
    let recovered = h
        .events()
        .await
        .into_iter()
        .find(|(_, reason, _)| reason == "WithinObjective")
        .unwrap();
    assert_eq!(recovered.0, "Normal");
}

/// The canary's figures go to the Redis the pipeline's Secret names (for the odds page), and
/// follow a rotated Secret; the URL never shows in a log line.
#[tokio::test]
async fn the_canary_publishes_to_the_redis_of_the_pipelines_secret() {
    let h = reconciled().await;
    let target = h
        .ctx
        .canaries
        .publishes_to(KEY)
        .expect("a publication target");
    assert_eq!(target.0, "redis://redis:6379");
    assert_eq!(format!("{target:?}"), "RedisUrl(<from its Secret>)");
    let rotated = json!({"stringData": {"url": "redis://:rotated@redis-2:6379"}});
    h.change_secret("odds-redis", rotated).await;
    assert_eq!(
        h.ctx.canaries.publishes_to(KEY).map(|url| url.0),
        Some("redis://:rotated@redis-2:6379".to_string())
    );
}

#[tokio::test]
async fn an_unreachable_service_and_no_data_are_said_apart() {
    let h = reconciled().await;
    let unreachable = Sight::Blind {
        since: chrono::Utc::now(),
        why: Blindness::Unreachable("failed to lookup address information".into()),
    };
    measured(&h, summary(None, 0, unreachable)).await;
    let condition = h
        .assert_condition("Fresh", "False", "CanaryUnreachable")
        .await;
    assert_contains(&condition.message, "failed to lookup");
    assert_eq!(fresh_summary(&h).await, "unreachable");

    measured(&h, summary(None, 0, Sight::Watching)).await;
    h.assert_condition("Fresh", "False", "NoData").await;
    assert_eq!(fresh_summary(&h).await, "no data");
}

#[tokio::test]
async fn a_bad_objective_is_an_invalid_spec_and_stops_the_canary() {
    let h = reconciled().await;
    h.change(json!({"spec": {"slo": {"window": "30s", "freshnessP99Ms": 0}}}))
        .await;
    let degraded = h
        .assert_degraded("InvalidSpec", "slo.freshnessP99Ms (0) must be 1 to 60000")
        .await;
    assert_contains(&degraded.message, "slo.window (30s) must be from 1m to 24h");
    assert!(!h.ctx.canaries.measures(KEY));
    // Fixed: measured again, with the new objective.
    h.change(json!({"spec": {"slo": {"window": "1h", "freshnessP99Ms": 100}}}))
        .await;
    assert!(h.ctx.canaries.measures(KEY));
    measured(&h, summary(Some(150), 0, Sight::Watching)).await;
    let stale = h.assert_condition("Fresh", "False", "Stale").await;
    assert_contains(&stale.message, "above slo.freshnessP99Ms 100ms");
    assert_eq!(h.status().await.freshness.unwrap().window, "1h");
}

#[tokio::test]
async fn pausing_or_deleting_the_pipeline_stops_its_canary() {
    let h = reconciled().await;
    h.change(json!({"spec": {"paused": true}})).await;
    assert!(!h.ctx.canaries.measures(KEY), "paused");
    h.change(json!({"spec": {"paused": false}})).await;
    assert!(h.ctx.canaries.measures(KEY), "resumed");
    measured(&h, summary(Some(90), 0, Sight::Watching)).await;
    assert!(series(&h, "odds_operator_canary_age_p99_seconds").is_some());
    h.delete_pipeline().await;
    // Nothing reconciles a deleted pipeline: the next refresh finds it gone (404), stops
    // measuring it and drops its series.
    measured(&h, summary(Some(95), 0, Sight::Watching)).await;
    assert!(!h.ctx.canaries.measures(KEY), "deleted");
    assert_eq!(series(&h, "odds_operator_canary_age_p99_seconds"), None);
}
