//! One segment: a preallocated file, mapped read-only once and read zero-copy.
//!
//! Batches are written with pwrite (see `writer`) at or after `data_end`, and `data_end`
//! moves past one only once it is whole in the page cache. Readers borrow slices of the
//! mapping below `data_end` only, so no reader can see a batch being written, and the
//! mapping is never written through: an I/O error comes back from pwrite as an error,
//! never as a SIGBUS. A segment of format 1 (one frame per record, written by an older
//! flowd) is read the same way, frame by frame, and never appended to.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::slice;
use std::sync::{Arc, Mutex};

use memmap2::{MmapOptions, MmapRaw};

use crate::storage::error::{Result, StorageError};
use crate::storage::format::{
    self, BatchHeader, FORMAT_VERSION, FORMAT_VERSION_FRAMES, FRAME_HEADER_BYTES, FrameHeader, MarkerSlot,
    SEGMENT_HEADER_BYTES, SegmentHeader,
};
use crate::storage::index::SparseIndex;
use crate::storage::io;
use crate::storage::layout;
use crate::storage::record::{self, RecordView, Stored};

/// A place in a segment: the batch (or format-1 frame) at `position`, and the record
/// `index` in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub position: usize,
    pub index: u32,
}

impl Cursor {
    /// The first record of a segment.
    pub const START: Cursor = Cursor {
        position: SEGMENT_HEADER_BYTES as usize,
        index: 0,
    };
}

/// How far a segment is written or synced: the state a marker slot records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncPoint {
    pub data_end: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
}

#[derive(Debug)]
struct Markers {
    seq: u64,
    data_end: u64,
    sealed: bool,
}

/// Where a batch being written has got to; committed to the segment when complete.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingAppend {
    pub position: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    pub min_timestamp_ms: i64,
}

impl PendingAppend {
    /// Moves past a batch of `bytes` holding `records` records.
    pub fn advance(&mut self, bytes: usize, records: u32, min_timestamp_ms: i64, max_timestamp_ms: i64) {
        self.position += bytes as u64;
        self.next_offset += u64::from(records);
        self.max_timestamp_ms = self.max_timestamp_ms.max(max_timestamp_ms);
        self.min_timestamp_ms = self.min_timestamp_ms.min(min_timestamp_ms);
    }
}

/// The file of a segment, shared by its writer and the syncer thread.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    path: PathBuf,
    file: File,
    markers: Mutex<Markers>,
}

impl SegmentFile {
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the frames up to `point` durable (fdatasync) and records it in a marker slot.
    pub fn sync(&self, point: SyncPoint, faults: &crate::storage::faults::SyncFaults) -> std::io::Result<()> {
        faults.sync_data(&self.file, &self.path)?;
        self.write_marker(point, false)
    }

    /// Closes the segment durably: syncs its frames, writes the seal marker, and syncs
    /// again, so that "every segment but the last is sealed" holds across a crash.
    pub fn seal(&self, point: SyncPoint, faults: &crate::storage::faults::SyncFaults) -> std::io::Result<()> {
        faults.sync_data(&self.file, &self.path)?;
        self.write_marker(point, true)?;
        faults.sync_data(&self.file, &self.path)
    }

    /// Records that the segment is synced up to `point` (or sealed there). Markers only
    /// move forward, and none follows the seal: a syncer that finishes late can never
    /// overwrite a seal with an older point.
    pub fn write_marker(&self, point: SyncPoint, sealed: bool) -> std::io::Result<()> {
        let mut markers = self.markers.lock().expect("marker lock poisoned");
        let newer = point.data_end > markers.data_end || (sealed && point.data_end == markers.data_end);
        if markers.sealed || !newer {
            return Ok(());
        }
        let seq = markers.seq + 1;
        let slot = MarkerSlot {
            seq,
            data_end: point.data_end,
            next_offset: point.next_offset,
            max_timestamp_ms: point.max_timestamp_ms,
            sealed,
        };
        io::write_at(
            &self.file,
            &self.path,
            MarkerSlot::position(seq) as u64,
            &slot.encode(),
        )?;
        *markers = Markers {
            seq,
            data_end: point.data_end,
            sealed,
        };
        Ok(())
    }
}

