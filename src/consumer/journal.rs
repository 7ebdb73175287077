//! The consumer journal: every change to a shard's consumers, appended to a log of its
//! own, and how a restart reads it back.
//!
//! Each shard appends to `DATA_DIR/consumers/gen-<N>/shard-<i>`, a partition log like
//! any topic's (same framing, CRCs, recovery and durability mode). A record's value is
//! one JSON [`Entry`]. A transaction (an ack with the records produced with it) is one
//! atomic batch: the `txn` entry, then one record per output partition whose value is
//! those records in their wire encoding, the last of them carrying a `flowd-txn` header
//! with the transaction's id. Replaying a journal yields the cursors and the
//! transactions not yet known to be applied.
//!
//! A snapshot (every cursor, written to compact the journal) is a `snapshot_begin`
//! entry, the cursors in batches of at most `SNAPSHOT_BATCH_BYTES`, and a
//! `snapshot_end` entry: however many consumers there are, no batch outgrows a
//! segment, and replay takes a snapshot's cursors only once it reads its end, so a
//! crash part-way through leaves the state before it in charge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::consumer::cursor::Cursor;
use crate::storage::{AppendReceipt, PartitionLog, Record, StorageError, batch_bytes_max_for};

/// The header that marks the last output record of a transaction in its output
/// partition; recovery looks for it before applying a transaction again.
pub const TXN_HEADER: &str = "flowd-txn";

/// Names a cursor across restarts: topic name, partition, consumer (group) name.
pub type CursorKey = (String, u32, String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Entry {
    /// A one-batch snapshot begins (journals before `snapshot_begin`): forget everything
    /// read so far.
    Reset,
    /// A snapshot begins: the entries up to its `SnapshotEnd` replace everything before.
    SnapshotBegin,
    /// The snapshot begun last is whole.
    SnapshotEnd,
    Set {
        topic: String,
        partition: u32,
        group: String,
        cursor: Cursor,
    },
    Drop {
        topic: String,
        partition: u32,
        group: String,
    },
    /// The cursor after an ack, committed together with `parts` (the records of the
    /// batch that follow this entry).
    Txn {
        id: String,
        topic: String,
        partition: u32,
        group: String,
        cursor: Cursor,
        parts: Vec<PartRef>,
    },
    /// Every part of transaction `id` is durable in its output partition.
    Applied { id: String },
    /// In a partition's cursor topic (a cluster's): its lead in `epoch` begins, and
    /// what was written before is read back (`runtime/consumers/follow.rs`). A journal
    /// ignores it.
    Lead { epoch: u32 },
}

/// Where one part of a transaction goes, and where to look for it after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    pub topic: String,
    pub partition: u32,
    pub count: usize,
    /// The timestamp of records that came without one.
    pub stamp_ms: i64,
    /// The output partition's next offset before the transaction: the part lands at or
    /// after it.
    pub from: u64,
    /// The `flowd-txn` value its last record carries; `None` (journals before marks per
    /// part): the transaction's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
}

/// A transaction whose parts may not all be in their output partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTxn {
    pub id: String,
    /// Each part with its records in wire encoding.
    pub parts: Vec<(PartRef, Vec<u8>)>,
}

/// What a journal says.
#[derive(Debug, Default)]
pub struct Replayed {
    pub cursors: BTreeMap<CursorKey, Cursor>,
    pub pending: BTreeMap<String, PendingTxn>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries serialize")
    }
}

/// Bytes of entries one snapshot batch takes at most.
pub const SNAPSHOT_BATCH_BYTES: usize = 1 << 20;

