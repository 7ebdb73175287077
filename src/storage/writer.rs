//! Writing a batch: records are encoded as frames into a reused buffer and written to the
//! active segment with pwrite, one call per `WRITE_CHUNK_BYTES`.
//!
//! Why pwrite and not stores into a writable mapping (measured, see docs/decisions.md):
//! a store to a fresh page of a mapped file takes a read fault that zero-fills the page
//! and a second fault to mark it dirty, which cost more than half of the append time;
//! pwrite of whole pages skips both. It also turns a failing disk into an error
//! instead of a SIGBUS.

use rkyv::ser::allocator::Arena;

use crate::storage::format::{self, FRAME_FLAG_BATCH_END, FRAME_HEADER_BYTES, FrameHeader};
use crate::storage::record::{self, Record};
use crate::storage::segment::Segment;

/// Bytes of frames gathered before a pwrite: big enough to amortize the syscall, small
/// enough to stay in cache.
pub const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// The most bytes `record`'s frame can take.
pub(crate) fn frame_bytes_bound(record: &Record<'_>) -> usize {
    format::frame_bytes(record.archived_len_bound())
}

pub(crate) struct FrameWriter {
    /// Encoded frames not yet written. Its length is its capacity: frames are encoded in
    /// place, so it is zeroed once, not per record. Grows only for a record larger than a
    /// chunk (bounded by `max_record_bytes`).
    buffer: Vec<u8>,
    used: usize,
    scratch: Arena,
}

impl FrameWriter {
    pub fn new() -> FrameWriter {
        FrameWriter {
            buffer: vec![0; WRITE_CHUNK_BYTES],
            used: 0,
            scratch: Arena::new(),
        }
    }

    /// Writes `records` (non-empty) as one atomic batch at the end of `segment`, which
    /// must have room for it. The frames become visible to readers only once all of them
    /// are in the page cache; on error nothing becomes visible.
    pub fn append_batch(&mut self, segment: &mut Segment, records: &[Record<'_>]) -> std::io::Result<()> {
        let result = self.write_frames(segment, records);
        if result.is_err() {
            self.used = 0;
            segment.abandon_pending();
        }
        result
    }

    fn write_frames(&mut self, segment: &mut Segment, records: &[Record<'_>]) -> std::io::Result<()> {
        let mut pending = segment.pending();
        let mut chunk_start = pending.position;
        let last = records.len() - 1;
        for (i, record) in records.iter().enumerate() {
            let bound = frame_bytes_bound(record);
            if self.used + bound > self.buffer.len() {
                self.flush(segment, chunk_start)?;
                chunk_start = pending.position;
                if bound > self.buffer.len() {
                    self.buffer.resize(bound, 0);
                }
            }
            let flags = if i == last { FRAME_FLAG_BATCH_END } else { 0 };
            let frame_len = self.encode(record, pending.next_offset, flags, bound);
            segment.index_frame(&pending);
            pending.advance(frame_len, record.timestamp_ms);
        }
        self.flush(segment, chunk_start)?;
        segment.commit(pending);
        Ok(())
    }

    /// Encodes one frame at the end of the buffer and returns its length.
    #[inline]
    fn encode(&mut self, record: &Record<'_>, offset: u64, flags: u32, bound: usize) -> usize {
        let room = &mut self.buffer[self.used..self.used + bound];
        let payload_len =
            record::write_body(&record.body(), &mut room[FRAME_HEADER_BYTES..], &mut self.scratch)
                .expect("a record archive outgrew its computed bound");
        let header = FrameHeader {
            payload_len: payload_len as u32,
            offset,
            timestamp_ms: record.timestamp_ms,
            flags,
        };
        let frame_len = header.frame_bytes();
        format::seal_frame(&mut room[..frame_len], &header);
        self.used += frame_len;
        frame_len
    }

    /// Writes the buffered frames at `position` of the segment file.
    fn flush(&mut self, segment: &Segment, position: u64) -> std::io::Result<()> {
        if self.used > 0 {
            let end = position + self.used as u64;
            assert!(end <= segment.mapped_len(), "a batch would overrun its segment");
            let file = segment.file();
            crate::storage::io::write_at(file.file(), file.path(), position, &self.buffer[..self.used])?;
            self.used = 0;
        }
        Ok(())
    }
}
