//! Recovery: what a segment file holds, whether that is sound, and mending a torn tail.
//!
//! The rules, applied to every segment when a partition is opened:
//! - Every frame below the newest marker's `data_end` was synced: if one is missing or
//!   damaged, that is corruption and the partition refuses to open, naming file and offset.
//! - Every segment but the last was sealed after a full sync: it must be whole, and end
//!   exactly where the next segment begins. One whose seal never reached the disk (power
//!   lost while the syncer sealed it) may be torn like a last segment: nothing after it
//!   was acked durably, so it is cut and the segments after it are dropped, unless one
//!   of them records synced data, which would be corruption.
//! - In the last segment, frames past the synced point may be torn by a crash: recovery
//!   keeps every valid frame up to the end of the last complete atomic batch and cuts the
//!   rest, zeroing it so that no stale frame can ever line up with a later append.
//! - A segment file whose making never finished (`<name>.creating`: a crash before its
//!   header was synced and it took its real name) held no record: it is removed. A real
//!   name always comes with a whole, synced header, so a segment whose header is missing,
//!   short or zeroed is damaged, even the newest: refused, never dropped (it may have
//!   held acked records).
//!
//! Scanning and judging are pure; only `repair_tail`, `remove_unfinished` and
//! `remove_after_torn` write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapOptions;

use crate::storage::error::{Result, StorageError};
use crate::storage::format::{
    self, FRAME_HEADER_BYTES, FrameDefect, HeaderDefect, MarkerSlot, SEGMENT_HEADER_BYTES, SegmentHeader,
};
use crate::storage::index::SparseIndex;
use crate::storage::io;
use crate::storage::layout;
use crate::storage::record;
use crate::storage::segment::{Recovered, SyncPoint};

/// Where and why a scan stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanStop {
    pub position: u64,
    pub expected_offset: u64,
    pub defect: FrameDefect,
}

/// The valid batches (or format-1 frames) at the front of a segment.
#[derive(Debug, Clone)]
pub(crate) struct FrameScan {
    /// State at the end of the last complete atomic batch.
    pub end: SyncPoint,
    pub min_timestamp_ms: i64,
    pub index: SparseIndex,
    /// Valid format-1 frames after `end` that belong to a batch cut short (a format-2
    /// batch is checked whole, so never any).
    pub incomplete_batch_frames: u64,
    /// Why scanning stopped, unless it ran to the end of the bytes.
    pub stop: Option<ScanStop>,
    /// Valid batches (format-1 frames) up to `end`.
    pub batches: u64,
}

/// One valid unit of a segment: a batch, or a format-1 frame.
struct Unit {
    bytes: usize,
    records: u64,
    min_timestamp_ms: i64,
    max_timestamp_ms: i64,
    /// Whether an atomic batch ends with it (always, for a batch).
    ends_batch: bool,
}

/// Validates the units of a segment, from the header on, until the first one that does
/// not hold the next records, by the segment's format.
pub(crate) fn scan(bytes: &[u8], header: &SegmentHeader, index_interval_bytes: u32) -> FrameScan {
    if header.format_version == format::FORMAT_VERSION_FRAMES {
        scan_units(bytes, header.base_offset, index_interval_bytes, check_frame)
    } else {
        scan_units(bytes, header.base_offset, index_interval_bytes, check_batch)
    }
}

/// A format-2 batch: length, CRC, offset and version, and its body's archive against its
/// header.
fn check_batch(bytes: &[u8], next_offset: u64) -> Result<Unit, FrameDefect> {
    let header = format::check_batch(bytes, next_offset)?;
    let facts = record::check_batch_body(header.body(bytes), &header).ok_or(FrameDefect::BadPayload)?;
    Ok(Unit {
        bytes: header.batch_bytes(),
        records: u64::from(header.record_count),
        min_timestamp_ms: facts.min_timestamp_ms,
        max_timestamp_ms: header.max_timestamp_ms,
        ends_batch: true,
    })
}

/// A format-1 frame: length, CRC, offset and the payload archive.
fn check_frame(bytes: &[u8], next_offset: u64) -> Result<Unit, FrameDefect> {
    let header = format::check_frame(bytes, next_offset)?;
    let payload = &bytes[FRAME_HEADER_BYTES..][..header.payload_len as usize];
    if !record::validate_body(payload) {
        return Err(FrameDefect::BadPayload);
    }
    Ok(Unit {
        bytes: header.frame_bytes(),
        records: 1,
        min_timestamp_ms: header.timestamp_ms,
        max_timestamp_ms: header.timestamp_ms,
        ends_batch: header.is_batch_end(),
    })
}

