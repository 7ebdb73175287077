//! Batches that may be written already, so that none is written twice. Two kinds come
//! marked `Batch::uncertain` with the offset from which the producer's outputs there
//! may lie:
//!
//! - An engine producer's batch sent again after the leader it went to was lost (or
//!   refused it). It is written unless the log holds a record with its last record's
//!   exact provenance stamp (producer and point): exact, because a batch sent again
//!   can be overtaken by the producer's next one, whose point is further.
//! - The outputs a stage writes again after it took over its input partition's lead
//!   (`takeover.rs`): each record carries its own point (`flowd-re`). The partition's
//!   leader finds how far its log (all of it, the part no quorum holds yet too) holds
//!   the producer's outputs: the furthest point among the producer's records from that
//!   offset on, remembered per producer and extended by the next look. It drops the
//!   records that point covers (a prefix of the batch) and appends the rest. That the
//!   furthest point covers only records that are there needs the producer's batches
//!   to land in send order: an emitter sends nothing to a partition's new owner before
//!   its batches to the old one are acked (`Emitter::keep_order`), and the peer whose
//!   lead it took over is gone or no longer leads (docs/decisions.md says what is left).
//!
//! A batch covered whole is acked where the record that covers it ends, once that is
//! durable and held by a quorum.

use std::collections::HashMap;

use crate::protocol::wire::Cursor;
use crate::runtime::mesh::{Batch, Payload};
use crate::runtime::provenance::{self, Point, REPLAY_HEADER, SOURCE_HEADER};
use crate::storage::PartitionLog;

/// Per producer, how far one partition's log holds its outputs, as far as looked.
#[derive(Default)]
pub struct Held {
    producers: HashMap<String, Looked>,
}

struct Looked {
    /// Where the look began and how far it went.
    from: u64,
    to: u64,
    /// The furthest point found, and the offset of the record carrying it.
    found: Option<(Point, u64)>,
}

impl Held {
    /// Forgets every look: the log was cut back, or this peer's role in it changed.
    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// How far `log` holds `producer`'s outputs, looking from `from` on (or from where
    /// an earlier look began, if lower): the furthest point and its record's offset.
    pub fn of(&mut self, log: &PartitionLog, producer: &str, from: u64) -> Option<(Point, u64)> {
        let looked = self.producers.entry(producer.to_owned()).or_insert(Looked {
            from,
            to: from,
            found: None,
        });
        if from < looked.from {
            *looked = Looked {
                from,
                to: from,
                found: None,
            };
        }
        for view in log.read(looked.to) {
            looked.to = view.offset() + 1;
            for (name, value) in view.headers() {
                if name == SOURCE_HEADER
                    && let Some((point, by)) = provenance::decode(value)
                    && by == producer
                    && looked.found.is_none_or(|(furthest, _)| point > furthest)
                {
                    looked.found = Some((point, view.offset()));
                }
            }
        }
        looked.found
    }
}

/// What `trim` left of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Trimmed {
    /// Every record of it is there already.
    All,
    /// This many of its first records were there, and are dropped.
    Front(usize),
    Nothing,
}

/// Whether `batch` holds outputs replayed after a take-over (its first record carries
/// its own point).
pub fn is_replayed(batch: &Batch) -> bool {
    let own = |name: &str| name == REPLAY_HEADER;
    match &batch.records {
        Payload::Owned(records) => records
            .first()
            .is_some_and(|r| r.headers.iter().any(|(name, _)| own(name))),
        Payload::Wire { bytes, .. } => Cursor::new(bytes)
            .record()
            .is_ok_and(|r| r.headers.iter().any(|(name, _)| own(name))),
        Payload::Batch(_) => false,
    }
}

/// Drops the records of a replayed `batch` that `held` covers: all of them if its last
/// point `last` is covered, else the records at its front whose own point is.
pub fn trim(batch: &mut Batch, last: Point, held: Point) -> Trimmed {
    if last <= held {
        return Trimmed::All;
    }
    let covered = |name: &str, value: &[u8]| {
        name == REPLAY_HEADER && provenance::decode_point(value).is_some_and(|point| point <= held)
    };
    match &mut batch.records {
        Payload::Owned(records) => {
            let front = records
                .iter()
                .take_while(|r| r.headers.iter().any(|(n, v)| covered(n, v)))
                .count();
            records.drain(..front);
            front_or_nothing(front)
        }
        Payload::Wire { bytes, count, .. } => {
            let mut cursor = Cursor::new(bytes);
            let mut front = 0;
            let mut cut = 0;
            while front < *count {
                let Ok(record) = cursor.record() else { break };
                if !record.headers.iter().any(|&(n, v)| covered(n, v)) {
                    break;
                }
                front += 1;
                cut = cursor.position();
            }
            bytes.drain(..cut);
            *count -= front;
            front_or_nothing(front)
        }
        // A client's batch is never sent again by the engine.
        Payload::Batch(_) => Trimmed::Nothing,
    }
}

