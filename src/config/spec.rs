//! The validated dataflow: what the runtime is given. Every reference is resolved to an
//! index, every expression has compiled once, every number is in range.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::storage::{Durability, RetentionPolicy};

#[derive(Debug, Clone)]
pub struct DataflowSpec {
    /// The file it came from; relative source paths resolve against its directory.
    pub file: PathBuf,
    pub engine: EngineSpec,
    pub topics: Vec<TopicSpec>,
    pub sources: Vec<SourceSpec>,
    pub stages: Vec<StageSpec>,
    pub sinks: Vec<SinkSpec>,
    /// The TCP and HTTP front doors; `None`: a batch dataflow with no listeners.
    pub ingest: Option<IngestSpec>,
    pub jobs: Vec<JobSpec>,
    /// `[cluster] tls_cert, tls_key, tls_ca`: mutual TLS between the peers.
    pub peer_tls: Option<PeerTlsSpec>,
}

/// The PEM files of mutual TLS on the peer port (`flowd cert issue --cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsSpec {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// The cluster's CA, which signed every peer's certificate.
    pub ca: std::path::PathBuf,
}

/// Where clients reach the engine, and the limits each connection lives within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSpec {
    pub tcp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The Kafka protocol's door (`server::kafka`), opened only when given.
    pub kafka: Option<SocketAddr>,
    pub max_frame_bytes: u32,
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_address: usize,
    /// A frame (or an HTTP request's header or body) not whole this long after its
    /// first byte, or a response not taken by the client for this long, closes the
    /// connection.
    pub io_timeout: Duration,
    /// A connection with nothing in flight and no request begun for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes of large unfinished frames and HTTP bodies (and of the requests they
    /// become, until answered) one core holds at once; past it, connections wait before
    /// reading more. At least `max_frame_bytes`.
    pub max_buffered_bytes: u64,
    /// Host names (lower case) the HTTP door answers to besides IP literals and
    /// `localhost`: a request naming another host is refused, so that a web page
    /// whose name was made to resolve to this machine (DNS rebinding) reaches nothing.
    pub http_hosts: Vec<String>,
    /// Listeners (and the peer port) may bind addresses other machines reach, without
    /// TLS and credentials (`insecure = true`, `--insecure`): said in the log and on the
    /// status page.
    pub insecure: bool,
    /// The credentials file: with it, every request needs a token with the permission
    /// it asks for (`server::gate`); without it, the doors are open (on loopback).
    pub credentials: Option<std::path::PathBuf>,
    /// PEM certificate chain and key: with them both doors speak TLS 1.3 only.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// CA certificates whose client certificates prove who a client is (its subject's
    /// common name taken as a credential's name), instead of a token.
    pub tls_client_ca: Option<std::path::PathBuf>,
}

pub const DEFAULT_TCP: &str = "127.0.0.1:7070";
pub const DEFAULT_HTTP: &str = "127.0.0.1:7080";
/// Kafka's own port, as Kafka clients expect it (the door opens only when given).
pub const DEFAULT_KAFKA: &str = "127.0.0.1:9092";

impl Default for IngestSpec {
    fn default() -> IngestSpec {
        IngestSpec {
            tcp: None,
            http: None,
            kafka: None,
            max_frame_bytes: 16 << 20,
            max_connections: 4096,
            max_connections_per_address: 1024,
            io_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_buffered_bytes: 128 << 20,
            http_hosts: Vec::new(),
            insecure: false,
            credentials: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// A request/reply job: a record sent to `topic`, answered by a `reply` stage downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub name: String,
    pub topic: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    All,
    Count(usize),
}

#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub cores: Cores,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// How often stages store their progress.
    pub commit_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub segment_bytes: u64,
    pub retention: RetentionPolicy,
    /// Records a partition may hold beyond its slowest consumer before writers wait.
    pub max_lag: u64,
    /// Named consumers the topic may have; creating one more is refused. Bounds the
    /// engine's memory and its consumer journal, whatever clients do.
    pub max_consumers: usize,
    /// Copies of each partition on different peers of a cluster (its replicas are
    /// placed, and writes acked, once that many peers hold them). `None`, unless the
    /// dataflow says: `AUTO_REPLICAS` once that many peers are alive, every live peer
    /// until then. One machine keeps one copy either way.
    pub replicas: Option<u32>,
}

/// The copies a cluster keeps of a topic that names none.
pub const AUTO_REPLICAS: u32 = 3;

/// The most replicas a topic may ask for.
pub const REPLICAS_MAX: u32 = 7;

/// Named consumers a topic may have unless it says otherwise.
pub const MAX_CONSUMERS_DEFAULT: usize = 10_000;
/// The most `max_consumers` may be.
pub const MAX_CONSUMERS_LIMIT: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    pub kind: SourceKind,
    /// jq over each line's JSON giving its timestamp in ms; `None`: the time it was read.
    pub timestamp: Option<String>,
    /// Index into `DataflowSpec::topics`.
    pub to: usize,
    pub route: Route,
    /// In a cluster: every peer reads its own input under a producer id of its own;
    /// otherwise the peer leading partition 0 of `to` reads (`runtime/source.rs`).
    pub per_peer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// The lines of one file; with `follow`, lines appended later too.
    File { path: PathBuf, follow: bool },
    /// Every file of a directory in name order, then new files as they appear.
    Directory { path: PathBuf },
}

