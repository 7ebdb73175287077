//! The known keys of dataflow.toml, checked over the spanned TOML tree so that every
//! unknown key is reported at its own line, with the closest known key as a hint.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::error::{Diagnostics, did_you_mean};

/// Every operator name dataflow.toml accepts.
pub const OPERATOR_NAMES: &[&str] = &[
    "map",
    "filter",
    "split_words",
    "key_by",
    "count",
    "sum",
    "min",
    "max",
    "dedupe",
    "reply",
    "exec",
    "state",
    "scatter_gather",
];

const ROOT: &[&str] = &[
    "engine", "ingest", "cluster", "topic", "source", "stage", "sink", "job",
];
const CLUSTER: &[&str] = &["replicas", "tls_cert", "tls_key", "tls_ca"];
const INGEST: &[&str] = &[
    "tcp",
    "http",
    "kafka",
    "max_frame_bytes",
    "max_connections",
    "max_connections_per_address",
    "io_timeout",
    "idle_timeout",
    "max_buffered_bytes",
    "http_hosts",
    "insecure",
    "credentials",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
];
const JOB: &[&str] = &["name", "topic", "timeout"];
const ENGINE: &[&str] = &["cores", "data_dir", "durability", "commit_interval"];
const TOPIC: &[&str] = &[
    "name",
    "partitions",
    "segment_bytes",
    "retention",
    "max_lag",
    "max_consumers",
    "replicas",
];
const RETENTION: &[&str] = &["max_age", "max_bytes"];
const SOURCE: &[&str] = &[
    "name",
    "type",
    "path",
    "follow",
    "timestamp",
    "to",
    "route",
    "per_peer",
];
const STAGE: &[&str] = &["name", "from", "op", "to", "route", "guarantee", "on_error"];
const ON_ERROR: &[&str] = &["max_reclaims", "then", "dead_letter"];
const SINK: &[&str] = &["name", "from", "type", "path", "format", "per_peer"];
const ROUTE: &[&str] = &["shard_by"];

/// The parameter keys of operators that take a table.
pub fn operator_params(operator: &str) -> &'static [&'static str] {
    match operator {
        "count" => &["window", "time", "lateness"],
        "sum" | "min" | "max" => &["of", "window", "time", "lateness"],
        "dedupe" => &["by", "capacity"],
        "state" => &["update"],
        "scatter_gather" => &["branches", "every_partition", "merge", "timeout", "partial"],
        "exec" => &[
            "command",
            "workers",
            "concurrency",
            "restart_after",
            "timeout",
            "env",
            "dir",
            "protocol",
            "max_answer_bytes",
        ],
        _ => &[],
    }
}

/// Reports every key of `root` that flowd does not know.
pub fn check_known_keys(root: &DeTable<'_>, diags: &mut Diagnostics<'_>) {
    check_table(root, ROOT, "", diags);
    for (key, value) in root {
        let section = key.get_ref().as_ref();
        match (section, value.get_ref()) {
            ("engine", DeValue::Table(table)) => check_table(table, ENGINE, "engine.", diags),
            ("ingest", DeValue::Table(table)) => check_table(table, INGEST, "ingest.", diags),
            ("cluster", DeValue::Table(table)) => check_table(table, CLUSTER, "cluster.", diags),
            ("topic" | "source" | "stage" | "sink" | "job", DeValue::Array(items)) => {
                for item in items.iter() {
                    if let DeValue::Table(table) = item.get_ref() {
                        check_item(section, table, diags);
                    }
                }
            }
            _ => {}
        }
    }
}

fn check_item(section: &str, table: &DeTable<'_>, diags: &mut Diagnostics<'_>) {
    let prefix = match table.get("name").map(Spanned::get_ref) {
        Some(DeValue::String(name)) => format!("{section} \"{name}\"."),
        _ => format!("{section}."),
    };
    let known = match section {
        "topic" => TOPIC,
        "source" => SOURCE,
        "stage" => STAGE,
        "job" => JOB,
        _ => SINK,
    };
    check_table(table, known, &prefix, diags);
    for (key, value) in table {
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("retention", DeValue::Table(t)) => {
                check_table(t, RETENTION, &format!("{prefix}retention."), diags)
            }
            ("route", DeValue::Table(t)) => check_table(t, ROUTE, &format!("{prefix}route."), diags),
            ("on_error", DeValue::Table(t)) => check_table(t, ON_ERROR, &format!("{prefix}on_error."), diags),
            ("op", DeValue::Table(t)) => check_operator_table(t, &format!("{prefix}op."), diags),
            _ => {}
        }
    }
}

fn check_operator_table(table: &DeTable<'_>, prefix: &str, diags: &mut Diagnostics<'_>) {
    for (key, value) in table {
        let operator = key.get_ref().as_ref();
        if !OPERATOR_NAMES.contains(&operator) {
            // Reported by validation, which also sees string operators.
            continue;
        }
        if let DeValue::Table(params) = value.get_ref() {
            check_table(
                params,
                operator_params(operator),
                &format!("{prefix}{operator}."),
                diags,
            );
        }
    }
}

fn check_table(table: &DeTable<'_>, known: &[&str], prefix: &str, diags: &mut Diagnostics<'_>) {
    for key in table.keys() {
        let name = key.get_ref().as_ref();
        if known.contains(&name) {
            continue;
        }
        let hint = did_you_mean(name, known.iter().copied())
            .or_else(|| Some(format!("known keys here: {}", known.join(", "))));
        diags.push_hinted(key.span(), format!("{prefix}{name}"), "unknown key", hint);
    }
}
