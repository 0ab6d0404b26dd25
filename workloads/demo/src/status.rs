//! The live status line: what flows through the pipeline right now.

use crate::launcher::Launcher;
use crate::metrics_text::{quantile_between, Samples};
use odds_testkit::http_get;
use std::time::Instant;

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
}

impl StatusBoard {
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
                    &before.processor.buckets("odds_proc_update_age_seconds"),
                    &scrape.processor.buckets("odds_proc_update_age_seconds"),
                    0.99,
                );
                format!(
                    "in {:>7.0}/s | out {:>7.0}/s | lag {:>6.0} | clients {:>5.0} | sent to clients {:>8.0}/s | p99 age {} | dlq {:.0}",
                    rate(&scrape.ingest, &before.ingest, "odds_ingest_updates_produced_total"),
                    rate(&scrape.processor, &before.processor, "odds_proc_messages_consumed_total"),
                    scrape.processor.sum("odds_proc_consumer_lag").max(0.0),
                    scrape.service.sum("odds_ws_connections"),
                    rate(&scrape.service, &before.service, "odds_ws_messages_sent_total"),
                    age.map_or_else(|| "-".to_owned(), |s| format!("≤{:.0} ms", s * 1000.0)),
                    scrape.ingest.sum("odds_ingest_dlq_total")
                        + scrape.processor.sum("odds_proc_dead_lettered_total"),
                )
            }
            None => "collecting figures…".to_owned(),
        };
        self.last = Some((now, scrape));
        line
    }
}