impl SourceKind {
    /// A bounded source ends; its dataflow can finish.
    pub fn is_bounded(&self) -> bool {
        matches!(self, SourceKind::File { follow: false, .. })
    }
}

#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    /// Indexes into `DataflowSpec::topics`.
    pub from: Vec<usize>,
    pub op: OpSpec,
    pub to: Option<usize>,
    pub route: Route,
    pub guarantee: Guarantee,
    /// What becomes of a record the stage cannot write: its operator failed on it, its
    /// output does not fit its topic, or (`exec`) its workers failed it again and again.
    pub on_error: ErrorPolicy,
}

impl StageSpec {
    /// The topic failed records are copied to, for a stage that dead-letters.
    pub fn dead_letter_topic(&self) -> Option<usize> {
        match self.on_error.then {
            OnFailure::DeadLetter(topic) => Some(topic),
            _ => None,
        }
    }
}

/// A stage's answer to a record it cannot write: at once for an operator error or an
/// output too large for its topic; for an exec stage's worker failures, once a record
/// failed `max_reclaims + 1` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    pub max_reclaims: u32,
    pub then: OnFailure,
}

impl ErrorPolicy {
    /// Exec stages retry 5 times, then disable (a worker may be fixed and restarted);
    /// built-in operators skip the record, counted and logged, as they always did.
    pub fn default_for(is_exec: bool) -> ErrorPolicy {
        match is_exec {
            true => ErrorPolicy {
                max_reclaims: 5,
                then: OnFailure::Disable,
            },
            false => ErrorPolicy {
                max_reclaims: 0,
                then: OnFailure::Continue,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The stage stops on that input partition (nothing after the record is written)
    /// until flowd is restarted.
    Disable,
    /// The record is skipped: no output, counted as failed.
    Continue,
    /// The record is copied to this topic (index into `DataflowSpec::topics`) with the
    /// reason in a header, and the stage goes on.
    DeadLetter(usize),
}

/// What a restart promises about a stage's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Each input's outputs are in the output topic exactly once (replayed outputs that
    /// already landed are dropped); needs a deterministic operator.
    ExactlyOnce,
    /// Nothing is lost; outputs of inputs replayed after a crash may appear again.
    AtLeastOnce,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpSpec {
    Map(String),
    Filter(String),
    SplitWords,
    KeyBy(Selector),
    Window(WindowSpec),
    Dedupe {
        by: Part,
        capacity: usize,
    },
    /// Answers the request/reply job each record came from; writes no topic.
    Reply,
    /// Records handled by a pool of external worker processes.
    Exec(Box<ExecSpec>),
    /// A state per key, changed by each record through a jq expression; every change
    /// is written to the output topic, which is the state's changelog.
    State {
        update: String,
    },
    /// Each record goes to branches as a job; their answers are merged into one output.
    ScatterGather(Box<ScatterSpec>),
}

/// A `scatter_gather` stage: where copies go, how answers merge, how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScatterSpec {
    /// Topics a copy of each record goes to (indexes into `DataflowSpec::topics`); each
    /// must lead to a `reply` stage.
    pub branches: Vec<usize>,
    /// A copy to every partition of each branch (so to every shard), not just one.
    pub every_partition: bool,
    pub merge: Merge,
    pub timeout: Duration,
    /// What a record whose branches did not all answer in time becomes.
    pub partial: Partial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// Arrays concatenated, other answers appended, in branch order.
    Concat,
    /// The sum of numeric answers.
    Sum,
    /// The largest numeric answer.
    Max,
    /// A jq expression over the array of answers; its first output.
    Jq(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// Merge the answers that came.
    Answer,
    /// Fail the record (a job's caller gets the error).
    Fail,
}

/// An `exec` stage's worker pool: what to start and how to drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The program and its arguments. A program named by a relative path with a `/` in
    /// it is found from `dir`; a bare name is looked up on `PATH`.
    pub command: Vec<String>,
    /// Worker processes for the whole stage, shared out among the cores that read its
    /// input (each gets at least one); `None`: one per such core.
    pub workers: Option<usize>,
    /// Records in flight per worker (written to it, not yet answered).
    pub concurrency: usize,
    /// A worker is replaced after answering this many records.
    pub restart_after: Option<u64>,
    /// A record not answered this long after it was written to a worker is reclaimed,
    /// and the worker, taken to be hung, is killed and restarted.
    pub timeout: Duration,
    /// Added to the environment flowd runs in.
    pub env: Vec<(String, String)>,
    /// The workers' working directory (default: the dataflow file's directory).
    pub dir: PathBuf,
    pub protocol: ExecProtocol,
    /// The longest answer (a JSON line, or a batched frame) a worker may write.
    pub max_answer_bytes: usize,
}

/// How records and answers travel on a worker's stdin and stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecProtocol {
    /// One JSON object per line each way.
    JsonLines,
    /// Length-prefixed binary frames holding many records each.
    Batched,
}

impl ExecProtocol {
    /// The names dataflow.toml and `flowd bench exec --protocol` take.
    pub const NAMES: [&'static str; 2] = ["json", "batched"];

    pub fn name(self) -> &'static str {
        match self {
            ExecProtocol::JsonLines => "json",
            ExecProtocol::Batched => "batched",
        }
    }

