//! Records and offsets as several frame kinds carry them: `(offset, record)` items after
//! a count (FETCHED, CLAIMED), written record by record straight from the log by
//! `RecordsWriter`, and runs of dense offsets per partition (PRODUCED, COMMITTED).

use crate::protocol::error::ProtocolError;
use crate::protocol::frame::{Kind, begin_frame, finish_frame};
use crate::protocol::wire::{Cursor, WireRecord, encode_record, put_bytes, put_u16, put_u32, put_u64};

/// Partition value meaning "the server picks".
pub const ANY_PARTITION: u32 = u32::MAX;

/// Consecutive records of a group that went to one partition, with dense offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub partition: u32,
    pub first_offset: u64,
    pub count: u32,
}

/// Per group, its runs: the body of PRODUCED, and the tail of COMMITTED.
pub fn encode_runs(out: &mut Vec<u8>, groups: &[Vec<Run>]) {
    put_u16(out, groups.len() as u16);
    for runs in groups {
        put_u32(out, runs.len() as u32);
        for run in runs {
            put_u32(out, run.partition);
            put_u64(out, run.first_offset);
            put_u32(out, run.count);
        }
    }
}

pub fn decode_runs(c: &mut Cursor<'_>) -> Result<Vec<Vec<Run>>, ProtocolError> {
    let groups = c.u16("the group count")?;
    let mut all = Vec::with_capacity(groups as usize);
    for _ in 0..groups {
        let n = c.u32("the run count")? as usize;
        if n.saturating_mul(16) > c.remaining() {
            return Err(ProtocolError::malformed("a run count over the body"));
        }
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            runs.push(Run {
                partition: c.u32("a partition")?,
                first_offset: c.u64("an offset")?,
                count: c.u32("a count")?,
            });
        }
        all.push(runs);
    }
    Ok(all)
}

/// The `(offset, record)` items `RecordsWriter` writes, after their count, each handed
/// to `each` as it lies in the body (checked, not copied).
pub fn for_each_item<'a>(
    c: &mut Cursor<'a>,
    mut each: impl FnMut(u64, WireRecord<'a>),
) -> Result<(), ProtocolError> {
    let n = c.u32("the record count")? as usize;
    // An item takes at least 15 bytes: a lying count fails before anything is read.
    if n.saturating_mul(15) > c.remaining() {
        return Err(ProtocolError::malformed("a record count over the body"));
    }
    for _ in 0..n {
        let offset = c.u64("an offset")?;
        each(offset, c.record()?);
    }
    Ok(())
}

/// `(partition, offset)` of every record, in input order, from a produce's runs.
pub fn record_offsets(groups: &[Vec<Run>]) -> impl Iterator<Item = (u32, u64)> + '_ {
    groups
        .iter()
        .flatten()
        .flat_map(|run| (0..u64::from(run.count)).map(move |i| (run.partition, run.first_offset + i)))
}

/// Writes a frame whose body is some fields, a u32 record count, then `(u64 offset,
/// record)` items, record by record straight from the log: FETCHED and CLAIMED.
pub struct RecordsWriter {
    start: usize,
    fields_at: usize,
    count_at: usize,
    count: u32,
}

impl RecordsWriter {
    /// Starts the frame with `fields`; placeholders may be overwritten by `finish_with`.
    pub fn begin(out: &mut Vec<u8>, kind: Kind, request_id: u64, fields: &[u8]) -> RecordsWriter {
        let start = begin_frame(out, kind, request_id);
        let fields_at = out.len();
        out.extend_from_slice(fields);
        let count_at = out.len();
        put_u32(out, 0);
        RecordsWriter {
            start,
            fields_at,
            count_at,
            count: 0,
        }
    }

    /// A FETCHED frame: the partition's ends, then the records.
    pub fn fetched(out: &mut Vec<u8>, request_id: u64, start_offset: u64, next_offset: u64) -> RecordsWriter {
        let mut fields = Vec::with_capacity(16);
        put_u64(&mut fields, start_offset);
        put_u64(&mut fields, next_offset);
        RecordsWriter::begin(out, Kind::Fetched, request_id, &fields)
    }

    pub fn push(
        &mut self,
        out: &mut Vec<u8>,
        offset: u64,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        put_u64(out, offset);
        encode_record(out, Some(timestamp_ms), key, value, headers);
        self.count += 1;
    }

    /// One item as length-prefixed bytes: a stored batch, as it is (BATCHES).
    pub fn push_bytes(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        put_bytes(out, bytes);
        self.count += 1;
    }

    /// Items pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn finish(self, out: &mut [u8]) {
        out[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        finish_frame(out, self.start);
    }

    /// Overwrites the fields given to `begin` (same length), then finishes.
    pub fn finish_with(self, out: &mut [u8], fields: &[u8]) {
        assert_eq!(
            fields.len(),
            self.count_at - self.fields_at,
            "fields keep their length"
        );
        out[self.fields_at..self.count_at].copy_from_slice(fields);
        self.finish(out);
    }
}
