//! The freshness canary in the fault run: the operator's judgement, proved on the real
//! binaries.
//!
//! One [`Canary`] follows the same events as the run's clients, through the same
//! [`Endpoints`] (the local stand-in for the odds-service Service: a rolling restart moves
//! odds-service to a new port, and the canary, asking the endpoints at every connection
//! attempt, follows it as the clients do). A task judges its summary every
//! [`JUDGE_EVERY`] with the canary crate's [`judge`] (the very function the operator's `Fresh`
//! condition maps) and keeps every verdict, so the assertions wait for verdicts instead of
//! racing the pipeline: the processor's SIGKILL must turn the verdict to `Frozen`, and it
//! must come back to `WithinObjective` after recovery.
//!
//! The canary's freeze for the kill is compared with the run's own clients'. Both measure
//! the same thing (the longest time a market showed a version while a newer one existed
//! upstream, over the same events, ended by the first newer version received), on two clocks
//! for "existed upstream": the clients date it from the supplier tap, the canary from
//! ingest's accept stamp, the moments ingest and the tap read the same stream. The canary
//! overstates by at most one update interval of an event when the catch-up skips versions
//! (see `odds_canary::window`), about 0.1 s here against a freeze of seconds: within 10 %.
//! Only freezes the canary measured from frames are compared (a summary taken while it is
//! blind reports its blindness in progress, dated from its last frame, not a freeze).

use super::clients::Endpoints;
use odds_canary::verdict::{judge, Thresholds, Verdict};
use odds_canary::{Canary, CanaryConfig};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The objective the run judges by: a processor kill (seconds of freeze) must breach
/// `max_freeze`; a generous p99 keeps a loaded machine's ordinary ages within it.
pub const THRESHOLDS: Thresholds = Thresholds {
    p99: Duration::from_secs(1),
    max_freeze: Duration::from_secs(1),
};
/// The canary's window: how long a breach stays in its figures after it ended.
const WINDOW: Duration = Duration::from_secs(10);
const JUDGE_EVERY: Duration = Duration::from_millis(50);
/// How long a verdict may take to arrive (generous: the machine is shared).
pub const VERDICT_LIMIT: Duration = Duration::from_secs(120);

/// One judged summary.
#[derive(Clone, Debug)]
struct Judged {
    at: Instant,
    verdict: Verdict,
    /// The window's longest freeze, when measured from frames (not blindness in progress).
    measured_freeze: Option<Duration>,
}

/// The canary (owned by its judging task: it stops with it), and every verdict so far.
pub struct JudgedCanary {
    log: Arc<Mutex<Vec<Judged>>>,
    judge: JoinHandle<()>,
}

impl JudgedCanary {
    pub fn start(endpoints: &Endpoints, events: &[String]) -> JudgedCanary {
        let addresses = endpoints.clone();
        let canary = Canary::start_following(
            CanaryConfig {
                url: "the odds-service endpoints".into(),
                sample: events.to_vec(),
                window: WINDOW,
            },
            odds_canary::Endpoints::resolved_by(move || {
                addresses
                    .addrs()
                    .into_iter()
                    .map(|addr| format!("ws://{addr}/ws/odds"))
                    .collect()
            }),
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let judge = tokio::spawn(judge_every(canary, log.clone()));
        JudgedCanary { log, judge }
    }

    /// Waits for the first verdict judged at or after `after` that `wanted` accepts; when.
    pub async fn verdict(
        &self,
        after: Instant,
        wanted: &str,
        accepts: fn(&Verdict) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + VERDICT_LIMIT;
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|j| j.at >= after && accepts(&j.verdict))
                .map(|j| j.at);
            if let Some(at) = found {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "the canary's verdict was never {wanted} within {VERDICT_LIMIT:?}: {:?}",
                self.verdicts_since(after)
            );
            tokio::time::sleep(JUDGE_EVERY).await;
        }
    }

    /// The longest freeze the canary measured from frames in summaries judged in `[from, to]`.
    pub fn longest_measured_freeze(&self, from: Instant, to: Instant) -> Duration {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|j| (from..=to).contains(&j.at))
            .filter_map(|j| j.measured_freeze)
            .max()
            .unwrap_or_default()
    }

    /// The verdicts since `after`, each once per change, for a failure's message.
    fn verdicts_since(&self, after: Instant) -> Vec<Verdict> {
        let mut changes: Vec<Verdict> = Vec::new();
        for judged in self.log.lock().unwrap().iter().filter(|j| j.at >= after) {
            if changes.last() != Some(&judged.verdict) {
                changes.push(judged.verdict.clone());
            }
        }
        changes
    }
}

impl Drop for JudgedCanary {
    fn drop(&mut self) {
        self.judge.abort();
    }
}

async fn judge_every(canary: Canary, log: Arc<Mutex<Vec<Judged>>>) {
    loop {
        let summary = canary.summary();
        let measured = summary.longest_freeze_key.is_some();
        log.lock().unwrap().push(Judged {
            at: Instant::now(),
            verdict: judge(&summary, &THRESHOLDS),
            measured_freeze: measured.then_some(summary.longest_freeze),
        });
        tokio::time::sleep(JUDGE_EVERY).await;
    }
}