    pub fn from_name(name: &str) -> Option<ExecProtocol> {
        [ExecProtocol::JsonLines, ExecProtocol::Batched]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

impl OpSpec {
    /// Whether replaying the same input gives the same output, which exactly-once
    /// recovery relies on. Processing-time windows depend on the clock.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            OpSpec::Window(WindowSpec {
                time: TimeKind::Processing,
                ..
            }) | OpSpec::ScatterGather(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub aggregate: Aggregate,
    /// The number aggregated (`sum`/`min`/`max`): a jq expression over the value.
    pub of: Option<String>,
    /// Tumbling window length; `None` is one window over the whole input.
    pub window: Option<Duration>,
    pub time: TimeKind,
    /// Record time: how far behind the newest timestamp a window stays open.
    pub lateness: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Count,
    Sum,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    Record,
    Processing,
}

/// Which part of a record a stage looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Key,
    Value,
}

/// A part of a record, or a jq expression over its JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Part(Part),
    Jq(String),
}

/// How a producer picks the partition of each record it writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Round robin.
    Spread,
    /// To the partition numbered as the input's (modulo the output's partitions): a
    /// stage's work stays on the core that read it, and a partition's order is kept.
    /// A stage's default when its output has as many partitions as each of its inputs.
    Forward,
    /// By a hash of the selected bytes, so equal selections meet in one partition.
    ShardBy(Selector),
    /// Every partition gets a copy.
    Broadcast,
}

#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub from: usize,
    pub kind: SinkKind,
    pub format: SinkFormat,
    /// In a cluster: every peer writes every record of `from` to its own output;
    /// otherwise the peer leading partition 0 of `from` writes (`runtime/sink/clustered.rs`).
    pub per_peer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// The value, one per line.
    Value,
    /// `KEY<TAB>VALUE`.
    KeyValue,
    /// The `flowd tail --json` shape.
    Json,
}

/// Topics the engine keeps for itself begin so; a dataflow may not name one so.
pub const INTERNAL_TOPIC_PREFIX: &str = "__flowd.";

/// The internal topic holding the named consumers' cursors of `topic`'s partitions in a
/// cluster (`runtime/consumers/follow.rs`), one partition for each of `topic`'s.
pub fn cursor_topic_name(topic: &str) -> String {
    format!("{INTERNAL_TOPIC_PREFIX}cursors.{topic}")
}

impl TopicSpec {
    /// Whether the engine keeps it for itself: clients read it but never write it.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with(INTERNAL_TOPIC_PREFIX)
    }
}

impl DataflowSpec {
    pub fn topic_index(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t.name == name)
    }

    /// The topic a client may write or consume: any but the engine's own.
    pub fn client_topic(&self, name: &str) -> Option<usize> {
        self.topic_index(name).filter(|t| !self.topics[*t].is_internal())
    }

    /// The internal topic of `topic`'s cursors, if the engine keeps one (in a cluster,
    /// for a replicated topic).
    pub fn cursor_topic(&self, topic: usize) -> Option<usize> {
        if self.topics[topic].is_internal() {
            return None;
        }
        self.topic_index(&cursor_topic_name(&self.topics[topic].name))
    }

    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }
}
