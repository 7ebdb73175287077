//! The sparse index of one segment: maps offsets and timestamps to byte positions.
//!
//! One entry per `interval_bytes` of frames. A lookup is a binary search over the
//! entries followed by a walk of at most one interval, so seeking costs O(log n) plus a
//! bounded number of frame headers, never a scan of the segment.
//!
//! Record timestamps come from producers and need not be ordered. The index keeps, per
//! entry, the largest timestamp of all records *before* it in the segment; that running
//! maximum is monotonic, which is what makes "first record with timestamp >= T" a
//! binary search: it lies after the last entry whose running maximum is below T.
//!
//! The index lives in memory and is rebuilt when a segment is opened (the frames are
//! validated then anyway): there is no index file to get out of step with the data.

/// One index point: the frame at `position` holds `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u32,
    /// Largest timestamp among the records before this one in the segment
    /// (`i64::MIN` for the first).
    pub max_timestamp_before_ms: i64,
}

#[derive(Debug, Clone)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
    interval_bytes: u32,
}

impl SparseIndex {
    pub fn new(interval_bytes: u32) -> SparseIndex {
        assert!(interval_bytes > 0, "index interval must be positive");
        SparseIndex {
            entries: Vec::new(),
            interval_bytes,
        }
    }

    /// Offers the next frame of the segment, in order. Keeps it when it starts a new
    /// interval.
    #[inline]
    pub fn observe(&mut self, offset: u64, position: u32, max_timestamp_before_ms: i64) {
        let due = match self.entries.last() {
            None => true,
            Some(last) => position - last.position >= self.interval_bytes,
        };
        if due {
            debug_assert!(self.entries.last().is_none_or(|last| last.offset < offset));
            self.entries.push(IndexEntry {
                offset,
                position,
                max_timestamp_before_ms,
            });
        }
    }

    /// The last entry at or before `offset`: the place to start walking to find it.
    pub fn floor_offset(&self, offset: u64) -> Option<IndexEntry> {
        let after = self.entries.partition_point(|e| e.offset <= offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The entry to start walking from to find the first record with a timestamp
    /// at or after `timestamp_ms`: the last one whose records before it are all older.
    pub fn floor_time(&self, timestamp_ms: i64) -> Option<IndexEntry> {
        let after = self
            .entries
            .partition_point(|e| e.max_timestamp_before_ms < timestamp_ms);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops the entries of frames at or after `position` (frames cut off by recovery).
    pub fn truncate_at(&mut self, position: u32) {
        let keep = self.entries.partition_point(|e| e.position < position);
        self.entries.truncate(keep);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of 100 bytes with the given timestamps, indexed every 250 bytes.
    fn index_of(timestamps: &[i64]) -> SparseIndex {
        let mut index = SparseIndex::new(250);
        let mut max = i64::MIN;
        for (i, ts) in timestamps.iter().enumerate() {
            index.observe(i as u64, 4096 + 100 * i as u32, max);
            max = max.max(*ts);
        }
        index
    }

    #[test]
    fn keeps_one_entry_per_interval() {
        let index = index_of(&[0; 10]);
        let offsets: Vec<u64> = index.entries.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![0, 3, 6, 9]);
    }

    #[test]
    fn floor_offset_table() {
        let index = index_of(&[0; 10]);
        for (target, want) in [(0, 0), (2, 0), (3, 3), (5, 3), (9, 9), (100, 9)] {
            assert_eq!(
                index.floor_offset(target).unwrap().offset,
                want,
                "target {target}"
            );
        }
        assert_eq!(SparseIndex::new(1).floor_offset(0), None);
    }

    #[test]
    fn floor_time_handles_unordered_timestamps() {
        // The first record at or after T must lie at or after the entry returned.
        let timestamps = [10, 5, 30, 20, 25, 40, 35, 50, 45, 60];
        let index = index_of(&timestamps);
        for t in [0, 5, 10, 11, 29, 30, 31, 40, 49, 50, 60, 61] {
            let first = timestamps.iter().position(|ts| *ts >= t);
            let entry = index.floor_time(t).expect("non-empty");
            if let Some(first) = first {
                assert!(
                    entry.offset as usize <= first,
                    "t={t}: entry {entry:?} past {first}"
                );
                // And at most one interval before it, so the walk is bounded.
                let next = index.entries.iter().find(|e| e.offset > entry.offset);
                assert!(next.is_none_or(|n| n.offset as usize > first), "t={t}");
            }
        }
    }
}
