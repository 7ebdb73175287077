//! A peer's identity in the gossip: where it listens for peers, how many cores it runs,
//! a bump that tells one run of it from the next, and the storage id of the data
//! directory it runs on (`storage_id.rs`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Who a member is. Two runs of a peer on the same address differ in `bump` (the start
/// time), so a restarted peer replaces its dead self at once instead of waiting for the
/// old identity to be forgotten.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerId {
    /// The `--peer-listen` address: gossip, forwarded records and fetches.
    pub addr: SocketAddr,
    /// Shards (cores) the peer runs: placement spreads partitions over (peer, core).
    pub cores: u16,
    pub bump: u64,
    /// Its data directory's storage id, and its node id in the metadata group: a peer
    /// back under its old address on another directory is a new member.
    pub storage: u64,
    /// Its data directory's disk is full: it takes no writes, so it should lead nothing
    /// another copy can lead (the controller prefers others).
    pub full: bool,
    /// Handing its partitions over before it goes: placement leaves it out, but it
    /// still answers the peers that take its partitions.
    pub leaving: bool,
    /// Where its clients connect (its TCP listener), for requests the others relay to
    /// it (`server::relay`); `None` without one.
    pub client: Option<SocketAddr>,
    /// Where its Kafka clients connect (`ingest.kafka`): the broker the others' Kafka
    /// doors name for the partitions it leads; `None` without one.
    pub kafka: Option<SocketAddr>,
}

impl PeerId {
    pub fn new(addr: SocketAddr, cores: usize, storage: u64) -> PeerId {
        let bump = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        PeerId {
            addr,
            cores: cores.clamp(1, usize::from(u16::MAX)) as u16,
            bump,
            storage,
            full: false,
            leaving: false,
            client: None,
            kafka: None,
        }
    }

    /// This identity with its clients' addresses: the binary protocol's and Kafka's.
    pub fn with_clients(self, client: Option<SocketAddr>, kafka: Option<SocketAddr>) -> PeerId {
        PeerId {
            client,
            kafka,
            ..self
        }
    }

    /// Stands for a seed whose identity is not known yet: only its address counts when
    /// it is announced to, and its answer carries its real identity.
    pub fn seed(addr: SocketAddr) -> PeerId {
        PeerId {
            addr,
            cores: 1,
            bump: 0,
            storage: 0,
            full: false,
            leaving: false,
            client: None,
            kafka: None,
        }
    }

    /// This peer's identity once its disk filled up or has room again: a newer run (so
    /// that what it led is chosen anew, elsewhere while it is full).
    pub fn with_full(&self, full: bool) -> PeerId {
        PeerId {
            bump: self.bump.wrapping_add(1),
            full,
            ..*self
        }
    }

    /// This peer's identity once it announced that it leaves: a newer run of it (so the
    /// others replace the old identity at once) that placement leaves out.
    pub fn leaving(&self) -> PeerId {
        PeerId {
            bump: self.bump.wrapping_add(1),
            leaving: true,
            ..*self
        }
    }
}

impl std::fmt::Debug for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.addr, self.bump % 100_000)?;
        if self.leaving {
            write!(f, " (leaving)")?;
        }
        if self.full {
            write!(f, " (disk full)")?;
        }
        Ok(())
    }
}

impl foca::Identity for PeerId {
    type Addr = SocketAddr;

    /// Declared down while alive (a pause, a partition): come back as a new run.
    fn renew(&self) -> Option<Self> {
        Some(PeerId {
            bump: self.bump.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Two identities on one address: the later run wins.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}
