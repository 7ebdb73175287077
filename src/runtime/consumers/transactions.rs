//! Transactions: an ack with records to produce (ack-and-commit) and a reclaim past
//! `max_reclaims` that dead-letters: the cursor and the records are one atomic journal
//! batch (the commit point), then each part is appended to its partition with a mark
//! a restart looks for (`journal_recovery`).

use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::consumer::cursor::{Cursor, Range};
use crate::consumer::journal::{Entry, PartRef, TXN_HEADER};
use crate::ops::Carry;
use crate::protocol::routing::partition_of_bytes;
use crate::protocol::wire::encode_record;
use crate::runtime::bounds::{Bounds, RECORD_HINT, TooLarge, dead_reason, stored_record_bytes};
use crate::runtime::error::EngineError;
use crate::runtime::failure::{DEAD_FROM_HEADER, DEAD_REASON_HEADER};
use crate::runtime::mesh::{Ack, Batch, Payload};
use crate::runtime::provenance::END_HEADER;
use crate::runtime::shard::Shard;
use crate::storage::faults;
use crate::storage::layout::now_ms;

use super::local;

/// Records produced with an ack, for one partition, in wire encoding; the last carries
/// the transaction's `flowd-txn` header.
#[derive(Debug)]
pub struct TxnPart {
    pub topic: usize,
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub count: usize,
    pub stamp_ms: i64,
}

fn too_large(error: TooLarge) -> EngineError {
    EngineError::TooLarge(error.to_string())
}

/// Room kept on the last record of a transaction's part for its `flowd-txn` mark.
const TXN_MARK_BYTES: u64 = 256;

/// The reclaimed records, copied for the dead-letter topic with why and whence, in
/// parts that each fit one batch of it; an error when one of them cannot fit a record of
/// the dead-letter topic at all.
pub(super) fn dead_letters(
    shard: &Shard,
    topic: usize,
    partition: u32,
    range: Range,
    dead: &str,
    reason: &str,
) -> Result<Vec<TxnPart>, EngineError> {
    let spec = &shard.shared.spec;
    let dead_topic = spec.topic_index(dead).ok_or_else(|| {
        EngineError::Invalid(format!(
            "the dead-letter topic \"{dead}\" is not in the dataflow; name one of its topics in on_max"
        ))
    })?;
    let bounds = Bounds::of(&spec.topics[dead_topic]);
    let reason = dead_reason(reason);
    let partitions = spec.topics[dead_topic].partitions;
    let local = local(shard, topic, partition)?;
    let log = local.log.borrow();
    let mut parts: Vec<(TxnPart, u64)> = Vec::new();
    let name = &spec.topics[topic].name;
    let mut records = log.read_range(range.from, range.to);
    for view in records.by_ref() {
        let original: Vec<(&str, &[u8])> = view.headers().collect();
        if original.iter().any(|(n, _)| *n == END_HEADER) {
            continue;
        }
        let whence = format!("{name}/{partition}/{}", view.offset());
        // The record as it came: its client's headers and its null mark, as a stage's
        // dead letter carries them (`Carry::HeadersAndNull`).
        let mut headers: Vec<(&str, &[u8])> = Carry::HeadersAndNull.select(original.into_iter()).collect();
        headers.push((DEAD_REASON_HEADER, reason.as_bytes()));
        headers.push((DEAD_FROM_HEADER, whence.as_bytes()));
        let frame = stored_record_bytes(view.key(), view.value(), headers.iter().copied());
        if frame + TXN_MARK_BYTES > bounds.record_bytes_max {
            return Err(too_large(TooLarge {
                what: format!("the dead letter of record {}", view.offset()),
                bytes: frame + TXN_MARK_BYTES,
                max: bounds.record_bytes_max,
                topic: dead.to_owned(),
                hint: RECORD_HINT,
            }));
        }
        let to = match view.key() {
            Some(key) => partition_of_bytes(key, partitions),
            None => partition % partitions,
        };
        // The newest part for that partition, unless the record would take it past one
        // batch: then a new part (one transaction may write several to a partition).
        let index = match parts
            .iter()
            .rposition(|(p, _)| p.partition == to)
            .filter(|&i| parts[i].1 + frame + TXN_MARK_BYTES <= bounds.batch_bytes_max)
        {
            Some(i) => i,
            None => {
                parts.push((
                    TxnPart {
                        topic: dead_topic,
                        partition: to,
                        bytes: Vec::new(),
                        count: 0,
                        stamp_ms: now_ms(),
                    },
                    0,
                ));
                parts.len() - 1
            }
        };
        let (part, bytes) = &mut parts[index];
        *bytes += frame;
        encode_record(
            &mut part.bytes,
            Some(view.timestamp_ms()),
            view.key(),
            view.value(),
            &headers,
        );
        part.count += 1;
    }
    // Every claimed record goes to the dead-letter topic, or none and the ack is refused.
    records.end()?;
    Ok(parts.into_iter().map(|(part, _)| part).collect())
}

