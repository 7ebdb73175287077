//! The dataflow file as written: serde structs that mirror dataflow.toml, with spans.
//!
//! Nothing here is checked beyond TOML types; `validate` turns these into a typed
//! `DataflowSpec`. Operator and route values stay as TOML values here because their
//! shape depends on the operator named inside them.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
pub struct RawDataflow {
    #[serde(default)]
    pub engine: Option<Spanned<RawEngine>>,
    #[serde(default, rename = "topic")]
    pub topics: Vec<Spanned<RawTopic>>,
    #[serde(default, rename = "source")]
    pub sources: Vec<Spanned<RawSource>>,
    #[serde(default, rename = "stage")]
    pub stages: Vec<Spanned<RawStage>>,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<Spanned<RawSink>>,
    #[serde(default)]
    pub ingest: Option<Spanned<RawIngest>>,
    #[serde(default)]
    pub cluster: Option<Spanned<RawCluster>>,
    #[serde(default, rename = "job")]
    pub jobs: Vec<Spanned<RawJob>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawIngest {
    pub tcp: Option<Spanned<String>>,
    pub http: Option<Spanned<String>>,
    /// The Kafka protocol's door; none unless given.
    pub kafka: Option<Spanned<String>>,
    pub max_frame_bytes: Option<Spanned<toml::Value>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_address: Option<Spanned<i64>>,
    pub io_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    /// A size: `"128MiB"` or a number of bytes.
    pub max_buffered_bytes: Option<Spanned<toml::Value>>,
    /// Host names the HTTP door answers to besides IP literals and `localhost`.
    pub http_hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// Listen on addresses other machines reach without TLS and credentials.
    pub insecure: Option<Spanned<bool>>,
    /// The credentials file (`flowd token add`): with it, every request needs a token.
    pub credentials: Option<Spanned<String>>,
    /// PEM files of the doors' TLS certificate chain and key (both or neither).
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    /// CA certificates that sign client certificates.
    pub tls_client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawJob {
    pub name: Spanned<String>,
    pub topic: Spanned<String>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawEngine {
    /// `"all"` or a number of cores.
    pub cores: Option<Spanned<toml::Value>>,
    pub data_dir: Option<Spanned<String>>,
    pub durability: Option<Spanned<String>>,
    pub commit_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawTopic {
    pub name: Spanned<String>,
    pub partitions: Option<Spanned<i64>>,
    /// A size: `"64MiB"` or a number of bytes.
    pub segment_bytes: Option<Spanned<toml::Value>>,
    pub retention: Option<Spanned<RawRetention>>,
    /// Records a partition may hold beyond its slowest consumer before writers wait.
    pub max_lag: Option<Spanned<i64>>,
    /// Named consumers the topic may have.
    pub max_consumers: Option<Spanned<i64>>,
    /// Copies of each partition on different peers (in a cluster).
    pub replicas: Option<Spanned<i64>>,
}

/// `[cluster]`: what holds for every peer of a cluster.
#[derive(Debug, Default, Deserialize)]
pub struct RawCluster {
    /// The topics' replicas unless a topic says otherwise.
    pub replicas: Option<Spanned<i64>>,
    /// Mutual TLS on the peer port: this peer's certificate and key, the cluster's CA.
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub tls_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRetention {
    pub max_age: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct RawSource {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub path: Spanned<String>,
    pub follow: Option<Spanned<bool>>,
    /// A jq expression giving each line's timestamp (ms since the epoch) from its JSON.
    pub timestamp: Option<Spanned<String>>,
    pub to: Spanned<String>,
    pub route: Option<Spanned<toml::Value>>,
    /// In a cluster: every peer reads its own file (else one peer reads, chosen by the cluster).
    pub per_peer: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
pub struct RawStage {
    pub name: Spanned<String>,
    pub from: Spanned<OneOrMany>,
    pub op: Spanned<toml::Value>,
    pub to: Option<Spanned<String>>,
    pub route: Option<Spanned<toml::Value>>,
    pub guarantee: Option<Spanned<String>>,
    /// `{ max_reclaims = N, then = "disable" | "continue" | "dead_letter", dead_letter = "TOPIC" }`
    pub on_error: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct RawSink {
    pub name: Spanned<String>,
    pub from: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    /// In a cluster: every peer writes its own file (else one peer writes, chosen by the cluster).
    pub per_peer: Option<Spanned<bool>>,
}

/// `from = "a"` or `from = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn names(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(name) => vec![name.as_str()],
            OneOrMany::Many(names) => names.iter().map(String::as_str).collect(),
        }
    }
}
