//! The fault run's report: per run, per fault, the longest freeze a client saw, the updates
//! lost and the regressions shown; over the runs, one table of medians against the targets.

use super::checks::EndOfRun;
use super::clients::Observers;
use super::freeze::{longest_freeze, Freeze, Key, Regression};
use super::operations::{Operation, Target};
use std::time::{Duration, Instant};

/// When one operation ran: `started` until prices moved again for every client (`ended`);
/// its freeze counts from `clock`.
pub struct Window {
    pub operation: Operation,
    pub started: Instant,
    pub clock: Instant,
    pub ended: Instant,
}

pub struct FaultResult {
    pub operation: Operation,
    pub freeze: Freeze,
    pub lost: usize,
    pub regressions: usize,
}

pub struct RunResult {
    pub faults: Vec<FaultResult>,
    pub sent: usize,
    pub lost: Vec<(Key, u64)>,
    pub lost_after_kafka: Vec<(Key, u64)>,
    pub regressions: usize,
    pub shown_regressions: Vec<Regression>,
    pub reconnects: usize,
}

impl RunResult {
    pub fn new(windows: &[Window], observers: &Observers, end: EndOfRun) -> RunResult {
        let sent = observers.sent.lock().unwrap();
        let shown: Vec<_> = observers
            .clients
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect();
        // Each moment belongs to the last window started before it.
        let window_of = |at: Instant| windows.iter().rposition(|w| w.started <= at);
        let faults = windows
            .iter()
            .enumerate()
            .map(|(index, window)| {
                let freeze = shown
                    .iter()
                    .map(|s| longest_freeze(&sent.upstream, s, window.clock, window.ended))
                    .max_by_key(|f| f.longest)
                    .unwrap_or_default();
                let lost = end
                    .lost
                    .iter()
                    .filter(|(key, version)| {
                        let at = sent.upstream.accepted[key]
                            .iter()
                            .find(|(v, _)| v == version)
                            .map(|(_, at)| *at);
                        at.and_then(window_of) == Some(index)
                    })
                    .count();
                let regressions = shown
                    .iter()
                    .flat_map(|s| &s.regressions)
                    .filter(|r| window_of(r.at) == Some(index))
                    .count();
                FaultResult {
                    operation: window.operation,
                    freeze,
                    lost,
                    regressions,
                }
            })
            .collect();
        RunResult {
            faults,
            sent: end.sent,
            lost: end.lost,
            lost_after_kafka: end.lost_after_kafka,
            regressions: shown.iter().map(|s| s.regressions.len()).sum(),
            shown_regressions: shown.iter().flat_map(|s| s.regressions.clone()).collect(),
            reconnects: observers
                .reconnects
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn print(&self, run: usize) {
        println!(
            "chaos run {run}: {} versions sent by the supplier, {} lost ({} after Kafka), {} client regressions, {} client reconnects",
            self.sent,
            self.lost.len(),
            self.lost_after_kafka.len(),
            self.regressions,
            self.reconnects,
        );
        for fault in &self.faults {
            let at = fault
                .freeze
                .key
                .as_ref()
                .map_or(String::new(), |(e, m)| format!(" ({e} {m})"));
            println!(
                "chaos run {run}: {}: freeze {}{at}, lost {}, regressions {}",
                fault.operation.name(),
                seconds(fault.freeze.longest),
                fault.lost,
                fault.regressions,
            );
        }
        for shown in &self.shown_regressions {
            println!(
                "chaos run {run}: regression: {} {} shown {} after {}",
                shown.key.0, shown.key.1, shown.shown, shown.before
            );
        }
    }
}

/// The table of the README: per fault, the median freeze over the runs against its target.
pub fn print_table(runs: &[RunResult]) {
    println!();
    println!("chaos report, {} run(s): freeze = longest time a WebSocket client showed a price after the supplier had sent a newer one", runs.len());
    println!();
    println!("| fault or operation | target | freeze, median | runs | lost | regressions | met |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (index, operation) in Operation::ALL.iter().enumerate() {
        let freezes: Vec<Duration> = runs
            .iter()
            .map(|r| r.faults[index].freeze.longest)
            .collect();
        let median = median(&freezes);
        let lost: usize = runs.iter().map(|r| r.faults[index].lost).sum();
        let regressions: usize = runs.iter().map(|r| r.faults[index].regressions).sum();
        let target = operation.target();
        let met = match target.limit() {
            Some(limit) if median <= limit && lost == 0 && regressions == 0 => "yes",
            Some(_) => "**no**",
            None if lost == 0 && regressions == 0 => "(reported)",
            None => "**no**",
        };
        let each: Vec<String> = freezes
            .iter()
            .map(|f| format!("{:.2}", f.as_secs_f64()))
            .collect();
        println!(
            "| {} | {} | {} | {} | {lost} | {regressions} | {met} |",
            operation.name(),
            target_label(target),
            seconds(median),
            each.join(", "),
        );
    }
    let sent: Vec<String> = runs.iter().map(|r| r.sent.to_string()).collect();
    let lost: usize = runs
        .iter()
        .map(|r| r.lost.len() + r.lost_after_kafka.len())
        .sum();
    let regressions: usize = runs.iter().map(|r| r.regressions).sum();
    println!();
    println!(
        "chaos report: versions sent per run {}; lost in all runs {lost}; regressions in all runs {regressions}",
        sent.join(", ")
    );
}

fn target_label(target: Target) -> String {
    match target.limit() {
        Some(limit) => format!("≤ {}", seconds(limit)),
        None => "—".to_owned(),
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}
