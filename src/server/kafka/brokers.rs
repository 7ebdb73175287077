//! Who the brokers are, as this door tells Kafka clients.
//!
//! On one machine: this door alone, node 0, at the address the client reached it by.
//! In a cluster: every live peer with a Kafka listener (`PeerId::kafka`, told through
//! the gossip), its node id taken from its storage id, so a peer keeps its id across
//! restarts on one data directory. Each partition is led by its leader peer's broker
//! (this door when the leader has no Kafka listener: the engine takes what a client
//! sends to the partition's owner wherever it lands). Each consumer group has one
//! coordinator, chosen by rendezvous hashing of the group's name over the brokers that
//! are not leaving, so all its members meet at one peer whichever they asked; the other
//! peers answer its requests NOT_COORDINATOR, and the client asks FindCoordinator again.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cluster::identity::PeerId;
use crate::cluster::{rendezvous, view};
use crate::runtime::cluster::peers::Peers;

/// This door's node id on one machine.
pub const SOLO: i32 = 0;

/// One broker: its node id and where its Kafka clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broker {
    pub node: i32,
    pub kafka: SocketAddr,
}

/// The brokers as this door sees them now.
pub struct Brokers {
    /// This door first.
    pub list: Vec<Broker>,
    /// Their peers, in the same order (empty on one machine).
    peers: Vec<PeerId>,
    /// Who leads what, in a cluster.
    cluster: Option<Arc<Peers>>,
}

/// A peer's node id: its storage id's low 31 bits (Kafka's ids are non-negative i32).
pub fn node_of(peer: &PeerId) -> i32 {
    (peer.storage & 0x7fff_ffff) as i32
}

impl Brokers {
    /// The brokers for a client that reached this door at `reached`, in the cluster
    /// `cluster` if there is one.
    pub fn of(cluster: Option<&Arc<Peers>>, reached: SocketAddr) -> Brokers {
        let Some(peers) = cluster else {
            return Brokers {
                list: vec![Broker {
                    node: SOLO,
                    kafka: reached,
                }],
                peers: Vec::new(),
                cluster: None,
            };
        };
        let mut brokers = Brokers::among(peers.cluster.view.get().me, peers.kafka_brokers(), reached);
        brokers.cluster = Some(Arc::clone(peers));
        brokers
    }

    /// The brokers among `live` (peers with a Kafka listener) for a client that reached
    /// `me`'s door at `reached`.
    pub fn among(me: PeerId, live: Vec<PeerId>, reached: SocketAddr) -> Brokers {
        let mut list = vec![Broker {
            node: node_of(&me),
            kafka: reached,
        }];
        let mut peers = vec![me];
        for peer in live.into_iter().filter(|p| p.addr != me.addr) {
            let node = node_of(&peer);
            // Two storage ids alike in 31 bits (about one in a billion per pair): the
            // later one is left out, and its partitions named as this door's.
            if let Some(kafka) = peer.kafka
                && list.iter().all(|b| b.node != node)
            {
                list.push(Broker { node, kafka });
                peers.push(peer);
            }
        }
        Brokers {
            list,
            peers,
            cluster: None,
        }
    }

    /// This door's node id.
    pub fn me(&self) -> i32 {
        self.list[0].node
    }

    /// The node leading `partition` of `topic`.
    pub fn leader(&self, topic: usize, partition: u32) -> i32 {
        let Some(peers) = &self.cluster else {
            return self.me();
        };
        let Some(leader) = peers.owner(topic, partition) else {
            return self.me();
        };
        self.peers
            .iter()
            .position(|p| p.addr == leader)
            .map_or(self.me(), |i| self.list[i].node)
    }

    /// The broker coordinating `group`.
    pub fn coordinator(&self, group: &str) -> Broker {
        if self.peers.is_empty() {
            return self.list[0];
        }
        let chosen = rendezvous::chosen(&view::staying(self.peers.clone()), group);
        self.peers
            .iter()
            .position(|p| p.addr == chosen.addr)
            .map_or(self.list[0], |i| self.list[i])
    }

    /// Whether this door coordinates `group`.
    pub fn coordinates(&self, group: &str) -> bool {
        self.coordinator(group).node == self.me()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> PeerId {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        PeerId::new(addr, 2, u64::from(port) << 32 | u64::from(port))
            .with_clients(None, Some(format!("127.0.0.1:{}", port + 1000).parse().unwrap()))
    }

    #[test]
    fn every_peer_names_the_same_coordinator_for_a_group_and_groups_spread() {
        let live = vec![peer(1), peer(2), peer(3)];
        let views: Vec<Brokers> = live
            .iter()
            .map(|me| Brokers::among(*me, live.clone(), me.kafka.unwrap()))
            .collect();
        let mut per_node = std::collections::HashMap::new();
        for g in 0..300 {
            let group = format!("group-{g}");
            let chosen: Vec<Broker> = views.iter().map(|b| b.coordinator(&group)).collect();
            assert!(chosen.windows(2).all(|w| w[0] == w[1]), "{group}: {chosen:?}");
            assert_eq!(views.iter().filter(|b| b.coordinates(&group)).count(), 1);
            *per_node.entry(chosen[0].node).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 3, "{per_node:?}");
        assert!(per_node.values().all(|&n| n > 50), "{per_node:?}");
    }

    #[test]
    fn a_leaving_peer_coordinates_nothing_and_a_peer_without_kafka_is_no_broker() {
        let mut leaving = peer(2);
        leaving.leaving = true;
        let mut plain = peer(3);
        plain.kafka = None;
        let me = peer(1);
        let brokers = Brokers::among(me, vec![me, leaving, plain], me.kafka.unwrap());
        assert_eq!(brokers.list.len(), 2);
        assert_eq!(brokers.me(), node_of(&me));
        for g in 0..50 {
            assert!(brokers.coordinates(&format!("g{g}")));
        }
    }
}
