//! Metric names: `odds_<component>_<name>`, one prefixed registry per component.
//!
//! Each component (a stage, or a part of one) registers its metrics through a
//! [`PrefixedRegistry`] made in one place in its crate (its [`ComponentMetrics`]), under
//! names without the prefix; the registry adds `odds_<component>_` when it is scraped, as
//! kube-rs' controller-rs does. The components and their prefixes are listed once, in
//! [`component`], so two stages cannot pick the same prefix and a test can tell which stage
//! must register a name the dashboards query
//! (`charts/odds-operator/dashboards/queried-metrics.txt`, see [`queried_names`]).

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

/// The project's namespace: the first word of every metric name.
pub const NAMESPACE: &str = "odds";

/// Every component's name, the second word of its metrics' names.
pub mod component {
    /// supplier-simulator.
    pub const SIMULATOR: &str = "sim";
    /// odds-ingest.
    pub const INGEST: &str = "ingest";
    /// odds-processor.
    pub const PROCESSOR: &str = "proc";
    /// odds-service's WebSocket fan-out.
    pub const WEBSOCKET: &str = "ws";
    /// odds-service's REST API.
    pub const API: &str = "api";
    /// odds-operator.
    pub const OPERATOR: &str = "operator";
    pub const ALL: [&str; 6] = [SIMULATOR, INGEST, PROCESSOR, WEBSOCKET, API, OPERATOR];
}

/// `odds_<component>`: what a component's registry puts before each name (plus `_`).
pub fn prefix(component: &str) -> String {
    format!("{NAMESPACE}_{component}")
}

/// The component a full metric name belongs to, by its prefix.
pub fn component_of(name: &str) -> Option<&'static str> {
    component::ALL
        .into_iter()
        .find(|c| name.starts_with(&format!("{}_", prefix(c))))
}

/// What a dashboard query can rely on of one metric family: its full name, its type and the
/// names of its own labels (a histogram's `le` not included).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FamilyShape {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`, as the text format says.
    #[serde(rename = "type")]
    pub kind: String,
    pub labels: Vec<String>,
}

/// A registry that serves its metrics as `odds_<component>_<name>` and remembers every family
/// registered, labelled or not (a labelled metric is scraped only once a label value exists,
/// so the scrape alone cannot show what is registered).
#[derive(Clone, Debug)]
pub struct PrefixedRegistry {
    prefix: String,
    registry: Registry,
    families: Arc<Mutex<BTreeMap<String, FamilyShape>>>,
}

impl PrefixedRegistry {
    pub fn new(component: &str) -> Result<PrefixedRegistry, prometheus::Error> {
        let prefix = prefix(component);
        Ok(PrefixedRegistry {
            registry: Registry::new_custom(Some(prefix.clone()), None)?,
            prefix,
            families: Arc::default(),
        })
    }