/// A segment of a partition log.
pub(crate) struct Segment {
    file: Arc<SegmentFile>,
    map: MmapRaw,
    /// Bytes of the file that may be touched through `map`; beyond it lies EOF.
    mapped_len: u64,
    writable: bool,
    header: SegmentHeader,
    data_end: u64,
    next_offset: u64,
    min_timestamp_ms: i64,
    max_timestamp_ms: i64,
    index: SparseIndex,
    sealed: bool,
}

/// A segment that could not be made. `named`: it had its real name already (only the
/// directory sync or the mapping after failed), so the directory may hold it, in place
/// of the segment it replaced too: its log must take no more writes (it is poisoned, as
/// after a failed fdatasync). Otherwise nothing changed.
#[derive(Debug)]
pub(crate) struct Unmade {
    pub error: StorageError,
    pub named: bool,
}

impl From<Unmade> for StorageError {
    fn from(unmade: Unmade) -> StorageError {
        unmade.error
    }
}

/// How a new segment takes its name.
#[derive(Clone, Copy)]
enum Naming {
    /// A name no file has: one there is an error, never replaced.
    New,
    /// The name of the empty segment it replaces.
    Replace,
}

/// The recovered state of a segment's frames, from `recovery::scan`.
pub(crate) struct Recovered {
    pub point: SyncPoint,
    pub min_timestamp_ms: i64,
    pub index: SparseIndex,
    pub marker: Option<MarkerSlot>,
}

/// A full disk or quota, as the error that says so (`Err` gives any other back).
fn no_space(dir: &Path, error: std::io::Error) -> Result<StorageError, std::io::Error> {
    match error.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Ok(StorageError::NoSpace {
            dir: dir.to_path_buf(),
            source: error,
        }),
        _ => Err(error),
    }
}

impl Segment {
    /// Creates the segment file for `base_offset` in `dir`, durably: header and
    /// preallocation are on disk and the directory knows the name before it returns.
    ///
    /// The file is made as `<name>.creating` and takes its real name only once its header
    /// is synced, so a segment's real name always comes with a whole header: a crash
    /// midway leaves a `.creating` file (opening removes it) or nothing, never a real name
    /// on a torn header, which would look just like a damaged segment. (Another file's
    /// directory sync can make a new name durable before this one syncs its own.)
    pub fn create(
        dir: &Path,
        base_offset: u64,
        capacity: u64,
        index_interval_bytes: u32,
    ) -> Result<Segment, Unmade> {
        Segment::make(dir, base_offset, capacity, index_interval_bytes, Naming::New)
    }

    /// Makes a segment of `capacity` in place of the empty segment `old`, taking its name
    /// in one rename: a crash leaves the old one or the new one, never neither (which
    /// would lose the log's start offset). On an error `old` is as it was.
    pub fn create_in_place_of(
        old: &Segment,
        capacity: u64,
        index_interval_bytes: u32,
    ) -> Result<Segment, Unmade> {
        assert!(old.is_empty(), "only an empty segment is replaced");
        let dir = old
            .path()
            .parent()
            .expect("a segment lives in a partition directory");
        Segment::make(
            dir,
            old.base_offset(),
            capacity,
            index_interval_bytes,
            Naming::Replace,
        )
    }

    fn make(
        dir: &Path,
        base_offset: u64,
        capacity: u64,
        index_interval_bytes: u32,
        naming: Naming,
    ) -> Result<Segment, Unmade> {
        let unmade = |error| Unmade { error, named: false };
        let path = dir.join(layout::segment_file_name(base_offset));
        let creating = dir.join(layout::creating_segment_file_name(base_offset));
        let file = io::create_new(&creating)
            .map_err(|e| {
                no_space(dir, e).unwrap_or_else(|e| StorageError::io("create segment", &creating)(e))
            })
            .map_err(unmade)?;
        let header = SegmentHeader {
            format_version: FORMAT_VERSION,
            base_offset,
            capacity,
            created_ms: layout::now_ms(),
        };
        let made = Segment::write_header(dir, &creating, &file, &header).and_then(|()| {
            match naming {
                Naming::New => io::rename_new(&creating, &path),
                Naming::Replace => io::rename(&creating, &path),
            }
            .map_err(StorageError::io("name new segment", &path))
        });
        if let Err(error) = made {
            // Nothing of it is in use yet: gone, the name is free for the next try (should
            // this fail too, the next open removes it).
            drop(file);
            let _ = io::remove_file(&creating);
            return Err(unmade(error));
        }
        let named = |error| Unmade { error, named: true };
        // A new segment's name is not durable until its directory is, and no record may
        // be acked in a segment that could vanish.
        layout::sync_dir(dir).map_err(named)?;
        let recovered = Recovered {
            point: SyncPoint {
                data_end: SEGMENT_HEADER_BYTES,
                next_offset: base_offset,
                max_timestamp_ms: i64::MIN,
            },
            min_timestamp_ms: i64::MAX,
            index: SparseIndex::new(index_interval_bytes),
            marker: None,
        };
        Segment::map(path, file, header, recovered, Access::Append).map_err(named)
    }

