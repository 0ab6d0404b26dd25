//! The freshness objective (`spec.slo`) and what the canary measured against it
//! (`status.freshness`): kept in their own module, apart from the workloads' spec, because
//! they describe what clients see rather than what runs.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Default objective for the 99th percentile age of a price on a client's socket.
pub const DEFAULT_FRESHNESS_P99_MS: i64 = 250;
/// Default longest tolerated freeze.
pub const DEFAULT_MAX_FREEZE_SECONDS: i64 = 5;
/// Default window the figures are taken over.
pub const DEFAULT_WINDOW: &str = "5m";
/// Bounds of `slo.freshnessP99Ms` (one minute: beyond it a price is not late, it is gone).
pub const MAX_FRESHNESS_P99_MS: i64 = 60_000;
/// Bounds of `slo.maxFreezeSeconds`.
pub const MAX_FREEZE_SECONDS: i64 = 3_600;
/// Most events `slo.sample` may name (one subscription each).
pub const MAX_SAMPLE_EVENTS: usize = 100;

/// How fresh the pipeline's clients' prices must be, measured by the operator's canary
/// client through the odds-service Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SloSpec {
    /// Objective for the 99th percentile age of a price when it reaches a client: the time
    /// from ingest accepting the update to the client receiving it, in milliseconds (1 to
    /// 60000; default 250). `Fresh` turns False with `Stale` above it.
    #[serde(default = "default_p99")]
    #[schemars(range(min = 1, max = MAX_FRESHNESS_P99_MS))]
    pub freshness_p99_ms: i64,
    /// Longest a price that changed upstream may stay frozen on a client's screen, in
    /// seconds (1 to 3600; default 5). `Fresh` turns False with `Frozen` beyond it.
    #[serde(default = "default_freeze")]
    #[schemars(range(min = 1, max = MAX_FREEZE_SECONDS))]
    pub max_freeze_seconds: i64,
    /// The window the figures are taken over: whole seconds, minutes or hours such as `5m`
    /// or `1h30m`, from 1m to 24h (default 5m).
    #[serde(default = "default_window")]
    #[schemars(length(max = 16), regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub window: String,
    /// Event ids the canary follows; `*` (the default) follows every event. Name a few
    /// events to keep the canary's traffic small on a pipeline with very many.
    #[serde(default = "default_sample")]
    #[schemars(length(min = 1, max = MAX_SAMPLE_EVENTS))]
    pub sample: Vec<String>,
}

impl Default for SloSpec {
    fn default() -> Self {
        Self {
            freshness_p99_ms: default_p99(),
            max_freeze_seconds: default_freeze(),
            window: default_window(),
            sample: default_sample(),
        }
    }
}

fn default_p99() -> i64 {
    DEFAULT_FRESHNESS_P99_MS
}
fn default_freeze() -> i64 {
    DEFAULT_MAX_FREEZE_SECONDS
}
fn default_window() -> String {
    DEFAULT_WINDOW.to_string()
}
fn default_sample() -> Vec<String> {
    vec![odds_contracts::ws::ALL_EVENTS.to_string()]
}

/// What the canary measured over the objective's window.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FreshnessStatus {
    /// Median age of the prices the canary received, in milliseconds.
    pub p50_ms: Option<i64>,
    /// 99th percentile age, in milliseconds (what `slo.freshnessP99Ms` bounds).
    pub p99_ms: Option<i64>,
    /// The longest a price that changed upstream stayed frozen on the canary's screen, in
    /// seconds (what `slo.maxFreezeSeconds` bounds); a freeze in progress counts.
    pub longest_freeze_seconds: f64,
    /// Prices received with an age in the window.
    pub frames_sampled: i64,
    /// Median of ingest's accept time minus the supplier's `updated_at`, in milliseconds:
    /// the supplier's clock skew plus its hop to ingest (never part of the age).
    pub supplier_skew_ms: Option<i64>,
    /// When the figures were taken (RFC 3339).
    pub measured_at: String,
    /// The window they cover, as in `slo.window`.
    pub window: String,
    /// For `kubectl get`: the p99 age (`87ms`), or what stands in its way (`frozen 6.2s`,
    /// `no data`, `unreachable`).
    pub summary: String,
}
