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
//! never on them: openraft needs a tokio runtime, and the metadata changes rarely. A
//! peer's node id is its data directory's storage id (`storage_id.rs`): a peer back on
//! a wiped directory has lost its vote and its log, so it is a new member, never the
//! voter it was (a voter that forgot its vote could vote twice in one term). The peer
//! that starts without seeds founds the group alone; every other peer is added by the
//! group's leader once gossip shows it alive: as a learner, then as a voter while there
//! are fewer than the voters wanted (1 or 2 peers: 1 voter; 3 or 4: 3; 5 or more: 5). A
//! voter that leaves gracefully is taken out at once; one whose address came back on
//! another data directory, or that stays down for `--replace-after`, is swapped for a
//! live peer that is no voter (with none free it stays: taking it out alone would only
//! shrink the group).
//!
//! A group has an id, its founder's storage id, carried by every message: two groups
//! never mix. A peer that founded a group of its own, alone, while a running group
//! counts its address as a member (it came back on an empty data directory without
//! seeds) learns so from that group's first message and stops (`Consensus::on_stray`),
//! saying how to start it as a member instead; a member of a larger group refuses a
//! stray's messages and says so.

pub mod network;
pub mod store;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, ServerState};

use crate::cluster::error::ClusterError;
use crate::cluster::identity::PeerId;
use crate::cluster::view::{View, ViewCell};
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
    /// This peer's address, its node's in the group.
    addr: SocketAddr,
    metadata: Arc<MetadataCell>,
    /// Set once this run founded a new group as the first of several seeds.
    founded: Arc<AtomicBool>,
    store: store::Store,
    /// What the engine does once this peer learns it is a stray (`on_stray`).
    stray: OnceLock<Box<dyn Fn(String) + Send + Sync>>,
    /// Refusals of other groups' messages, each said once a minute per peer and group.
    refusals: crate::cluster::transport::Refusals,
}

/// How often a member says that it refuses another group's messages.
const OTHER_GROUP_SAID_EVERY: Duration = Duration::from_secs(60);

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

/// Starts a new group with this peer its only voter, if it is a member of none yet;
/// whether it did.
async fn found_unless_member(
    raft: &Raft,
    store: &store::Store,
    id: u64,
    me: SocketAddr,
) -> Result<bool, String> {
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(false);
    }
    // The group's id is its founder's storage id, recorded before the group exists; a
    // member that joined another group in between founds none.
    let group = store
        .join_group(id)
        .map_err(|e| format!("cannot record the group this peer founds: {e}"))?;
    if group != id {
        return Ok(false);
    }
    let members = BTreeMap::from([(id, BasicNode::new(me.to_string()))]);
    raft.initialize(members)
        .await
        .map_err(|e| format!("cannot found the group: {e}"))?;
    tracing::info!("founded the cluster's metadata group, {me} its first voter");
    Ok(true)
}

/// How often the first of several seeds asks the others whether they are members.
const FOUND_ROUND: Duration = Duration::from_secs(1);
/// How long one of those questions may take.
const MEMBER_QUESTION_TTL: Duration = Duration::from_secs(2);

fn thread_error(source: std::io::Error) -> ClusterError {
    ClusterError::Thread {
        what: "consensus",
        source,
    }
}

impl Consensus {
    /// Opens the group's state in `dir` and starts this peer's member; `found` starts a
    /// new group with this peer its only voter when `dir` holds none yet.
    pub fn start(
        dir: &Path,
        dialer: crate::cluster::transport::Dialer,
        storage: u64,
        found: bool,
    ) -> Result<Consensus, ClusterError> {
        let (cluster, me) = (dialer.cluster.clone(), dialer.me);
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
        let id = storage;
        let network = network::Network {
            dialer,
            store: store.clone(),
        };
        let raft = runtime
            .block_on(Raft::new(
                id,
                Arc::new(config),
                network,
                store.clone(),
                store.clone(),
            ))
            .map_err(|e| ClusterError::Consensus(format!("cannot start this peer's member: {e}")))?;
        if found {
            runtime
                .block_on(found_unless_member(&raft, &store, id, me))
                .map_err(ClusterError::Consensus)?;
        }
        Ok(Consensus {
            raft,
            runtime,
            me: id,
            addr: me,
            metadata,
            founded: Arc::new(AtomicBool::new(false)),
            store,
            stray: OnceLock::new(),
            refusals: crate::cluster::transport::Refusals::every(OTHER_GROUP_SAID_EVERY),
        })
    }

