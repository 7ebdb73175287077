//! The metadata group's messages between peers, over the peer port: a connection that
//! says `Purpose::Raft` in its HELLO carries RAFT frames, each answered in order by one
//! RAFT_REPLY frame.
//!
//! ```text
//! RAFT        body = rpc:u8 target:u64 group:u64 json
//!                                         rpc 1 vote, 2 append entries, 3 install snapshot;
//!                                         target: the node id (storage id) it is meant for;
//!                                         group: the sender's group (its founder's storage
//!                                         id; 0 for a member from before groups had one);
//!                                         json: openraft's request, as serde writes it;
//!                                         rpc 4: "are you a member of a group?" (target,
//!                                         group and json ignored), asked by a founding seed
//! RAFT_REPLY  body = json                 Result<response, RaftError> of that rpc; for
//!                                         rpc 4 `true` or `false`
//! ```
//!
//! Outgoing: one connection per target, made when first needed, dropped on any error
//! (openraft retries); every call is bounded by openraft's time to live for it. The
//! connection is a blocking peer stream (the same, with the same TLS, as every other
//! peer connection), driven from tokio's blocking pool with socket timeouts of that
//! time to live.
//! Incoming: a message of another group than this member's is refused: two groups
//! never mix (openraft takes every log it is sent for its own group's, and a second
//! group's first entries collide with this one's: it stops). A member of no group yet
//! joins the group of the first message meant for it. A message for another node id
//! than this peer's is refused: the member it was meant for ran on a data directory
//! this peer no longer has (its vote and log are gone), and answering in its name could
//! elect a leader twice in one term.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::consensus::store::Store;
use crate::cluster::consensus::types::{Raft, TypeConfig};
use crate::cluster::frame::{self, Kind};
use crate::cluster::stream::PeerStream;
use crate::cluster::transport::{Dialer, Purpose};

pub const RPC_VOTE: u8 = 1;
pub const RPC_APPEND: u8 = 2;
pub const RPC_SNAPSHOT: u8 = 3;
pub const RPC_MEMBER: u8 = 4;

/// Makes a connection per target.
pub struct Network {
    pub dialer: Dialer,
    /// Whose group this member's messages say they are of.
    pub store: Store,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Connection {
        Connection {
            target,
            to: node.addr.parse().ok(),
            dialer: self.dialer.clone(),
            store: self.store.clone(),
            stream: None,
        }
    }
}

pub struct Connection {
    target: u64,
    to: Option<SocketAddr>,
    dialer: Dialer,
    store: Store,
    /// Taken while a call uses it; put back once it answered.
    stream: Option<PeerStream>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: u8,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(to) = self.to else {
            return Err(RPCError::Unreachable(Unreachable::new(&Failure(
                "a member whose address does not parse".into(),
            ))));
        };
        let mut body = vec![rpc];
        body.extend_from_slice(&self.target.to_le_bytes());
        body.extend_from_slice(&self.store.group().unwrap_or(0).to_le_bytes());
        serde_json::to_writer(&mut body, request).expect("a raft request serializes");
        let exchanged = tokio::time::timeout(ttl, self.exchange(to, body, ttl)).await;
        let reply = match exchanged {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                self.stream = None;
                return Err(RPCError::Unreachable(Unreachable::new(&Failure(format!(
                    "peer {to}: {error}"
                )))));
            }
            Err(_) => {
                self.stream = None;
                return Err(RPCError::Network(NetworkError::new(&Failure(format!(
                    "peer {to} did not answer within {} ms",
                    ttl.as_millis()
                )))));
            }
        };
        let decoded: Result<Resp, RaftError<u64, E>> = serde_json::from_slice(&reply).map_err(|e| {
            self.stream = None;
            RPCError::Network(NetworkError::new(&Failure(format!(
                "peer {to} answered a raft message with bytes that do not decode: {e}"
            ))))
        })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// One message and its reply, on the blocking pool: the stream goes there and comes
    /// back when the call ends in time (else it is dropped with its thread's call, which
    /// the socket timeouts end within `ttl`).
    async fn exchange(&mut self, to: SocketAddr, body: Vec<u8>, ttl: Duration) -> std::io::Result<Vec<u8>> {
        let stream = self.stream.take();
        let dialer = self.dialer.clone();
        let call = tokio::task::spawn_blocking(move || {
            let mut stream = match stream {
                Some(stream) => stream,
                None => dialer.connect(to, Purpose::Raft)?,
            };
            let reply = exchange(&mut stream, &body, ttl)?;
            Ok::<_, std::io::Error>((stream, reply))
        });
        let (stream, reply) = call.await.map_err(std::io::Error::other)??;
        self.stream = Some(stream);
        reply
    }
}