    /// Preallocates a new segment file and writes and syncs its header.
    fn write_header(dir: &Path, path: &Path, file: &File, header: &SegmentHeader) -> Result<()> {
        io::preallocate(file, path, 0, header.capacity).map_err(|error| {
            no_space(dir, error).unwrap_or_else(|e| StorageError::io("preallocate segment", path)(e))
        })?;
        let mut page = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        header.encode(&mut page);
        io::write_at(file, path, 0, &page).map_err(StorageError::io("write segment header", path))?;
        io::sync_data(file, path).map_err(StorageError::io("sync new segment", path))
    }

    /// Where the next frame goes and what the segment holds up to there: the starting
    /// point of a batch being written.
    pub fn pending(&self) -> PendingAppend {
        PendingAppend {
            position: self.data_end,
            next_offset: self.next_offset,
            max_timestamp_ms: self.max_timestamp_ms,
            min_timestamp_ms: self.min_timestamp_ms,
        }
    }

    /// Offers a batch about to be written to the sparse index.
    pub fn index_batch(&mut self, pending: &PendingAppend) {
        self.index.observe(
            pending.next_offset,
            pending.position as u32,
            pending.max_timestamp_ms,
        );
    }

    /// Makes a written batch visible: every frame up to `pending.position` is in the
    /// page cache.
    pub fn commit(&mut self, pending: PendingAppend) {
        debug_assert!(pending.position >= self.data_end && pending.position <= self.mapped_len);
        self.data_end = pending.position;
        self.next_offset = pending.next_offset;
        self.max_timestamp_ms = pending.max_timestamp_ms;
        self.min_timestamp_ms = pending.min_timestamp_ms;
    }

    /// Maps an existing segment whose frames `recovered` describes.
    pub fn map(
        path: PathBuf,
        file: File,
        header: SegmentHeader,
        recovered: Recovered,
        access: Access,
    ) -> Result<Segment> {
        let file_len = file
            .metadata()
            .map_err(StorageError::io("stat segment", &path))?
            .len();
        let mapped_len = match access {
            Access::Append => header.capacity,
            Access::Read => file_len.min(header.capacity),
        };
        assert!(
            mapped_len <= file_len && recovered.point.data_end <= mapped_len,
            "mapping past the end of {} would fault",
            path.display()
        );
        let mut options = MmapOptions::new();
        options.len(mapped_len as usize);
        let map = options
            .map_raw_read_only(&file)
            .map_err(StorageError::io("map segment", &path))?;
        let marker = recovered.marker;
        let sealed = marker.is_some_and(|m| m.sealed);
        let markers = Markers {
            seq: marker.map_or(0, |m| m.seq),
            data_end: marker.map_or(SEGMENT_HEADER_BYTES, |m| m.data_end),
            sealed: marker.is_some_and(|m| m.sealed),
        };
        Ok(Segment {
            file: Arc::new(SegmentFile {
                path,
                file,
                markers: Mutex::new(markers),
            }),
            map,
            mapped_len,
            writable: access == Access::Append,
            header,
            data_end: recovered.point.data_end,
            next_offset: recovered.point.next_offset,
            min_timestamp_ms: recovered.min_timestamp_ms,
            max_timestamp_ms: recovered.point.max_timestamp_ms,
            index: recovered.index,
            sealed,
        })
    }