/// Commits `cursor` with `parts` as one transaction, then appends the parts.
pub(super) async fn commit(
    shard: &Rc<Shard>,
    topic: usize,
    partition: u32,
    group: &str,
    cursor: Cursor,
    id: String,
    mut parts: Vec<TxnPart>,
) -> Result<Vec<(u64, u64)>, EngineError> {
    let consumers = &shard.consumers;
    let shared = &shard.shared;
    // Each part's last record carries a mark of its own: a transaction may write more
    // than one part to a partition, and recovery looks for each.
    let marks: Vec<String> = (0..parts.len()).map(|i| format!("{id}#{i}")).collect();
    for (part, mark) in parts.iter_mut().zip(&marks) {
        mark_last(part, mark)?;
    }
    let refs: Vec<PartRef> = parts
        .iter()
        .zip(marks)
        .map(|(p, mark)| PartRef {
            topic: shared.spec.topics[p.topic].name.clone(),
            partition: p.partition,
            count: p.count,
            stamp_ms: p.stamp_ms,
            from: shared.ends[p.topic][p.partition as usize].load(Ordering::Acquire),
            mark: Some(mark),
        })
        .collect();
    let after = cursor.clone();
    let entry = Entry::Txn {
        id: id.clone(),
        topic: shared.spec.topics[topic].name.clone(),
        partition,
        group: group.to_owned(),
        cursor: cursor.clone(),
        parts: refs,
    };
    let bodies: Vec<&[u8]> = parts.iter().map(|p| p.bytes.as_slice()).collect();
    let receipt = consumers.write(shard, &[entry], &bodies)?;
    consumers.put(topic, partition, group, cursor);
    consumers.unapplied_txns.set(consumers.unapplied_txns.get() + 1);
    faults::crash_point("journal-txn-written");
    consumers.journal_durable(receipt).await?;
    faults::crash_point("journal-txn-durable");
    let (tx, rx) = flume::bounded(parts.len().max(1));
    let count = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let batch = Batch::new(
            part.partition,
            Payload::Wire {
                bytes: part.bytes,
                count: part.count,
                stamp_ms: part.stamp_ms,
            },
            Ack::Client(tx.clone(), i),
        );
        shared.mesh.send(part.topic, batch).await?;
    }
    let mut ends = vec![(0, 0); count];
    for k in 0..count {
        let (i, first, next) = rx.recv_async().await.map_err(|_| EngineError::Stopping)??;
        ends[i] = (first, next);
        if k == 0 && count > 1 {
            faults::crash_point("journal-txn-part");
        }
    }
    faults::crash_point("journal-txn-parts");
    consumers.write(shard, &[Entry::Applied { id }], &[])?;
    // Only now may a snapshot leave it out. A transaction that ends before this (the
    // engine stopping) stays unapplied in the journal, and the next start applies it.
    consumers.unapplied_txns.set(consumers.unapplied_txns.get() - 1);
    consumers.touched();
    // In a cluster the cursor goes to its cursor topic once the parts are written:
    // the partition's next leader goes on from it (a leader lost before this delivers
    // the records again, and their outputs are written again).
    if let Some(mirrored) = super::follow::mirror(
        shard,
        topic,
        partition,
        &[super::set_entry(shard, topic, partition, group, &after)],
    )
    .await
    {
        mirrored.settled().await?;
    }
    Ok(ends)
}

/// Re-encodes a part's last record with the transaction header added.
fn mark_last(part: &mut TxnPart, id: &str) -> Result<(), EngineError> {
    crate::protocol::wire::add_header_to_last(&mut part.bytes, part.count, TXN_HEADER, id.as_bytes())?;
    Ok(())
}