/// The valid prefix of a segment's units, kept up to the end of its last whole batch.
fn scan_units(
    bytes: &[u8],
    base_offset: u64,
    index_interval_bytes: u32,
    check: fn(&[u8], u64) -> Result<Unit, FrameDefect>,
) -> FrameScan {
    let mut index = SparseIndex::new(index_interval_bytes);
    let mut position = SEGMENT_HEADER_BYTES as usize;
    let mut next_offset = base_offset;
    let (mut max_ts, mut min_ts) = (i64::MIN, i64::MAX);
    let mut units = 0;
    let mut committed = (position, next_offset, max_ts, min_ts, units);
    let mut stop = None;
    while position < bytes.len() {
        let unit = match check(&bytes[position..], next_offset) {
            Ok(unit) => unit,
            Err(defect) => {
                stop = Some(ScanStop {
                    position: position as u64,
                    expected_offset: next_offset,
                    defect,
                });
                break;
            }
        };
        index.observe(next_offset, position as u32, max_ts);
        position += unit.bytes;
        next_offset += unit.records;
        max_ts = max_ts.max(unit.max_timestamp_ms);
        min_ts = min_ts.min(unit.min_timestamp_ms);
        units += 1;
        if unit.ends_batch {
            committed = (position, next_offset, max_ts, min_ts, units);
        }
    }
    let (data_end, committed_next, max_timestamp_ms, min_timestamp_ms, batches) = committed;
    index.truncate_at(data_end as u32);
    FrameScan {
        end: SyncPoint {
            data_end: data_end as u64,
            next_offset: committed_next,
            max_timestamp_ms,
        },
        min_timestamp_ms,
        index,
        incomplete_batch_frames: next_offset - committed_next,
        stop,
        batches,
    }
}

/// What a segment file holds, read without changing it.
#[derive(Debug)]
pub(crate) struct SegmentCheck {
    pub path: PathBuf,
    pub file_len: u64,
    pub header: Result<SegmentHeader, HeaderDefect>,
    pub marker: Option<MarkerSlot>,
    /// Present when the header is valid.
    pub scan: Option<FrameScan>,
}

/// Reads a segment's header and scans its frames through a read-only mapping of the
/// bytes the file really has (never past EOF, which would fault).
pub(crate) fn check_segment(path: &Path, file: &File, index_interval_bytes: u32) -> Result<SegmentCheck> {
    let file_len = file
        .metadata()
        .map_err(StorageError::io("stat segment", path))?
        .len();
    let mut page = vec![0u8; SEGMENT_HEADER_BYTES.min(file_len) as usize];
    file.read_exact_at(&mut page, 0)
        .map_err(StorageError::io("read segment header", path))?;
    let header = SegmentHeader::decode(&page);
    let mut check = SegmentCheck {
        path: path.to_path_buf(),
        file_len,
        header,
        marker: None,
        scan: None,
    };
    let Ok(header) = header else {
        return Ok(check);
    };
    check.marker = MarkerSlot::newest(&page);
    let readable = file_len.min(header.capacity);
    // SAFETY: read-only mapping of bytes below EOF. Nothing truncates a segment while
    // it is open: the partition lock keeps other flowd processes out.
    let map = unsafe { MmapOptions::new().len(readable as usize).map(file) }
        .map_err(StorageError::io("map segment", path))?;
    check.scan = Some(scan(&map, &header, index_interval_bytes));
    Ok(check)
}

/// The place of a segment in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The newest segment: its tail may be torn by a crash.
    Last,
    /// An older segment: sealed, whole, ending where the next one begins.
    Closed { next_base_offset: u64 },
}

/// What a sound segment needs on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to mend.
    Clean,
    /// The tail past `data_end` is torn (not synced; never acked in a durable mode) and
    /// is cut on open; for an unsealed older segment, with every segment after it.
    TornTail {
        data_end: u64,
        stop: Option<ScanStop>,
        incomplete_batch_frames: u64,
    },
}