/// Appends a snapshot of `cursors` to `log` (see the module doc) and returns the
/// offsets it took.
pub fn write_snapshot(
    log: &mut PartitionLog,
    cursors: impl IntoIterator<Item = Entry>,
    now_ms: i64,
) -> Result<AppendReceipt, StorageError> {
    let first = log.next_offset();
    // Half a segment at most: the framing of small entries roughly doubles them.
    let limit = SNAPSHOT_BATCH_BYTES.min(batch_bytes_max_for(log.options().segment_bytes) as usize / 2);
    let mut batch: Vec<Vec<u8>> = vec![Entry::SnapshotBegin.encode()];
    let mut bytes = 0;
    let append = |log: &mut PartitionLog, batch: &mut Vec<Vec<u8>>| -> Result<(), StorageError> {
        let records: Vec<Record<'_>> = batch.iter().map(|v| Record::new(now_ms, v)).collect();
        log.append(&records)?;
        batch.clear();
        Ok(())
    };
    for entry in cursors {
        let value = entry.encode();
        if bytes + value.len() > limit && !batch.is_empty() {
            append(log, &mut batch)?;
            bytes = 0;
        }
        bytes += value.len();
        batch.push(value);
    }
    batch.push(Entry::SnapshotEnd.encode());
    append(log, &mut batch)?;
    Ok(AppendReceipt {
        first_offset: first,
        next_offset: log.next_offset(),
    })
}

