//! dataflow.toml → `DataflowSpec`: parse, check keys, then check meaning, collecting
//! every problem with its position instead of stopping at the first.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::DeTable;

use crate::config::error::{ConfigError, Diagnostics, did_you_mean, suggest};
use crate::config::keys::OPERATOR_NAMES;
use crate::config::keys::check_known_keys;
use crate::config::raw::{
    RawCluster, RawDataflow, RawEngine, RawIngest, RawJob, RawSink, RawSource, RawStage, RawTopic,
};
use crate::config::spec::*;
use crate::storage::log::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use crate::storage::{Durability, RetentionPolicy};

mod exec;
mod scatter;
mod state;

/// Most partitions a topic may have.
pub const PARTITIONS_MAX: i64 = 4096;
/// Most cores a dataflow may ask for.
pub const CORES_MAX: i64 = 1024;
const NAME_BYTES_MAX: usize = 128;
const FRAME_BYTES_MIN: u64 = 64 << 10;
const FRAME_BYTES_MAX: u64 = 1 << 30;

/// Whether a `reply` stage reads `topic` or a topic downstream of it.
fn reaches_reply(topic: usize, stages: &[StageSpec]) -> bool {
    let mut seen = vec![topic];
    let mut next = vec![topic];
    while let Some(t) = next.pop() {
        for stage in stages.iter().filter(|s| s.from.contains(&t)) {
            if stage.op == OpSpec::Reply {
                return true;
            }
            if let Some(to) = stage.to
                && !seen.contains(&to)
            {
                seen.push(to);
                next.push(to);
            }
        }
    }
    false
}

/// Reads and validates a dataflow file.
pub fn load(path: &Path) -> Result<DataflowSpec, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Validates dataflow text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<DataflowSpec, ConfigError> {
    let mut diags = Diagnostics::new(text);
    let invalid = |diags: Diagnostics<'_>| ConfigError::Invalid {
        path: path.to_path_buf(),
        diagnostics: diags.into_vec(),
    };
    let (tree, syntax_errors) = DeTable::parse_recoverable(text);
    for error in &syntax_errors {
        let span = error.span().unwrap_or(0..0);
        diags.push_hinted(
            span,
            "(syntax)",
            error.message().trim(),
            Some("this is not valid TOML".into()),
        );
    }
    if !diags.is_empty() {
        return Err(invalid(diags));
    }
    check_known_keys(tree.get_ref(), &mut diags);
    let raw: RawDataflow = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            diags.push_hinted(
                error.span().unwrap_or(0..0),
                "(type)",
                error.message().trim(),
                Some("see dataflows/README.md for the shape of each section".into()),
            );
            return Err(invalid(diags));
        }
    };
    let base_dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let spec = Validator {
        diags: &mut diags,
        base_dir,
        unresolved: false,
    }
    .dataflow(path, raw);
    if diags.is_empty() {
        Ok(spec)
    } else {
        Err(invalid(diags))
    }
}

struct Validator<'d, 't> {
    diags: &'d mut Diagnostics<'t>,
    base_dir: PathBuf,
    /// A topic reference did not resolve; the graph is not checked for cycles then.
    unresolved: bool,
}

/// A stage's route when it names none: forward where its output has as many partitions
/// as each of its inputs (each input partition's outputs stay on its core, in its
/// order), spread otherwise (forwarding would leave output partitions empty, or pile
/// several inputs' partitions into one).
fn default_route(from: &[usize], to: Option<usize>, topics: &[TopicSpec]) -> Route {
    let partitions = |t: usize| topics.get(t).map(|t| t.partitions);
    match to.and_then(partitions) {
        Some(out) if !from.is_empty() && from.iter().all(|&t| partitions(t) == Some(out)) => Route::Forward,
        _ => Route::Spread,
    }
}

impl Validator<'_, '_> {
    fn dataflow(&mut self, path: &Path, raw: RawDataflow) -> DataflowSpec {
        let engine = self.engine(raw.engine.as_ref().map(Spanned::get_ref));
        let replicas = self.replicas(
            raw.cluster.as_ref().and_then(|c| c.get_ref().replicas.as_ref()),
            "cluster.replicas".into(),
            None,
        );
        let topics: Vec<TopicSpec> = raw
            .topics
            .iter()
            .map(|t| self.topic(t.get_ref(), replicas))
            .collect();
        self.unique_names(raw.topics.iter().map(|t| &t.get_ref().name), "topic");
        let producers = raw.sources.iter().map(|s| &s.get_ref().name);
        let producers = producers.chain(raw.stages.iter().map(|s| &s.get_ref().name));
        self.unique_names(
            producers.chain(raw.sinks.iter().map(|s| &s.get_ref().name)),
            "source, stage or sink",
        );
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let sources: Vec<SourceSpec> = raw
            .sources
            .iter()
            .map(|s| self.source(s.get_ref(), &names))
            .collect();
        let stages: Vec<StageSpec> = raw
            .stages
            .iter()
            .map(|s| self.stage(s.get_ref(), &names, &topics))
            .collect();
        let sinks = raw.sinks.iter().map(|s| self.sink(s.get_ref(), &names)).collect();
        if !self.unresolved {
            self.cycles(&raw.stages, &stages, &names);
            self.scatter_branches(&raw.stages, &stages);
            self.changelogs(&raw.stages, &stages, &sources, &topics);
        }
        let ingest = raw.ingest.as_ref().map(|i| self.ingest(i.get_ref()));
        let peer_tls = raw.cluster.as_ref().and_then(|c| self.peer_tls(c.get_ref()));
        self.unique_names(raw.jobs.iter().map(|j| &j.get_ref().name), "job");
        let jobs = raw
            .jobs
            .iter()
            .map(|j| self.job(j.get_ref(), &names, &stages))
            .collect();
        DataflowSpec {
            file: path.to_path_buf(),
            engine,
            topics,
            sources,
            stages,
            sinks,
            ingest,
            jobs,
            peer_tls,
        }
    }

