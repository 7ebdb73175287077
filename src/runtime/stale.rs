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
//! A leader also refuses a stage's batch made for an earlier lead of its input than
//! the metadata it applied names (`input_of` finds the input in the producer id). What
//! it remembers is in memory, and a partition's next leader learns a producer's latest
//! lead only from the first batch that comes: when the output partition's lead moved
//! too, between the later lead's first batch and the late one, the metadata is what
//! fences. It is applied in one order everywhere, so a leader elected after the
//! input's later lead began knows of it; one elected before it took that lead's
//! batches itself, or they were not written and came again to the next.
//!
//! A stale batch is answered as such (`Ack::stale`, STALE between peers), neither
//! written nor failed: its outputs are not lost but the later lead's to write, and its
//! producer (an engine stage that no longer leads) must neither stop the engine nor
//! wait for it forever. The producer stores no progress past it (`commit.rs`): if it
//! leads again later, it replays from before the refused batch and writes what the
//! log lacks (an intermediate lead may have led too briefly to write it). Each one is
//! counted and logged.

use std::collections::HashMap;

/// Per producer, the latest lead a batch to one partition came with.
#[derive(Default)]
pub struct Leads {
    latest: HashMap<String, u32>,
}

impl Leads {
    /// Whether a batch of `producer` made for its input's lead in `epoch` is taken: not
    /// once a later lead's batch came, nor when the metadata names a later lead of its
    /// input (`current`; `Err` says which). A taken one's epoch becomes the latest.
    pub fn admit(&mut self, producer: &str, epoch: u32, current: Option<u32>) -> Result<(), u32> {
        if let Some(current) = current.filter(|c| *c > epoch) {
            return Err(current);
        }
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

/// The input partition a stage's producer id reads (`provenance::stage_producer`, and
/// its dead letters' `provenance::dead_letter_producer`): the topic's name and the
/// partition. `None` for any other producer (a source's). Names hold no `:`
/// (`config::validate`), so the id splits one way only.
pub fn input_of(producer: &str) -> Option<(&str, u32)> {
    let rest = producer.strip_prefix("stage:")?;
    let rest = rest.strip_suffix(":dead").unwrap_or(rest);
    let mut parts = rest.split(':');
    let (_stage, topic, partition) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((topic, partition.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::provenance::{dead_letter_producer, source_producer, stage_producer};

    #[test]
    fn a_stage_producers_input_is_found_in_its_id() {
        let count = stage_producer("count", "in.put-2", 7);
        assert_eq!(input_of(&count), Some(("in.put-2", 7)));
        assert_eq!(input_of(&dead_letter_producer(&count)), Some(("in.put-2", 7)));
        assert_eq!(input_of(&source_producer("lines", Some(3), Some("a.txt"))), None);
        assert_eq!(input_of("stage:count:in"), None, "no partition");
        assert_eq!(input_of("stage:count:in:x"), None, "not a number");
        assert_eq!(input_of("stage:count:in:0:more"), None);
    }

    #[test]
    fn a_batch_of_an_earlier_lead_than_the_metadata_names_is_refused() {
        let mut leads = Leads::default();
        assert_eq!(
            leads.admit("stage:count:in:0", 3, Some(5)),
            Err(5),
            "no batch came yet"
        );
        assert_eq!(leads.admit("stage:count:in:0", 5, Some(5)), Ok(()));
        assert_eq!(
            leads.admit("stage:count:in:0", 6, Some(5)),
            Ok(()),
            "the metadata here may lag the lead's"
        );
        assert_eq!(
            leads.admit("stage:count:in:0", 5, Some(5)),
            Err(6),
            "a later lead's came"
        );
    }

    #[test]
    fn an_earlier_leads_batch_is_refused_once_a_later_ones_came() {
        let mut leads = Leads::default();
        assert_eq!(leads.admit("stage:count:in:0", 3, None), Ok(()));
        assert_eq!(
            leads.admit("stage:count:in:0", 3, None),
            Ok(()),
            "the same lead goes on"
        );
        assert_eq!(leads.admit("stage:count:in:0", 5, None), Ok(()));
        assert_eq!(leads.admit("stage:count:in:0", 3, None), Err(5));
        assert_eq!(leads.admit("stage:count:in:0", 4, None), Err(5));
        assert_eq!(
            leads.admit("stage:count:in:1", 1, None),
            Ok(()),
            "producers are apart"
        );
        assert_eq!(
            leads.admit("stage:count:in:0", 6, None),
            Ok(()),
            "the lead comes back"
        );
        assert_eq!(leads.admit("stage:count:in:0", 5, None), Err(6));
    }
}