/// Parses one journal record's value.
pub fn parse(value: &[u8]) -> Result<Entry, String> {
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

/// Reads a journal from its start. A record that does not parse is a bug or a damaged
/// file below the synced point (which the log refuses on open), so it is an error.
pub fn replay(log: &PartitionLog, into: &mut Replayed) -> Result<(), String> {
    let mut records = log.read(log.start_offset());
    replay_values(records.by_ref().map(|v| (v.offset(), v.value())), into)?;
    // A journal read in part would put cursors back and forget transactions.
    records.end().map_err(|damage| damage.to_string())
}

/// Replays journal records given as `(offset, value)`: the journal's reading, apart from
/// the log it comes from (fuzzed and tested on bytes alone).
pub fn replay_values<'a>(
    records: impl IntoIterator<Item = (u64, &'a [u8])>,
    into: &mut Replayed,
) -> Result<(), String> {
    let mut records = records.into_iter();
    // The snapshot being read, until its end says it is whole.
    let mut staged: Option<Replayed> = None;
    while let Some((offset, value)) = records.next() {
        let entry = parse(value).map_err(|e| format!("journal record {offset} does not parse: {e}"))?;
        let into: &mut Replayed = match (&entry, &mut staged) {
            (Entry::SnapshotBegin, _) => {
                staged = Some(Replayed::default());
                continue;
            }
            (Entry::SnapshotEnd, Some(_)) => {
                *into = staged.take().expect("just matched");
                continue;
            }
            (Entry::SnapshotEnd, None) => {
                return Err(format!(
                    "journal record {offset} ends a snapshot that never began"
                ));
            }
            (_, Some(staged)) => staged,
            (_, None) => &mut *into,
        };
        match entry {
            Entry::SnapshotBegin | Entry::SnapshotEnd => unreachable!("handled above"),
            Entry::Reset => {
                into.cursors.clear();
                into.pending.clear();
            }
            Entry::Set {
                topic,
                partition,
                group,
                cursor,
            } => {
                into.cursors.insert((topic, partition, group), cursor);
            }
            Entry::Drop {
                topic,
                partition,
                group,
            } => {
                into.cursors.remove(&(topic, partition, group));
            }
            Entry::Txn {
                id,
                topic,
                partition,
                group,
                cursor,
                parts,
            } => {
                let mut bodies = Vec::with_capacity(parts.len());
                for part in parts {
                    let (_, body) = records
                        .next()
                        .ok_or_else(|| format!("transaction {id} lacks a part"))?;
                    bodies.push((part, body.to_vec()));
                }
                into.cursors.insert((topic, partition, group), cursor);
                into.pending.insert(id.clone(), PendingTxn { id, parts: bodies });
            }
            Entry::Applied { id } => {
                into.pending.remove(&id);
            }
            Entry::Lead { .. } => {}
        }
    }
    Ok(())
}

/// Whether `log` holds, at or after `from`, a record marked as the end of transaction `id`.
pub fn holds_txn(log: &PartitionLog, from: u64, id: &str) -> bool {
    log.read(from).any(|view| {
        view.headers()
            .any(|(name, value)| name == TXN_HEADER && value == id.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::cursor::Options;
    use crate::storage::{Durability, LogOptions};

    fn options() -> LogOptions {
        LogOptions {
            segment_bytes: 64 << 10,
            durability: Durability::None,
            max_record_bytes: 32 << 10,
            unsynced_bytes_max: 1 << 20,
            ..LogOptions::default()
        }
    }

    fn set(n: usize, committed: u64) -> Entry {
        let mut cursor = Cursor::new(Options::default(), 0, 0, |_| None);
        cursor.committed = committed;
        Entry::Set {
            topic: "events".into(),
            partition: 0,
            group: format!("group-{n:06}"),
            cursor,
        }
    }

    fn replayed(log: &PartitionLog) -> Replayed {
        let mut state = Replayed::default();
        replay(log, &mut state).unwrap();
        state
    }

    #[test]
    fn a_snapshot_larger_than_a_segment_is_written_in_batches_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), options()).unwrap();
        // 3000 cursors of ~300 bytes: about 14 segments of 64 KiB.
        let receipt = write_snapshot(&mut log, (0..3000).map(|n| set(n, 7)), 0).unwrap();
        assert!(log.segment_count() > 10, "{} segments", log.segment_count());
        assert_eq!(receipt.first_offset, 0);
        assert_eq!(receipt.next_offset, 3002, "begin, 3000 cursors, end");
        let state = replayed(&log);
        assert_eq!(state.cursors.len(), 3000);
        assert!(state.cursors.values().all(|c| c.committed == 7));
        // It reopens, too.
        drop(log);
        let log = PartitionLog::open(dir.path(), options()).unwrap();
        assert_eq!(replayed(&log).cursors.len(), 3000);
    }

    #[test]
    fn a_snapshot_cut_short_leaves_the_state_before_it_in_charge() {
        let before = [Entry::SnapshotBegin, set(1, 5), set(2, 5), Entry::SnapshotEnd];
        let torn = [Entry::SnapshotBegin, set(1, 9)];
        let values: Vec<Vec<u8>> = before.iter().chain(&torn).map(Entry::encode).collect();
        let mut state = Replayed::default();
        replay_values(
            values.iter().enumerate().map(|(i, v)| (i as u64, v.as_slice())),
            &mut state,
        )
        .unwrap();
        let committed: Vec<u64> = state.cursors.values().map(|c| c.committed).collect();
        assert_eq!(
            committed,
            vec![5, 5],
            "the torn snapshot is not taken, not even in part"
        );
        // A whole later snapshot replaces everything: the cursor it lacks is gone.
        let whole = [Entry::SnapshotBegin, set(1, 9), Entry::SnapshotEnd];
        let values: Vec<Vec<u8>> = before.iter().chain(&whole).map(Entry::encode).collect();
        let mut state = Replayed::default();
        replay_values(
            values.iter().enumerate().map(|(i, v)| (i as u64, v.as_slice())),
            &mut state,
        )
        .unwrap();
        let committed: Vec<u64> = state.cursors.values().map(|c| c.committed).collect();
        assert_eq!(committed, vec![9]);
    }

    #[test]
    fn bad_records_are_errors_that_name_the_offset() {
        let end = Entry::SnapshotEnd.encode();
        let cases: [(&[u8], &str); 3] = [
            (b"{", "journal record 0 does not parse"),
            (b"{\"t\":\"nope\"}", "journal record 0 does not parse"),
            (&end, "ends a snapshot that never began"),
        ];
        for (value, want) in cases {
            let error = replay_values([(0, value)], &mut Replayed::default()).unwrap_err();
            assert!(error.contains(want), "{error}");
        }
    }
}