    pub fn file(&self) -> &Arc<SegmentFile> {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// Bytes of the file mapped (and, for the active segment, writable by pwrite).
    pub fn mapped_len(&self) -> u64 {
        self.mapped_len
    }

    /// Bytes of frames in the segment, header excluded.
    pub fn data_bytes(&self) -> u64 {
        self.data_end - SEGMENT_HEADER_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.next_offset == self.header.base_offset
    }

    /// Largest record timestamp, `i64::MIN` when empty.
    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms
    }

    /// Smallest record timestamp, `i64::MAX` when empty.
    pub fn min_timestamp_ms(&self) -> i64 {
        self.min_timestamp_ms
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Whether this segment takes appends: mapped writable, not sealed, and of the
    /// format this build writes.
    pub fn is_appendable(&self) -> bool {
        self.writable && !self.sealed && self.header.format_version == FORMAT_VERSION
    }

    pub fn format_version(&self) -> u32 {
        self.header.format_version
    }

    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint {
            data_end: self.data_end,
            next_offset: self.next_offset,
            max_timestamp_ms: self.max_timestamp_ms,
        }
    }

    /// Bytes left for frames.
    pub fn room(&self) -> u64 {
        if self.is_appendable() {
            self.header.capacity - self.data_end
        } else {
            0
        }
    }

