//! The latency budget per hop, read from the stages' own `*_hop_seconds` histograms.
//!
//! End-to-end latency says how late an update is, not where it waited. Each stage observes
//! the hops it can see (see [`odds_runtime::hops`]); the benchmark scrapes every stage before
//! and after its measured window and takes p50/p99 of what was observed in between, so a run
//! shows which hop to work on. A hop whose series a stage does not serve is reported as not
//! measured rather than as zero.

use crate::metrics_text::{count_at, Samples};
use crate::status::Scrape;
use odds_runtime::hops;
use odds_runtime::metrics::component;
use serde::Serialize;

/// One hop's latency over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HopLatency {
    pub hop: &'static str,
    /// The stage that observes it.
    pub stage: &'static str,
    /// Whether the stage serves this hop's histogram at all.
    pub measured: bool,
    /// Observations in the window.
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Every hop of [`hops::ALL`], in pipeline order, between two scrapes.
pub fn breakdown(before: &Scrape, after: &Scrape) -> Vec<HopLatency> {
    hops::ALL
        .iter()
        .map(|&(hop, owner)| {
            let (stage, before, after) = match owner {
                component::INGEST => ("odds-ingest", &before.ingest, &after.ingest),
                component::PROCESSOR => ("odds-processor", &before.processor, &after.processor),
                _ => ("odds-service", &before.service, &after.service),
            };
            hop_latency(hop, stage, &hops::metric_name(owner), before, after)
        })
        .collect()
}

fn hop_latency(
    hop: &'static str,
    stage: &'static str,
    metric: &str,
    before: &Samples,
    after: &Samples,
) -> HopLatency {
    let after = after.buckets_where(metric, hops::LABEL, hop);
    let before = before.buckets_where(metric, hops::LABEL, hop);
    let window = bucket_deltas(&before, &after);
    let count = window.last().map_or(0.0, |(_, n)| *n);
    let ms = |q| interpolated_quantile(&window, q).map(|s| round3(s * 1000.0));
    HopLatency {
        hop,
        stage,
        measured: !after.is_empty(),
        count: count as u64,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Cumulative counts observed between two scrapes of one histogram series. A series that
/// went down (its stage restarted in between) counted from zero again, so then everything
/// in `after` is new.
pub fn bucket_deltas(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let total = |b: &[(f64, f64)]| b.last().map_or(0.0, |(_, n)| *n);
    let before = if total(before) > total(after) {
        &[][..]
    } else {
        before
    };
    after
        .iter()
        .map(|(le, n)| (*le, (n - count_at(before, *le)).max(0.0)))
        .collect()
}

/// The `q` quantile (0..1) of cumulative buckets `(upper bound, count)`, interpolated
/// linearly inside the bucket it falls in, as Prometheus' `histogram_quantile` does: it
/// assumes observations spread evenly within a bucket, so the answer is only as fine as the
/// buckets (the hop buckets are fine where the targets are). The first bucket starts at 0;
/// a quantile in the `+Inf` bucket is reported as the highest finite bound, a floor.
/// `None` when nothing was observed.
pub fn interpolated_quantile(cumulative: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in cumulative {
        if n >= rank && n > lower.1 {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (n - lower.1);
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two scrapes of ingest, as its /metrics serves them: before the window 10 observations,
    /// after it 110, so the window holds 100: 40 ≤ 1 ms, 50 in (1, 2] ms, 9 in (2, 5] ms and
    /// one above 10 s. Its produce acknowledgements saw nothing.
    fn ingest_scrape(supplier_buckets: [u64; 5], sum: f64) -> String {
        let mut text = "# TYPE odds_ingest_hop_seconds histogram\n".to_owned();
        for (hop, counts) in [
            ("supplier_to_ingest", supplier_buckets),
            ("ingest_to_kafka_ack", [0; 5]),
        ] {
            for (le, count) in ["0.001", "0.002", "0.005", "10", "+Inf"].iter().zip(counts) {
                text.push_str(&format!(
                    "odds_ingest_hop_seconds_bucket{{hop=\"{hop}\",le=\"{le}\"}} {count}\n"
                ));
            }
            if hop == "supplier_to_ingest" {
                text.push_str(&format!(
                    "odds_ingest_hop_seconds_sum{{hop=\"{hop}\"}} {sum}\nodds_ingest_hop_seconds_count{{hop=\"{hop}\"}} {}\n",
                    counts[4]
                ));
            }
        }
        text
    }

    fn before() -> Scrape {
        scrape(&ingest_scrape([10, 10, 10, 10, 10], 0.005))
    }

    fn after() -> Scrape {
        scrape(&ingest_scrape([50, 100, 109, 109, 110], 30.2))
    }

    fn scrape(ingest: &str) -> Scrape {
        Scrape {
            ingest: Samples::parse(ingest),
            ..Scrape::default()
        }
    }

    #[test]
    fn percentiles_come_from_the_window_interpolated_within_buckets() {
        let hops = breakdown(&before(), &after());
        let names: Vec<_> = hops.iter().map(|h| h.hop).collect();
        let pipeline_order: Vec<_> = hops::ALL.iter().map(|(h, _)| *h).collect();
        assert_eq!(names, pipeline_order);

        let supplier = &hops[0];
        assert_eq!(supplier.stage, "odds-ingest");
        assert!(supplier.measured);
        assert_eq!(supplier.count, 100);
        // Rank 50 of 100: 10 past the 40 observations ≤ 1 ms, in a bucket of 50 spanning
        // 1..2 ms, so 1 + 10/50 ms. Counting the 10 from before the window would say 1 ms.
        assert_eq!(supplier.p50_ms, Some(1.2));
        // Rank 99: the 9th of the 9 in (2, 5] ms, i.e. its top.
        assert_eq!(supplier.p99_ms, Some(5.0));
    }

    #[test]
    fn an_idle_hop_is_measured_with_no_figures_and_a_missing_one_is_not_measured() {
        let hops = breakdown(&before(), &after());
        let ack = &hops[1];
        assert_eq!(
            (ack.hop, ack.measured, ack.count),
            ("ingest_to_kafka_ack", true, 0)
        );
        assert_eq!((ack.p50_ms, ack.p99_ms), (None, None));
        for hop in &hops[2..] {
            assert!(!hop.measured, "{hop:?}");
            assert_eq!((hop.count, hop.p50_ms), (0, None));
        }
        assert_eq!(hops[6].stage, "odds-service");
    }

    #[test]
    fn a_restarted_stage_counts_from_zero_and_the_top_bucket_is_a_floor() {
        // The "before" scrape has more than "after": the stage restarted in between.
        let after = [(0.001, 1.0), (10.0, 1.0), (f64::INFINITY, 4.0)];
        let before = [(0.001, 7.0), (10.0, 7.0), (f64::INFINITY, 9.0)];
        let window = bucket_deltas(&before, &after);
        assert_eq!(window, after);
        assert_eq!(interpolated_quantile(&window, 0.99), Some(10.0));
        let tenth = interpolated_quantile(&window, 0.1).unwrap();
        assert!((tenth - 0.0004).abs() < 1e-12, "{tenth}");
        assert_eq!(interpolated_quantile(&[], 0.5), None);
        assert_eq!(interpolated_quantile(&[(1.0, 0.0)], 0.5), None);
    }
}
