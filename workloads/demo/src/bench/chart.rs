//! The benchmark's picture: an SVG written next to its JSON.
//!
//! People compare runs by looking. The chart shows, from the report alone: the latency
//! percentiles of every run (`--runs`), the median run's p50/p99 per hop (where an update
//! waited), and, for `--find-max`, the throughput and latency at each offered rate (where
//! the pipeline stopped keeping up). Drawn with `plotters`' SVG backend only, so it needs
//! no fonts or system libraries; the viewer renders the text.

use super::report::{BenchReport, RateStep};
use plotters::coord::Shift;
use plotters::prelude::*;

const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 320;
const PERCENTILE_COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(100, 100, 100),
];

/// Why the chart could not be drawn (plotters' own error, in words).
#[derive(Debug, thiserror::Error)]
#[error("drawing the benchmark chart: {0}")]
pub struct ChartError(String);

fn drawing<E: std::fmt::Display>(error: E) -> ChartError {
    ChartError(error.to_string())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The SVG text of the chart of `report`.
pub fn render(report: &BenchReport) -> Result<String, ChartError> {
    let panels = if report.find_max_steps.is_empty() {
        2
    } else {
        3
    };
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, PANEL_HEIGHT * panels)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let areas = root.split_evenly((panels as usize, 1));
        latency_per_run(&areas[0], report)?;
        hop_breakdown(&areas[1], report)?;
        if let Some(area) = areas.get(2) {
            let halves = area.split_evenly((1, 2));
            throughput_by_rate(&halves[0], &report.find_max_steps)?;
            latency_by_rate(&halves[1], &report.find_max_steps, report.max_p99_ms)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// A log axis from just below the smallest to just above the largest positive value.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !low.is_finite() {
        return 0.1..10.0;
    }
    (low / 2.0).max(0.01)..(high * 2.0).max(low * 4.0)
}

/// p50 / p99 / p99.9 / max of each run, on a log scale (one point per run when single).
fn latency_per_run(area: &Area<'_>, report: &BenchReport) -> Result<(), ChartError> {
    let runs: Vec<[f64; 4]> = if report.runs.is_empty() {
        vec![percentiles(&report.latency_ms)]
    } else {
        report
            .runs
            .iter()
            .map(|r| percentiles(&r.latency_ms))
            .collect()
    };
    let y = log_range(runs.iter().flatten().copied());
    let caption = format!(
        "end-to-end latency per run at {}/s, {} clients ({})",
        report.rate_target, report.ws_clients, report.kafka
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..runs.len() as f64 + 0.5, y.log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_labels(runs.len().max(2))
        .x_label_formatter(&|x| format!("run {}", x.round()))
        .y_desc("ms (log)")
        .draw()
        .map_err(drawing)?;
    for (i, name) in ["p50", "p99", "p99.9", "max"].into_iter().enumerate() {
        let colour = PERCENTILE_COLOURS[i];
        let points: Vec<(f64, f64)> = runs
            .iter()
            .enumerate()
            .map(|(run, p)| (run as f64 + 1.0, p[i]))
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .collect();
        line_with_points(&mut chart, points, colour, name)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn percentiles(l: &super::report::Latency) -> [f64; 4] {
    [l.p50, l.p99, l.p999, l.max]
}

/// p50 and p99 of every measured hop of the median run, as horizontal bars (log scale), the
/// first hop on top.
fn hop_breakdown(area: &Area<'_>, report: &BenchReport) -> Result<(), ChartError> {
    let hops: Vec<(&str, f64, f64)> = report
        .hops
        .iter()
        .filter_map(|h| Some((h.hop, h.p50_ms?, h.p99_ms?)))
        .collect();
    let x = log_range(hops.iter().flat_map(|(_, p50, p99)| [*p50, *p99]));
    let floor = x.start;
    let names: Vec<String> = hops.iter().map(|(name, _, _)| (*name).to_owned()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "where an update waits: p50 / p99 per hop (median run)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(210)
        .build_cartesian_2d(x.log_scale(), -0.5f64..hops.len().max(1) as f64 - 0.5)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .y_labels(hops.len().max(1))
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            let from_top = names.len() as f64 - 1.0 - i;
            if from_top < 0.0 {
                return String::new();
            }
            names.get(from_top as usize).cloned().unwrap_or_default()
        })
        .x_desc("ms (log)")
        .draw()
        .map_err(drawing)?;
    for (band, name, colour) in [
        (0usize, "p50", PERCENTILE_COLOURS[0]),
        (1, "p99", PERCENTILE_COLOURS[1]),
    ] {
        let count = hops.len();
        let bars = hops.iter().enumerate().map(move |(i, (_, p50, p99))| {
            let value = if band == 0 { *p50 } else { *p99 };
            let row = (count - 1 - i) as f64;
            let top = row + 0.05 - band as f64 * 0.35;
            Rectangle::new(
                [(floor, top), (value.max(floor), top + 0.3)],
                colour.filled(),
            )
        });
        chart
            .draw_series(bars)
            .map_err(drawing)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], colour.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Sustained updates/s against the offered rate, with the line where they are equal.
fn throughput_by_rate(area: &Area<'_>, steps: &[RateStep]) -> Result<(), ChartError> {
    let top = steps
        .iter()
        .map(|s| f64::from(s.rate_target).max(s.updates_per_sec))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "--find-max: sustained vs offered updates/s",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..top, 0.0..top)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("offered updates/s")
        .y_desc("persisted updates/s")
        .draw()
        .map_err(drawing)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (top, top)],
            RGBColor(180, 180, 180),
        ))
        .map_err(drawing)?
        .label("offered = sustained")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(180, 180, 180)));
    let points: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (f64::from(s.rate_target), s.updates_per_sec))
        .collect();
    let colour = PERCENTILE_COLOURS[0];
    chart
        .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
        .map_err(drawing)?
        .label("sustained (median run)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    chart
        .draw_series(steps.iter().zip(points).map(|(step, p)| {
            let marker = if step.held {
                colour.filled()
            } else {
                PERCENTILE_COLOURS[2].filled()
            };
            Circle::new(p, 5, marker)
        }))
        .map_err(drawing)?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// p50 and p99 latency against the offered rate (log scale), with the p99 limit.
fn latency_by_rate(area: &Area<'_>, steps: &[RateStep], max_p99_ms: f64) -> Result<(), ChartError> {
    let top = steps
        .iter()
        .map(|s| f64::from(s.rate_target))
        .fold(1.0, f64::max)
        * 1.1;
    let y = log_range(
        steps
            .iter()
            .flat_map(|s| [s.p50_ms, s.p99_ms])
            .chain([max_p99_ms]),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            "--find-max: latency vs offered updates/s",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..top, y.log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("offered updates/s")
        .y_desc("ms (log)")
        .draw()
        .map_err(drawing)?;
    let limit = PERCENTILE_COLOURS[3];
    chart
        .draw_series(LineSeries::new(
            [(0.0, max_p99_ms), (top, max_p99_ms)],
            limit,
        ))
        .map_err(drawing)?
        .label("p99 limit")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], limit));
    for (i, name) in ["p50", "p99"].into_iter().enumerate() {
        let colour = PERCENTILE_COLOURS[i];
        let points: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| {
                (
                    f64::from(s.rate_target),
                    if i == 0 { s.p50_ms } else { s.p99_ms },
                )
            })
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .collect();
        line_with_points(&mut chart, points, colour, name)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// One labelled series: the line through `points`, and a dot on each.
