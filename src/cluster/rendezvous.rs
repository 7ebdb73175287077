//! Placement: which (peer, core) owns a partition, by rendezvous hashing over the live
//! members. Every peer computes the same answer from the same view, and a change of
//! membership moves only the partitions of the peers that came or went.

use crate::cluster::identity::PeerId;

/// Where a partition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub peer: PeerId,
    pub core: usize,
}

/// The owner of `partition` of `topic` among `live` (never empty: it holds this peer).
/// Every (peer, core) pair is a candidate, so a peer with more cores owns more.
pub fn owner(live: &[PeerId], topic: &str, partition: u32) -> Owner {
    let mut best: Option<(u64, Owner)> = None;
    for peer in live {
        let base = fnv(
            fnv(fnv(FNV_START, topic.as_bytes()), &partition.to_le_bytes()),
            peer.addr.to_string().as_bytes(),
        );
        for core in 0..usize::from(peer.cores.max(1)) {
            let score = mix(fnv(base, &(core as u32).to_le_bytes()));
            // Ties (never seen in practice) go to the lower address, on every peer.
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, Owner { peer: *peer, core }));
            }
        }
    }
    best.expect("the live members include this peer").1
}

/// The `count` peers of `live` holding a replica of `partition` of `topic`, best first
/// (the first leads it to begin with); fewer when fewer peers live. Each peer scores by
/// its best core, as in [`owner`], so the first is the partition's unreplicated owner.
pub fn replica_set(live: &[PeerId], topic: &str, partition: u32, count: usize) -> Vec<PeerId> {
    let mut scored: Vec<(u64, PeerId)> = live
        .iter()
        .map(|peer| {
            let base = fnv(
                fnv(fnv(FNV_START, topic.as_bytes()), &partition.to_le_bytes()),
                peer.addr.to_string().as_bytes(),
            );
            let best = (0..u32::from(peer.cores.max(1)))
                .map(|core| mix(fnv(base, &core.to_le_bytes())))
                .max()
                .expect("at least one core");
            (best, *peer)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.addr.cmp(&b.1.addr)));
    scored.into_iter().take(count).map(|(_, peer)| peer).collect()
}

/// The one peer of `live` (never empty) that `key` falls to: every peer picks the same
/// from the same view, and a change of membership moves only the keys of the peers
/// that came or went (a Kafka group's coordinator).
pub fn chosen(live: &[PeerId], key: &str) -> PeerId {
    replica_set(live, key, 0, 1)[0]
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// splitmix64's finalizer: FNV's low bits alone spread poorly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16, cores: u16) -> PeerId {
        PeerId {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            cores,
            bump: u64::from(port),
            storage: u64::from(port),
            full: false,
            leaving: false,
            client: None,
            kafka: None,
        }
    }

    #[test]
    fn placement_is_spread_and_moves_little() {
        let two = [peer(1, 2), peer(2, 2)];
        let three = [peer(1, 2), peer(2, 2), peer(3, 2)];
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for p in 0..3000 {
            let before = owner(&two, "words", p);
            let after = owner(&three, "words", p);
            counts[usize::from(after.peer.addr.port()) - 1] += 1;
            if before != after {
                // Only to the newcomer, never between the old members.
                assert_eq!(after.peer.addr.port(), 3);
                moved += 1;
            }
        }
        assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
        assert!((850..1150).contains(&moved), "{moved}");
    }

    #[test]
    fn a_restarted_peer_gets_its_partitions_back() {
        let before = [peer(1, 2), peer(2, 2)];
        let mut restarted = before;
        restarted[1].bump += 99;
        for p in 0..100 {
            assert_eq!(
                owner(&before, "t", p).peer.addr,
                owner(&restarted, "t", p).peer.addr
            );
        }
    }

    #[test]
    fn a_replica_set_starts_with_the_owner_and_moves_little() {
        let live: Vec<PeerId> = (1..=5).map(|p| peer(p, 2)).collect();
        let mut moved = 0;
        for partition in 0..64 {
            let set = replica_set(&live, "t", partition, 3);
            assert_eq!(set.len(), 3);
            assert_eq!(set[0], owner(&live, "t", partition).peer);
            let distinct: std::collections::BTreeSet<_> = set.iter().map(|p| p.addr).collect();
            assert_eq!(distinct.len(), 3);
            // One more peer: each set keeps at least two of its three.
            let mut more = live.clone();
            more.push(peer(6, 2));
            let after = replica_set(&more, "t", partition, 3);
            let kept = after.iter().filter(|p| set.contains(p)).count();
            assert!(kept >= 2);
            moved += 3 - kept;
        }
        assert!(
            moved > 0 && moved < 64,
            "a new peer takes some replicas, not most"
        );
        assert_eq!(replica_set(&live[..2], "t", 0, 3).len(), 2);
    }
}
