//! The freshness objective judged: from the canary's summary and `spec.slo` to
//! `status.freshness` and the `Fresh` condition. Pure, like [`crate::status`]: the same
//! summary and objective give the same status, so it is unit-tested with made-up figures.
//!
//! Why the operator measures at all: every other signal of a pipeline is internal (pods
//! ready, lag, hop histograms) and can look fine while clients stare at old prices. The
//! leader therefore runs one canary client per pipeline ([`crate::canaries`]) against the
//! pipeline's odds-service Service, as a client would, and the verdict is about what that
//! client saw. Running it inside the leader, rather than as a Deployment per pipeline,
//! needs no extra image, pod or RBAC, and the status it feeds is the leader's to write
//! anyway; the price is that a freshness figure exists only while an operator leads, and
//! that the NetworkPolicy of odds-service must admit the operator (`build::networkpolicy`).
//!
//! The verdict, most urgent first: `CanaryUnreachable` (the canary cannot connect: nothing
//! else can be judged), `Frozen` (a freeze longer than `maxFreezeSeconds`, one in progress
//! included), `NoData` (no price with an age in the window), `Stale` (p99 age above
//! `freshnessP99Ms`), else `WithinObjective`. The judgement itself is the canary crate's
//! ([`odds_canary::verdict`]), shared with the fault run that proves it on the real binaries;
//! this module gives it the `Fresh` condition's reasons and words.

use crate::crd::MAX_SAMPLE_EVENTS;
use crate::crd::{FreshnessStatus, Reason, SloSpec, MAX_FREEZE_SECONDS, MAX_FRESHNESS_P99_MS};
use odds_canary::verdict::{judge, Thresholds, Verdict};
use odds_canary::{Sight, Summary};
use std::time::Duration;

/// Shortest and longest `slo.window`.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// `spec.slo`, checked and in the units the judgement uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Objective {
    pub p99: Duration,
    pub max_freeze: Duration,
    pub window: Duration,
    pub sample: Vec<String>,
}

impl Objective {
    /// The objective of `slo`, or every problem with it (the same rules as the CRD schema's,
    /// for a cluster that does not enforce them).
    pub fn of(slo: &SloSpec) -> Result<Objective, Vec<String>> {
        let problems = slo_problems(slo);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Objective {
            p99: Duration::from_millis(u64::try_from(slo.freshness_p99_ms).unwrap_or(1)),
            max_freeze: Duration::from_secs(u64::try_from(slo.max_freeze_seconds).unwrap_or(1)),
            window: parse_window(&slo.window).unwrap_or(MIN_WINDOW),
            sample: slo.sample.clone(),
        })
    }

    /// The thresholds the canary's verdict is judged by.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            p99: self.p99,
            max_freeze: self.max_freeze,
        }
    }
}

/// What is wrong with `slo`, one message per problem.
pub fn slo_problems(slo: &SloSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if !(1..=MAX_FRESHNESS_P99_MS).contains(&slo.freshness_p99_ms) {
        problems.push(format!(
            "slo.freshnessP99Ms ({}) must be 1 to {MAX_FRESHNESS_P99_MS} milliseconds",
            slo.freshness_p99_ms
        ));
    }
    if !(1..=MAX_FREEZE_SECONDS).contains(&slo.max_freeze_seconds) {
        problems.push(format!(
            "slo.maxFreezeSeconds ({}) must be 1 to {MAX_FREEZE_SECONDS} seconds",
            slo.max_freeze_seconds
        ));
    }
    match parse_window(&slo.window) {
        Some(window) if (MIN_WINDOW..=MAX_WINDOW).contains(&window) => {}
        Some(_) => problems.push(format!(
            "slo.window ({}) must be from 1m to 24h",
            slo.window
        )),
        None => problems.push(format!(
            "slo.window ({:?}) must be whole seconds, minutes or hours such as 5m or 1h30m",
            slo.window
        )),
    }
    if slo.sample.is_empty() || slo.sample.len() > MAX_SAMPLE_EVENTS {
        problems.push(format!(
            "slo.sample must name 1 to {MAX_SAMPLE_EVENTS} event ids (or \"*\" for every event)"
        ));
    }
    for event in &slo.sample {
        if event != odds_contracts::ws::ALL_EVENTS {
            if let Err(why) = odds_contracts::validate_event_id(event) {
                problems.push(format!("slo.sample: {event:?} is not an event id: {why}"));
            }
        }
    }
    problems
}

