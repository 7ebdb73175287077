//! The membership as this peer sees it: a snapshot replaced whole on every change, read
//! by placement and by `flowd status`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cluster::identity::PeerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    /// Missed its probes; declared down unless it refutes within the suspicion time.
    Suspect,
    Down,
}

impl From<foca::State> for PeerState {
    fn from(state: foca::State) -> PeerState {
        match state {
            foca::State::Alive => PeerState::Alive,
            foca::State::Suspect => PeerState::Suspect,
            foca::State::Down => PeerState::Down,
        }
    }
}

/// One member of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub id: PeerId,
    pub state: PeerState,
}

/// A snapshot of the membership: this peer and every other it knows of.
#[derive(Debug, Clone)]
pub struct View {
    pub me: PeerId,
    /// The others, sorted by address; down members stay listed until forgotten.
    pub others: Vec<Member>,
    /// Bumped on every change: placement recomputes only when it moved.
    pub version: u64,
}

impl View {
    /// The peers that own partitions: this one and every other alive or suspect (a
    /// suspect may still answer; it owns its partitions until it is declared down).
    pub fn live(&self) -> Vec<PeerId> {
        let mut live: Vec<PeerId> = std::iter::once(self.me)
            .chain(
                self.others
                    .iter()
                    .filter(|m| m.state != PeerState::Down)
                    .map(|m| m.id),
            )
            .collect();
        live.sort_by_key(|id| id.addr);
        live
    }

    /// The peers partitions are placed on: the live ones that are not leaving (all the
    /// live ones if every one is leaving, so that every partition keeps an owner).
    pub fn placement(&self) -> Vec<PeerId> {
        staying(self.live())
    }

    /// The member at `addr` as this view has it now, if it is not down (this peer
    /// included): after a restart or a renewal gossip lists the new run, and the old one
    /// as down.
    pub fn member(&self, addr: SocketAddr) -> Option<PeerId> {
        if addr == self.me.addr {
            return Some(self.me);
        }
        self.others
            .iter()
            .find(|m| m.id.addr == addr && m.state != PeerState::Down)
            .map(|m| m.id)
    }

    /// The other peers that may hold partition data to hand over: alive or suspect,
    /// leaving or not.
    pub fn reachable_others(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.others
            .iter()
            .filter(|m| m.state != PeerState::Down)
            .map(|m| m.id)
    }
}

/// The peers of `live` that are not leaving, or all of `live` if every one is leaving
/// (so that what is placed on them keeps a place).
pub fn staying(live: Vec<PeerId>) -> Vec<PeerId> {
    let staying: Vec<PeerId> = live.iter().copied().filter(|id| !id.leaving).collect();
    if staying.is_empty() { live } else { staying }
}

/// The current view, shared between the membership thread (the only writer) and readers
/// on any thread; plus when each peer was last heard from, and since when each address
/// this peer asked about has had no live member.
pub struct ViewCell {
    view: RwLock<Arc<View>>,
    version: AtomicU64,
    heard: Mutex<HashMap<SocketAddr, Instant>>,
    down: Mutex<HashMap<SocketAddr, Instant>>,
}

impl ViewCell {
    pub fn new(me: PeerId) -> ViewCell {
        ViewCell {
            view: RwLock::new(Arc::new(View {
                me,
                others: Vec::new(),
                version: 0,
            })),
            version: AtomicU64::new(0),
            heard: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
        }
    }

    /// How long `addr` has had no live member (`None`: it has one): counted from when
    /// gossip declared it down, or from the first time this peer asked (an address
    /// already down when this peer started). A peer that replaces dead members asks
    /// this; each peer counts for itself, so a new leader of the metadata group counts
    /// from when it saw the address go, or from its own start.
    pub fn down_for(&self, addr: SocketAddr) -> Option<std::time::Duration> {
        let live = self.get().member(addr).is_some();
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if live {
            down.remove(&addr);
            return None;
        }
        Some(down.entry(addr).or_insert_with(Instant::now).elapsed())
    }

    pub fn get(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The version of the current view, without taking the lock.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn publish(&self, me: PeerId, mut others: Vec<Member>) {
        // A restarted peer may be listed twice for a while (its old run down, its new
        // one alive): the newest run stands for the address.
        others.sort_by_key(|m| (m.id.addr, std::cmp::Reverse(m.id.bump)));
        others.dedup_by_key(|m| m.id.addr);
        others.retain(|m| m.id.addr != me.addr);
        let mut slot = self.view.write().unwrap_or_else(|e| e.into_inner());
        if slot.me == me && slot.others == others {
            return;
        }
        let version = slot.version + 1;
        {
            let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            for member in &others {
                if member.state == PeerState::Down {
                    down.entry(member.id.addr).or_insert_with(Instant::now);
                } else {
                    down.remove(&member.id.addr);
                }
            }
        }
        *slot = Arc::new(View { me, others, version });
        self.version.store(version, Ordering::Release);
    }

    pub fn heard_from(&self, addr: SocketAddr) {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, Instant::now());
    }

    /// When a frame last came from `addr`, if ever.
    pub fn last_heard(&self, addr: SocketAddr) -> Option<Instant> {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .copied()
    }
}
