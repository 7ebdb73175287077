//! Consensus on the cluster's metadata: one Raft group (openraft), whose voters are
//! peers, decides each replicated partition's replica set, leader and leader epoch
//! (Kafka's KRaft design; why in ARCHITECTURE.md and docs/decisions.md). Gossip finds
//! the peers and says which are alive; only this group decides who leads a partition.
//!
//! Codemap: `types` (the metadata, the commands that change it, the pure state machine)
//! → `store` (its durable log, vote and snapshot) → `network` (its messages over the
//! peer port) → this file (the group on a thread of its own, and who is a voter).
//!
//! The group runs on one tokio thread (`flowd-consensus`), beside glommio's shards and
//! never on them: openraft needs a tokio runtime, and the metadata changes rarely. The
//! peer that starts without seeds founds the group alone; every other peer is added by
//! the group's leader once gossip shows it alive: as a learner, then as a voter while
//! there are fewer than the voters wanted (1 or 2 peers: 1 voter; 3 or 4: 3; 5 or more:
//! 5). A voter that leaves gracefully is taken out; one that dies stays a voter (losing a
//! minority changes nothing; replacing it is for the operator or the next release).

pub mod network;
pub mod store;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState};

use crate::cluster::error::ClusterError;
use crate::cluster::view::ViewCell;
pub use store::MetadataCell;
use types::Raft;
pub use types::{Assignment, Command, Metadata, Outcome, node_id};

/// How often the group's leader looks at the gossip view for members to add or remove.
const MEMBERS_ROUND: Duration = Duration::from_millis(200);

/// The group's timing: a leader sends heartbeats this often, and a follower that hears
/// none for the election timeout (random between the two) stands for election.
pub const HEARTBEAT: Duration = Duration::from_millis(150);
pub const ELECTION_TIMEOUT: (Duration, Duration) = (Duration::from_millis(750), Duration::from_millis(1500));

/// This peer's member of the metadata group.
pub struct Consensus {
    raft: Raft,
    runtime: tokio::runtime::Runtime,
    pub me: u64,
    metadata: Arc<MetadataCell>,
}

/// The group as this peer sees it, for `flowd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<SocketAddr>,
    pub voters: Vec<SocketAddr>,
    pub learners: Vec<SocketAddr>,
    /// The last entry applied here.
    pub applied: u64,
}

fn thread_error(source: std::io::Error) -> ClusterError {
    ClusterError::Thread {
        what: "consensus",
        source,
    }
}

