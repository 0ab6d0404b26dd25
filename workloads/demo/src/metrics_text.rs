//! Just enough of the Prometheus text format to read our own services' `/metrics`.
//!
//! Not the `prometheus-parse` crate: it parses each sample into a typed value with its labels
//! in a `HashMap` and folds a histogram's buckets into one value, while what reads these
//! scrapes wants series by their exposition text (`name{labels}`, as the chaos test's
//! diagnosis prints them) and sums buckets across label sets; mapping its model back would
//! take as many lines as this parser, for a crate that brings `regex` (with its Unicode
//! tables) and a second `itertools` along.

use std::collections::BTreeMap;

/// Where a series' label set starts (`name{labels}`).
const LABELS_OPEN: char = '{';

/// Samples by full series name (`name{labels}`), e.g. `odds_proc_consumer_lag{partition="0"}`.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse::<f64>().ok()?))
            })
            .collect();
        Samples(series)
    }

    /// Sum of every series of metric `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            // The name alone, or the name with its label set.
            .filter(|(series, _)| series.split(LABELS_OPEN).next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }

    /// Cumulative histogram buckets of `name` as (upper bound, count), summed over labels.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        self.buckets_matching(name, None)
    }

    /// [`Samples::buckets`] of the series whose label `label` is `value` only; empty when the
    /// histogram has no such series.
    pub fn buckets_where(&self, name: &str, label: &str, value: &str) -> Vec<(f64, f64)> {
        self.buckets_matching(name, Some(&format!("{label}=\"{value}\"")))
    }

    fn buckets_matching(&self, name: &str, pair: Option<&str>) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (series, value) in &self.0 {
            let Some(labels) = series.strip_prefix(&prefix) else {
                continue;
            };
            // Our label values hold no commas, so splitting on them finds whole pairs.
            if let Some(pair) = pair {
                let inner = labels.strip_suffix('}').unwrap_or(labels);
                if !inner.split(',').any(|p| p == pair) {
                    continue;
                }
            }
            let Some(le) = labels
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let entry = by_le.entry(bound.to_bits()).or_insert((bound, 0.0));
            entry.1 += value;
        }
        let mut buckets: Vec<_> = by_le.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// The cumulative count of the bucket of `buckets` whose upper bound is `le`; 0 when there is
/// none.
pub fn count_at(buckets: &[(f64, f64)], le: f64) -> f64 {
    buckets
        .iter()
        .find(|(b, _)| b.to_bits() == le.to_bits())
        .map_or(0.0, |(_, n)| *n)
}

/// The `q` quantile (0..1) of the observations between two scrapes of a histogram, as the
/// upper bound of the bucket it falls in. `None` when nothing was observed.
pub fn quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - count_at(before, *le)))
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    counts
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x
odds_proc_consumer_lag{partition="0"} 3
odds_proc_consumer_lag{partition="1"} 4
odds_ws_connections 2
h_bucket{le="0.01"} 5
h_bucket{le="0.1"} 9
h_bucket{le="+Inf"} 10
"#;

    #[test]
    fn sums_and_quantiles() {
        let s = Samples::parse(TEXT);
        assert_eq!(s.sum("odds_proc_consumer_lag"), 7.0);
        assert_eq!(s.sum("odds_ws_connections"), 2.0);
        let after = s.buckets("h");
        assert_eq!(quantile_between(&[], &after, 0.5), Some(0.01));
        assert_eq!(quantile_between(&[], &after, 0.9), Some(0.1));
        assert_eq!(quantile_between(&[], &after, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile_between(&after, &after, 0.5), None);
    }

    #[test]
    fn buckets_of_one_label_value_only() {
        let s = Samples::parse(
            r#"x_bucket{hop="a",le="1"} 2
x_bucket{hop="a",le="+Inf"} 3
x_bucket{hop="ab",le="1"} 40
x_bucket{hop="ab",le="+Inf"} 50
"#,
        );
        assert_eq!(
            s.buckets_where("x", "hop", "a"),
            [(1.0, 2.0), (f64::INFINITY, 3.0)]
        );
        assert_eq!(s.buckets("x"), [(1.0, 42.0), (f64::INFINITY, 53.0)]);
        assert!(s.buckets_where("x", "hop", "b").is_empty());
    }
}
