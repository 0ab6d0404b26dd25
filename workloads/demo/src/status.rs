//! The live status line: what flows through the pipeline right now, and what a client sees
//! of it (the freshness canary's p99 age and longest freeze, the figures the operator puts
//! in a pipeline's status).

use crate::launcher::Launcher;
use crate::metrics_text::{quantile_between, Samples};
use odds_testkit::http_get;
use std::time::Instant;

/// The metrics the status line reads, in one list. Each is also queried by the dashboards
/// (`charts/odds-operator/dashboards/queried-metrics.txt`, tested below), whose names the
/// stages' tests check they register: renaming a metric fails a test instead of blanking a
/// column.
pub mod metric {
    pub const INGEST_PRODUCED: &str = "odds_ingest_updates_produced_total";
    pub const INGEST_DLQ: &str = "odds_ingest_dlq_total";
    pub const PROC_CONSUMED: &str = "odds_proc_messages_consumed_total";
    pub const PROC_LAG: &str = "odds_proc_consumer_lag";
    pub const PROC_AGE: &str = "odds_proc_update_age_seconds";
    pub const PROC_DEAD_LETTERED: &str = "odds_proc_dead_lettered_total";
    pub const WS_CONNECTIONS: &str = "odds_ws_connections";
    pub const WS_SENT: &str = "odds_ws_messages_sent_total";
    pub const ALL: [&str; 8] = [
        INGEST_PRODUCED,
        INGEST_DLQ,
        PROC_CONSUMED,
        PROC_LAG,
        PROC_AGE,
        PROC_DEAD_LETTERED,
        WS_CONNECTIONS,
        WS_SENT,
    ];
}

/// Metrics of every stage at one moment.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub ingest: Samples,
    pub processor: Samples,
    pub service: Samples,
    pub simulator: Samples,
}

impl Scrape {
    pub async fn take(launcher: &Launcher) -> Scrape {
        let get = |name: &'static str| async move {
            match launcher.child(name) {
                Some(child) => match http_get(child.ops_addr, "/metrics").await {
                    Ok(r) => Samples::parse(&r.body),
                    Err(_) => Samples::default(),
                },
                None => Samples::default(),
            }
        };
        Scrape {
            ingest: get("odds-ingest").await,
            processor: get("odds-processor").await,
            service: get("odds-service").await,
            simulator: get("supplier-simulator").await,
        }
    }
}

/// Turns consecutive scrapes into rates and percentiles.
#[derive(Default)]
pub struct StatusBoard {
    last: Option<(Instant, Scrape)>,
    canary: Option<odds_canary::Canary>,
}

/// Who the local run's canaries name as their figures' source on the odds page.
pub const CANARY_PUBLISHER: &str = "odds-demo";

/// The local run's freshness canary: a client like any other of `launcher`'s odds-service,
/// following every event, summarising over `window`, and publishing its figures to the
/// pipeline's Redis, where the odds page reads them (`GET /v1/freshness`): the page and the
/// status line show one canary's figures. Must be called inside a tokio runtime.
pub fn start_canary(
    launcher: &Launcher,
    window: std::time::Duration,
    publisher: &str,
) -> Result<odds_canary::Canary, odds_canary::client::BadRedisUrl> {
    let mut canary = odds_canary::Canary::start(odds_canary::CanaryConfig {
        url: format!("ws://{}/ws/odds", launcher.service_addr),
        sample: vec![odds_contracts::ws::ALL_EVENTS.to_string()],
        window,
    });
    canary.publish_to(&launcher.infra.redis_url, publisher)?;
    Ok(canary)
}

/// The canary's part of the line: `canary p99 12ms freeze 0.00s`, or why it has none.
pub fn canary_figures(summary: &odds_canary::Summary) -> String {
    let freeze = summary.longest_freeze.as_secs_f64();
    match (summary.p99_ms, &summary.sight) {
        (_, odds_canary::Sight::Blind { why, .. }) => {
            format!("canary blind {freeze:.2}s ({})", why.describe())
        }
        (Some(p99), _) => format!("canary p99 {p99}ms freeze {freeze:.2}s"),
        (None, _) => format!("canary p99 - freeze {freeze:.2}s"),
    }
}

impl StatusBoard {
    /// A board whose line also shows `canary`'s figures.
    pub fn with_canary(canary: odds_canary::Canary) -> StatusBoard {
        StatusBoard {
            last: None,
            canary: Some(canary),
        }
    }

    pub async fn line(&mut self, launcher: &Launcher) -> String {
        let now = Instant::now();
        let scrape = Scrape::take(launcher).await;
        let line = match &self.last {
            Some((then, before)) => {
                let secs = now.duration_since(*then).as_secs_f64().max(0.001);
                let rate = |after: &Samples, before: &Samples, name: &str| {
                    (after.sum(name) - before.sum(name)) / secs
                };
                let age = quantile_between(
                    &before.processor.buckets(metric::PROC_AGE),
                    &scrape.processor.buckets(metric::PROC_AGE),
                    0.99,
                );
                format!(
                    "in {:>7.0}/s | out {:>7.0}/s | lag {:>6.0} | clients {:>5.0} | sent to clients {:>8.0}/s | p99 age {} | dlq {:.0}",
                    rate(&scrape.ingest, &before.ingest, metric::INGEST_PRODUCED),
                    rate(&scrape.processor, &before.processor, metric::PROC_CONSUMED),
                    scrape.processor.sum(metric::PROC_LAG).max(0.0),
                    scrape.service.sum(metric::WS_CONNECTIONS),
                    rate(&scrape.service, &before.service, metric::WS_SENT),
                    age.map_or_else(|| "-".to_owned(), |s| format!("≤{:.0} ms", s * 1000.0)),
                    scrape.ingest.sum(metric::INGEST_DLQ)
                        + scrape.processor.sum(metric::PROC_DEAD_LETTERED),
                )
            }
            None => "collecting figures…".to_owned(),
        };
        self.last = Some((now, scrape));
        match &self.canary {
            Some(canary) => format!("{line} | {}", canary_figures(&canary.summary())),
            None => line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{canary_figures, metric};
    use odds_canary::{Blindness, Sight, Summary};
    use std::time::Duration;

    #[test]
    fn the_line_shows_the_canarys_p99_and_freeze_or_why_it_is_blind() {
        let mut summary = Summary {
            measured_at: chrono::Utc::now(),
            window: Duration::from_secs(60),
            frames_sampled: 10,
            p50_ms: Some(4),
            p99_ms: Some(12),
            longest_freeze: Duration::from_millis(210),
            longest_freeze_key: None,
            supplier_skew_p50_ms: None,
            sight: Sight::Watching,
        };
        assert_eq!(canary_figures(&summary), "canary p99 12ms freeze 0.21s");
        summary.sight = Sight::Blind {
            since: chrono::Utc::now(),
            why: Blindness::NotLive("no processor heartbeat".into()),
        };
        assert_eq!(
            canary_figures(&summary),
            "canary blind 0.21s (odds-service says live updates stopped: no processor heartbeat)"
        );
    }

    #[test]
    fn every_metric_the_status_line_reads_is_in_the_dashboards_list() {
        let queried = odds_runtime::metrics::queried_names(odds_runtime::metrics::QUERIED_METRICS);
        for name in metric::ALL {
            assert!(
                queried.contains(&name),
                "{name} is not in queried-metrics.txt"
            );
        }
    }
}
