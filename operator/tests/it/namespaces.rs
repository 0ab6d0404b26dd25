//! A namespaced install: `WATCH_NAMESPACE` (the chart's `watchNamespaces`, joined with `,`)
//! names the namespaces served, one controller each; empty means the whole cluster.

use clap::Parser;
use odds_operator::run::{scopes, RunArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

#[test]
fn the_chart_s_comma_list_becomes_one_scope_per_namespace() {
    let cli = Cli::try_parse_from(["odds-operator", "--namespace", "odds,odds-staging"]).unwrap();
    assert_eq!(cli.run.namespaces, ["odds", "odds-staging"]);
    assert_eq!(
        scopes(&cli.run.namespaces),
        [Some("odds"), Some("odds-staging")]
    );
    let repeated =
        Cli::try_parse_from(["odds-operator", "--namespace", "a", "--namespace", "b"]).unwrap();
    assert_eq!(repeated.run.namespaces, ["a", "b"]);
}

#[test]
fn no_namespace_serves_the_whole_cluster() {
    let cli = Cli::try_parse_from(["odds-operator"]).unwrap();
    assert!(cli.run.namespaces.is_empty());
    assert_eq!(scopes(&cli.run.namespaces), [None]);
}
