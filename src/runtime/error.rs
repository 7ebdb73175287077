//! Errors of the runtime layer: `RuntimeError` stops the engine; `EngineError` refuses
//! one request or batch and the engine goes on.

use std::path::PathBuf;

use crate::consumer::error::ConsumerError;
use crate::protocol::{ErrorCode, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the progress file {path} is damaged ({reason}); remove it to replay that input from the start")]
    Progress { path: PathBuf, reason: String },
    #[error(
        "the consumer journal {path} cannot be read ({reason}); move it away to start without consumer state"
    )]
    Journal { path: PathBuf, reason: String },
    #[error("engine.cores asks for {requested} cores but this machine has {available}")]
    Cores { requested: usize, available: usize },
    #[error("cannot start shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
    #[error(
        "shard {shard} panicked (its message is above); the engine stopped rather than run without its partitions"
    )]
    ShardPanicked { shard: usize },
    #[error("operator of stage \"{stage}\" cannot be built: {reason}")]
    Operator { stage: String, reason: String },
    #[error(
        "cannot listen for {what} on {addr}: {source}; is another flowd (or another program) \
         using it? Pick another address with --listen/--http or [ingest] in the dataflow file"
    )]
    Listen {
        what: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} {addr} is not a loopback address: other machines would reach it, and nothing on it asks \
         who they are; bind 127.0.0.1 (or ::1), give the doors TLS and credentials (tls_cert, tls_key \
         and credentials in [ingest]), or say `insecure = true` in [ingest] (or --insecure) to serve \
         them anyway"
    )]
    Exposed {
        what: String,
        addr: std::net::SocketAddr,
    },
    /// The credentials file does not read (its own message says what to do).
    #[error("{0}")]
    Credentials(String),
    /// The doors' TLS files do not read or do not fit (the message says what to do).
    #[error("ingest TLS: {0}")]
    Tls(String),
    /// A read met damage in this peer's copy of a replicated partition
    /// (`runtime/cluster/damage.rs`).
    #[error(
        "partition {partition} of \"{topic}\" is damaged on this peer's disk ({damage}); this peer stops so that \
         its {others} other replicas, whose copies are whole, lead it and serve every acked record. Start it \
         again: it sets the damaged files aside and copies the partition again from them"
    )]
    DamagedCopy {
        topic: String,
        partition: u32,
        damage: String,
        others: usize,
    },
    /// This peer founded a metadata group alone while a running one counts it as a
    /// member (the message says what to do).
    #[error("{0}")]
    StrayGroup(String),
    #[error(
        "lost peer {peer} while it held batches this engine's stages wrote to it ({reason}); \
         restart this peer once that one is back (without replication, its partitions are away with it)"
    )]
    Peer {
        peer: std::net::SocketAddr,
        reason: String,
    },
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("a clustered dataflow cannot have {what} \"{name}\": {why}")]
    NotClusterable {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error(
        "a batch an engine stage wrote to partition {partition} of \"{topic}\" was refused ({reason}); \
         this is a bug (every output is sized to fit before it is sent): please report it; nothing of \
         the batch was written, and a restart replays it"
    )]
    Refused {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("standard output was closed")]
    OutputClosed,
    #[error("cannot write to standard output: {0}")]
    Stdout(std::io::Error),
}

impl RuntimeError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.into();
        move |source| RuntimeError::Io { what, path, source }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Why the engine did not do what one request or batch asked: in the engine's terms,