/// Decides whether a checked segment is sound, torn at the tail, or corrupt.
pub(crate) fn judge(check: &SegmentCheck, name_base_offset: u64, role: Role) -> Result<Verdict> {
    let path = &check.path;
    let corrupt = |reason: String| StorageError::CorruptSegment {
        path: path.clone(),
        reason,
    };
    let header = match check.header {
        Ok(header) => header,
        Err(defect) => return Err(corrupt(defect.to_string())),
    };
    if header.base_offset != name_base_offset {
        return Err(corrupt(format!(
            "the header says base offset {} but the file name says {name_base_offset}",
            header.base_offset
        )));
    }
    let scan = check.scan.as_ref().expect("a valid header is always scanned");
    let frame_error = |position: u64, offset: u64, reason: String| StorageError::CorruptFrame {
        path: path.clone(),
        offset,
        position,
        reason,
    };
    // The first place the valid prefix ends: a damaged frame, or a batch cut short.
    let break_at = |scan: &FrameScan| match scan.stop {
        Some(stop) => (stop.position, stop.expected_offset, stop.defect.to_string()),
        _ => (
            scan.end.data_end,
            scan.end.next_offset,
            "an atomic batch is cut short".to_string(),
        ),
    };
    let synced_end = check.marker.map_or(SEGMENT_HEADER_BYTES, |m| m.data_end);
    if scan.end.data_end < synced_end {
        let (position, offset, reason) = break_at(scan);
        return Err(frame_error(
            position,
            offset,
            format!("{reason}, below the synced point (byte {synced_end})"),
        ));
    }
    let sealed = check.marker.is_some_and(|m| m.sealed);
    if sealed && scan.end.data_end != synced_end {
        return Err(corrupt(format!(
            "valid records continue past its seal at byte {synced_end}"
        )));
    }
    match role {
        Role::Closed { next_base_offset } => {
            if scan.end.next_offset < next_base_offset && !sealed {
                // Its seal never reached the disk, so nothing after it was acked durably
                // (the syncer seals before it syncs anything later): a power loss tore
                // the log here, and everything from here on is its torn tail.
                return Ok(Verdict::TornTail {
                    data_end: scan.end.data_end,
                    stop: scan.stop,
                    incomplete_batch_frames: scan.incomplete_batch_frames,
                });
            }
            if scan.end.next_offset < next_base_offset {
                let (position, offset, reason) = break_at(scan);
                return Err(frame_error(
                    position,
                    offset,
                    format!("{reason}, in a closed segment"),
                ));
            }
            if scan.end.next_offset > next_base_offset || scan.incomplete_batch_frames > 0 {
                return Err(corrupt(format!(
                    "it holds records up to offset {} but the next segment starts at {next_base_offset}",
                    scan.end.next_offset + scan.incomplete_batch_frames
                )));
            }
            Ok(Verdict::Clean)
        }
        Role::Last => {
            let torn =
                scan.incomplete_batch_frames > 0 || scan.stop.is_some_and(|s| s.defect != FrameDefect::Empty);
            Ok(if torn {
                Verdict::TornTail {
                    data_end: scan.end.data_end,
                    stop: scan.stop,
                    incomplete_batch_frames: scan.incomplete_batch_frames,
                }
            } else {
                Verdict::Clean
            })
        }
    }
}

/// Turns a sound check into the segment's recovered state.
pub(crate) fn recovered(check: SegmentCheck) -> Recovered {
    let scan = check.scan.expect("a sound segment was scanned");
    Recovered {
        point: scan.end,
        min_timestamp_ms: scan.min_timestamp_ms,
        index: scan.index,
        marker: check.marker,
    }
}

/// Resets the last segment past `data_end` to preallocated zeros, durably: cuts the file
/// there and preallocates it again. Afterwards the bytes past the data are zero, as the
/// writer and the next recovery assume.
pub(crate) fn repair_tail(path: &Path, file: &File, data_end: u64, capacity: u64) -> Result<()> {
    io::set_len(file, path, data_end).map_err(StorageError::io("truncate torn tail of", path))?;
    io::preallocate(file, path, data_end, capacity - data_end)
        .map_err(StorageError::io("preallocate segment", path))?;
    io::sync_data(file, path).map_err(StorageError::io("sync repaired segment", path))
}

/// Removes the segment files in `dir` whose making never finished, and says which.
pub(crate) fn remove_unfinished(dir: &Path) -> Result<Vec<PathBuf>> {
    let unfinished = layout::list_creating_segments(dir)?;
    for path in &unfinished {
        io::remove_file(path).map_err(StorageError::io("remove an unfinished segment", path))?;
    }
    if !unfinished.is_empty() {
        layout::sync_dir(dir)?;
    }
    Ok(unfinished)
}

