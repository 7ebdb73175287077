//! The storage id: which data directory a peer runs on. A peer that comes back under
//! its old address with a wiped, replaced or foreign data directory has a new storage
//! id, so the cluster takes it for what it is (a new, empty member that copies what it
//! needs), never for the member that held the old directory's data (Kafka's KIP-853
//! directory id). It is the peer's node id in the metadata group, it is gossiped in its
//! identity, and the metadata records it beside each replica.
//!
//! ```text
//! DATA_DIR/storage-id   16 lowercase hex digits and a newline: the id, a u64
//! ```
//!
//! Ids of new directories have the top bit set. A directory that an earlier flowd made
//! a cluster member (it holds `cluster/raft`) and that has no id yet takes the node id
//! it had then (its packed peer address, below 2^49), so an upgraded peer stays the
//! member it was.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;

use crate::cluster::consensus::node_id;
use crate::cluster::error::ClusterError;
use crate::storage::io;

pub const FILE: &str = "storage-id";

/// The id of `data_dir`, made (durably) the first time a peer runs on it.
pub fn load_or_create(data_dir: &Path, addr: SocketAddr) -> Result<u64, ClusterError> {
    let path = data_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes).ok_or_else(|| {
            ClusterError::Storage(format!(
                "{} does not hold a storage id (16 hex digits): it names this data directory to the cluster; \
                 restore it, or move the whole data directory away to join as a new, empty peer",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = if data_dir.join("cluster").join("raft").exists() {
                node_id(addr)
            } else {
                fresh()
            };
            io::replace(&path, format!("{id:016x}\n").as_bytes(), true)
                .map_err(|e| ClusterError::Storage(format!("cannot write {}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) => Err(ClusterError::Storage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn parse(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok().filter(|id| *id != 0)
}

/// 63 random bits (std's hasher keys come from the operating system) with the top bit
/// set: never a packed peer address.
fn fresh() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish() | 1 << 63
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000))
    }

    #[test]
    fn a_directory_keeps_its_id_and_a_new_one_gets_another() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let id = load_or_create(one.path(), addr()).unwrap();
        assert!(id >> 63 == 1, "{id:x}");
        assert_eq!(load_or_create(one.path(), addr()).unwrap(), id);
        assert_ne!(load_or_create(two.path(), addr()).unwrap(), id);
    }

    #[test]
    fn a_member_made_before_ids_keeps_its_node_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cluster").join("raft")).unwrap();
        assert_eq!(load_or_create(dir.path(), addr()).unwrap(), node_id(addr()));
    }

    #[test]
    fn a_damaged_id_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [&b""[..], b"12\n", b"zzzzzzzzzzzzzzzz\n", b"0000000000000000\n"] {
            std::fs::write(dir.path().join(FILE), bad).unwrap();
            let error = load_or_create(dir.path(), addr()).unwrap_err().to_string();
            assert!(error.contains("move the whole data directory away"), "{error}");
        }
    }
}
