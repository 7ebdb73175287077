//! Which partition a keyed record goes to: a stable hash of its routing bytes (its key,
//! its value, or a field of it), the same on every run, every core and every peer, so
//! that equal keys always meet in one partition and a replay routes each record where it
//! went the first time. Part of the contract: a client that routes by key itself must
//! use it too.

/// The partition for `bytes` among `partitions`: CRC32C of the bytes, modulo.
pub fn partition_of_bytes(bytes: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(bytes) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_always_go_to_the_same_partition() {
        assert_eq!(partition_of_bytes(b"apple", 8), partition_of_bytes(b"apple", 8));
        // Pinned: changing the hash would move every keyed record of every data dir.
        assert_eq!(
            partition_of_bytes(b"apple", 1 << 31),
            crc32c::crc32c(b"apple") % (1 << 31)
        );
        assert!((0..1000).all(|i| partition_of_bytes(format!("k{i}").as_bytes(), 7) < 7));
    }
}
