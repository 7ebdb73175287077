//! Which shard owns a partition, and which partition an output goes to when spread
//! (a keyed record's partition is `protocol::routing::partition_of_bytes`).
//!
//! Both are pure functions of stable inputs, so that every shard (and, later, every
//! peer) computes the same answer, and so that a replay after a crash routes each
//! output exactly where it went the first time.

/// The shard that owns partition `partition` of a topic, given `shards` shards.
pub fn owner(partition: u32, shards: usize) -> usize {
    partition as usize % shards
}

/// Round robin that a replay reproduces: the `index`-th output of the input at
/// `produced_by`, spread by a mix of the input offset.
pub fn spread_partition(produced_by: u64, index: usize, partitions: u32) -> u32 {
    ((mix(produced_by).wrapping_add(index as u64)) % u64::from(partitions)) as u32
}

/// splitmix64: neighbouring offsets land far apart.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::routing::partition_of_bytes;

    #[test]
    fn owners_cover_all_shards() {
        let owners: Vec<usize> = (0..8).map(|p| owner(p, 3)).collect();
        assert_eq!(owners, [0, 1, 2, 0, 1, 2, 0, 1]);
    }

    #[test]
    fn routing_is_stable_and_spread() {
        assert_eq!(partition_of_bytes(b"apple", 8), partition_of_bytes(b"apple", 8));
        let mut counts = [0u32; 4];
        for offset in 0..4000u64 {
            counts[spread_partition(offset * 64, 0, 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
