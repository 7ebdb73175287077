//! What `deploy/` ships for operators, checked against a running flowd: every metric the
//! Grafana dashboard (`deploy/grafana/flowd.json`) charts is one flowd exports.

use std::collections::BTreeSet;

use crate::ingest::{Server, dataflow, http, run_cli};

/// Every `flowd_*` metric name in the dashboard's queries.
pub(crate) fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/flowd.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} charts nothing", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("flowd_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

/// The dashboard's metrics whose names start with `prefix` that `metrics` (a
/// `/metrics` body) lacks.
pub(crate) fn missing(metrics: &str, prefix: &str) -> Vec<String> {
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    dashboard_metrics()
        .into_iter()
        .filter(|name| name.starts_with(prefix) && !exported.contains(name.as_str()))
        .collect()
}

#[test]
fn every_metric_the_grafana_dashboard_charts_is_exported() {
    let names = dashboard_metrics();
    assert!(names.len() >= 20, "{names:?}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path(), "group"));
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "events"], "a\nb\n");
    assert_eq!(code, 0, "{err}");
    let (status, metrics) = http(&server.http, "GET", "/metrics", "");
    assert_eq!(status, 200);
    // Replicas exist in a replicated cluster only: checked there
    // (`cluster_status::replicated::the_status_through_any_peer_shows_the_whole_cluster`).
    let missing: Vec<String> = missing(&metrics, "flowd_")
        .into_iter()
        .filter(|name| !name.starts_with("flowd_replica_"))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard charts metrics flowd does not export: {missing:?}"
    );
}
