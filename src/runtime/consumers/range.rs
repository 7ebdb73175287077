//! Reads outside consumers: a range of a partition by offset or time, oldest or newest
//! first, and a partition's length.

use crate::protocol::consumer::{Bound, RangeSpec};
use crate::protocol::records::RecordsWriter;
use crate::runtime::error::EngineError;
use crate::runtime::provenance::END_HEADER;
use crate::runtime::service::{FETCH_RECORDS_MAX, copy_read, copy_records};
use crate::storage::{PartitionLog, StorageError};

/// Offsets `lo..hi` of a range read: offsets as given, or times turned into offsets.
fn offsets(log: &PartitionLog, by_time: bool, from: Bound, to: Bound) -> Result<(u64, u64), StorageError> {
    let (start, next) = (log.start_offset(), log.committed_offset());
    // The first offset at or after a time; past every record: the end.
    let at = |t: i64| log.offset_at_time(t).map(|o| o.unwrap_or(next));
    let off = |v: i64| v.max(0) as u64;
    let lo = match (from, by_time) {
        (Bound::Unbounded, _) => start,
        (Bound::Included(v), false) => off(v),
        (Bound::Excluded(v), false) => off(v).saturating_add(1),
        (Bound::Included(t), true) => at(t)?,
        (Bound::Excluded(t), true) => at(t.saturating_add(1))?,
    };
    let hi = match (to, by_time) {
        (Bound::Unbounded, _) => next,
        (Bound::Included(v), false) => off(v).saturating_add(1),
        (Bound::Excluded(v), false) => off(v),
        (Bound::Included(t), true) => at(t.saturating_add(1))?,
        (Bound::Excluded(t), true) => at(t)?,
    };
    Ok((lo.max(start), hi.min(next)))
}

/// A FETCHED frame of the records in a range, oldest first, or newest first when
/// `reverse` (then the newest `limit` of them).
pub(super) fn read_range(
    log: &PartitionLog,
    spec: &RangeSpec,
    request_id: u64,
) -> Result<(Vec<u8>, u32), EngineError> {
    let (lo, hi) = offsets(log, spec.by_time, spec.from, spec.to)?;
    let mut out = Vec::new();
    let mut writer = RecordsWriter::fetched(&mut out, request_id, log.start_offset(), log.committed_offset());
    if lo < hi && !spec.reverse {
        copy_read(
            &mut writer,
            &mut out,
            log.read_range(lo, hi),
            hi - lo,
            spec.limit,
            spec.max_bytes,
        )?;
    } else if lo < hi {
        // Offsets are dense: the newest `limit` records start at `hi - limit` (end
        // markers, skipped, may make it fewer).
        let limit = spec.limit.clamp(1, FETCH_RECORDS_MAX);
        let mut records = log.read_range(hi.saturating_sub(limit.into()).max(lo), hi);
        let mut views: Vec<_> = records
            .by_ref()
            .filter(|v| !v.headers().any(|(n, _)| n == END_HEADER))
            .take(limit as usize)
            .collect();
        // The newest are the point of this read: damage anywhere before them refuses it.
        records.end()?;
        views.reverse();
        let available = views.len() as u64;
        copy_records(&mut writer, &mut out, views, available, limit, spec.max_bytes);
    }
    let taken = writer.count();
    writer.finish(&mut out);
    Ok((out, taken))
}