/// Whether the peer at `to` is a member of a metadata group (holds a group's state):
/// asked by the first of several seeds before it founds one. Blocking, each step
/// bounded by `ttl`.
pub fn is_member(dialer: &Dialer, to: SocketAddr, ttl: Duration) -> std::io::Result<bool> {
    let mut stream = dialer.connect(to, Purpose::Raft)?;
    let mut body = vec![RPC_MEMBER];
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    let reply = exchange(&mut stream, &body, ttl)??;
    serde_json::from_slice(&reply).map_err(|e| {
        std::io::Error::other(format!(
            "peer {to} answered whether it is a member with bytes that do not decode: {e}"
        ))
    })
}

/// Writes one RAFT frame and reads its reply frame: the reply's body, or an ERROR
/// frame's message as `Ok(Err(..))` (the stream still good).
fn exchange(
    stream: &mut PeerStream,
    body: &[u8],
    ttl: Duration,
) -> std::io::Result<std::io::Result<Vec<u8>>> {
    use std::io::Write;
    stream.set_read_timeout(Some(ttl.max(Duration::from_millis(1))))?;
    stream.set_write_timeout(Some(ttl.max(Duration::from_millis(1))))?;
    stream.write_all(&frame::framed(Kind::Raft, 0, body))?;
    let reply = frame::read(stream)
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
    Ok(match reply.kind {
        Kind::RaftReply => Ok(reply.body),
        Kind::Error => Err(std::io::Error::other(frame::read_error(&reply.body).1)),
        other => Err(std::io::Error::other(format!(
            "a {other:?} frame answering a raft message"
        ))),
    })
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(RPC_APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>>
    {
        self.call(RPC_SNAPSHOT, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(RPC_VOTE, &rpc, option.hard_ttl()).await
    }
}

/// Why a RAFT frame was not answered.
#[derive(Debug)]
pub enum Refused {
    /// The sender is a member of group `theirs`, this peer of `ours`.
    OtherGroup { theirs: u64, ours: u64 },
    /// Anything else, said.
    Other(String),
}

/// Answers one RAFT frame's body: the reply body, or why it was refused.
pub async fn answer(raft: &Raft, me: u64, store: &Store, body: &[u8]) -> Result<Vec<u8>, Refused> {
    let (&rpc, rest) = body
        .split_first()
        .ok_or_else(|| Refused::Other("an empty raft message".into()))?;
    let (target, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| Refused::Other("a raft message without its target".into()))?;
    let (group, json) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| Refused::Other("a raft message without its group".into()))?;
    let (target, group) = (u64::from_le_bytes(*target), u64::from_le_bytes(*group));
    if rpc == RPC_MEMBER {
        let member = raft
            .is_initialized()
            .await
            .map_err(|e| Refused::Other(e.to_string()))?;
        return Ok(serde_json::to_vec(&member).expect("a bool serializes"));
    }
    // A sender from before groups had an id (0) cannot be told apart: taken as before.
    if group != 0
        && let Some(ours) = store.group()
        && ours != group
    {
        return Err(Refused::OtherGroup { theirs: group, ours });
    }
    if target != me {
        return Err(Refused::Other(format!(
            "a raft message for member {target:016x}, and this peer is member {me:016x}: the member it was meant for \
             ran on a data directory this peer no longer has; this peer takes part as a new member once the group adds it"
        )));
    }
    if group != 0 {
        // Joined (written and synced) before anything of the group is taken; a member
        // that joined another in between is refused as above.
        let ours = store
            .join_group(group)
            .map_err(|e| Refused::Other(format!("cannot record the group this peer joins: {e}")))?;
        if ours != group {
            return Err(Refused::OtherGroup { theirs: group, ours });
        }
    }
    fn reply<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("a raft reply serializes")
    }
    let bad = |e: serde_json::Error| Refused::Other(format!("a raft message that does not decode: {e}"));
    Ok(match rpc {
        RPC_VOTE => reply(&raft.vote(serde_json::from_slice(json).map_err(bad)?).await),
        RPC_APPEND => reply(
            &raft
                .append_entries(serde_json::from_slice(json).map_err(bad)?)
                .await,
        ),
        RPC_SNAPSHOT => reply(
            &raft
                .install_snapshot(serde_json::from_slice(json).map_err(bad)?)
                .await,
        ),
        other => return Err(Refused::Other(format!("unknown raft message kind {other}"))),
    })
}
