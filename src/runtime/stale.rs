//! Batches of a stage whose peer lost its input's lead while alive. A stage runs where
//! its input partition is led (`takeover.rs`), under a producer id that is the same on
//! every peer. When the lead moves and the old leader lives on (it leaves, or it was
//! cut off while another was elected), its stage may still send batches it made
//! before it saw the change. Each batch says the epoch of the lead it was made for
//! (`Batch::lead`); a partition's leader remembers, per producer, the latest epoch a
//! batch came with, and takes no batch of an earlier one after it.
//!
//! Why that is right: the new lead's stage writes every output the old one's late
//! batches hold. It replays its input from its stored progress, skipping only what it
//! read back or what the partition's log holds when its batch comes (`already.rs`),
//! and the old one's late batch is in neither. Taken after the new lead's batches, the
//! late batch would write those outputs twice, and out of order.
//!
//! A stale batch is acked where the partition's log ends, once that is durable (and
//! held by a quorum), instead of failed: its outputs are not lost but the new lead's
//! to write, and its producer (an engine stage that no longer leads) must neither stop
//! the engine nor wait for it forever. It is counted and logged.
//!
//! What a leader remembers is in memory: a partition's next leader learns a producer's
//! latest lead from the first batch that comes (docs/decisions.md says what is left).

use std::collections::HashMap;

/// Per producer, the latest lead a batch to one partition came with.
#[derive(Default)]
pub struct Leads {
    latest: HashMap<String, u32>,
}

impl Leads {
    /// Whether a batch of `producer` made for its input's lead in `epoch` is taken: not
    /// once a later lead's batch came (`Err` says which). A taken one's epoch becomes
    /// the latest.
    pub fn admit(&mut self, producer: &str, epoch: u32) -> Result<(), u32> {
        match self.latest.get_mut(producer) {
            Some(latest) if *latest > epoch => Err(*latest),
            Some(latest) => {
                *latest = epoch;
                Ok(())
            }
            None => {
                self.latest.insert(producer.to_owned(), epoch);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_leads_batch_is_refused_once_a_later_ones_came() {
        let mut leads = Leads::default();
        assert_eq!(leads.admit("stage:count:in:0", 3), Ok(()));
        assert_eq!(
            leads.admit("stage:count:in:0", 3),
            Ok(()),
            "the same lead goes on"
        );
        assert_eq!(leads.admit("stage:count:in:0", 5), Ok(()));
        assert_eq!(leads.admit("stage:count:in:0", 3), Err(5));
        assert_eq!(leads.admit("stage:count:in:0", 4), Err(5));
        assert_eq!(leads.admit("stage:count:in:1", 1), Ok(()), "producers are apart");
        assert_eq!(leads.admit("stage:count:in:0", 6), Ok(()), "the lead comes back");
        assert_eq!(leads.admit("stage:count:in:0", 5), Err(6));
    }
}