/// A duration of the form `1h30m`, `5m`, `90s` (Go's units `h`, `m`, `s`, whole numbers).
pub fn parse_window(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(digit))?,
            );
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    if number.is_some() || text.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// The `Fresh` condition: whether it holds, why, and what to tell the user. The verdict is
/// the canary crate's ([`odds_canary::verdict`], which the fault run asserts too); this maps
/// it to the condition's reason and words.
pub fn fresh_condition(summary: &Summary, objective: &Objective) -> (bool, Reason, String) {
    let window = format_window(objective.window);
    match judge(summary, &objective.thresholds()) {
        Verdict::CanaryUnreachable(error) => (
            false,
            Reason::CanaryUnreachable,
            format!("the canary cannot connect to the odds-service Service: {error}"),
        ),
        Verdict::Frozen => {
            let r#where = match (&summary.sight, &summary.longest_freeze_key) {
                (Sight::Blind { why, .. }, None) => format!("in progress: {}", why.describe()),
                (_, Some((event, market))) => format!("on {event} {market}"),
                (_, None) => "on a market".to_string(),
            };
            (
                false,
                Reason::Frozen,
                format!(
                    "a price stayed frozen for {} ({where}), longer than slo.maxFreezeSeconds {}s",
                    format_seconds(summary.longest_freeze),
                    objective.max_freeze.as_secs()
                ),
            )
        }
        Verdict::NoData => {
            let why = match &summary.sight {
                Sight::Blind { why, .. } => why.describe(),
                Sight::Starting => "the canary has not connected yet".into(),
                Sight::Watching => "no price changed, or ingest does not stamp ingested_at".into(),
            };
            (
                false,
                Reason::NoData,
                format!("the canary received no price with an age in the last {window}: {why}"),
            )
        }
        Verdict::Stale { p99_ms } => (
            false,
            Reason::Stale,
            format!(
                "p99 age {p99_ms}ms over the last {window} is above slo.freshnessP99Ms {}ms (p50 {}ms, {} prices)",
                objective.p99.as_millis(),
                summary.p50_ms.unwrap_or(0),
                summary.frames_sampled
            ),
        ),
        Verdict::WithinObjective => (
            true,
            Reason::WithinObjective,
            format!(
                "p99 age {}ms (objective {}ms), longest freeze {} (at most {}s), over the last {window} ({} prices)",
                summary.p99_ms.unwrap_or(0),
                objective.p99.as_millis(),
                format_seconds(summary.longest_freeze),
                objective.max_freeze.as_secs(),
                summary.frames_sampled
            ),
        ),
    }
}

/// `status.freshness` of `summary`, measured over `slo.window` as the user wrote it.
pub fn freshness_status(summary: &Summary, objective: &Objective, window: &str) -> FreshnessStatus {
    let as_i64 = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
    let (fresh, reason, _) = fresh_condition(summary, objective);
    let text = match (fresh, reason, summary.p99_ms) {
        (_, Reason::CanaryUnreachable, _) => "unreachable".to_string(),
        (_, Reason::Frozen, _) => format!("frozen {}", format_seconds(summary.longest_freeze)),
        (_, _, Some(p99)) => format!("{p99}ms"),
        (_, _, None) => "no data".to_string(),
    };
    FreshnessStatus {
        p50_ms: summary.p50_ms.map(as_i64),
        p99_ms: summary.p99_ms.map(as_i64),
        // Milliseconds are what the canary resolves; more digits would only churn the status.
        longest_freeze_seconds: summary.longest_freeze.as_millis() as f64 / 1000.0,
        frames_sampled: i64::try_from(summary.frames_sampled).unwrap_or(i64::MAX),
        supplier_skew_ms: summary.supplier_skew_p50_ms,
        measured_at: summary
            .measured_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        window: window.to_string(),
        summary: text,
    }
}

/// `6.2s`, `0.04s`: a freeze as people read it.
pub fn format_seconds(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds >= 10.0 {
        format!("{seconds:.0}s")
    } else if seconds >= 1.0 {
        format!("{seconds:.1}s")
    } else {
        format!("{seconds:.2}s")
    }
}

