//! The metadata group's messages between peers, over the peer port: a connection that
//! says `Purpose::Raft` in its HELLO carries RAFT frames, each answered in order by one
//! RAFT_REPLY frame.
//!
//! ```text
//! RAFT        body = rpc:u8 target:u64 json
//!                                         rpc 1 vote, 2 append entries, 3 install snapshot;
//!                                         target: the node id (storage id) it is meant for;
//!                                         json: openraft's request, as serde writes it
//! RAFT_REPLY  body = json                 Result<response, RaftError> of that rpc
//! ```
//!
//! Outgoing: one connection per target, made when first needed, dropped on any error
//! (openraft retries); every call is bounded by openraft's time to live for it.
//! Incoming: a message for another node id than this peer's is refused: the member it
//! was meant for ran on a data directory this peer no longer has (its vote and log are
//! gone), and answering in its name could elect a leader twice in one term.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::consensus::types::{Raft, TypeConfig};
use crate::cluster::frame::{self, Kind};
use crate::cluster::transport::{self, Purpose};

pub const RPC_VOTE: u8 = 1;
pub const RPC_APPEND: u8 = 2;
pub const RPC_SNAPSHOT: u8 = 3;

/// Makes a connection per target.
pub struct Network {
    pub cluster: String,
    pub me: SocketAddr,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Connection {
        Connection {
            target,
            to: node.addr.parse().ok(),
            cluster: self.cluster.clone(),
            me: self.me,
            stream: None,
        }
    }
}

pub struct Connection {
    target: u64,
    to: Option<SocketAddr>,
    cluster: String,
    me: SocketAddr,
    stream: Option<TcpStream>,
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
        serde_json::to_writer(&mut body, request).expect("a raft request serializes");
        let exchanged = tokio::time::timeout(ttl, self.exchange(to, &body)).await;
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

    async fn exchange(&mut self, to: SocketAddr, body: &[u8]) -> std::io::Result<Vec<u8>> {
        if self.stream.is_none() {
            let mut stream = TcpStream::connect(to).await?;
            stream.set_nodelay(true)?;
            stream
                .write_all(&transport::hello(&self.cluster, self.me, Purpose::Raft))
                .await?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("just connected");
        stream.write_all(&frame::framed(Kind::Raft, 0, body)).await?;
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await?;
        let len = frame::frame_len(head).map_err(std::io::Error::other)?;
        let mut rest = vec![0u8; len];
        stream.read_exact(&mut rest).await?;
        let reply = frame::decode(&rest).map_err(std::io::Error::other)?;
        match reply.kind {
            Kind::RaftReply => Ok(reply.body),
            Kind::Error => Err(std::io::Error::other(frame::read_error(&reply.body).1)),
            other => Err(std::io::Error::other(format!(
                "a {other:?} frame answering a raft message"
            ))),
        }
    }
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

/// Answers one RAFT frame's body: the reply body, or why the request did not decode.
pub async fn answer(raft: &Raft, me: u64, body: &[u8]) -> Result<Vec<u8>, String> {
    let (&rpc, rest) = body.split_first().ok_or("an empty raft message")?;
    let (target, json) = rest
        .split_first_chunk::<8>()
        .ok_or("a raft message without its target")?;
    let target = u64::from_le_bytes(*target);
    if target != me {
        return Err(format!(
            "a raft message for member {target:016x}, and this peer is member {me:016x}: the member it was meant for \
             ran on a data directory this peer no longer has; this peer takes part as a new member once the group adds it"
        ));
    }
    fn reply<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("a raft reply serializes")
    }
    let bad = |e: serde_json::Error| format!("a raft message that does not decode: {e}");
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
        other => return Err(format!("unknown raft message kind {other}")),
    })
}