    /// Founds a new group once every other seed answered that it is a member of none,
    /// unless this peer is a member of one by then (Redpanda's rule): the first of
    /// several seeds does this. On a new cluster every seed answers "none" and it founds
    /// the group the others join; back on an empty data directory beside a running
    /// group (a Kubernetes pod 0 whose volume was lost) some seed answers "member", or
    /// none answers while the group has no leader, and it waits to be taken in (the
    /// group's leader adds every live peer as a learner within a members round) instead
    /// of founding a second group. A seed that never answers keeps a new cluster from
    /// forming: said in the log after `cluster::NOT_FOUNDED_SAID_AFTER`, then every
    /// minute.
    pub fn found_when_no_seed_is_a_member(
        &self,
        seeds: Vec<SocketAddr>,
        dialer: crate::cluster::transport::Dialer,
    ) {
        let (raft, id) = (self.raft.clone(), self.me);
        let store = self.store.clone();
        let me = self.addr;
        let founded = Arc::clone(&self.founded);
        let others: Vec<SocketAddr> = seeds.into_iter().filter(|s| *s != me).collect();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let mut waiting = crate::cluster::Reminder::new(
                crate::cluster::NOT_FOUNDED_SAID_AFTER,
                crate::cluster::WAITING_SAID_EVERY,
            );
            loop {
                match raft.is_initialized().await {
                    Ok(false) => {}
                    Ok(true) => return,
                    Err(error) => {
                        tracing::error!("the metadata group: {error}");
                        return;
                    }
                }
                let (asked, dialer) = (others.clone(), dialer.clone());
                let answers = tokio::task::spawn_blocking(move || {
                    asked
                        .into_iter()
                        .map(|to| (to, network::is_member(&dialer, to, MEMBER_QUESTION_TTL)))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                // Every other seed answered, and each is a member of none.
                let all_none =
                    answers.len() == others.len() && answers.iter().all(|(_, a)| matches!(a, Ok(false)));
                if all_none {
                    match found_unless_member(&raft, &store, id, me).await {
                        Ok(done) => founded.store(done, Ordering::Release),
                        Err(error) => tracing::error!("{error}"),
                    }
                    return;
                }
                if waiting.due(started.elapsed()) {
                    let members: Vec<String> = answers
                        .iter()
                        .filter(|(_, a)| matches!(a, Ok(true)))
                        .map(|(to, _)| to.to_string())
                        .collect();
                    let silent: Vec<String> = answers
                        .iter()
                        .filter_map(|(to, a)| a.as_ref().err().map(|e| format!("{to} ({e})")))
                        .collect();
                    tracing::warn!(
                        "this peer, the first of its seeds, has not founded the cluster in {} s: it founds one only once every other seed answers that it is a member of none (members: {}; not answering: {}); a running group's leader takes it in instead",
                        started.elapsed().as_secs(),
                        if members.is_empty() { "none".into() } else { members.join(", ") },
                        if silent.is_empty() { "none".into() } else { silent.join(", ") },
                    );
                }
                tokio::time::sleep(FOUND_ROUND).await;
            }
        });
    }

    /// Whether this run founded a new group as the first of several seeds (it then
    /// serves alone what placement gives it, as a peer without seeds does).
    pub fn founded_here(&self) -> bool {
        self.founded.load(Ordering::Acquire)
    }