/// Removes the segments after an unsealed, torn older segment, after checking that none
/// of them ever recorded synced data (which a torn predecessor makes impossible, unless
/// the disk is damaged).
pub(crate) fn remove_after_torn(torn: &Path, later: &[(u64, PathBuf)]) -> Result<()> {
    for (_, path) in later {
        let file = File::open(path).map_err(StorageError::io("open segment", path))?;
        let mut page = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        // A header too short to read holds no marker, so no synced data.
        let whole = file.read_exact_at(&mut page, 0).is_ok();
        let synced = whole && MarkerSlot::newest(&page).is_some_and(|m| m.data_end > SEGMENT_HEADER_BYTES);
        if synced {
            return Err(StorageError::CorruptSegment {
                path: torn.to_path_buf(),
                reason: format!(
                    "it is torn and unsealed, but the later segment {} holds synced records",
                    path.display()
                ),
            });
        }
    }
    for (_, path) in later {
        io::remove_file(path).map_err(StorageError::io("remove segment after a torn one", path))?;
    }
    if let Some(dir) = torn.parent() {
        layout::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, LogOptions, PartitionLog, Record};

    const INTERVAL: u32 = 512;

    /// A partition of one segment with `records` 100-byte records in batches of ten,
    /// synced (`every`): returns the segment's path.
    fn segment(dir: &Path, records: u64) -> PathBuf {
        let options = LogOptions {
            segment_bytes: 64 * 1024,
            durability: Durability::Every,
            index_interval_bytes: INTERVAL,
            max_record_bytes: 16 * 1024,
            unsynced_bytes_max: 32 * 1024,
            ..LogOptions::default()
        };
        let mut log = PartitionLog::open(dir, options).unwrap();
        let value = [7u8; 100];
        for _ in 0..records / 10 {
            let batch: Vec<Record<'_>> = (0..10).map(|_| Record::new(1, &value)).collect();
            log.append(&batch).unwrap();
        }
        drop(log);
        dir.join(layout::segment_file_name(0))
    }

    fn check(path: &Path) -> SegmentCheck {
        let file = File::open(path).unwrap();
        check_segment(path, &file, INTERVAL).unwrap()
    }

    #[test]
    fn a_synced_segment_is_clean_and_its_scan_ends_at_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 50);
        let check = check(&path);
        let scan = check.scan.as_ref().unwrap();
        assert_eq!(scan.end.next_offset, 50);
        assert_eq!(scan.incomplete_batch_frames, 0);
        assert_eq!(
            check.marker.unwrap().data_end,
            scan.end.data_end,
            "the marker covers every record"
        );
        assert_eq!(judge(&check, 0, Role::Last).unwrap(), Verdict::Clean);
    }

    #[test]
    fn garbage_past_the_synced_point_is_a_torn_tail_cut_at_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 50);
        let data_end = check(&path).scan.unwrap().end.data_end;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAB; 40], data_end).unwrap();
        match judge(&check(&path), 0, Role::Last).unwrap() {
            Verdict::TornTail {
                data_end: cut, stop, ..
            } => {
                assert_eq!(cut, data_end, "cut where the synced records end");
                assert_eq!(stop.unwrap().expected_offset, 50);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flipped_byte_below_the_synced_point_is_corruption_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 50);
        let scan = check(&path).scan.unwrap();
        // Somewhere in the middle of the records: offset 20 or so.
        let position = SEGMENT_HEADER_BYTES + (scan.end.data_end - SEGMENT_HEADER_BYTES) / 2;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, position).unwrap();
        file.write_all_at(&[byte[0] ^ 0x01], position).unwrap();
        let error = judge(&check(&path), 0, Role::Last).unwrap_err();
        match &error {
            StorageError::CorruptFrame { offset, reason, .. } => {
                assert!((15..35).contains(offset), "{error}");
                assert!(reason.contains("below the synced point"), "{error}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_closed_segment_must_end_where_the_next_begins() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 50);
        let check = check(&path);
        // Its records end at 50; a next segment at 60 leaves a hole: it was never sealed,
        // so a power loss tore the log there (nothing after it was acked durably).
        assert!(!check.marker.unwrap().sealed);
        assert!(matches!(
            judge(&check, 0, Role::Closed { next_base_offset: 60 }),
            Ok(Verdict::TornTail { data_end, .. }) if data_end == check.scan.as_ref().unwrap().end.data_end
        ));
        // At 40 the next one overlaps it: corruption.
        let overlap = judge(&check, 0, Role::Closed { next_base_offset: 40 }).unwrap_err();
        assert!(
            overlap.to_string().contains("the next segment starts at 40"),
            "{overlap}"
        );
        assert_eq!(
            judge(&check, 0, Role::Closed { next_base_offset: 50 }).unwrap(),
            Verdict::Clean
        );
    }

    #[test]
    fn a_name_that_disagrees_with_the_header_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 10);
        let error = judge(&check(&path), 5, Role::Last).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("the header says base offset 0 but the file name says 5"),
            "{error}"
        );
    }

    #[test]
    fn a_segment_whose_header_is_gone_is_corruption_even_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; SEGMENT_HEADER_BYTES as usize], 0)
            .unwrap();
        let check = check(&path);
        assert!(check.header.is_err());
        // A segment takes its real name only once its header is synced: a zeroed one was
        // damaged after, and may have held acked records.
        let error = judge(&check, 0, Role::Last).unwrap_err();
        assert!(
            error.to_string().contains("the segment header is all zeros"),
            "{error}"
        );
        assert!(judge(&check, 0, Role::Closed { next_base_offset: 0 }).is_err());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(0).unwrap();
        let error = judge(&self::check(&path), 0, Role::Last).unwrap_err();
        assert!(
            error.to_string().contains("shorter than a segment header"),
            "{error}"
        );
    }
}
