//! Writing a batch: the records are encoded as one batch (header, rkyv body, CRC) into a
//! reused buffer and written to the active segment with one pwrite.
//!
//! Why pwrite and not stores into a writable mapping (measured, see docs/decisions.md):
//! a store to a fresh page of a mapped file takes a read fault that zero-fills the page
//! and a second fault to mark it dirty, which cost more than half of the append time;
//! pwrite of whole pages skips both. It also turns a failing disk into an error
//! instead of a SIGBUS.

use rkyv::ser::allocator::Arena;

use crate::storage::format::{self, BATCH_HEADER_BYTES, BatchHeader};
use crate::storage::record::{self, BATCH_OVERHEAD_BYTES, Record};
use crate::storage::segment::Segment;

/// The buffer a writer keeps between batches; one grown past it for a large batch is
/// given back after that batch, so an idle partition holds no more than this.
pub const KEPT_BUFFER_BYTES: usize = 256 * 1024;

/// The most bytes `records` take as one batch.
pub(crate) fn batch_bytes_bound(records: &[Record<'_>]) -> usize {
    let Some(first) = records.first() else {
        return 0;
    };
    BATCH_OVERHEAD_BYTES
        + records
            .iter()
            .map(|r| r.stored_len_bound(first.timestamp_ms))
            .sum::<usize>()
}

pub(crate) struct BatchWriter {
    /// The batch being encoded. Its length is its capacity: batches are encoded in place,
    /// so it is zeroed when it grows, not per batch.
    buffer: Vec<u8>,
    scratch: Arena,
    /// The leader epoch stamped on every batch it writes (0: unreplicated).
    pub leader_epoch: u32,
}

impl BatchWriter {
    pub fn new() -> BatchWriter {
        BatchWriter {
            buffer: vec![0; KEPT_BUFFER_BYTES],
            scratch: Arena::new(),
            leader_epoch: 0,
        }
    }

    /// Writes `records` (non-empty) as one atomic batch at the end of `segment`, which
    /// must have room for `batch_bytes_bound(records)`. The batch becomes visible to
    /// readers only once all of it is in the page cache; on error nothing does.
    pub fn append_batch(&mut self, segment: &mut Segment, records: &[Record<'_>]) -> std::io::Result<()> {
        let bound = batch_bytes_bound(records);
        if bound > self.buffer.len() {
            self.buffer.resize(bound, 0);
        }
        let len = self.encode(segment.next_offset(), records);
        let result = self.write(segment, records, len);
        if self.buffer.len() > KEPT_BUFFER_BYTES {
            self.buffer = vec![0; KEPT_BUFFER_BYTES];
        }
        result
    }

    /// Encodes the batch at the front of the buffer and returns its aligned length.
    fn encode(&mut self, base_offset: u64, records: &[Record<'_>]) -> usize {
        let stamp = Stamp {
            base_offset,
            leader_epoch: self.leader_epoch,
            flags: 0,
        };
        encode_into(records, stamp, &mut self.buffer, &mut self.scratch)
    }

    fn write(&mut self, segment: &mut Segment, records: &[Record<'_>], len: usize) -> std::io::Result<()> {
        let min = records.iter().map(|r| r.timestamp_ms).min().expect("non-empty");
        let max = records.iter().map(|r| r.timestamp_ms).max().expect("non-empty");
        let facts = (records.len() as u32, min, max);
        write_at_end(segment, &self.buffer[..len], facts)
    }
}

/// Encodes `records` (non-empty) as one sealed batch at the front of `out`, which must
/// hold `batch_bytes_bound(records)`, and returns its aligned length.
/// What a batch's header says besides its records.
pub(crate) struct Stamp {
    pub base_offset: u64,
    pub leader_epoch: u32,
    pub flags: u16,
}

pub(crate) fn encode_into(
    records: &[Record<'_>],
    Stamp {
        base_offset,
        leader_epoch,
        flags,
    }: Stamp,
    out: &mut [u8],
    scratch: &mut Arena,
) -> usize {
    let body_len = record::write_batch_body(records, &mut out[BATCH_HEADER_BYTES..], scratch)
        .expect("a batch outgrew its computed bound");
    let header = BatchHeader {
        batch_len: u32::try_from(BATCH_HEADER_BYTES + body_len).expect("a batch fits its segment"),
        base_offset,
        first_timestamp_ms: records[0].timestamp_ms,
        max_timestamp_ms: records.iter().map(|r| r.timestamp_ms).max().expect("non-empty"),
        record_count: u32::try_from(records.len()).expect("a batch fits its segment"),
        leader_epoch,
        flags,
    };
    let len = header.batch_bytes();
    format::seal_batch(&mut out[..len], &header);
    len
}

/// Writes one whole batch (`records`, min and max timestamp) at the end of `segment`,
/// which must have room for it, and makes it visible: a batch of this writer's, or one
/// made elsewhere and checked whole.
pub(crate) fn write_at_end(
    segment: &mut Segment,
    bytes: &[u8],
    (records, min, max): (u32, i64, i64),
) -> std::io::Result<()> {
    let mut pending = segment.pending();
    let end = pending.position + bytes.len() as u64;
    assert!(end <= segment.mapped_len(), "a batch would overrun its segment");
    let file = segment.file();
    crate::storage::io::write_at(file.file(), file.path(), pending.position, bytes)?;
    segment.index_batch(&pending);
    pending.advance(bytes.len(), records, min, max);
    segment.commit(pending);
    Ok(())
}