    /// Registers `collector`; give it its name without the component's prefix.
    pub fn register<C: Collector + 'static>(&self, collector: C) -> Result<(), prometheus::Error> {
        // A collector's families carry their type even before any labelled series exists.
        let kinds: BTreeMap<String, String> = collector
            .collect()
            .iter()
            .map(|f| {
                (
                    f.name().to_owned(),
                    type_name(f.get_field_type()).to_owned(),
                )
            })
            .collect();
        let shapes: Vec<FamilyShape> = collector
            .desc()
            .iter()
            .map(|d| FamilyShape {
                name: format!("{}_{}", self.prefix, d.fq_name),
                kind: kinds
                    .get(&d.fq_name)
                    .cloned()
                    .unwrap_or_else(|| "untyped".to_owned()),
                labels: d
                    .const_label_pairs
                    .iter()
                    .map(|l| l.name().to_owned())
                    .chain(d.variable_labels.iter().cloned())
                    .collect(),
            })
            .collect();
        self.registry.register(Box::new(collector))?;
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        families.extend(shapes.into_iter().map(|s| (s.name.clone(), s)));
        Ok(())
    }

    /// A counter registered under `name` (without the prefix): a metric's declaration is
    /// one line of its component's `register`, not a construction and a registration apart.
    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.registered(IntCounter::new(name, help)?)
    }

    /// A counter with `labels`, registered under `name`.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.registered(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A gauge registered under `name`.
    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.registered(IntGauge::new(name, help)?)
    }

    /// A gauge with `labels`, registered under `name`.
    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.registered(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A histogram with `buckets`, registered under `name`.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> Result<Histogram, prometheus::Error> {
        self.registered(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        )?)
    }

    /// Registers `collector` and hands it back.
    pub fn registered<C: Collector + Clone + 'static>(
        &self,
        collector: C,
    ) -> Result<C, prometheus::Error> {
        self.register(collector.clone())?;
        Ok(collector)
    }

    /// The registry to serve on `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Full names of the families `/metrics` serves now: a labelled family appears once it has
    /// a child, so this can be shorter than [`names`](PrefixedRegistry::names).
    pub fn served_names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    }

    /// Full names of everything registered (histograms by their base name).
    pub fn names(&self) -> BTreeSet<String> {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Every family registered, by full name.
    pub fn families(&self) -> Vec<FamilyShape> {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// A component's metrics: one struct whose fields are registered in the component's registry.
///
/// Each stage's metrics struct implements it, so making the registry, registering into it and
/// handing both to `main`, the ops server and the tests is written once.
pub trait ComponentMetrics: Sized {
    /// The component ([`component`]) whose prefix every name gets.
    const COMPONENT: &'static str;

    /// Creates the metrics and registers each in `registry`: one declaration per metric.
    fn register(registry: &PrefixedRegistry) -> Result<Self, prometheus::Error>;

    /// The component's registry: what is registered in it is served as
    /// `odds_<component>_<name>`.
    fn registry() -> Result<PrefixedRegistry, prometheus::Error> {
        PrefixedRegistry::new(Self::COMPONENT)
    }

    /// A new registry with these metrics registered in it, and the metrics.
    fn registered() -> Result<(PrefixedRegistry, Self), crate::RuntimeError> {
        let registry = Self::registry()?;
        let metrics = Self::register(&registry)?;
        Ok((registry, metrics))
    }
}

fn type_name(kind: MetricType) -> &'static str {
    match kind {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}

/// The families a binary serves, as the JSON `--print-metric-families` prints: one array,
/// sorted by name. The chart's dashboard and alert checks (`charts/test.py`) read this from
/// each built binary instead of guessing from source text.
pub fn families_json(registries: &[&PrefixedRegistry]) -> String {
    let mut all: Vec<FamilyShape> = registries.iter().flat_map(|r| r.families()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    // Serialising plain strings into JSON cannot fail.
    serde_json::to_string_pretty(&all).unwrap_or_default() + "\n"
}

/// Prints [`families_json`] to standard output (the `--print-metric-families` flag).
pub fn print_families(registries: &[&PrefixedRegistry]) -> std::io::Result<()> {
    crate::cli::print_stdout(&families_json(registries)).map(drop)
}

/// The list of metric names the chart's dashboards and alerts query, one per line
/// (`charts/odds-operator/dashboards/queried-metrics.txt`, kept current by `make chart-test`).
/// Embedded here once so every crate's test that checks its registry against it reads the
/// same file through one path.
pub const QUERIED_METRICS: &str =
    include_str!("../../../charts/odds-operator/dashboards/queried-metrics.txt");

/// The metric names of a `queried-metrics.txt` text: one per line, `#` comments and blank
/// lines skipped.
pub fn queried_names(list: &str) -> Vec<&str> {
    list.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The names in `list` that belong to `component` but none of `registries` registered.
pub fn missing_queried(
    list: &str,
    component: &str,
    registries: &[&PrefixedRegistry],
) -> Vec<String> {
    let registered: BTreeSet<String> = registries.iter().flat_map(|r| r.names()).collect();
    queried_names(list)
        .into_iter()
        .filter(|name| component_of(name) == Some(component))
        .filter(|name| !registered.contains(*name))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, IntCounterVec, Opts};

    const QUERIED: &str = QUERIED_METRICS;

    #[test]
    fn every_queried_name_belongs_to_exactly_one_component() {
        let names = queried_names(QUERIED);
        assert!(names.len() > 20, "{names:?}");
        for name in names {
            let owners: Vec<_> = component::ALL
                .into_iter()
                .filter(|c| name.starts_with(&format!("{}_", prefix(c))))
                .collect();
            assert_eq!(owners.len(), 1, "{name}: components {owners:?}");
        }
    }

    #[test]
    fn names_are_prefixed_when_served_and_labelled_ones_are_known_before_use() {
        let registry = PrefixedRegistry::new(component::PROCESSOR).unwrap();
        let plain = IntCounter::new("things_total", "things").unwrap();
        let labelled = IntCounterVec::new(Opts::new("errors_total", "errors"), &["phase"]).unwrap();
        registry.register(plain.clone()).unwrap();
        registry.register(labelled).unwrap();
        plain.inc();
        assert_eq!(registry.served_names(), ["odds_proc_things_total"]);
        assert_eq!(
            registry.names().into_iter().collect::<Vec<_>>(),
            ["odds_proc_errors_total", "odds_proc_things_total"]
        );
        let list = "# comment\nodds_proc_errors_total\nodds_proc_gone_total\nodds_sim_x\n";
        assert_eq!(
            missing_queried(list, component::PROCESSOR, &[&registry]),
            ["odds_proc_gone_total"]
        );
        assert_eq!(
            component_of("odds_ws_connections"),
            Some(component::WEBSOCKET)
        );
        assert_eq!(component_of("odds_wsx"), None);
    }

    #[test]
    fn families_carry_type_and_labels_before_any_series_exists() {
        let registry = PrefixedRegistry::new(component::INGEST).unwrap();
        let latency = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("latency_seconds", "latency"),
            &["hop", "stage"],
        )
        .unwrap();
        registry.register(latency).unwrap();
        registry
            .register(prometheus::IntGauge::new("clients", "clients").unwrap())
            .unwrap();
        let json = families_json(&[&registry]);
        let shapes: Vec<FamilyShape> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            shapes,
            [
                FamilyShape {
                    name: "odds_ingest_clients".into(),
                    kind: "gauge".into(),
                    labels: vec![],
                },
                FamilyShape {
                    name: "odds_ingest_latency_seconds".into(),
                    kind: "histogram".into(),
                    labels: vec!["hop".into(), "stage".into()],
                },
            ]
        );
    }
}
