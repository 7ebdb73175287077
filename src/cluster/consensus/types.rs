//! What the consensus group agrees on: the cluster's metadata (each replicated
//! partition's replica set, leader and leader epoch) and the commands that change it.
//! Pure: `Metadata::apply` is the whole state machine, the same on every peer.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The types of flowd's metadata group.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<u64>;

/// The node id a peer had in the group before storage ids: its peer address, packed
/// (IPv4: address and port exactly; IPv6: a hash of both), below 2^49. A data directory
/// an earlier flowd made a member keeps it as its storage id (`storage_id.rs`), which
/// is the node id now.
pub fn node_id(addr: SocketAddr) -> u64 {
    match addr {
        SocketAddr::V4(v4) => (u64::from(u32::from(*v4.ip())) << 16) | u64::from(v4.port()),
        SocketAddr::V6(v6) => {
            let mut bytes = v6.ip().octets().to_vec();
            bytes.extend_from_slice(&v6.port().to_le_bytes());
            // Above every IPv4 id: the two kinds never meet.
            (1 << 48) | u64::from(crc32c::crc32c(&bytes)) << 16 | u64::from(v6.port())
        }
    }
}

/// One replicated partition as the group decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The peers holding a replica, by peer address; the leader is one of them.
    pub replicas: Vec<SocketAddr>,
    pub leader: SocketAddr,
    /// The leader's run (its `PeerId::bump`) when it was chosen: a leader that restarted
    /// since is not the leader any more (it may have lost what it had not synced), and a
    /// new one is chosen.
    pub leader_run: u64,
    /// Raised at every change of leader: a batch written under an older epoch is never
    /// acked once a newer one exists (the replicas that chose the newer one refuse it).
    pub epoch: u32,
    /// Peers that copy the leader's log without counting towards its quorum, to take
    /// the place of replicas the set moves away from (a join, a graceful leave): once
    /// they hold every acked record, a new epoch makes the new set the replicas.
    #[serde(default)]
    pub learners: Vec<SocketAddr>,
    /// The storage id of each replica's data directory when it became a replica (or was
    /// last chosen): a peer at that address on another directory holds none of the
    /// copy, is never counted towards a quorum or an election, and becomes a replica
    /// again only as a new member that copied the log (absent: recorded before storage
    /// ids existed, any directory counts).
    #[serde(default)]
    pub storage: BTreeMap<SocketAddr, u64>,
}

impl Assignment {
    /// Whether the copy at `addr` on the data directory `storage` is the replica the
    /// metadata records there.
    pub fn holds(&self, addr: SocketAddr, storage: u64) -> bool {
        self.replicas.contains(&addr) && self.storage.get(&addr).is_none_or(|s| *s == storage)
    }
}

/// A change to the metadata, proposed by the group's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Opens the election of a partition's leader for `epoch` (its current epoch must
    /// still be `expect_epoch`): recorded before any replica is fenced with it, so that
    /// whichever peer leads the group next finishes an election another began, rather
    /// than leave replicas fenced under a leader that no longer leads.
    Elect {
        topic: String,
        partition: u32,
        expect_epoch: u32,
        epoch: u32,
    },
    /// Sets the peers that copy a partition's log to join its replica set (see
    /// `Assignment::learners`), if its epoch is still `expect_epoch` and no election of
    /// it is open; the leader, the replicas and the epoch stay. A replica's address may
    /// learn: the peer there runs on another data directory than the one recorded.
    Learn {
        topic: String,
        partition: u32,
        expect_epoch: u32,
        learners: Vec<SocketAddr>,
    },
    /// Sets a partition's assignment if its epoch is still `expect_epoch` (0: it has
    /// none yet) and the new one is higher: a decision made on a stale view of the
    /// metadata is refused rather than applied.
    Assign {
        topic: String,
        partition: u32,
        expect_epoch: u32,
        assignment: Assignment,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Not a command (a membership change or a blank entry).
    None,
    Applied,
    /// Refused: the partition's epoch was `current` by then.
    Stale {
        current: u32,
    },
}

/// The metadata every peer holds a copy of, applied in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// `topic -> partition -> assignment`.
    pub partitions: BTreeMap<String, BTreeMap<u32, Assignment>>,
    /// `topic -> partition -> epoch` of the elections begun and not finished.
    #[serde(default)]
    pub electing: BTreeMap<String, BTreeMap<u32, u32>>,
}

impl Metadata {
    pub fn assignment(&self, topic: &str, partition: u32) -> Option<&Assignment> {
        self.partitions.get(topic)?.get(&partition)
    }

    /// The epoch of the election begun for the partition, if one is not finished.
    pub fn electing(&self, topic: &str, partition: u32) -> Option<u32> {
        self.electing.get(topic)?.get(&partition).copied()
    }

