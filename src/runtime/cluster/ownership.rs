//! Where each partition stands on this peer of a cluster: served here, being taken
//! over from the peers that held it, or away. Only a served partition is written to by
//! anything but the hand-over's copies; the shards read this on every append.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::protocol::status::Standing;

const AWAY: u8 = 0;
const CLAIMING: u8 = 1;
const SERVING: u8 = 2;

pub struct Ownership {
    /// `states[topic][partition]`.
    states: Vec<Vec<AtomicU8>>,
    /// Per partition, one past the end a new owner said it holds (0: none said so).
    handed: Vec<Vec<AtomicU64>>,
    /// Per partition, how many times this peer stopped serving it (or taking it over):
    /// what it learned of the partition before may be stale since.
    terms: Vec<Vec<AtomicU64>>,
    leaving: AtomicBool,
}

impl Ownership {
    /// Every partition away: nothing is written until placement gives it here and it
    /// was taken over.
    pub fn new(partitions: impl Iterator<Item = u32>) -> Ownership {
        let counts: Vec<u32> = partitions.collect();
        Ownership {
            states: counts
                .iter()
                .map(|&n| (0..n).map(|_| AtomicU8::new(AWAY)).collect())
                .collect(),
            handed: counts
                .iter()
                .map(|&n| (0..n).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            terms: counts
                .iter()
                .map(|&n| (0..n).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            leaving: AtomicBool::new(false),
        }
    }

    pub fn standing(&self, topic: usize, partition: u32) -> Standing {
        match self.states[topic][partition as usize].load(Ordering::Acquire) {
            SERVING => Standing::Serving,
            CLAIMING => Standing::Claiming,
            _ => Standing::Away,
        }
    }

    pub fn serving(&self, topic: usize, partition: u32) -> bool {
        self.standing(topic, partition) == Standing::Serving
    }

    /// Stops writing the partition here (its batches are routed on from now on).
    pub fn fence(&self, topic: usize, partition: u32) {
        let was = self.states[topic][partition as usize].swap(AWAY, Ordering::AcqRel);
        if was != AWAY {
            self.terms[topic][partition as usize].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Bumped each time the partition stops being served (or taken over) here: state
    /// kept about it beside the log (a Kafka producer's sequences) holds only while this
    /// stays the same.
    pub fn term(&self, topic: usize, partition: u32) -> u64 {
        self.terms[topic][partition as usize].load(Ordering::Acquire)
    }

    /// Serves the partition here at once (a replicated partition this peer now leads:
    /// its replicas hold it already, nothing is copied in).
    pub fn serve(&self, topic: usize, partition: u32) {
        self.states[topic][partition as usize].store(SERVING, Ordering::Release);
    }

    /// Away -> claiming; false if it was not away.
    pub fn start_claim(&self, topic: usize, partition: u32) -> bool {
        self.states[topic][partition as usize]
            .compare_exchange(AWAY, CLAIMING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Claiming -> serving; false if a fence came first (the claim is void).
    pub fn finish_claim(&self, topic: usize, partition: u32) -> bool {
        self.states[topic][partition as usize]
            .compare_exchange(CLAIMING, SERVING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A new owner holds the partition up to `end` and serves it.
    pub fn handed(&self, topic: usize, partition: u32, end: u64) {
        self.handed[topic][partition as usize].fetch_max(end.saturating_add(1), Ordering::AcqRel);
    }

    /// Whether a new owner said it holds the partition up to `end` at least.
    pub fn handed_up_to(&self, topic: usize, partition: u32, end: u64) -> bool {
        self.handed[topic][partition as usize].load(Ordering::Acquire) > end
    }

    pub fn set_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_voids_a_claim_in_progress() {
        let o = Ownership::new([2u32].into_iter());
        assert_eq!(o.standing(0, 1), Standing::Away);
        assert!(o.start_claim(0, 1));
        assert!(!o.start_claim(0, 1));
        assert_eq!(o.term(0, 1), 0);
        o.fence(0, 1);
        assert_eq!(o.term(0, 1), 1);
        o.fence(0, 1);
        assert_eq!(o.term(0, 1), 1, "fencing what is away already changes nothing");
        assert!(!o.finish_claim(0, 1));
        assert!(o.start_claim(0, 1));
        assert!(o.finish_claim(0, 1));
        assert!(o.serving(0, 1));
        assert!(!o.serving(0, 0));
    }

    #[test]
    fn hand_overs_count_from_zero() {
        let o = Ownership::new([1u32].into_iter());
        assert!(!o.handed_up_to(0, 0, 0));
        o.handed(0, 0, 0);
        assert!(o.handed_up_to(0, 0, 0));
        assert!(!o.handed_up_to(0, 0, 1));
        o.handed(0, 0, 10);
        assert!(o.handed_up_to(0, 0, 10));
    }
}