fn line_with_points<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    name: &str,
) -> Result<(), ChartError>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
        .map_err(drawing)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, colour.filled())),
        )
        .map_err(drawing)?;
    Ok(())
}

fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<(), ChartError>
where
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)
}

/// Writes the chart of `report` to `path`.
pub fn write(path: &std::path::Path, report: &BenchReport) -> anyhow::Result<()> {
    use anyhow::Context;
    let svg = render(report)?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::hops::HopLatency;
    use crate::bench::report::tests::{hop, report};
    use crate::bench::report::{Latency, RunFigures};

    fn run(p50: f64) -> RunFigures {
        RunFigures {
            latency_ms: Latency {
                p50,
                p99: p50 * 3.0,
                p999: p50 * 4.0,
                max: p50 * 5.0,
            },
            lost: 0,
            shortfall: Vec::new(),
            updates_per_sec: 1000.0,
            deliveries_per_sec: 900.0,
            service_cpu_us_per_delivery: None,
            idle_share: Some(0.5),
        }
    }

    #[test]
    fn the_chart_shows_every_run_and_every_measured_hop() {
        let mut r = report(0.5, "on");
        r.runs = vec![run(5.0), run(7.0), run(6.0)];
        r.hops = vec![
            hop("supplier_to_ingest", 0.2, 4.0),
            hop("ingest_to_kafka_ack", 3.0, 11.0),
            HopLatency {
                measured: false,
                p50_ms: None,
                p99_ms: None,
                ..hop("kafka_to_processor", 0.0, 0.0)
            },
        ];
        let svg = render(&r).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("end-to-end latency per run at 1000/s"));
        assert!(svg.contains("ingest_to_kafka_ack") && svg.contains("supplier_to_ingest"));
        assert!(
            !svg.contains("kafka_to_processor"),
            "an unmeasured hop has no bar"
        );
        assert!(svg.contains("run 3"));
        assert!(
            !svg.contains("--find-max"),
            "no rate panel without --find-max"
        );
    }

    #[test]
    fn find_max_adds_throughput_and_latency_against_the_offered_rate() {
        let mut r = report(0.5, "on");
        let step = |rate: u32, sustained: f64, p99: f64, held: bool| RateStep {
            rate_target: rate,
            updates_per_sec: sustained,
            p50_ms: p99 / 3.0,
            p99_ms: p99,
            held,
            why_not: Vec::new(),
        };
        r.find_max_steps = vec![
            step(20_000, 20_100.0, 40.0, true),
            step(30_000, 30_050.0, 90.0, true),
            step(45_000, 38_000.0, 900.0, false),
        ];
        let svg = render(&r).unwrap();
        assert!(svg.contains("--find-max: sustained vs offered updates/s"));
        assert!(svg.contains("--find-max: latency vs offered updates/s"));
        assert!(svg.contains("p99 limit"));
    }

    #[test]
    fn a_run_without_deliveries_or_hops_still_draws() {
        let mut r = report(0.5, "on");
        r.latency_ms = Latency {
            p50: f64::NAN,
            p99: f64::NAN,
            p999: f64::NAN,
            max: f64::NAN,
        };
        assert!(render(&r).unwrap().contains("</svg>"));
    }
}