    /// The written frames, `[0, data_end)` of the file, borrowed from the mapping.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `data_end <= mapped_len`, the mapping lives as long as `self`, and
        // nothing writes below `data_end` (appends need `&mut self` and write above it).
        unsafe { slice::from_raw_parts(self.map.as_ptr(), self.data_end as usize) }
    }

    /// The view of the record at `at`, which must be below `data_end`, and the place of
    /// the next record.
    #[inline]
    pub fn view_at(&self, at: Cursor) -> (RecordView<'_>, Cursor) {
        let bytes = &self.bytes()[at.position..];
        if self.header.format_version == FORMAT_VERSION_FRAMES {
            let header = FrameHeader::read_trusted(bytes);
            let payload = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.payload_len as usize];
            // SAFETY: the caller checked this frame (`check_unit`) just before: its CRC is
            // the one of a frame validated when the segment was recovered or written.
            let view = unsafe { RecordView::new(header.offset, header.timestamp_ms, payload) };
            let next = Cursor {
                position: at.position + header.frame_bytes(),
                index: 0,
            };
            return (view, next);
        }
        let header = BatchHeader::read_trusted(bytes);
        // SAFETY: the caller checked this batch (`check_unit`) on entering it: its CRCs
        // are those of a batch validated when the segment was recovered or written.
        let records = unsafe { record::batch_records(header.body(bytes)) };
        let view = RecordView::batched(
            header.base_offset + u64::from(at.index),
            header.first_timestamp_ms,
            &records[at.index as usize],
        );
        let next = if at.index + 1 < header.record_count {
            Cursor {
                position: at.position,
                index: at.index + 1,
            }
        } else {
            Cursor {
                position: at.position + header.batch_bytes(),
                index: 0,
            }
        };
        (view, next)
    }

    /// The whole unit (batch, or format-1 frame as its record) at `at`, and the place of
    /// the next one.
    pub fn stored_at(&self, at: Cursor) -> (Stored<'_>, Cursor) {
        if self.header.format_version == FORMAT_VERSION_FRAMES {
            let (view, next) = self.view_at(at);
            return (Stored::Frame(view), next);
        }
        let bytes = &self.bytes()[at.position..];
        let header = BatchHeader::read_trusted(bytes);
        let stored = Stored::Batch {
            bytes: &bytes[..header.batch_len as usize],
            base_offset: header.base_offset,
            record_count: header.record_count,
        };
        let next = Cursor {
            position: at.position + header.batch_bytes(),
            index: 0,
        };
        (stored, next)
    }

    /// Checks the unit (batch, or format-1 frame) at `position`, a unit boundary at or
    /// below `data_end` whose first record should be `offset`, against its CRCs again
    /// before a read trusts it: its base offset, record count and length, or why its
    /// bytes are no longer those written and checked there (the disk changed them since,
    /// or something else wrote to the file). `whole`: the batch's body too, for a read
    /// that hands out its records (a CRC over 1000 records of 100 bytes costs about
    /// 6 µs here, 16 GB/s); else its header alone (its length, offsets, epoch), for a
    /// read that walks past it or hands the batch on to a reader that checks it. A
    /// format-1 frame has one CRC over all of it.
    pub fn check_unit(&self, position: usize, offset: u64, whole: bool) -> Result<(u64, u32, usize)> {
        let bytes = &self.bytes()[position.min(self.data_end as usize)..];
        let checked = if self.header.format_version == FORMAT_VERSION_FRAMES {
            format::recheck_frame(bytes).map(|h| (h.offset, 1, h.frame_bytes()))
        } else if whole {
            format::recheck_batch(bytes).map(|h| (h.base_offset, h.record_count, h.batch_bytes()))
        } else {
            format::recheck_batch_header(bytes).map(|h| (h.base_offset, h.record_count, h.batch_bytes()))
        };
        checked.map_err(|defect| StorageError::DamagedOnRead {
            path: self.path().to_path_buf(),
            offset,
            position: position as u64,
            reason: defect.to_string(),
        })
    }

    /// The place of the record `offset`, which must be in this segment: the headers of
    /// the units on the way are checked, and the unit holding it as `whole` says
    /// (`check_unit`), which a read goes on from.
    pub fn position_of(&self, offset: u64, whole: bool) -> Result<Cursor> {
        debug_assert!(offset >= self.base_offset() && offset < self.next_offset);
        let entry = self
            .index
            .floor_offset(offset)
            .expect("a non-empty segment has an index entry for its first record");
        let (mut position, mut at) = (entry.position as usize, entry.offset);
        loop {
            let (base, count, len) = self.check_unit(position, at, false)?;
            if offset < base + u64::from(count) {
                if whole {
                    self.check_unit(position, at, true)?;
                }
                return Ok(Cursor {
                    position,
                    index: (offset - base) as u32,
                });
            }
            position += len;
            at = base + u64::from(count);
        }
    }

    /// Place and offset of the first record with a timestamp at or after
    /// `timestamp_ms`, if this segment has one; each unit on the way is checked.
    pub fn position_at_time(&self, timestamp_ms: i64) -> Result<Option<(Cursor, u64)>> {
        if self.max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let Some(entry) = self.index.floor_time(timestamp_ms) else {
            return Ok(None);
        };
        let data_end = self.data_end as usize;
        let (mut position, mut offset) = (entry.position as usize, entry.offset);
        while position < data_end {
            let (base, count, len) = self.check_unit(position, offset, true)?;
            let mut at = Cursor { position, index: 0 };
            for _ in 0..count {
                let (view, next) = self.view_at(at);
                if view.timestamp_ms() >= timestamp_ms {
                    return Ok(Some((at, view.offset())));
                }
                at = next;
            }
            position += len;
            offset = base + u64::from(count);
        }
        // Every unit checked, and none as late as the segment's largest timestamp: that
        // number, kept since recovery, is what no longer matches the bytes.
        Err(StorageError::DamagedOnRead {
            path: self.path().to_path_buf(),
            offset,
            position: data_end as u64,
            reason: format!(
                "no record holds the segment's largest timestamp {}, which it held when opened",
                self.max_timestamp_ms
            ),
        })
    }

    /// Makes everything written durable (fdatasync) and records it in a marker slot.
    pub fn sync(&self, faults: &crate::storage::faults::SyncFaults) -> std::io::Result<()> {
        self.file.sync(self.sync_point(), faults)
    }

    /// Takes the segment out of appending. Its seal is written by `SegmentFile::seal`,
    /// at once (`every`) or by the syncer (`group`, `none`).
    pub fn close_for_appends(&mut self) {
        self.sealed = true;
    }
}

/// What a segment is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The active segment: mapped to its whole capacity, appended to.
    Append,
    /// A closed segment: the file as it is, read only.
    Read,
}