fn format_window(window: Duration) -> String {
    let seconds = window.as_secs();
    match (seconds % 3600, seconds % 60) {
        (0, _) => format!("{}h", seconds / 3600),
        (_, 0) => format!("{}m", seconds / 60),
        _ => format!("{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use odds_canary::Blindness;

    fn objective() -> Objective {
        Objective::of(&SloSpec::default()).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn summary(p99: Option<u64>, freeze_ms: u64, sight: Sight) -> Summary {
        Summary {
            measured_at: chrono::Utc
                .with_ymd_and_hms(2026, 12, 6, 12, 0, 0)
                .single()
                .unwrap_or_default(),
            window: Duration::from_secs(300),
            frames_sampled: if p99.is_some() { 1000 } else { 0 },
            p50_ms: p99.map(|p| p / 2),
            p99_ms: p99,
            longest_freeze: Duration::from_millis(freeze_ms),
            longest_freeze_key: (freeze_ms > 0).then(|| ("E1".into(), "1X2".into())),
            supplier_skew_p50_ms: Some(3),
            sight,
        }
    }

    #[test]
    fn within_the_objective_is_fresh() {
        let (fresh, reason, message) =
            fresh_condition(&summary(Some(80), 200, Sight::Watching), &objective());
        assert!(fresh);
        assert_eq!(reason, Reason::WithinObjective);
        assert!(
            message.contains("p99 age 80ms (objective 250ms)"),
            "{message}"
        );
        let status = freshness_status(&summary(Some(80), 200, Sight::Watching), &objective(), "5m");
        assert_eq!(status.summary, "80ms");
        assert_eq!(status.p50_ms, Some(40));
        assert_eq!(status.longest_freeze_seconds, 0.2);
        assert_eq!(status.measured_at, "2026-12-06T12:00:00Z");
    }

    #[test]
    fn a_p99_above_the_objective_is_stale() {
        let (fresh, reason, message) =
            fresh_condition(&summary(Some(400), 0, Sight::Watching), &objective());
        assert!(!fresh);
        assert_eq!(reason, Reason::Stale);
        assert!(message.contains("p99 age 400ms"), "{message}");
    }

    #[test]
    fn a_long_freeze_is_frozen_even_with_fast_prices() {
        let frozen = summary(Some(20), 6_200, Sight::Watching);
        let (fresh, reason, message) = fresh_condition(&frozen, &objective());
        assert!(!fresh);
        assert_eq!(reason, Reason::Frozen);
        assert!(message.contains("6.2s (on E1 1X2)"), "{message}");
        assert_eq!(
            freshness_status(&frozen, &objective(), "5m").summary,
            "frozen 6.2s"
        );
    }

    #[test]
    fn a_stopped_pipeline_is_frozen_while_it_lasts_and_says_why() {
        let blind = Sight::Blind {
            since: chrono::Utc::now(),
            why: Blindness::NotLive("no processor heartbeat".into()),
        };
        let mut stopped = summary(Some(20), 9_000, blind);
        stopped.longest_freeze_key = None;
        let (fresh, reason, message) = fresh_condition(&stopped, &objective());
        assert!(!fresh);
        assert_eq!(reason, Reason::Frozen);
        assert!(message.contains("no processor heartbeat"), "{message}");
    }

    #[test]
    fn no_samples_is_no_data_and_an_unreachable_service_comes_first() {
        let (fresh, reason, _) = fresh_condition(&summary(None, 0, Sight::Watching), &objective());
        assert!(!fresh);
        assert_eq!(reason, Reason::NoData);
        let unreachable = Sight::Blind {
            since: chrono::Utc::now(),
            why: Blindness::Unreachable("connection refused".into()),
        };
        let (fresh, reason, message) = fresh_condition(
            &summary(Some(10), 60_000, unreachable.clone()),
            &objective(),
        );
        assert!(!fresh);
        assert_eq!(reason, Reason::CanaryUnreachable);
        assert!(message.contains("connection refused"), "{message}");
        assert_eq!(
            freshness_status(&summary(None, 0, unreachable), &objective(), "5m").summary,
            "unreachable"
        );
    }

    #[test]
    fn the_objective_is_checked_with_messages() {
        assert_eq!(parse_window("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_window("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_window("5"), None);
        assert_eq!(parse_window("5x"), None);
        assert_eq!(parse_window(""), None);
        let bad = SloSpec {
            freshness_p99_ms: 0,
            max_freeze_seconds: 0,
            window: "30s".into(),
            sample: vec!["has space".into()],
        };
        let problems = Objective::of(&bad).err().unwrap_or_default();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("slo.freshnessP99Ms (0) must be 1 to 60000"));
        assert!(problems[1].starts_with("slo.maxFreezeSeconds (0) must be 1 to 3600"));
        assert_eq!(problems[2], "slo.window (30s) must be from 1m to 24h");
        assert!(problems[3].starts_with("slo.sample: \"has space\" is not an event id"));
        assert_eq!(
            Objective::of(&SloSpec::default()),
            Ok(Objective {
                p99: Duration::from_millis(250),
                max_freeze: Duration::from_secs(5),
                window: Duration::from_secs(300),
                sample: vec!["*".into()],
            })
        );
    }
}
