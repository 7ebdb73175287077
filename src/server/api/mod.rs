//! The engine operations both front doors (TCP frames and HTTP) offer. Each checks its
//! input, routes work to the shard that owns the partition, and waits for the outcome
//! the protocol promises (a durable ack, an answer, a timeout).
//!
//! Codemap: `produce` (a produce request split into one atomic batch per partition,
//! sent to the owners, acked once durable) → `fetch` (a read, served by the owner, here
//! or on another peer) → `jobs` (a request/reply job: its batch, its wait, its answer)
//! → `state` (a key's state in a `state` stage) → `status` (metadata and the engine's
//! status). This file: what several of them share.

mod fetch;
mod jobs;
mod produce;
mod state;
pub mod status;

pub use fetch::{fetch, parse_from};
pub use jobs::{JOB_TIMEOUT_MAX, job};
pub use produce::{
    Engine, Layout, Part, PendingProduce, Split, check_header_names, client_topic, produce, produce_batch,
    runs, split, too_large,
};
pub use state::{state, state_partition};
pub use status::metadata;

use std::time::Duration;

use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::cluster::peers::Peers;
use crate::runtime::error::EngineError;

/// An error unless this peer owns `partition` of `topic`: what is not relayed to the
/// owner (`relay::route`: a request relayed once already, an owner without a client
/// listener) is served by the owner alone.
pub fn check_local(peers: &Peers, name: &str, topic: usize, partition: u32) -> Result<(), ProtocolError> {
    match peers.owner(topic, partition) {
        None if peers.ownership.serving(topic, partition) => Ok(()),
        None => Err(ProtocolError::from(EngineError::TakingOver {
            topic: name.to_owned(),
            partition,
        })),
        Some(owner) => Err(ProtocolError::new(
            ErrorCode::Unsupported,
            format!(
                "partition {partition} of \"{name}\" is owned by the peer at {owner} (peer address); \
                 a request is not relayed to a peer without a client listener, nor relayed twice: send it to the client listener of that peer"
            ),
        )),
    }
}

/// "no KIND "NAME" here; this dataflow has: ...": what a request for an unknown name gets.
fn unknown_name<'a>(
    code: ErrorCode,
    kind: &str,
    name: &str,
    known: impl Iterator<Item = &'a str>,
) -> ProtocolError {
    let known: Vec<&str> = known.collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    ProtocolError::new(
        code,
        format!("no {kind} \"{name}\" here; this dataflow has: {known}"),
    )
}

/// `f`'s output, or `None` if it takes longer than `limit` (then `f` is dropped).
pub async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}