/// Moves a segment's synced point back to `point` (unsealing it) and zeroes what lies
/// after it up to `old_end`, each step synced: how a log is cut back
/// ([`crate::storage::PartitionLog::truncate`]). The marker goes first: a power cut
/// between the two leaves sound batches past the synced point, which recovery keeps
/// (the cut is asked for again); the other order would leave zeros below a synced point,
/// which recovery refuses as corruption.
pub(crate) fn rewind(path: &Path, point: SyncPoint, old_end: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)?;
    let seq = MarkerSlot::newest(&header).map_or(0, |m| m.seq) + 1;
    let slot = MarkerSlot {
        seq,
        data_end: point.data_end,
        next_offset: point.next_offset,
        max_timestamp_ms: point.max_timestamp_ms,
        sealed: false,
    };
    io::write_at(&file, path, MarkerSlot::position(seq) as u64, &slot.encode())?;
    io::sync_data(&file, path)?;
    let zeros = vec![0u8; 64 * 1024];
    let mut at = point.data_end;
    while at < old_end {
        let n = ((old_end - at) as usize).min(zeros.len());
        io::write_at(&file, path, at, &zeros[..n])?;
        at += n as u64;
    }
    io::sync_data(&file, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::faults::SyncFaults;
    use std::os::unix::fs::FileExt;

    /// The newest marker slot on disk.
    fn newest_marker(segment: &Segment) -> Option<MarkerSlot> {
        let mut page = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        segment.file().file().read_exact_at(&mut page, 0).unwrap();
        MarkerSlot::newest(&page)
    }

    fn point(data_end: u64, next_offset: u64) -> SyncPoint {
        SyncPoint {
            data_end,
            next_offset,
            max_timestamp_ms: 7,
        }
    }

    #[test]
    fn a_new_segment_is_empty_appendable_and_has_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 42, 64 * 1024, 512).unwrap();
        assert_eq!(segment.base_offset(), 42);
        assert_eq!(segment.next_offset(), 42);
        assert_eq!(segment.data_end(), SEGMENT_HEADER_BYTES);
        assert!(segment.is_empty() && segment.is_appendable() && !segment.is_sealed());
        assert_eq!(segment.room(), 64 * 1024 - SEGMENT_HEADER_BYTES);
        assert_eq!(newest_marker(&segment), None);
        assert!(dir.path().join(layout::segment_file_name(42)).exists());
        assert!(layout::list_creating_segments(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_segment_is_never_made_over_one_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(layout::segment_file_name(7));
        std::fs::write(&path, b"an existing segment").unwrap();
        let unmade = Segment::create(dir.path(), 7, 64 * 1024, 512).err().unwrap();
        assert!(!unmade.named, "nothing was named");
        let error = unmade.error;
        assert!(error.to_string().contains("name new segment"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"an existing segment");
        // The half-made one is gone, so a later try is not stopped by it.
        assert!(layout::list_creating_segments(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn markers_alternate_slots_move_only_forward_and_none_follows_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 0, 64 * 1024, 512).unwrap();
        let file = segment.file();
        file.sync(point(5000, 3), &SyncFaults::default()).unwrap();
        let first = newest_marker(&segment).unwrap();
        assert_eq!(
            (first.seq, first.data_end, first.next_offset, first.sealed),
            (1, 5000, 3, false)
        );
        file.write_marker(point(6000, 4), false).unwrap();
        let second = newest_marker(&segment).unwrap();
        assert_eq!((second.seq, second.data_end), (2, 6000));
        assert_ne!(
            MarkerSlot::position(1),
            MarkerSlot::position(2),
            "two slots, taking turns"
        );
        // A late syncer's older point changes nothing.
        file.write_marker(point(5500, 3), false).unwrap();
        assert_eq!(newest_marker(&segment).unwrap().data_end, 6000);
        // The seal at the same point is newer; nothing after it is written.
        file.seal(point(6000, 4), &SyncFaults::default()).unwrap();
        let sealed = newest_marker(&segment).unwrap();
        assert!(sealed.sealed && sealed.data_end == 6000 && sealed.seq == 3);
        file.write_marker(point(9000, 9), false).unwrap();
        assert_eq!(newest_marker(&segment).unwrap(), sealed);
    }

    #[test]
    fn a_failed_fdatasync_writes_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 0, 64 * 1024, 512).unwrap();
        let error = segment
            .file()
            .sync(point(5000, 3), &SyncFaults::fail_after(0))
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO));
        assert_eq!(
            newest_marker(&segment),
            None,
            "no marker claims what may not be on disk"
        );
        let error = segment
            .file()
            .seal(point(5000, 3), &SyncFaults::fail_after(0))
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO));
        assert_eq!(newest_marker(&segment), None);
    }
}