impl Consensus {
    /// Opens the group's state in `dir` and starts this peer's member; `found` starts a
    /// new group with this peer its only voter when `dir` holds none yet.
    pub fn start(dir: &Path, cluster: &str, me: SocketAddr, found: bool) -> Result<Consensus, ClusterError> {
        let store = store::Store::open(dir).map_err(ClusterError::Consensus)?;
        let metadata = store.metadata();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flowd-consensus")
            .enable_all()
            .build()
            .map_err(thread_error)?;
        let config = openraft::Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: HEARTBEAT.as_millis() as u64,
            election_timeout_min: ELECTION_TIMEOUT.0.as_millis() as u64,
            election_timeout_max: ELECTION_TIMEOUT.1.as_millis() as u64,
            // Entries a snapshot covers before one is taken (the metadata is small).
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Consensus(format!("the consensus settings: {e}")))?;
        let id = node_id(me);
        let network = network::Network {
            cluster: cluster.to_string(),
            me,
        };
        let raft = runtime
            .block_on(Raft::new(id, Arc::new(config), network, store.clone(), store))
            .map_err(|e| ClusterError::Consensus(format!("cannot start this peer's member: {e}")))?;
        if found {
            let initialized = runtime
                .block_on(raft.is_initialized())
                .map_err(|e| ClusterError::Consensus(e.to_string()))?;
            if !initialized {
                let members = BTreeMap::from([(id, BasicNode::new(me.to_string()))]);
                runtime
                    .block_on(raft.initialize(members))
                    .map_err(|e| ClusterError::Consensus(format!("cannot found the group: {e}")))?;
                tracing::info!("founded the cluster's metadata group, {me} its first voter");
            }
        }
        Ok(Consensus {
            raft,
            runtime,
            me: id,
            metadata,
        })
    }

    /// Keeps the voters in step with the gossip view while this peer leads the group.
    pub fn keep_members(&self, view: Arc<ViewCell>) {
        let raft = self.raft.clone();
        self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(MEMBERS_ROUND).await;
                if let Err(error) = keep_members_once(&raft, &view).await {
                    tracing::debug!("metadata group members: {error}");
                }
            }
        });
    }

    /// The metadata as applied on this peer.
    pub fn metadata(&self) -> &Arc<MetadataCell> {
        &self.metadata
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader's peer address, if one is known here.
    pub fn leader(&self) -> Option<SocketAddr> {
        self.status().leader
    }

    /// The group as this peer sees it. One borrow of openraft's metrics, copied out:
    /// a second borrow while the first is held would deadlock once openraft waits to
    /// publish new metrics (a writer-preferring lock).
    pub fn status(&self) -> GroupStatus {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let membership = metrics.membership_config.membership();
        let addr = |id: &u64| {
            membership
                .get_node(id)
                .and_then(|node| node.addr.parse::<SocketAddr>().ok())
        };
        GroupStatus {
            role: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Follower => "follower",
                ServerState::Shutdown => "stopped",
            },
            term: metrics.current_term,
            leader: metrics.current_leader.as_ref().and_then(addr),
            voters: membership.voter_ids().filter_map(|id| addr(&id)).collect(),
            learners: membership.learner_ids().filter_map(|id| addr(&id)).collect(),
            applied: metrics.last_applied.map_or(0, |l| l.index),
        }
    }

    /// Proposes `command` through this peer, which must lead the group; waits at most
    /// `within` for it to be committed and applied.
    pub fn propose(&self, command: Command, within: Duration) -> Result<Outcome, String> {
        let raft = self.raft.clone();
        self.runtime.block_on(async move {
            match tokio::time::timeout(within, raft.client_write(command)).await {
                Ok(Ok(response)) => Ok(response.data),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "the metadata group did not commit it within {} ms",
                    within.as_millis()
                )),
            }
        })
    }

    /// Answers a RAFT frame from another peer (on that connection's thread).
    pub fn answer(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let raft = self.raft.clone();
        let body = body.to_vec();
        self.runtime
            .block_on(async move { network::answer(&raft, &body).await })
    }

    /// Stops this peer's member (a leaving peer, or the process ending).
    pub fn shutdown(&self) {
        let raft = self.raft.clone();
        let _ = self
            .runtime
            .block_on(async move { tokio::time::timeout(Duration::from_secs(1), raft.shutdown()).await });
    }
}

/// The voters a group of `alive` peers wants: an odd number, at most five.
pub fn voters_wanted(alive: usize) -> usize {
    match alive {
        0..=2 => 1,
        3 | 4 => 3,
        _ => 5,
    }
}

async fn keep_members_once(raft: &Raft, view: &ViewCell) -> Result<(), String> {
    let (is_leader, membership) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        (
            metrics.state == ServerState::Leader,
            metrics.membership_config.membership().clone(),
        )
    };
    if !is_leader {
        return Ok(());
    }
    let view = view.get();
    let staying: Vec<SocketAddr> = view
        .live()
        .into_iter()
        .filter(|id| !id.leaving)
        .map(|id| id.addr)
        .collect();
    let leaving: BTreeSet<u64> = view
        .live()
        .into_iter()
        .filter(|id| id.leaving)
        .map(|id| node_id(id.addr))
        .collect();
    let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    // Every peer gossip shows alive is a member: a learner first.
    for addr in &staying {
        let id = node_id(*addr);
        if !known.contains(&id) {
            raft.add_learner(id, BasicNode::new(addr.to_string()), true)
                .await
                .map_err(|e| format!("adding {addr}: {e}"))?;
            tracing::info!("{addr} joined the metadata group as a learner");
        }
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let mut wanted: BTreeSet<u64> = voters.difference(&leaving).copied().collect();
    let target = voters_wanted(staying.len());
    for addr in &staying {
        if wanted.len() >= target {
            break;
        }
        wanted.insert(node_id(*addr));
    }
    if wanted != voters && !wanted.is_empty() {
        raft.change_membership(wanted.clone(), true)
            .await
            .map_err(|e| format!("changing voters to {wanted:?}: {e}"))?;
        tracing::info!("the metadata group's voters are now {} peers", wanted.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_are_odd_and_at_most_five() {
        let wanted: Vec<usize> = (0..8).map(voters_wanted).collect();
        assert_eq!(wanted, [1, 1, 1, 3, 3, 5, 5, 5]);
    }
}
