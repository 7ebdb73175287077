//! What can go wrong in the cluster layer, worded for the operator.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot listen for peers on {addr}: {source}; pick a free address for --peer-listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bad peer frame: {0}")]
    Frame(String),
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "a peer of cluster \"{theirs}\" connected to this peer of cluster \"{ours}\"; give both the same --cluster-id, or keep the clusters apart"
    )]
    OtherCluster { ours: String, theirs: String },
    /// A connection that did not prove it is a peer of this cluster (said in the log).
    #[error("{0}")]
    Refused(String),
    /// This peer's own TLS files.
    #[error("the peer port's TLS: {0}")]
    Tls(String),
    #[error("this peer's data directory: {0}")]
    Storage(String),
    #[error("the cluster's metadata group: {0}")]
    Consensus(String),
    #[error("cannot start the cluster's {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}