    /// `[cluster] tls_cert, tls_key, tls_ca`: all three or none.
    fn peer_tls(&mut self, raw: &RawCluster) -> Option<PeerTlsSpec> {
        let keys = [
            ("cluster.tls_cert", &raw.tls_cert),
            ("cluster.tls_key", &raw.tls_key),
            ("cluster.tls_ca", &raw.tls_ca),
        ];
        let given: Vec<_> = keys
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
            .collect();
        if given.is_empty() {
            return None;
        }
        if given.len() < keys.len() {
            let missing: Vec<&str> = keys
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| *k)
                .collect();
            let (key, value) = given[0];
            self.error(
                value.span(),
                key,
                "mutual TLS between peers needs this peer's certificate, its key and the cluster's CA"
                    .to_owned(),
                format!(
                    "give {} too (flowd cert ca, then flowd cert issue NAME --cluster ID --host IP)",
                    missing.join(" and ")
                ),
            );
            return None;
        }
        let path =
            |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().into()).expect("checked above");
        Some(PeerTlsSpec {
            cert: path(&raw.tls_cert),
            key: path(&raw.tls_key),
            ca: path(&raw.tls_ca),
        })
    }

    fn ingest(&mut self, raw: &RawIngest) -> IngestSpec {
        let mut spec = IngestSpec::default();
        let mut address = |v: &Option<Spanned<String>>, key: &str, default: &str| match v {
            None => Some(default.parse().expect("a valid default")),
            Some(text) => match text.get_ref().parse() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    self.error(
                        text.span(),
                        key,
                        format!("\"{}\" is not an address: {e}", text.get_ref()),
                        "write IP:PORT, e.g. \"127.0.0.1:7070\"".into(),
                    );
                    None
                }
            },
        };
        spec.tcp = address(&raw.tcp, "ingest.tcp", DEFAULT_TCP);
        spec.http = address(&raw.http, "ingest.http", DEFAULT_HTTP);
        if raw.kafka.is_some() {
            spec.kafka = address(&raw.kafka, "ingest.kafka", DEFAULT_KAFKA);
        }
        if let Some(v) = &raw.max_frame_bytes
            && let Some(n) = self.size(v, "ingest.max_frame_bytes")
        {
            if (FRAME_BYTES_MIN..=FRAME_BYTES_MAX).contains(&n) {
                spec.max_frame_bytes = n as u32;
            } else {
                self.error(
                    v.span(),
                    "ingest.max_frame_bytes",
                    format!("{n} bytes is out of range"),
                    "use from \"64KiB\" to \"1GiB\"".into(),
                );
            }
        }
        if let Some(n) = &raw.max_connections {
            if (1..=1_000_000).contains(n.get_ref()) {
                spec.max_connections = *n.get_ref() as usize;
            } else {
                self.error(
                    n.span(),
                    "ingest.max_connections",
                    format!("{} is out of range", n.get_ref()),
                    "use 1 to 1000000".into(),
                );
            }
        }
        if let Some(n) = &raw.max_connections_per_address {
            if (1..=1_000_000).contains(n.get_ref()) {
                spec.max_connections_per_address = *n.get_ref() as usize;
            } else {
                self.error(
                    n.span(),
                    "ingest.max_connections_per_address",
                    format!("{} is out of range", n.get_ref()),
                    "use 1 to 1000000".into(),
                );
            }
        }
        if let Some(t) = &raw.io_timeout {
            spec.io_timeout = self.duration_within(
                t,
                "ingest.io_timeout",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            );
        }
        if let Some(t) = &raw.idle_timeout {
            spec.idle_timeout = self.duration_within(
                t,
                "ingest.idle_timeout",
                Duration::from_millis(100),
                Duration::from_secs(7 * 24 * 3600),
            );
        }
        if let Some(v) = &raw.max_buffered_bytes
            && let Some(n) = self.size(v, "ingest.max_buffered_bytes")
        {
            if (1 << 20..=1 << 40).contains(&n) {
                spec.max_buffered_bytes = n;
            } else {
                self.error(
                    v.span(),
                    "ingest.max_buffered_bytes",
                    format!("{n} bytes is out of range"),
                    "use from \"1MiB\" to \"1TiB\"".into(),
                );
            }
        }
        for host in raw.http_hosts.iter().flat_map(|h| h.get_ref()) {
            let name = host.get_ref().trim().to_ascii_lowercase();
            if name.is_empty() || name.contains([':', '/', ' ', '@']) {
                self.error(
                    host.span(),
                    "ingest.http_hosts",
                    format!("\"{}\" is not a host name", host.get_ref()),
                    "write names alone, without scheme or port, e.g. [\"flowd.example.com\"]".into(),
                );
            } else {
                spec.http_hosts.push(name);
            }
        }
        spec.insecure = raw.insecure.as_ref().is_some_and(|i| *i.get_ref());
        spec.credentials = raw.credentials.as_ref().map(|c| c.get_ref().into());
        spec.tls_cert = raw.tls_cert.as_ref().map(|c| c.get_ref().into());
        spec.tls_key = raw.tls_key.as_ref().map(|c| c.get_ref().into());
        spec.tls_client_ca = raw.tls_client_ca.as_ref().map(|c| c.get_ref().into());
        match (&raw.tls_cert, &raw.tls_key) {
            (Some(given), None) | (None, Some(given)) => self.error(
                given.span(),
                if raw.tls_cert.is_some() {
                    "ingest.tls_cert"
                } else {
                    "ingest.tls_key"
                },
                "TLS needs both a certificate and its key".to_owned(),
                "give both ingest.tls_cert and ingest.tls_key (flowd cert issue makes a pair)".into(),
            ),
            _ => {}
        }
        if let (Some(ca), None) = (&raw.tls_client_ca, &raw.tls_cert) {
            self.error(
                ca.span(),
                "ingest.tls_client_ca",
                "client certificates are checked only on doors that speak TLS".to_owned(),
                "give ingest.tls_cert and ingest.tls_key too".into(),
            );
        }
        // One frame must always fit: a budget below it would never let such a frame in.
        spec.max_buffered_bytes = spec.max_buffered_bytes.max(u64::from(spec.max_frame_bytes));
        spec
    }

    fn job(&mut self, raw: &RawJob, topics: &[&str], stages: &[StageSpec]) -> JobSpec {
        self.name(&raw.name, "job");
        let key = |k: &str| format!("job \"{}\".{k}", raw.name.get_ref());
        let topic = self.topic_ref(&raw.topic, &key("topic"), topics);
        let timeout = match &raw.timeout {
            Some(t) => self.duration_within(
                t,
                &key("timeout"),
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
            None => Duration::from_secs(10),
        };
        if !self.unresolved && !reaches_reply(topic, stages) {
            self.error(
                raw.topic.span(),
                key("topic"),
                format!(
                    "no reply stage is reachable from topic \"{}\", so no job would ever be answered",
                    raw.topic.get_ref()
                ),
                "add a stage with op = \"reply\" that reads the topic (or a topic downstream of it)".into(),
            );
        }
        JobSpec {
            name: raw.name.get_ref().clone(),
            topic,
            timeout,
        }
    }

    fn engine(&mut self, raw: Option<&RawEngine>) -> EngineSpec {
        let default = RawEngine::default();
        let raw = raw.unwrap_or(&default);
        let cores = match &raw.cores {
            None => Cores::All,
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if s == "all" => Cores::All,
                toml::Value::Integer(n) if (1..=CORES_MAX).contains(n) => Cores::Count(*n as usize),
                other => {
                    self.error(
                        v.span(),
                        "engine.cores",
                        format!("{other} is not a core count"),
                        format!("use \"all\" or a number from 1 to {CORES_MAX}"),
                    );
                    Cores::All
                }
            },
        };
        let durability = match &raw.durability {
            None => Durability::Group,
            Some(d) => self.durability(d),
        };
        let commit_interval = match &raw.commit_interval {
            None => Duration::from_secs(1),
            Some(s) => self.duration_within(
                s,
                "engine.commit_interval",
                Duration::from_millis(10),
                Duration::from_secs(3600),
            ),
        };
        EngineSpec {
            cores,
            data_dir: raw
                .data_dir
                .as_ref()
                .map_or_else(|| PathBuf::from("flowd-data"), |d| PathBuf::from(d.get_ref())),
            durability,
            commit_interval,
        }
    }

    fn durability(&mut self, d: &Spanned<String>) -> Durability {
        match d.get_ref().as_str() {
            "every" => Durability::Every,
            "group" => Durability::Group,
            "none" => Durability::None,
            other => {
                let hint = suggest(other, &["every", "group", "none"]);
                self.error(
                    d.span(),
                    "engine.durability",
                    format!("unknown durability \"{other}\""),
                    hint,
                );
                Durability::Group
            }
        }
    }

    /// A replica count from 1 to `REPLICAS_MAX`, or `default`.
    fn replicas(&mut self, raw: Option<&Spanned<i64>>, key: String, default: Option<u32>) -> Option<u32> {
        match raw {
            None => default,
            Some(n) if (1..=i64::from(REPLICAS_MAX)).contains(n.get_ref()) => Some(*n.get_ref() as u32),
            Some(n) => {
                self.error(
                    n.span(),
                    key,
                    format!("replicas must be from 1 to {REPLICAS_MAX}"),
                    "each partition is copied to that many peers and a write is acked once a majority of them hold it".into(),
                );
                default
            }
        }
    }

    fn topic(&mut self, raw: &RawTopic, replicas_default: Option<u32>) -> TopicSpec {
        self.name(&raw.name, "topic");
        let key = |k: &str| format!("topic \"{}\".{k}", raw.name.get_ref());
        let partitions = match &raw.partitions {
            None => 8,
            Some(p) if (1..=PARTITIONS_MAX).contains(p.get_ref()) => *p.get_ref() as u32,
            Some(p) => {
                self.error(
                    p.span(),
                    key("partitions"),
                    format!("{} partitions is out of range", p.get_ref()),
                    format!("use 1 to {PARTITIONS_MAX}"),
                );
                1
            }
        };
        let segment_bytes = match &raw.segment_bytes {
            None => 64 << 20,
            Some(v) => match self.size(v, &key("segment_bytes")) {
                Some(n) if (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&n) && n.is_multiple_of(4096) => {
                    n
                }
                Some(n) => {
                    self.error(
                        v.span(),
                        key("segment_bytes"),
                        format!("{n} bytes is not a usable segment size"),
                        "use a multiple of 4 KiB from \"64KiB\" to \"2GiB\"".into(),
                    );
                    64 << 20
                }
                None => 64 << 20,
            },
        };
        let mut retention = RetentionPolicy::default();
        if let Some(r) = &raw.retention {
            if let Some(age) = &r.get_ref().max_age {
                retention.max_age_ms = Some(self.duration(age, &key("retention.max_age")).as_millis() as u64);
            }
            if let Some(bytes) = &r.get_ref().max_bytes {
                retention.max_bytes = self.size(bytes, &key("retention.max_bytes"));
            }
        }
        let max_lag = match &raw.max_lag {
            None => 100_000,
            Some(n) if *n.get_ref() >= 1 => *n.get_ref() as u64,
            Some(n) => {
                self.error(
                    n.span(),
                    key("max_lag"),
                    "max_lag must be at least 1".into(),
                    "it bounds how far a writer may run ahead of the slowest reader, in records".into(),
                );
                1
            }
        };
        let max_consumers = match &raw.max_consumers {
            None => MAX_CONSUMERS_DEFAULT,
            Some(n) if (1..=MAX_CONSUMERS_LIMIT as i64).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.error(
                    n.span(),
                    key("max_consumers"),
                    format!("max_consumers must be from 1 to {MAX_CONSUMERS_LIMIT}"),
                    format!("the default is {MAX_CONSUMERS_DEFAULT}"),
                );
                MAX_CONSUMERS_DEFAULT
            }
        };
        TopicSpec {
            name: raw.name.get_ref().clone(),
            partitions,
            segment_bytes,
            retention,
            max_lag,
            max_consumers,
            replicas: self.replicas(raw.replicas.as_ref(), key("replicas"), replicas_default),
        }
    }

    fn source(&mut self, raw: &RawSource, topics: &[&str]) -> SourceSpec {
        self.name(&raw.name, "source");
        let key = |k: &str| format!("source \"{}\".{k}", raw.name.get_ref());
        if raw.kind.get_ref() != "file" {
            let hint = suggest(raw.kind.get_ref(), &["file"]);
            self.error(
                raw.kind.span(),
                key("type"),
                format!("unknown source type \"{}\"", raw.kind.get_ref()),
                hint,
            );
        }
        let path = self.base_dir.join(raw.path.get_ref());
        let follow = raw.follow.as_ref().is_some_and(|f| *f.get_ref());
        let kind = if path.is_dir() {
            SourceKind::Directory { path }
        } else {
            if !path.is_file() {
                self.error(
                    raw.path.span(),
                    key("path"),
                    format!("{} does not exist", path.display()),
                    format!(
                        "source paths are relative to the dataflow file's directory ({})",
                        self.base_dir.display()
                    ),
                );
            }
            SourceKind::File { path, follow }
        };
        if let Some(expr) = &raw.timestamp {
            self.jq(expr.get_ref(), expr.span(), &key("timestamp"));
        }
        SourceSpec {
            name: raw.name.get_ref().clone(),
            kind,
            timestamp: raw.timestamp.as_ref().map(|t| t.get_ref().clone()),
            to: self.topic_ref(&raw.to, &key("to"), topics),
            route: self.source_route(raw.route.as_ref(), &key("route")),
            per_peer: raw.per_peer.as_ref().is_some_and(|p| *p.get_ref()),
        }
    }

    fn stage(&mut self, raw: &RawStage, topics: &[&str], specs: &[TopicSpec]) -> StageSpec {
        self.name(&raw.name, "stage");
        let key = |k: &str| format!("stage \"{}\".{k}", raw.name.get_ref());
        let from_names = raw.from.get_ref().names();
        if from_names.is_empty() {
            self.error(
                raw.from.span(),
                key("from"),
                "a stage reads at least one topic".into(),
                "from = \"topic\"".into(),
            );
        }
        let from: Vec<usize> = from_names
            .iter()
            .map(|name| self.topic_name_ref(name, raw.from.span(), &key("from"), topics))
            .collect();
        let op = self.op(&raw.op, &key("op"), topics);
        let to = match &raw.to {
            Some(to) if op == OpSpec::Reply => {
                self.error(
                    to.span(),
                    key("to"),
                    "a reply stage answers jobs and writes no topic".into(),
                    "remove `to`".into(),
                );
                None
            }
            Some(to) => Some(self.topic_ref(to, &key("to"), topics)),
            None if op == OpSpec::Reply => None,
            None => {
                self.error(
                    raw.name.span(),
                    key("to"),
                    "the stage has no `to` topic".into(),
                    "add to = \"TOPIC\"; a sink reads a topic to print or write it".into(),
                );
                None
            }
        };
        let is_exec = matches!(op, OpSpec::Exec(_));
        let on_error = match &raw.on_error {
            None => ErrorPolicy::default_for(is_exec),
            Some(policy) if op == OpSpec::Reply => {
                self.error(
                    policy.span(),
                    key("on_error"),
                    "a reply stage writes no topic: it has no records to fail".into(),
                    "remove on_error".into(),
                );
                ErrorPolicy::default_for(false)
            }
            Some(policy) => self.on_error(policy, &key("on_error"), topics, is_exec),
        };
        let mut route = match raw.route.as_ref() {
            Some(raw) => self.route(Some(raw), &key("route")),
            None => default_route(&from, to, specs),
        };
        if matches!(op, OpSpec::State { .. }) {
            route = self.state_route(raw, route, &from, &key("route"));
        }
        StageSpec {
            name: raw.name.get_ref().clone(),
            from,
            op,
            to,
            on_error,
            route,
            guarantee: match &raw.guarantee {
                None => Guarantee::ExactlyOnce,
                Some(g) => match g.get_ref().as_str() {
                    "exactly_once" => Guarantee::ExactlyOnce,
                    "at_least_once" => Guarantee::AtLeastOnce,
                    other => {
                        let hint = suggest(other, &["exactly_once", "at_least_once"]);
                        self.error(
                            g.span(),
                            key("guarantee"),
                            format!("unknown guarantee \"{other}\""),
                            hint,
                        );
                        Guarantee::ExactlyOnce
                    }
                },
            },
        }
    }

    fn sink(&mut self, raw: &RawSink, topics: &[&str]) -> SinkSpec {
        self.name(&raw.name, "sink");
        let key = |k: &str| format!("sink \"{}\".{k}", raw.name.get_ref());
        let kind = match (raw.kind.get_ref().as_str(), &raw.path) {
            ("stdout", _) => SinkKind::Stdout,
            ("file", Some(path)) => SinkKind::File(PathBuf::from(path.get_ref())),
            ("file", None) => {
                self.error(
                    raw.kind.span(),
                    key("path"),
                    "a file sink needs a path".into(),
                    "path = \"out.txt\" (relative to the directory flowd runs in)".into(),
                );
                SinkKind::Stdout
            }
            (other, _) => {
                let hint = suggest(other, &["stdout", "file"]);
                self.error(
                    raw.kind.span(),
                    key("type"),
                    format!("unknown sink type \"{other}\""),
                    hint,
                );
                SinkKind::Stdout
            }
        };
        let format = match raw.format.as_ref() {
            None => SinkFormat::Value,
            Some(f) => match f.get_ref().as_str() {
                "value" => SinkFormat::Value,
                "key_value" => SinkFormat::KeyValue,
                "json" => SinkFormat::Json,
                other => {
                    let hint = suggest(other, &["value", "key_value", "json"]);
                    self.error(
                        f.span(),
                        key("format"),
                        format!("unknown format \"{other}\""),
                        hint,
                    );
                    SinkFormat::Value
                }
            },
        };
        SinkSpec {
            name: raw.name.get_ref().clone(),
            from: self.topic_ref(&raw.from, &key("from"), topics),
            kind,
            format,
            per_peer: raw.per_peer.as_ref().is_some_and(|p| *p.get_ref()),
        }
    }

    fn op(&mut self, raw: &Spanned<toml::Value>, key: &str, topics: &[&str]) -> OpSpec {
        let span = raw.span();
        let (name, params) = match raw.get_ref() {
            toml::Value::String(name) => (name.as_str(), None),
            toml::Value::Table(table) if table.len() == 1 => {
                let (name, params) = table.iter().next().expect("one entry");
                (name.as_str(), Some(params))
            }
            _ => {
                self.error(
                    span,
                    key,
                    "an operator is a name or a table with one operator in it".into(),
                    "op = \"split_words\" or op = { count = { window = \"10s\" } }".into(),
                );
                return OpSpec::SplitWords;
            }
        };
        if !OPERATOR_NAMES.contains(&name) {
            let hint = suggest(name, OPERATOR_NAMES);
            self.error(span, key, format!("unknown operator \"{name}\""), hint);
            return OpSpec::SplitWords;
        }
        let key = format!("{key}.{name}");
        match (name, params) {
            ("split_words", None) => OpSpec::SplitWords,
            ("reply", None) => OpSpec::Reply,
            ("map" | "filter", Some(toml::Value::String(expr))) => {
                self.jq(expr, span.clone(), &key);
                if name == "map" {
                    OpSpec::Map(expr.clone())
                } else {
                    OpSpec::Filter(expr.clone())
                }
            }
            ("key_by", Some(toml::Value::String(expr))) => OpSpec::KeyBy(self.selector(expr, span, &key)),
            ("count" | "sum" | "min" | "max", None) if name == "count" => OpSpec::Window(WindowSpec {
                aggregate: Aggregate::Count,
                of: None,
                window: None,
                time: TimeKind::Record,
                lateness: Duration::ZERO,
            }),
            ("count" | "sum" | "min" | "max", Some(toml::Value::Table(p))) => {
                self.window(name, p, span, &key)
            }
            ("dedupe", None) => OpSpec::Dedupe {
                by: Part::Key,
                capacity: 1 << 20,
            },
            ("dedupe", Some(toml::Value::Table(p))) => self.dedupe(p, span, &key),
            ("exec", Some(toml::Value::Table(p))) => self.exec(p, span, &key),
            ("scatter_gather", Some(toml::Value::Table(p))) => self.scatter(p, span, &key, topics),
            ("state", Some(toml::Value::Table(p))) => match p.get("update") {
                Some(toml::Value::String(update)) => {
                    self.jq(update, span, &format!("{key}.update"));
                    OpSpec::State {
                        update: update.clone(),
                    }
                }
                _ => {
                    self.error(
                        span,
                        format!("{key}.update"),
                        "state needs the jq expression that gives a key's new state".into(),
                        "update = \"(.state // 0) + 1\" (it sees {key, state, value})".into(),
                    );
                    OpSpec::SplitWords
                }
            },
            _ => {
                let shape = match name {
                    "split_words" => "op = \"split_words\"",
                    "reply" => "op = \"reply\"",
                    "map" => "op = { map = \".field\" }",
                    "filter" => "op = { filter = \".n > 3\" }",
                    "key_by" => "op = { key_by = \".user\" } (or \"key\" / \"value\")",
                    "count" => "op = { count = { window = \"10s\" } } or op = \"count\"",
                    "dedupe" => "op = { dedupe = { by = \"key\", capacity = 100000 } }",
                    "exec" => "op = { exec = { command = [\"python3\", \"worker.py\"] } }",
                    "state" => "op = { state = { update = \"(.state // 0) + 1\" } }",
                    "scatter_gather" => {
                        "op = { scatter_gather = { branches = [\"t\"], merge = \"concat\" } }"
                    }
                    _ => "op = { sum = { of = \".amount\", window = \"1m\" } }",
                };
                self.error(
                    span,
                    key,
                    format!("{name} is not given the right parameters"),
                    format!("write {shape}"),
                );
                OpSpec::SplitWords
            }
        }
    }

    fn window(&mut self, name: &str, p: &toml::Table, span: Range<usize>, key: &str) -> OpSpec {
        let aggregate = match name {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "min" => Aggregate::Min,
            _ => Aggregate::Max,
        };
        let text = |k: &str| p.get(k).and_then(toml::Value::as_str).map(str::to_owned);
        let of = text("of");
        match (&of, aggregate) {
            (None, Aggregate::Sum | Aggregate::Min | Aggregate::Max) => self.error(
                span.clone(),
                format!("{key}.of"),
                format!("{name} needs the number to aggregate"),
                "of = \".amount\" (a jq expression over the value)".into(),
            ),
            (Some(expr), _) => self.jq(expr, span.clone(), &format!("{key}.of")),
            _ => {}
        }
        let window = text("window").map(|w| self.duration_text(&w, span.clone(), &format!("{key}.window")));
        let lateness = text("lateness").map_or(Duration::ZERO, |w| {
            self.duration_text(&w, span.clone(), &format!("{key}.lateness"))
        });
        let time = match text("time").as_deref() {
            None | Some("record") => TimeKind::Record,
            Some("processing") => TimeKind::Processing,
            Some(other) => {
                let hint = suggest(other, &["record", "processing"]);
                self.error(
                    span.clone(),
                    format!("{key}.time"),
                    format!("unknown time \"{other}\""),
                    hint,
                );
                TimeKind::Record
            }
        };
        if time == TimeKind::Processing && window.is_none() {
            self.error(
                span,
                format!("{key}.window"),
                "a processing-time aggregate needs a window".into(),
                "window = \"10s\"".into(),
            );
        }
        OpSpec::Window(WindowSpec {
            aggregate,
            of,
            window,
            time,
            lateness,
        })
    }

    fn dedupe(&mut self, p: &toml::Table, span: Range<usize>, key: &str) -> OpSpec {
        let by = match p.get("by").and_then(toml::Value::as_str) {
            None | Some("key") => Part::Key,
            Some("value") => Part::Value,
            Some(other) => {
                let hint = suggest(other, &["key", "value"]);
                self.error(
                    span.clone(),
                    format!("{key}.by"),
                    format!("cannot dedupe by \"{other}\""),
                    hint,
                );
                Part::Key
            }
        };
        let capacity = match p.get("capacity") {
            None => 1 << 20,
            Some(toml::Value::Integer(n)) if (1..=1 << 28).contains(n) => *n as usize,
            Some(_) => {
                self.error(
                    span,
                    format!("{key}.capacity"),
                    "capacity must be a number from 1 to 268435456".into(),
                    "it is how many recent distinct entries are remembered".into(),
                );
                1
            }
        };
        OpSpec::Dedupe { by, capacity }
    }

    fn selector(&mut self, expr: &str, span: Range<usize>, key: &str) -> Selector {
        match expr {
            "key" => Selector::Part(Part::Key),
            "value" => Selector::Part(Part::Value),
            _ => {
                self.jq(expr, span, key);
                Selector::Jq(expr.to_owned())
            }
        }
    }

    /// A source reads no partition, so it has nothing to forward from.
    fn source_route(&mut self, raw: Option<&Spanned<toml::Value>>, key: &str) -> Route {
        let route = self.route(raw, key);
        if let (Route::Forward, Some(raw)) = (&route, raw) {
            self.error(
                raw.span(),
                key,
                "a source reads no partition to forward from".into(),
                "route = \"spread\" (the default) or { shard_by = \"key\" }".into(),
            );
            return Route::Spread;
        }
        route
    }

    fn route(&mut self, raw: Option<&Spanned<toml::Value>>, key: &str) -> Route {
        let Some(raw) = raw else { return Route::Spread };
        match raw.get_ref() {
            toml::Value::String(s) if s == "spread" => Route::Spread,
            toml::Value::String(s) if s == "forward" => Route::Forward,
            toml::Value::String(s) if s == "broadcast" => Route::Broadcast,
            toml::Value::Table(t) => {
                match t.get("shard_by") {
                    Some(toml::Value::String(sel)) => {
                        Route::ShardBy(self.selector(sel, raw.span(), &format!("{key}.shard_by")))
                    }
                    _ => {
                        self.error(raw.span(), key, "a route table needs shard_by".into(),
                        "route = { shard_by = \"key\" } (or \"value\", or a jq expression such as \".user\")".into());
                        Route::Spread
                    }
                }
            }
            other => {
                let hint = match other.as_str() {
                    Some(s) => suggest(s, &["spread", "forward", "broadcast"]),
                    None => "route = \"spread\", \"forward\", \"broadcast\" or { shard_by = \"key\" }".into(),
                };
                self.error(raw.span(), key, format!("unknown route {other}"), hint);
                Route::Spread
            }
        }
    }

    fn jq(&mut self, expr: &str, span: Range<usize>, key: &str) {
        if let Err(message) = crate::jq::JqProgram::compile(expr) {
            self.error(
                span,
                key,
                format!("bad jq expression `{expr}`: {message}"),
                "see the jq manual; flowd runs jq through jaq".into(),
            );
        }
    }

    fn topic_ref(&mut self, name: &Spanned<String>, key: &str, topics: &[&str]) -> usize {
        self.topic_name_ref(name.get_ref(), name.span(), key, topics)
    }

    fn topic_name_ref(&mut self, name: &str, span: Range<usize>, key: &str, topics: &[&str]) -> usize {
        match topics.iter().position(|t| *t == name) {
            Some(i) => i,
            None => {
                self.unresolved = true;
                let hint = did_you_mean(name, topics.iter().copied())
                    .unwrap_or_else(|| format!("declare it with [[topic]] name = \"{name}\""));
                self.error(span, key, format!("there is no topic \"{name}\""), hint);
                0
            }
        }
    }

    fn cycles(&mut self, raw: &[Spanned<RawStage>], stages: &[StageSpec], topics: &[&str]) {
        // Edges topic -> topic through each stage (its output and its dead letters); a
        // cycle would feed a stage its own output, or a failed record back to itself.
        let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); topics.len()];
        for (i, stage) in stages.iter().enumerate() {
            for to in stage.to.into_iter().chain(stage.dead_letter_topic()) {
                for &from in &stage.from {
                    edges[from].push((to, i));
                }
            }
        }
        let mut state = vec![Visit::New; topics.len()];
        let mut path = Vec::new();
        for start in 0..topics.len() {
            if state[start] != Visit::New {
                continue;
            }
            if let Some((cycle, stage)) = find_cycle(start, &edges, &mut state, &mut path) {
                let names: Vec<&str> = cycle.iter().map(|&t| topics[t]).collect();
                let closing = &raw[stage].get_ref().name;
                self.error(
                    closing.span(),
                    format!("stage \"{}\".to", closing.get_ref()),
                    format!("the stages make a cycle: {}", names.join(" -> ")),
                    "a stage may not (through other stages) read its own output".into(),
                );
                return;
            }
        }
    }

    fn unique_names<'a>(&mut self, names: impl Iterator<Item = &'a Spanned<String>>, what: &str) {
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for name in names {
            if seen.insert(name.get_ref(), ()).is_some() {
                self.error(
                    name.span(),
                    "name",
                    format!("the {what} name \"{}\" is used twice", name.get_ref()),
                    "names must be unique: they name directories in the data dir".into(),
                );
            }
        }
    }

    fn name(&mut self, name: &Spanned<String>, what: &str) {
        let n = name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= NAME_BYTES_MAX
            && !n.starts_with('.')
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if n.starts_with(crate::config::spec::INTERNAL_TOPIC_PREFIX) {
            self.error(
                name.span(),
                format!("{what}.name"),
                format!(
                    "\"{n}\" is reserved: names beginning with \"{}\" are the engine's own topics",
                    crate::config::spec::INTERNAL_TOPIC_PREFIX
                ),
                "choose another name".into(),
            );
            return;
        }
        if !ok {
            self.error(
                name.span(),
                format!("{what}.name"),
                format!("\"{n}\" is not a usable {what} name"),
                format!("use 1 to {NAME_BYTES_MAX} letters, digits, '_', '-' or '.', not starting with '.'"),
            );
        }
    }

    fn size(&mut self, v: &Spanned<toml::Value>, key: &str) -> Option<u64> {
        match v.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => Some(*n as u64),
            toml::Value::String(s) => match s.parse::<bytesize::ByteSize>() {
                Ok(size) => Some(size.as_u64()),
                Err(e) => {
                    self.error(
                        v.span(),
                        key,
                        format!("\"{s}\" is not a size: {e}"),
                        "write e.g. \"64MiB\" or \"8GiB\"".into(),
                    );
                    None
                }
            },
            other => {
                self.error(
                    v.span(),
                    key,
                    format!("{other} is not a size"),
                    "write e.g. \"64MiB\" or a number of bytes".into(),
                );
                None
            }
        }
    }

    fn duration(&mut self, s: &Spanned<String>, key: &str) -> Duration {
        self.duration_text(s.get_ref(), s.span(), key)
    }

    fn duration_text(&mut self, s: &str, span: Range<usize>, key: &str) -> Duration {
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(
                    span,
                    key,
                    "a duration of zero is not allowed here".into(),
                    "write e.g. \"10s\"".into(),
                );
                Duration::from_secs(1)
            }
            Err(e) => {
                self.error(
                    span,
                    key,
                    format!("\"{s}\" is not a duration: {e}"),
                    "write e.g. \"500ms\", \"10s\" or \"24h\"".into(),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn duration_within(&mut self, s: &Spanned<String>, key: &str, min: Duration, max: Duration) -> Duration {
        let d = self.duration(s, key);
        if d < min || d > max {
            self.error(
                s.span(),
                key,
                format!("{} is out of range", s.get_ref()),
                format!(
                    "use from {} to {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            return min.max(d.min(max));
        }
        d
    }

    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: String, hint: String) {
        self.diags.push_hinted(span, key, message, Some(hint));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    OnPath,
    Done,
}

/// Depth-first search from `node`; returns the topics of a cycle and the stage closing it.
fn find_cycle(
    node: usize,
    edges: &[Vec<(usize, usize)>],
    state: &mut [Visit],
    path: &mut Vec<usize>,
) -> Option<(Vec<usize>, usize)> {
    state[node] = Visit::OnPath;
    path.push(node);
    for &(to, stage) in &edges[node] {
        match state[to] {
            Visit::OnPath => {
                let from = path.iter().position(|&t| t == to).expect("on the path");
                let mut cycle = path[from..].to_vec();
                cycle.push(to);
                return Some((cycle, stage));
            }
            Visit::New => {
                if let Some(found) = find_cycle(to, edges, state, path) {
                    return Some(found);
                }
            }
            Visit::Done => {}
        }
    }
    path.pop();
    state[node] = Visit::Done;
    None
}
