//! A replicated copy found damaged while the engine runs stops its peer.
//!
//! Every read checks the CRCs of what it reads (`storage::reader`); a read of a batch
//! that no longer matches them is refused, never served. A copy of one partition has
//! no way to mend a batch in the middle of its log while it serves, but its replicas
//! hold that batch whole (an acked batch lies on a majority of them). So the peer whose
//! copy is damaged stops, the way a Kafka broker halts when its only log directory
//! fails: its partitions' leads move to replicas whose copies are whole (the others
//! learn of the stop at once, by its leave), every acked record is read through them,
//! and when the peer starts again its recovery finds the damage, sets the damaged
//! files aside and copies the partition again from the others (`plan.rs`,
//! `Replication::open`), counted nowhere until it is whole.
//!
//! A partition whose replica set is this peer alone (a cluster of one, a topic of
//! `replicas = 1`) has no whole copy to go to: stopping would mend nothing, so the peer
//! serves on, refusing the damaged range loudly, as a single engine does.

use std::sync::{Arc, Weak};

use crate::runtime::error::RuntimeError;
use crate::runtime::shard::Shared;
use crate::storage::PartitionLog;

/// Has the peer stop when a read of `log` (partition `partition` of topic `topic`)
/// meets damage, if the partition has replicas on other peers.
pub fn stop_on_damage(shared: &Arc<Shared>, topic: usize, partition: u32, log: &mut PartitionLog) {
    let Some(peers) = &shared.peers else { return };
    if !peers.replication.is_replicated(topic) {
        return;
    }
    let shared: Weak<Shared> = Arc::downgrade(shared);
    log.on_damage(move |damage| {
        let Some(shared) = shared.upgrade() else { return };
        let Some(peers) = &shared.peers else { return };
        let name = peers.replication.topics()[topic].name.clone();
        let me = peers.replication.me.addr;
        let others = peers
            .cluster
            .consensus
            .metadata()
            .get()
            .assignment(&name, partition)
            .map_or(0, |a| a.replicas.iter().filter(|r| **r != me).count());
        if others == 0 {
            tracing::error!(
                topic = %name,
                partition,
                "no other peer holds a copy of this partition: this peer serves on, refusing the damaged range to every reader"
            );
            return;
        }
        shared.control.fail(RuntimeError::DamagedCopy {
            topic: name,
            partition,
            damage: damage.to_string(),
            others,
        });
    });
}
