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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::consumer::cursor::Cursor;
use crate::storage::PartitionLog;

/// The header that marks the last output record of a transaction in its output
/// partition; recovery looks for it before applying a transaction again.
pub const TXN_HEADER: &str = "flowd-txn";

/// Names a cursor across restarts: topic name, partition, consumer (group) name.
pub type CursorKey = (String, u32, String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Entry {
    /// A snapshot begins: forget everything read so far.
    Reset,
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

/// Reads a journal from its start. A record that does not parse is a bug or a damaged
/// file below the synced point (which the log refuses on open), so it is an error.
pub fn replay(log: &PartitionLog, into: &mut Replayed) -> Result<(), String> {
    let mut records = log.read(log.start_offset());
    while let Some(view) = records.next() {
        let entry: Entry = serde_json::from_slice(view.value())
            .map_err(|e| format!("journal record {} does not parse: {e}", view.offset()))?;
        match entry {
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
                    let body = records
                        .next()
                        .ok_or_else(|| format!("transaction {id} lacks a part"))?;
                    bodies.push((part, body.value().to_vec()));
                }
                into.cursors.insert((topic, partition, group), cursor);
                into.pending.insert(id.clone(), PendingTxn { id, parts: bodies });
            }
            Entry::Applied { id } => {
                into.pending.remove(&id);
            }
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