/// for any door to say in its own protocol. `From<EngineError> for ProtocolError` below
/// is the one conversion into flowd's protocol; the doors (TCP, HTTP, the peer link)
/// all go through it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("the engine is stopping; retry against the restarted engine")]
    Stopping,
    #[error("no topic \"{0}\" here; `flowd status` lists the topics of the running dataflow")]
    UnknownTopic(String),
    #[error("topic \"{topic}\" has partitions 0 to {}, not {partition}", partitions - 1)]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error(
        "partition {partition} of \"{topic}\" moves to this peer and is being copied in; retry in a moment"
    )]
    TakingOver { topic: String, partition: u32 },
    /// It cannot be done now (a poisoned partition, a peer that went away, a partition
    /// that moved): the message says what to do.
    #[error("{0}")]
    Unavailable(String),
    /// A record or batch over a bound; the message names it and what to change.
    #[error("{0}")]
    TooLarge(String),
    /// Over a limit of things held (consumers of a topic, connections).
    #[error("{0}")]
    Overloaded(String),
    /// Asked of the wrong peer, or not offered yet.
    #[error("{0}")]
    Unsupported(String),
    /// A well-formed request the engine does not allow.
    #[error("{0}")]
    Invalid(String),
    /// A read met a batch changed on disk since it was checked (the message names it
    /// and says what to do).
    #[error("{0}")]
    Damaged(String),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// A bug: the message says where.
    #[error("{0}")]
    Internal(String),
    /// A stage's batch made for an earlier lead of its input than one the partition's
    /// leader knows of (`stale.rs`): not written, the later lead writes its outputs.
    /// Between peers it travels as a STALE frame, never to a client.
    #[error(
        "a batch made for an earlier lead of its producer's input than epoch {latest}: not written, that lead writes its outputs"
    )]
    StaleLead { latest: u32 },
}

impl EngineError {
    /// `partition` of `topic` (with `partitions`), or the error that it has no such one.
    pub fn check_partition(topic: &str, partitions: u32, partition: u32) -> Result<(), EngineError> {
        if partition < partitions {
            return Ok(());
        }
        Err(EngineError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions,
        })
    }

    /// The protocol code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Stopping
            | EngineError::TakingOver { .. }
            | EngineError::Unavailable(_)
            | EngineError::StaleLead { .. } => ErrorCode::Unavailable,
            EngineError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            EngineError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            EngineError::TooLarge(_) => ErrorCode::TooLarge,
            EngineError::Overloaded(_) => ErrorCode::Overloaded,
            EngineError::Unsupported(_) => ErrorCode::Unsupported,
            EngineError::Invalid(_) => ErrorCode::Invalid,
            EngineError::Damaged(_) => ErrorCode::Damaged,
            EngineError::Internal(_) => ErrorCode::Internal,
            EngineError::Consumer(error) => match error {
                ConsumerError::Unknown { .. } => ErrorCode::UnknownConsumer,
                ConsumerError::Disabled(_) | ConsumerError::AlreadyDisabled => ErrorCode::ConsumerDisabled,
                ConsumerError::NothingClaimed => ErrorCode::NothingClaimed,
                ConsumerError::AlreadyActive => ErrorCode::ConsumerActive,
                ConsumerError::Invalid(_) => ErrorCode::Invalid,
            },
        }
    }
}

/// The storage refused what a request needs of it: a read that met a damaged batch
/// (`Damaged`), or anything else the partition cannot do now (`Unavailable`); the
/// message says what to do.
impl From<crate::storage::StorageError> for EngineError {
    fn from(error: crate::storage::StorageError) -> EngineError {
        match error {
            crate::storage::StorageError::DamagedOnRead { .. } => EngineError::Damaged(error.to_string()),
            other => EngineError::Unavailable(other.to_string()),
        }
    }
}

impl From<EngineError> for ProtocolError {
    fn from(error: EngineError) -> ProtocolError {
        ProtocolError::new(error.code(), error.to_string())
    }
}

/// An error another peer answered over the peer link, in the engine's terms again (the
/// message is kept as the peer wrote it).
impl From<ProtocolError> for EngineError {
    fn from(error: ProtocolError) -> EngineError {
        let message = error.message;
        match error.code {
            ErrorCode::Unavailable => EngineError::Unavailable(message),
            ErrorCode::Damaged => EngineError::Damaged(message),
            ErrorCode::TooLarge => EngineError::TooLarge(message),
            ErrorCode::Overloaded => EngineError::Overloaded(message),
            ErrorCode::Unsupported => EngineError::Unsupported(message),
            ErrorCode::Invalid => EngineError::Invalid(message),
            code => EngineError::Internal(format!("a peer answered {}: {message}", code.name())),
        }
    }
}

impl From<ConsumerError> for ProtocolError {
    fn from(error: ConsumerError) -> ProtocolError {
        EngineError::Consumer(error).into()
    }
}