    pub fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Elect {
                topic,
                partition,
                expect_epoch,
                epoch,
            } => {
                let current = self.assignment(topic, *partition).map_or(0, |a| a.epoch);
                if current != *expect_epoch || *epoch <= current {
                    return Outcome::Stale { current };
                }
                let slot = self
                    .electing
                    .entry(topic.clone())
                    .or_default()
                    .entry(*partition)
                    .or_insert(0);
                *slot = (*slot).max(*epoch);
                Outcome::Applied
            }
            Command::Learn {
                topic,
                partition,
                expect_epoch,
                learners,
            } => {
                let open = self.electing(topic, *partition).is_some();
                let Some(a) = self.partitions.get_mut(topic).and_then(|t| t.get_mut(partition)) else {
                    return Outcome::Stale { current: 0 };
                };
                if a.epoch != *expect_epoch || open {
                    return Outcome::Stale { current: a.epoch };
                }
                a.learners = learners.clone();
                Outcome::Applied
            }
            Command::Assign {
                topic,
                partition,
                expect_epoch,
                assignment,
            } => {
                let current = self.assignment(topic, *partition).map_or(0, |a| a.epoch);
                if current != *expect_epoch
                    || assignment.epoch <= current
                    || !assignment.replicas.contains(&assignment.leader)
                {
                    return Outcome::Stale { current };
                }
                self.partitions
                    .entry(topic.clone())
                    .or_default()
                    .insert(*partition, assignment.clone());
                if let Some(electing) = self.electing.get_mut(topic) {
                    electing.remove(partition);
                }
                Outcome::Applied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn assign(expect_epoch: u32, epoch: u32, leader: u16) -> Command {
        Command::Assign {
            topic: "t".into(),
            partition: 3,
            expect_epoch,
            assignment: Assignment {
                replicas: vec![addr(1), addr(2), addr(3)],
                leader: addr(leader),
                leader_run: 1,
                epoch,
                learners: Vec::new(),
                storage: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn an_assignment_applies_only_over_the_epoch_it_was_decided_on() {
        let mut m = Metadata::default();
        assert_eq!(m.apply(&assign(0, 1, 1)), Outcome::Applied);
        // Decided on a view that did not see epoch 1 yet.
        assert_eq!(m.apply(&assign(0, 2, 2)), Outcome::Stale { current: 1 });
        // Not higher than what it replaces.
        assert_eq!(m.apply(&assign(1, 1, 2)), Outcome::Stale { current: 1 });
        // A leader that holds no replica.
        assert_eq!(m.apply(&assign(1, 2, 9)), Outcome::Stale { current: 1 });
        assert_eq!(m.apply(&assign(1, 2, 2)), Outcome::Applied);
        let a = m.assignment("t", 3).unwrap();
        assert_eq!((a.leader, a.epoch), (addr(2), 2));
        assert!(m.assignment("t", 4).is_none());
        // An election opens over the current epoch only, and its assignment closes it.
        let elect = |expect_epoch, epoch| Command::Elect {
            topic: "t".into(),
            partition: 3,
            expect_epoch,
            epoch,
        };
        assert_eq!(m.apply(&elect(1, 3)), Outcome::Stale { current: 2 });
        assert_eq!(m.apply(&elect(2, 3)), Outcome::Applied);
        assert_eq!(m.electing("t", 3), Some(3));
        assert_eq!(m.apply(&assign(2, 3, 1)), Outcome::Applied);
        assert_eq!(m.electing("t", 3), None);
    }

    #[test]
    fn learners_are_set_over_the_current_epoch_only_and_never_while_electing() {
        let mut m = Metadata::default();
        let learn = |expect_epoch, learners: Vec<SocketAddr>| Command::Learn {
            topic: "t".into(),
            partition: 3,
            expect_epoch,
            learners,
        };
        // No assignment yet.
        assert_eq!(m.apply(&learn(0, vec![addr(4)])), Outcome::Stale { current: 0 });
        assert_eq!(m.apply(&assign(0, 1, 1)), Outcome::Applied);
        assert_eq!(m.apply(&learn(0, vec![addr(4)])), Outcome::Stale { current: 1 });
        // A replica's address (the peer there is back on a new data directory).
        assert_eq!(m.apply(&learn(1, vec![addr(2)])), Outcome::Applied);
        assert_eq!(m.apply(&learn(1, vec![addr(4)])), Outcome::Applied);
        let a = m.assignment("t", 3).unwrap();
        assert_eq!((a.epoch, a.learners.clone()), (1, vec![addr(4)]));
        assert_eq!(
            m.apply(&Command::Elect {
                topic: "t".into(),
                partition: 3,
                expect_epoch: 1,
                epoch: 2
            }),
            Outcome::Applied
        );
        assert_eq!(m.apply(&learn(1, vec![addr(5)])), Outcome::Stale { current: 1 });
    }

    #[test]
    fn node_ids_tell_peers_apart_and_stay_put() {
        assert_eq!(node_id(addr(7000)), node_id(addr(7000)));
        assert_ne!(node_id(addr(7000)), node_id(addr(7001)));
        assert_ne!(
            node_id("10.0.0.1:7000".parse().unwrap()),
            node_id("10.0.0.2:7000".parse().unwrap())
        );
        assert!(node_id("[::1]:7000".parse().unwrap()) > node_id("255.255.255.255:65535".parse().unwrap()));
    }
}
