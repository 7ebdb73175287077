//! Errors of the runtime layer.

use std::path::PathBuf;

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
        "lost peer {peer} while it held batches this engine's stages wrote to it ({reason}); \
         restart this peer once that one is back (without replication, its partitions are away with it)"
    )]
    Peer {
        peer: std::net::SocketAddr,
        reason: String,
    },
    #[error(
        "no peer took partition {partition} of \"{topic}\" within {waited_s} s while it moved (the cluster is \
         changing, split, or a peer holding it is unreachable); restart this peer once the cluster settles"
    )]
    NoOwner {
        topic: String,
        partition: u32,
        waited_s: u64,
    },
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(
        "a clustered dataflow cannot have {what} \"{name}\": it would run on every peer; \
         feed the dataflow through its ingest listeners and read it with `flowd tail` or consumers"
    )]
    NotClusterable { what: &'static str, name: String },
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