    /// Keeps the voters in step with the gossip view while this peer leads the group.
    pub fn keep_members(&self, view: Arc<ViewCell>, replace_after: Duration) {
        let raft = self.raft.clone();
        self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(MEMBERS_ROUND).await;
                if let Err(error) = keep_members_once(&raft, &view, replace_after).await {
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

    /// Answers a RAFT frame from the peer at `from` (on that connection's thread).
    pub fn answer(&self, from: SocketAddr, body: &[u8]) -> Result<Vec<u8>, String> {
        let (raft, store) = (self.raft.clone(), self.store.clone());
        let body = body.to_vec();
        let me = self.me;
        let answered = self
            .runtime
            .block_on(async move { network::answer(&raft, me, &store, &body).await });
        match answered {
            Ok(reply) => Ok(reply),
            Err(network::Refused::Other(message)) => Err(message),
            Err(network::Refused::OtherGroup { theirs, ours }) => Err(self.other_group(from, theirs, ours)),
        }
    }

    /// A message of group `theirs` from `from` reached this member of `ours`. A peer
    /// whose group has no voter but itself is the stray: it founded that group alone
    /// while `theirs`, which counts this peer's address as a member, runs. It stops (a
    /// group of one cannot be merged into another, and serving on would hide that
    /// group's records behind empty copies). Any other member refuses and says so.
    /// The voters are the committed ones: a stray proposes the peers it sees as voters
    /// of its own group too, a change they refuse and that never commits.
    fn other_group(&self, from: SocketAddr, theirs: u64, ours: u64) -> String {
        if self.store.applied_voters() == [self.me] {
            let message = format!(
                "this peer ({}) founded a metadata group of its own (group {ours:016x}, no voter but itself), and \
                 {from}, a peer of a running group (group {theirs:016x}) that counts this peer's address as a member, \
                 reached it: this peer was started on an empty data directory without seeds while the cluster it \
                 belonged to ran. It stops rather than serve empty copies of that cluster's partitions. Empty its \
                 data directory (set aside first whatever was written to it since it started: the cluster does not \
                 have it) and start it with --seeds {from}: the cluster takes it in and copies its partitions back",
                self.addr
            );
            tracing::error!("{message}");
            if let Some(stop) = self.stray.get() {
                stop(message.clone());
            }
            return message;
        }
        let message = format!(
            "refused a consensus message from {from}: it is of metadata group {theirs:016x}, and this peer of \
             group {ours:016x}; two groups never mix. A peer founds a group of its own when it starts without seeds \
             on an empty data directory: start it with --seeds naming a peer of this cluster"
        );
        self.refusals
            .warn(from.ip(), &format!("metadata group {theirs:016x}"), &message);
        message
    }

    /// Sets what the engine does when this peer learns it is a stray (`other_group`):
    /// stop, with the message given. Set once.
    pub fn on_stray(&self, stop: impl Fn(String) + Send + Sync + 'static) {
        let _ = self.stray.set(Box::new(stop));
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

async fn keep_members_once(raft: &Raft, cell: &ViewCell, replace_after: Duration) -> Result<(), String> {
    let (is_leader, membership) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        (
            metrics.state == ServerState::Leader,
            metrics.membership_config.membership().clone(),
        )
    };
    let view = cell.get();
    // Every peer counts how long members are down, leader or not, so that a new leader
    // of the group does not start counting afresh.
    let gone: BTreeSet<u64> = membership
        .nodes()
        .filter(|(id, node)| gone_for_good(&view, cell, **id, node, replace_after))
        .map(|(id, _)| *id)
        .collect();
    if !is_leader {
        return Ok(());
    }
    let staying: Vec<PeerId> = view.live().into_iter().filter(|id| !id.leaving).collect();
    let leaving: BTreeSet<u64> = view
        .live()
        .into_iter()
        .filter(|id| id.leaving)
        .map(|id| id.storage)
        .collect();
    let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    // Every peer gossip shows alive is a member: a learner first.
    for peer in &staying {
        if !known.contains(&peer.storage) {
            raft.add_learner(peer.storage, BasicNode::new(peer.addr.to_string()), true)
                .await
                .map_err(|e| format!("adding {}: {e}", peer.addr))?;
            tracing::info!("{} joined the metadata group as a learner", peer.addr);
        }
    }
    // A member back at another address on its own data directory (a pod rescheduled
    // behind its Service name with its volume): the group records where it is now, or
    // its leader would go on sending to the old address and the member would apply
    // nothing new. Only a member found at one address, and not still at the old one
    // (two peers on copies of one directory are left as they are). openraft warns that
    // an address given to the wrong member could elect two leaders; here a message
    // reaching a peer of another storage id is refused (`network.rs`), so it cannot.
    let moved: BTreeMap<u64, BasicNode> = staying
        .iter()
        .filter(|peer| staying.iter().filter(|p| p.storage == peer.storage).count() == 1)
        .filter_map(|peer| {
            let old: SocketAddr = membership.get_node(&peer.storage)?.addr.parse().ok()?;
            let still_there = view.member(old).is_some_and(|at| at.storage == peer.storage);
            (old != peer.addr && !still_there).then(|| (peer.storage, BasicNode::new(peer.addr.to_string())))
        })
        .collect();
    if !moved.is_empty() {
        let addrs: Vec<&str> = moved.values().map(|node| node.addr.as_str()).collect();
        raft.change_membership(ChangeMembers::SetNodes(moved.clone()), false)
            .await
            .map_err(|e| format!("recording {} at their new addresses: {e}", addrs.join(", ")))?;
        tracing::info!(
            "the metadata group records {} member(s) back at another address: now {}",
            moved.len(),
            addrs.join(", ")
        );
        return Ok(());
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    // A voter gone for good is swapped for a live peer that is no voter, one for one, in
    // one change (it leaves the group altogether); with no such peer it stays a voter.
    // Taking it out without a replacement would help nothing (the others are needed
    // either way) and would cost the group the voter when it comes back: a group of 3
    // cut to 2 dies with the next failure, where 3 outlive it.
    let spares: Vec<u64> = staying
        .iter()
        .map(|p| p.storage)
        .filter(|id| !voters.contains(id))
        .collect();
    let swapped: Vec<(u64, u64)> = voters
        .iter()
        .filter(|v| gone.contains(v))
        .copied()
        .zip(spares.iter().copied())
        .collect();
    if !swapped.is_empty() {
        let mut wanted = voters.clone();
        for (out, into) in &swapped {
            wanted.remove(out);
            wanted.insert(*into);
        }
        raft.change_membership(wanted.clone(), false)
            .await
            .map_err(|e| format!("changing voters to {wanted:?}: {e}"))?;
        tracing::info!(
            "the metadata group's voters are now {} peers: {} voter(s) down for good or back on another data directory replaced",
            wanted.len(),
            swapped.len()
        );
        return Ok(());
    }
    // A leaving voter stays a learner while it drains (it must still see the metadata
    // change); the group grows to the voters wanted from live peers.
    let mut wanted: BTreeSet<u64> = voters
        .iter()
        .filter(|id| !leaving.contains(id))
        .copied()
        .collect();
    let target = voters_wanted(staying.len());
    for peer in &staying {
        if wanted.len() >= target {
            break;
        }
        wanted.insert(peer.storage);
    }
    if wanted != voters && !wanted.is_empty() {
        raft.change_membership(wanted.clone(), true)
            .await
            .map_err(|e| format!("changing voters to {wanted:?}: {e}"))?;
        tracing::info!("the metadata group's voters are now {} peers", wanted.len());
        return Ok(());
    }
    // Learners gone for good: the leader stops sending them the log.
    let gone_learners: BTreeSet<u64> = gone.difference(&voters).copied().collect();
    if !gone_learners.is_empty() {
        raft.change_membership(ChangeMembers::RemoveNodes(gone_learners), false)
            .await
            .map_err(|e| format!("removing learners gone for good: {e}"))?;
    }
    Ok(())
}

/// Whether the member `id` at `node` is not coming back: its address is alive under
/// another storage id (a wiped or replaced data directory), or has been down for
/// `replace_after`.
fn gone_for_good(view: &View, cell: &ViewCell, id: u64, node: &BasicNode, replace_after: Duration) -> bool {
    let Ok(addr) = node.addr.parse::<SocketAddr>() else {
        return false;
    };
    match view.member(addr) {
        Some(peer) => peer.storage != id,
        None => cell.down_for(addr).is_some_and(|down| down >= replace_after),
    }
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