/// The offset of the first record at or after `from` in `log` whose `flowd-src` header
/// is `stamp`: where a batch with that last stamp was written, if it was.
pub fn holds_stamp(log: &PartitionLog, from: u64, stamp: &[u8]) -> Option<u64> {
    log.read(from)
        .find(|view| {
            view.headers()
                .any(|(name, value)| name == SOURCE_HEADER && value == stamp)
        })
        .map(|view| view.offset())
}

fn front_or_nothing(front: usize) -> Trimmed {
    match front {
        0 => Trimmed::Nothing,
        n => Trimmed::Front(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::mesh::{Ack, Generation, OwnedRecord};
    use crate::storage::{LogOptions, Record};

    /// A replayed record: its own point, and the batch's stamp when it is the last.
    fn record(value: &str, own: Option<Point>, last: Option<Point>) -> OwnedRecord {
        let mut headers = Vec::new();
        if let Some(own) = own {
            headers.push((REPLAY_HEADER.into(), provenance::encode_point(own)));
        }
        if let Some(last) = last {
            headers.push((SOURCE_HEADER.into(), provenance::encode("p", last)));
        }
        OwnedRecord {
            timestamp_ms: 1,
            key: None,
            value: value.as_bytes().to_vec(),
            headers,
        }
    }

    fn batch(records: Vec<OwnedRecord>) -> Batch {
        Batch::new(0, Payload::Owned(records), Ack::Generation(Generation::new(1)))
    }

    fn values(batch: &Batch) -> Vec<String> {
        match &batch.records {
            Payload::Owned(records) => records
                .iter()
                .map(|r| String::from_utf8(r.value.clone()).unwrap())
                .collect(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_replayed_batch_loses_the_front_its_partition_holds_and_keeps_the_rest() {
        let p = |input, index| Point { input, index };
        let replayed = || {
            batch(vec![
                record("a", Some(p(4, 1)), None),
                record("b", Some(p(5, 1)), None),
                record("c", Some(p(5, 2)), None),
                record("d", Some(p(6, 1)), Some(Point::whole(7))),
            ])
        };
        assert!(is_replayed(&replayed()));
        let mut b = replayed();
        assert_eq!(trim(&mut b, Point::whole(7), p(5, 1)), Trimmed::Front(2));
        assert_eq!(values(&b), ["c", "d"]);
        let mut b = replayed();
        assert_eq!(trim(&mut b, Point::whole(7), Point::whole(7)), Trimmed::All);
        let mut b = replayed();
        assert_eq!(trim(&mut b, Point::whole(7), p(3, 0)), Trimmed::Nothing);
        assert_eq!(values(&b).len(), 4);
        // A batch sent again whole is not a replayed one: only its exact stamp counts.
        let whole = batch(vec![
            record("a", None, None),
            record("b", None, Some(Point::whole(9))),
        ]);
        assert!(!is_replayed(&whole));
    }

    #[test]
    fn wire_records_are_cut_at_the_first_kept_one() {
        let mut bytes = Vec::new();
        for (value, point) in [
            ("a", Point::whole(2)),
            ("b", Point::whole(3)),
            ("c", Point::whole(4)),
        ] {
            let own = provenance::encode_point(point);
            crate::protocol::wire::encode_record(
                &mut bytes,
                Some(1),
                None,
                value.as_bytes(),
                &[(REPLAY_HEADER, own.as_slice())],
            );
        }
        let mut b = Batch::new(
            0,
            Payload::Wire {
                bytes,
                count: 3,
                stamp_ms: 1,
            },
            Ack::Generation(Generation::new(1)),
        );
        assert!(is_replayed(&b));
        assert_eq!(trim(&mut b, Point::whole(4), Point::whole(3)), Trimmed::Front(2));
        let Payload::Wire { bytes, count, .. } = &b.records else {
            unreachable!()
        };
        assert_eq!(*count, 1);
        let left = Cursor::new(bytes).record().unwrap();
        assert_eq!(left.value, b"c");
    }

    #[test]
    fn the_furthest_point_is_found_once_and_extended_by_later_looks() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), LogOptions::default()).unwrap();
        let append = |log: &mut PartitionLog, producer: &str, point: Point| {
            let stamp = provenance::encode(producer, point);
            let headers = [crate::storage::Header {
                name: SOURCE_HEADER,
                value: &stamp,
            }];
            let record = Record {
                timestamp_ms: 1,
                key: None,
                value: b"v",
                headers: &headers,
            };
            log.append(&[record]).unwrap();
        };
        append(&mut log, "p", Point::whole(3));
        append(&mut log, "q", Point::whole(50));
        append(&mut log, "p", Point::whole(5));
        let mut held = Held::default();
        assert_eq!(held.of(&log, "p", 0), Some((Point::whole(5), 2)));
        assert_eq!(
            held.of(&log, "p", 1),
            Some((Point::whole(5), 2)),
            "a later look goes on"
        );
        append(&mut log, "p", Point::whole(8));
        assert_eq!(held.of(&log, "p", 0), Some((Point::whole(8), 3)));
        assert_eq!(held.of(&log, "r", 0), None);
        held.clear();
        assert_eq!(held.of(&log, "p", 3), Some((Point::whole(8), 3)));
    }
}
