//! The partition log: an append-only run of segments with dense offsets from its start.
//!
//! One owner appends (`&mut self`); readers borrow (`&self`) and get zero-copy views.
//! Appends take a batch, which is atomic: after a crash either all of it or none of it
//! is there. An append returns once the batch is in the page cache; it is acknowledged
//! (durable in the configured mode) once `durable_offset()` passes it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::storage::batch::CheckedBatch;
use crate::storage::error::{Result, StorageError};
use crate::storage::faults::SyncFaults;
use crate::storage::format::{BatchHeader, FORMAT_VERSION, SEGMENT_HEADER_BYTES};
use crate::storage::io;
use crate::storage::layout::{self, DirLock};
use crate::storage::reader::{self, Batches, DamageNote, Records};
use crate::storage::record::{
    BATCH_OVERHEAD_BYTES, HEADER_NAME_BYTES_MAX, RECORD_HEADERS_MAX, Record, RecordView, Stored,
    header_bytes_bound, stored_bytes_bound,
};
use crate::storage::recovery::{self, Role, ScanStop, Verdict};
use crate::storage::retention::{self, RetentionPolicy, SegmentFacts};
use crate::storage::segment::{self, Access, Cursor, Segment, SyncPoint};
use crate::storage::sync::{Durability, Seal, SyncTracker, Written};
use crate::storage::writer::{self, BatchWriter};

/// Smallest segment size accepted; below it the header would dominate.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest segment size: positions inside a segment are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;

/// The largest frame a log with segments of `segment_bytes` takes by default: 1 MiB,
/// less in small segments (their header and a seal's room take 8 KiB of each).
pub fn record_bytes_max_for(segment_bytes: u64) -> u64 {
    LogOptions::default()
        .max_record_bytes
        .min(segment_bytes.saturating_sub(2 * SEGMENT_HEADER_BYTES))
}

/// The most record bytes (sums of `stored_bytes_bound`) one batch can take in a segment
/// of `segment_bytes`: a batch never spans segments, and its header and root take
/// `BATCH_OVERHEAD_BYTES` of it.
pub fn batch_bytes_max_for(segment_bytes: u64) -> u64 {
    segment_bytes.saturating_sub(SEGMENT_HEADER_BYTES + BATCH_OVERHEAD_BYTES as u64)
}

/// How a partition log behaves.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Preallocated size of each segment file; the log rolls when the next batch would
    /// not fit. A multiple of 4096 between 64 KiB and 2 GiB.
    pub segment_bytes: u64,
    pub durability: Durability,
    /// One sparse-index entry per this many bytes of frames.
    pub index_interval_bytes: u32,
    /// Largest frame (record plus framing) accepted.
    pub max_record_bytes: u64,
    /// `group` mode: an appender waits while this many bytes await an fsync.
    pub unsynced_bytes_max: u64,
    pub retention: RetentionPolicy,
    /// Test seam: make fsync fail.
    pub sync_faults: SyncFaults,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes: 64 << 20,
            durability: Durability::Group,
            index_interval_bytes: 4096,
            max_record_bytes: 1 << 20,
            unsynced_bytes_max: 32 << 20,
            retention: RetentionPolicy::default(),
            sync_faults: SyncFaults::default(),
        }
    }
}

impl LogOptions {
    fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(StorageError::InvalidOptions(msg));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
            || !self.segment_bytes.is_multiple_of(4096)
        {
            return invalid(format!(
                "segment_bytes is {} but must be a multiple of 4096 from {SEGMENT_BYTES_MIN} to {SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        let record_max = self.segment_bytes - 2 * SEGMENT_HEADER_BYTES;
        if self.max_record_bytes == 0 || self.max_record_bytes > record_max {
            return invalid(format!(
                "max_record_bytes is {} but must be from 1 to {record_max} (segment_bytes - 8 KiB)",
                self.max_record_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return invalid("index_interval_bytes must be positive".into());
        }
        if self.unsynced_bytes_max < self.max_record_bytes {
            return invalid(format!(
                "unsynced_bytes_max ({}) must be at least max_record_bytes ({})",
                self.unsynced_bytes_max, self.max_record_bytes
            ));
        }
        Ok(())
    }
}

/// Offsets given to an appended batch: `first_offset..next_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    pub first_offset: u64,
    pub next_offset: u64,
}

/// What recovery found and did when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    /// The last segment's torn tail that was cut, if any.
    pub torn_tail: Option<TornTail>,
    /// Segment files whose making never finished (`.creating`), removed.
    pub unfinished_segments: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Everything from this byte on was cut.
    pub data_end: u64,
    pub stop: Option<ScanStop>,
    /// Valid frames of an atomic batch cut short, dropped with it.
    pub incomplete_batch_frames: u64,
}

/// What one segment of an open log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub base_offset: u64,
    pub next_offset: u64,
    pub data_bytes: u64,
    pub min_timestamp_ms: Option<i64>,
    pub max_timestamp_ms: Option<i64>,
    pub sealed: bool,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: usize,
    pub deleted_records: u64,
    pub deleted_bytes: u64,
    /// The first offset still in the log.
    pub start_offset: u64,
}

pub struct PartitionLog {
    dir: PathBuf,
    options: LogOptions,
    /// Oldest first; the last is the one appended to. Never empty.
    segments: Vec<Segment>,
    tracker: SyncTracker,
    writer: BatchWriter,
    /// Bytes appended since open, for the group-commit backpressure bound.
    bytes_total: u64,
    recovery: RecoveryReport,
    /// `None` once released: another process may open the partition then.
    lock: Option<DirLock>,
    /// `(leader epoch, first offset)` of each run of batches written under one epoch,
    /// oldest first: read from the batches when the log opens, then kept.
    epochs: Vec<(u32, u64)>,
    /// On a replicated partition: how far its replicas agree (the high-water mark);
    /// readers see no further, durable or not. `None`: unreplicated, readers see what
    /// is durable.
    commit_limit: Option<u64>,
    /// The first damage a read met (`damage`): kept until the log is opened again.
    damage: DamageNote,
}

impl PartitionLog {
    /// Opens (creating if needed) the partition log in `dir`, recovering it: every
    /// valid record is kept, a torn tail is cut, and corruption below the last synced
    /// point is refused with an error naming the file and offset.
    pub fn open(dir: &Path, options: LogOptions) -> Result<PartitionLog> {
        options.validate()?;
        io::create_dir_all(dir).map_err(StorageError::io("create partition directory", dir))?;
        let lock = DirLock::acquire(dir)?;
        let (mut segments, recovery) = recover_segments(dir, &options)?;
        if let Some(last) = segments.last_mut()
            && last.format_version() != FORMAT_VERSION
            && !last.is_sealed()
        {
            // A segment of record frames (written by an older flowd) takes no appends:
            // seal it where it ends, as a roll would, and go on in a new one.
            last.file()
                .seal(last.sync_point(), &options.sync_faults)
                .map_err(StorageError::io("seal the old-format segment", last.path()))?;
            last.close_for_appends();
        }
        let needs_new = !segments.last().is_some_and(Segment::is_appendable);
        if needs_new {
            let base = segments.last().map_or(0, Segment::next_offset);
            segments.push(Segment::create(
                dir,
                base,
                options.segment_bytes,
                options.index_interval_bytes,
            )?);
        }
        let active = segments.last().expect("just ensured");
        // What the last run wrote past its last sync survived in the page cache, or it
        // would not be here; sync it before counting it durable.
        active
            .sync(&options.sync_faults)
            .map_err(StorageError::io("sync the recovered last segment", active.path()))?;
        let next_offset = active.next_offset();
        // Recovery synced what it kept, so all of it is durable.
        let tracker = SyncTracker::new(
            options.durability,
            next_offset,
            options.sync_faults.clone(),
            &dir.display().to_string(),
        );
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            options,
            segments,
            tracker,
            writer: BatchWriter::new(),
            bytes_total: 0,
            recovery,
            lock: Some(lock),
            epochs: Vec::new(),
            commit_limit: None,
            damage: DamageNote::default(),
        };
        // Read once now, over batches recovery has just checked: a replica's divergence
        // and an ack's fate rest on every run, so none may be missed by a later read.
        log.epochs = log.read_epochs()?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &LogOptions {
        &self.options
    }

    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The first offset still in the log (retention moves it forward).
    pub fn start_offset(&self) -> u64 {
        self.segments[0].base_offset()
    }

    /// The offset the next appended record gets.
    pub fn next_offset(&self) -> u64 {
        self.active().next_offset()
    }

    /// Offsets below this are durable in the configured mode: they may be acked.
    pub fn durable_offset(&self) -> u64 {
        self.tracker.durable_offset()
    }

    /// Offsets below this may be read: durable, and on a replicated partition held by a
    /// quorum of its replicas too ([`PartitionLog::set_commit_limit`]).
    pub fn committed_offset(&self) -> u64 {
        let durable = self.durable_offset();
        self.commit_limit.map_or(durable, |limit| limit.min(durable))
    }

    /// Where readers stop on a replicated partition, `None` for one that is not.
    pub fn set_commit_limit(&mut self, limit: Option<u64>) {
        self.commit_limit = limit;
    }

    /// Where readers stop on a replicated partition (`set_commit_limit`).
    pub fn commit_limit(&self) -> Option<u64> {
        self.commit_limit
    }

    /// Fails once the partition is poisoned (a write or fsync failed): nothing more
    /// may be acked from it.
    pub fn health(&self) -> Result<()> {
        match self.tracker.poisoned() {
            Some(cause) => Err(self.poisoned_error(cause)),
            None => Ok(()),
        }
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment (one released is never used again)")
    }

    /// Poisons the partition after a failed write or sync of `path`, and returns the
    /// error to give the caller.
    fn fail(&self, what: &str, path: &Path, error: std::io::Error) -> StorageError {
        let cause = format!("{what} {} failed: {error}", path.display());
        self.tracker.poison(cause.clone());
        self.poisoned_error(cause)
    }

    /// A segment not made: its error when nothing changed; once its name was given (the
    /// directory sync after failed), what the directory holds is unknown, perhaps the
    /// new file in place of the active segment: poisoned, nothing more is written.
    fn unmade(&self, unmade: segment::Unmade) -> StorageError {
        if !unmade.named {
            return unmade.error;
        }
        let cause = format!("making a segment after naming it failed: {}", unmade.error);
        self.tracker.poison(cause.clone());
        self.poisoned_error(cause)
    }

    fn poisoned_error(&self, cause: String) -> StorageError {
        StorageError::Poisoned {
            dir: self.dir.clone(),
            cause,
        }
    }

    /// Appends a batch atomically and returns its offsets once it is written (visible to
    /// readers). In `every` mode it is also durable then; in `group` mode wait with
    /// `wait_durable(receipt.next_offset)` before acking; in `none` mode written is acked.
    pub fn append(&mut self, records: &[Record<'_>]) -> Result<AppendReceipt> {
        if records.is_empty() {
            self.check_health()?;
            let next_offset = self.next_offset();
            return Ok(AppendReceipt {
                first_offset: next_offset,
                next_offset,
            });
        }
        for record in records {
            let longest = record.headers.iter().map(|h| h.name.len()).max();
            self.check_record(record.headers.len(), longest, record.stored_len_max())?;
        }
        let bytes = writer::batch_bytes_bound(records) as u64;
        let epoch = self.writer.leader_epoch;
        self.write(bytes, |writer, segment| writer.append_batch(segment, records))
            .inspect(|receipt| self.note_epoch(epoch, receipt.first_offset))
    }

    /// Appends a batch made elsewhere (a client's), as it came but for its base offset
    /// and leader epoch, atomically; otherwise as `append`.
    pub fn append_checked(&mut self, batch: &mut CheckedBatch) -> Result<AppendReceipt> {
        let epoch = self.writer.leader_epoch;
        self.append_stamped(batch, epoch)
    }

    /// Appends a batch of the partition's leader on a replica: at the offset the leader
    /// gave it (which must be where this copy ends) and with the leader's epoch, so that
    /// the copy holds the same batches at the same offsets.
    pub fn append_replica(&mut self, batch: &mut CheckedBatch) -> Result<AppendReceipt> {
        let header = *batch.header();
        let expected = self.next_offset();
        if header.base_offset != expected {
            return Err(StorageError::ReplicaGap {
                expected,
                got: header.base_offset,
            });
        }
        self.append_stamped(batch, header.leader_epoch)
    }

    /// The leader epoch stamped on what is appended from now on (0: unreplicated).
    pub fn set_leader_epoch(&mut self, epoch: u32) {
        self.writer.leader_epoch = epoch;
    }

    /// `(leader epoch, first offset)` of each run of batches written under one epoch.
    pub fn epochs(&self) -> &[(u32, u64)] {
        &self.epochs
    }

    /// The runs of epochs, read from every batch (each checked as it is read).
    fn read_epochs(&self) -> Result<Vec<(u32, u64)>> {
        let mut epochs: Vec<(u32, u64)> = Vec::new();
        let mut batches = self.read_batches(0, u64::MAX);
        for stored in batches.by_ref() {
            let (epoch, first) = match stored {
                Stored::Batch {
                    bytes, base_offset, ..
                } => (BatchHeader::read_trusted(bytes).leader_epoch, base_offset),
                // A format-1 record: written before epochs existed.
                Stored::Frame(view) => (0, view.offset()),
            };
            if epochs.last().is_none_or(|last| last.0 != epoch) {
                epochs.push((epoch, first));
            }
        }
        batches.end()?;
        Ok(epochs)
    }

    /// The epoch of the last batch (0 for an empty log or one never replicated).
    pub fn last_epoch(&self) -> u32 {
        self.epochs().last().map_or(0, |e| e.0)
    }

    /// Where this log's records of epochs up to `epoch` end (Kafka's
    /// OffsetsForLeaderEpoch): the largest epoch it holds that is at most `epoch`, and
    /// the offset where the next epoch begins (or the log's end). A replica whose copy
    /// goes past that offset diverged there and cuts its copy back to it.
    pub fn epoch_end(&self, epoch: u32) -> (u32, u64) {
        let next_offset = self.next_offset();
        let epochs = self.epochs();
        match epochs.iter().rposition(|e| e.0 <= epoch) {
            Some(i) => (epochs[i].0, epochs.get(i + 1).map_or(next_offset, |e| e.1)),
            None => (0, epochs.first().map_or(next_offset, |e| e.1)),
        }
    }

    fn note_epoch(&mut self, epoch: u32, first: u64) {
        if self.epochs.last().is_none_or(|last| last.0 != epoch) {
            self.epochs.push((epoch, first));
        }
    }

    fn append_stamped(&mut self, batch: &mut CheckedBatch, epoch: u32) -> Result<AppendReceipt> {
        for view in batch.records() {
            let longest = view.headers().map(|(name, _)| name.len()).max();
            let headers: usize = view
                .headers()
                .map(|(name, value)| header_bytes_bound(name.len(), value.len()))
                .sum();
            let bytes = stored_bytes_bound(view.key().map(<[u8]>::len), view.value().len(), headers);
            self.check_record(view.headers().len(), longest, bytes)?;
        }
        let bytes = batch.stored_bytes() as u64;
        self.write(bytes, |_, segment| {
            let header = *batch.header();
            let facts = (
                header.record_count,
                batch.min_timestamp_ms(),
                header.max_timestamp_ms,
            );
            writer::write_at_end(segment, batch.stamp(segment.next_offset(), epoch), facts)
        })
        .inspect(|receipt| self.note_epoch(epoch, receipt.first_offset))
    }

    fn check_health(&self) -> Result<()> {
        match self.tracker.poisoned() {
            Some(cause) => Err(self.poisoned_error(cause)),
            None => Ok(()),
        }
    }

    /// Checks one record of a batch against the log's limits.
    fn check_record(&self, headers: usize, longest_name: Option<usize>, stored_bytes: usize) -> Result<()> {
        if headers > RECORD_HEADERS_MAX {
            return Err(StorageError::TooManyHeaders {
                count: headers,
                max: RECORD_HEADERS_MAX,
            });
        }
        if let Some(len) = longest_name.filter(|len| *len > HEADER_NAME_BYTES_MAX) {
            return Err(StorageError::HeaderNameTooLong {
                len,
                max: HEADER_NAME_BYTES_MAX,
            });
        }
        if stored_bytes as u64 > self.options.max_record_bytes {
            return Err(StorageError::RecordTooLarge {
                bytes: stored_bytes as u64,
                max: self.options.max_record_bytes,
            });
        }
        Ok(())
    }

    /// Writes a batch of at most `batch_bytes` with `write` into the active segment (a
    /// new one if it lacks room) and does the acknowledgement work of the mode.
    fn write(
        &mut self,
        batch_bytes: u64,
        write: impl FnOnce(&mut BatchWriter, &mut Segment) -> std::io::Result<()>,
    ) -> Result<AppendReceipt> {
        self.check_health()?;
        let capacity = batch_bytes_max_for(self.options.segment_bytes) + BATCH_OVERHEAD_BYTES as u64;
        if batch_bytes > capacity {
            return Err(StorageError::BatchTooLarge {
                bytes: batch_bytes,
                capacity,
            });
        }
        if batch_bytes > self.active().room() {
            self.roll(batch_bytes)?;
        }
        let first_offset = self.next_offset();
        let active = self
            .segments
            .last_mut()
            .expect("a log always has an active segment");
        let data_end_before = active.data_end();
        if let Err(error) = write(&mut self.writer, active) {
            // What reached the file is unknown; nothing of this batch was made visible.
            let path = active.path().to_path_buf();
            return Err(self.fail("writing to", &path, error));
        }
        self.bytes_total += self.active().data_end() - data_end_before;
        self.make_durable()?;
        Ok(AppendReceipt {
            first_offset,
            next_offset: self.next_offset(),
        })
    }

    /// Starts a new segment with room for `batch_bytes` and seals the active one. The new
    /// one is made first: when it cannot be (a full disk), the log is as it was, still
    /// appendable (a batch that fits the active segment, or any once space is freed).
    fn roll(&mut self, batch_bytes: u64) -> Result<()> {
        let (base, empty) = {
            let active = self.active();
            (active.next_offset(), active.is_empty())
        };
        if empty {
            // An empty segment too small for the batch (made with a smaller
            // segment_bytes): a bigger one takes its place and its name in one rename, so
            // a crash leaves one or the other, never no segment (which would lose the
            // log's start offset). If it cannot be made, the log is as it was.
            let segment = Segment::create_in_place_of(
                self.active(),
                self.options.segment_bytes,
                self.options.index_interval_bytes,
            )
            .map_err(|unmade| self.unmade(unmade))?;
            let active = self
                .segments
                .last_mut()
                .expect("a log always has an active segment");
            *active = segment;
            return Ok(());
        }
        let segment = Segment::create(
            &self.dir,
            base,
            self.options.segment_bytes,
            self.options.index_interval_bytes,
        )
        .map_err(|unmade| self.unmade(unmade))?;
        debug_assert!(batch_bytes <= segment.room());
        let active = self
            .segments
            .last_mut()
            .expect("a log always has an active segment");
        active.close_for_appends();
        let seal = Seal {
            file: Arc::clone(active.file()),
            point: active.sync_point(),
            bytes_total: self.bytes_total,
        };
        self.segments.push(segment);
        self.seal(seal)
    }

    /// Seals a segment rolled away from: at once in `every` mode, where each ack waits
    /// for the disk anyway, otherwise on the syncer, off the append path.
    fn seal(&self, seal: Seal) -> Result<()> {
        if self.options.durability != Durability::Every {
            return self
                .tracker
                .seal_in_background(seal)
                .map_err(|cause| self.poisoned_error(cause));
        }
        if let Err(error) = seal.file.seal(seal.point, self.tracker.faults()) {
            return Err(self.fail("sealing", seal.file.path(), error));
        }
        self.tracker
            .mark_durable(seal.point.next_offset, seal.bytes_total);
        Ok(())
    }

    /// Acknowledgement work after a write, by durability mode.
    fn make_durable(&mut self) -> Result<()> {
        let active = self.active();
        let next_offset = active.next_offset();
        match self.options.durability {
            Durability::None => {
                self.tracker.mark_written_durable(next_offset);
                Ok(())
            }
            Durability::Every => match active.sync(self.tracker.faults()) {
                Ok(()) => {
                    self.tracker.mark_durable(next_offset, self.bytes_total);
                    Ok(())
                }
                Err(error) => Err(self.fail("fdatasync of", active.path(), error)),
            },
            Durability::Group => {
                let written = Written {
                    file: active.file().clone(),
                    point: active.sync_point(),
                    bytes_total: self.bytes_total,
                };
                self.tracker
                    .publish(written, self.options.unsynced_bytes_max)
                    .map_err(|cause| self.poisoned_error(cause))
            }
        }
    }

    /// Blocks until every offset below `next_offset` is durable. Fails when the
    /// partition is poisoned: those records must not be acked.
    pub fn wait_durable(&self, next_offset: u64) -> Result<()> {
        self.tracker
            .wait_durable(next_offset)
            .map_err(|cause| self.poisoned_error(cause))
    }

    /// Makes everything appended so far durable now, whatever the mode.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(cause) = self.tracker.poisoned() {
            return Err(self.poisoned_error(cause));
        }
        match self.options.durability {
            Durability::Group => self.wait_durable(self.next_offset()),
            Durability::Every | Durability::None => {
                let active = self.active();
                active
                    .sync(self.tracker.faults())
                    .map_err(|error| self.fail("fdatasync of", active.path(), error))?;
                self.tracker.mark_durable(active.next_offset(), self.bytes_total);
                Ok(())
            }
        }
    }

    /// Syncs and closes the log. Dropping it instead leaves unsynced `none`-mode writes
    /// to the kernel, which still survive a process exit.
    pub fn close(mut self) -> Result<()> {
        self.release()
    }

    /// Syncs the log, stops its syncer, and lets go of its files and its lock, where it
    /// stands: for an owner that cannot drop it (a shard whose tasks outlive their
    /// executor). The log must not be used afterwards.
    pub fn release(&mut self) -> Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        let synced = self.sync();
        self.tracker.shutdown();
        self.segments.clear();
        self.lock = None;
        synced
    }

    /// Cuts the log back to `offset`, which must begin a batch: every record from
    /// `offset` on is gone, durably, when it returns, and appends go on from there. What
    /// a replica does with records its partition's leader does not hold. On disk: the
    /// later segments are removed, the marker of the one holding `offset` moves back to
    /// it and the bytes after are zeroed (`segment::rewind`), then the log is opened
    /// again, so recovery checks what is left.
    pub fn truncate(&mut self, offset: u64) -> Result<()> {
        if offset >= self.next_offset() {
            return Ok(());
        }
        let fail = |reason: String| StorageError::Truncate {
            dir: self.dir.clone(),
            offset,
            reason,
        };
        if offset < self.start_offset() {
            return Err(fail(format!(
                "retention deleted the records before {}",
                self.start_offset()
            )));
        }
        let index = self.segment_index_of(offset);
        let segment = &self.segments[index];
        let at = segment.position_of(offset, false)?;
        if at.index != 0 {
            return Err(fail("it falls inside a batch".into()));
        }
        // The log is opened again below, and recovery checks every batch it keeps: one
        // damaged since it was checked, in an earlier segment too, would fail that open
        // with the log already let go. So all that stays is read first (the cut
        // segment's records giving its newest time): damage refuses the cut, leaves the
        // log as it was, and is noted (and told) as any read's is.
        let base = segment.base_offset();
        let mut kept = self.read_range(self.start_offset(), offset);
        let max_timestamp_ms = kept
            .by_ref()
            .filter(|r| r.offset() >= base)
            .map(|r| r.timestamp_ms())
            .max()
            .unwrap_or(i64::MIN);
        if let Some(damage) = kept.damage() {
            return Err(fail(damage.to_string()));
        }
        let point = SyncPoint {
            data_end: at.position as u64,
            next_offset: offset,
            max_timestamp_ms,
        };
        let old_end = segment.data_end();
        let path = segment.path().to_path_buf();
        let later: Vec<PathBuf> = self.segments[index + 1..]
            .iter()
            .map(|s| s.path().to_path_buf())
            .collect();
        self.reopen_after(|dir, _| {
            for path in later.iter().rev() {
                io::remove_file(path).map_err(StorageError::io("remove a segment past the cut", path))?;
            }
            io::sync_dir(dir).map_err(StorageError::io("sync the partition directory", dir))?;
            segment::rewind(&path, point, old_end).map_err(StorageError::io("cut back the segment", &path))
        })?;
        self.commit_limit = self.commit_limit.map(|l| l.min(offset));
        Ok(())
    }

    /// Lets go of the log's files, has `change` change them, and opens the log again, so
    /// that recovery checks what is left; its leader epoch, commit limit and whom it
    /// tells of damage stay. The log must not be used if this fails; damage found by
    /// the open is told, as a read's is.
    fn reopen_after(&mut self, change: impl FnOnce(&Path, &LogOptions) -> Result<()>) -> Result<()> {
        let (dir, options, epoch, limit) = (
            self.dir.clone(),
            self.options.clone(),
            self.writer.leader_epoch,
            self.commit_limit,
        );
        self.release()?;
        change(&dir, &options)?;
        let mut log = PartitionLog::open(&dir, options).inspect_err(|error| {
            if error.is_corruption() {
                reader::note_damage(&self.damage, error);
            }
        })?;
        log.writer.leader_epoch = epoch;
        log.commit_limit = limit;
        log.damage.carry_on(&mut self.damage);
        *self = log;
        Ok(())
    }

    /// Drops every record and starts the log again, empty, at `offset`, past its end:
    /// what a replica does when its leader's log begins past where this copy ends
    /// (retention deleted the records between on the leader), so that it copies on
    /// from there. Nothing it drops could be read from the leader any more. On disk:
    /// the segments are removed oldest first, as retention does (a power cut leaves a
    /// later part of the log, or none, which opens empty at 0: the replica is told
    /// again where its leader's log begins), then an empty segment is made at `offset`.
    pub fn restart_at(&mut self, offset: u64) -> Result<()> {
        let end = self.next_offset();
        if offset == end && self.start_offset() == end {
            return Ok(());
        }
        if offset <= end {
            return Err(StorageError::Restart {
                dir: self.dir.clone(),
                offset,
                end,
            });
        }
        let paths: Vec<PathBuf> = self.segments.iter().map(|s| s.path().to_path_buf()).collect();
        self.reopen_after(|dir, options| {
            for path in &paths {
                io::remove_file(path)
                    .map_err(StorageError::io("remove a segment before the new start", path))?;
            }
            layout::sync_dir(dir)?;
            Segment::create(dir, offset, options.segment_bytes, options.index_interval_bytes)
                .map(drop)
                .map_err(StorageError::from)
        })
    }

    /// Records from `from_offset` (or the start, if it was deleted) to the end of what
    /// is written. In `group` mode that includes records not yet durable; a reader that
    /// must only see acknowledged records reads up to `durable_offset()` with
    /// `read_range`.
    pub fn read(&self, from_offset: u64) -> Records<'_> {
        self.read_range(from_offset, u64::MAX)
    }

    /// Records from `from_offset` (or the start) up to the durable point: only what a
    /// power loss cannot take back. Whatever acts on what it reads (stages, consumers,
    /// fetches, copies to other peers) reads this way, so nothing downstream ever rests
    /// on a record recovery may cut.
    pub fn read_committed(&self, from_offset: u64) -> Records<'_> {
        self.read_range(from_offset, self.committed_offset())
    }

    /// Records from `from_offset` (or the start) up to, not including, `until_offset`.
    pub fn read_range(&self, from_offset: u64, until_offset: u64) -> Records<'_> {
        let from = from_offset.max(self.start_offset());
        if from >= self.next_offset() {
            return Records::empty();
        }
        let segment = self.segment_index_of(from);
        match self.segments[segment].position_of(from, true) {
            Ok(at) => Records::new(&self.segments, segment, at, from, until_offset, &self.damage),
            Err(damage) => Records::damaged(damage, &self.damage),
        }
    }

    /// The stored batches holding the records from `from_offset` (or the start) to the
    /// durable point, whole: the first may begin before `from_offset`, and a batch past
    /// the durable point is not included. What a fetch sends on as it is.
    pub fn read_committed_batches(&self, from_offset: u64) -> Batches<'_> {
        self.read_batches(from_offset, self.committed_offset())
    }

    /// The stored batches holding the records from `from_offset` (or the start) up to
    /// `until_offset`, whole: what a leader sends its replicas (durable or not yet).
    pub fn read_batches(&self, from_offset: u64, until_offset: u64) -> Batches<'_> {
        let from = from_offset.max(self.start_offset());
        let until = until_offset;
        if from >= self.next_offset() || from >= until {
            return Batches::empty();
        }
        let segment = self.segment_index_of(from);
        match self.segments[segment].position_of(from, false) {
            Ok(at) => Batches::new(&self.segments, segment, at, from, until, &self.damage),
            Err(damage) => Batches::damaged(damage, &self.damage),
        }
    }

    /// The record at `offset`, if the log holds it and it can be read.
    pub fn get(&self, offset: u64) -> Option<RecordView<'_>> {
        if offset < self.start_offset() {
            return None;
        }
        self.read_range(offset, offset + 1).next()
    }

    /// Why `get(offset)` gave nothing: retention deleted the record, a read met damage
    /// at or before it (`damage`), or it is not written yet.
    pub fn why_not_held(&self, offset: u64) -> String {
        match self.damage() {
            _ if offset < self.start_offset() => "retention deleted it".into(),
            Some(damage) if offset < self.next_offset() => format!("it cannot be read: {damage}"),
            _ => format!("the log ends at offset {}", self.next_offset()),
        }
    }

    /// The offset of the first record whose timestamp is at or after `timestamp_ms`,
    /// if one is; an error if a batch on the way failed its check (`damage`).
    pub fn offset_at_time(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        self.place_at_time(timestamp_ms)
            .map(|found| found.map(|(_, _, offset)| offset))
    }

    /// Records from the first one with a timestamp at or after `timestamp_ms`.
    pub fn read_from_time(&self, timestamp_ms: i64) -> Records<'_> {
        match self.place_at_time(timestamp_ms) {
            Ok(Some((segment, at, offset))) => {
                Records::new(&self.segments, segment, at, offset, u64::MAX, &self.damage)
            }
            Ok(None) => Records::empty(),
            Err(damage) => Records::damaged(damage, &self.damage),
        }
    }

    /// Segment, place and offset of the first record with a timestamp at or after
    /// `timestamp_ms`: a linear pass over segments (retention keeps them to hundreds),
    /// then an index search and a walk of at most one index interval.
    fn place_at_time(&self, timestamp_ms: i64) -> Result<Option<(usize, Cursor, u64)>> {
        for (i, segment) in self.segments.iter().enumerate() {
            let found = segment
                .position_at_time(timestamp_ms)
                .inspect_err(|damage| reader::note_damage(&self.damage, damage))?;
            if let Some((at, offset)) = found {
                return Ok(Some((i, at, offset)));
            }
        }
        Ok(None)
    }

    /// What the first read that met damage said, if one did since the log was opened:
    /// a batch below the end no longer matches its CRCs, and reads stop before it
    /// (`StorageError::DamagedOnRead` says what to do).
    pub fn damage(&self) -> Option<&str> {
        self.damage.get()
    }

    /// Has `tell` called, once, with the message of the first damage a read of this log
    /// meets (on the reading thread, after the log said it): what the owner does about
    /// it (a replicated copy's peer stops, so that whole copies lead).
    pub fn on_damage(&mut self, tell: impl Fn(&str) + Send + Sync + 'static) {
        self.damage.tell(Box::new(tell));
    }

    /// Index of the segment holding `offset`, which must be in the log.
    fn segment_index_of(&self, offset: u64) -> usize {
        self.segments.partition_point(|s| s.base_offset() <= offset) - 1
    }

    /// How many segment files the log has; it grows by one when an append rolls.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .iter()
            .map(|s| SegmentInfo {
                path: s.path().to_path_buf(),
                base_offset: s.base_offset(),
                next_offset: s.next_offset(),
                data_bytes: s.data_bytes(),
                min_timestamp_ms: (!s.is_empty()).then(|| s.min_timestamp_ms()),
                max_timestamp_ms: (!s.is_empty()).then(|| s.max_timestamp_ms()),
                sealed: s.is_sealed(),
            })
            .collect()
    }

    /// Deletes the oldest closed segments that the retention policy no longer keeps.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<RetentionReport> {
        let facts: Vec<SegmentFacts> = self
            .segments
            .iter()
            .map(|s| SegmentFacts {
                max_timestamp_ms: s.max_timestamp_ms(),
                data_bytes: s.data_bytes(),
            })
            .collect();
        let count = retention::segments_to_delete(&facts, self.options.retention, now_ms);
        self.delete_oldest(count)
    }

    /// Deletes the closed segments that hold only offsets below `offset`: for logs that
    /// keep their own snapshots, once a snapshot at `offset` makes the rest obsolete.
    pub fn delete_below(&mut self, offset: u64) -> Result<RetentionReport> {
        let last = self.segments.len().saturating_sub(1);
        let count = self.segments[..last]
            .iter()
            .take_while(|s| s.next_offset() <= offset)
            .count();
        self.delete_oldest(count)
    }

    fn delete_oldest(&mut self, count: usize) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        for segment in self.segments.drain(..count) {
            report.deleted_segments += 1;
            report.deleted_records += segment.next_offset() - segment.base_offset();
            report.deleted_bytes += segment.data_bytes();
            io::remove_file(segment.path())
                .map_err(StorageError::io("delete expired segment", segment.path()))?;
        }
        if count > 0 {
            layout::sync_dir(&self.dir)?;
            self.forget_epochs_before_start();
        }
        report.start_offset = self.start_offset();
        Ok(report)
    }

    /// Keeps the known epoch runs to what the log still holds, as reading it again would
    /// find them: a run is known from its first offset still here. A replica asking for
    /// an epoch older than any left is then told the log's start, not an offset retention
    /// deleted (which it could not cut back to).
    fn forget_epochs_before_start(&mut self) {
        let (start, next) = (self.start_offset(), self.next_offset());
        let epochs = &mut self.epochs;
        let first_kept = epochs.iter().rposition(|e| e.1 <= start).unwrap_or(0);
        epochs.drain(..first_kept);
        match epochs.first_mut() {
            Some(first) if start < next => first.1 = first.1.max(start),
            _ => epochs.clear(),
        }
    }
}

/// Opens every segment file of `dir` in order, judging and mending as recovery says.
fn recover_segments(dir: &Path, options: &LogOptions) -> Result<(Vec<Segment>, RecoveryReport)> {
    let mut report = RecoveryReport {
        unfinished_segments: recovery::remove_unfinished(dir)?,
        ..RecoveryReport::default()
    };
    let files = layout::list_segments(dir)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(files.len());
    for (i, (base, path)) in files.iter().enumerate() {
        let role = match files.get(i + 1) {
            Some((next_base_offset, _)) => Role::Closed {
                next_base_offset: *next_base_offset,
            },
            None => Role::Last,
        };
        if let Some(previous) = segments.last()
            && previous.next_offset() != *base
        {
            return Err(StorageError::CorruptSegment {
                path: path.clone(),
                reason: format!(
                    "it starts at offset {base} but the segment before ends at {}: a segment is missing",
                    previous.next_offset()
                ),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StorageError::io("open segment", path))?;
        let check = recovery::check_segment(path, &file, options.index_interval_bytes)?;
        let verdict = recovery::judge(&check, *base, role)?;
        let Ok(header) = check.header else {
            unreachable!("judge passes only segments with a valid header")
        };
        if let Verdict::TornTail {
            data_end,
            stop,
            incomplete_batch_frames,
        } = verdict
        {
            report.torn_tail = Some(TornTail {
                segment: path.clone(),
                data_end,
                stop,
                incomplete_batch_frames,
            });
        }
        let cut_later = role != Role::Last && matches!(verdict, Verdict::TornTail { .. });
        if cut_later {
            recovery::remove_after_torn(path, &files[i + 1..])?;
        }
        let sealed = check.marker.is_some_and(|m| m.sealed);
        let access = if (role == Role::Last || cut_later) && !sealed {
            // Reset everything past the kept data to zeros: stale bytes past the tail
            // must never line up with frames appended later.
            let data_end = check
                .scan
                .as_ref()
                .expect("sound segments are scanned")
                .end
                .data_end;
            recovery::repair_tail(path, &file, data_end, header.capacity)?;
            Access::Append
        } else {
            Access::Read
        };
        let recovered = recovery::recovered(check);
        report.records += recovered.point.next_offset - header.base_offset;
        let mut segment = Segment::map(path.clone(), file, header, recovered, access)?;
        if role != Role::Last && !cut_later && !sealed {
            // Whole but never sealed: the process stopped right after rolling away from
            // it, so its last records may be in the page cache only. Seal it now, before
            // anything it holds is served as durable.
            segment
                .file()
                .seal(segment.sync_point(), &options.sync_faults)
                .map_err(StorageError::io("seal a segment left unsealed", path))?;
            segment.close_for_appends();
        }
        segments.push(segment);
        if cut_later {
            break;
        }
    }
    report.segments = segments.len();
    Ok((segments, report))
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;
    use crate::storage::Record;

    fn options(segment_bytes: u64) -> LogOptions {
        LogOptions {
            segment_bytes,
            durability: Durability::Every,
            max_record_bytes: 16 * 1024,
            unsynced_bytes_max: 256 * 1024,
            ..LogOptions::default()
        }
    }

    /// Appends 10 KB records one at a time until one fails (bounded); that error.
    fn append_until_refused(log: &mut PartitionLog) -> StorageError {
        let value = vec![7u8; 10 * 1024];
        for _ in 0..100 {
            if let Err(error) = log.append(&[Record::new(1, &value)]) {
                return error;
            }
        }
        panic!("100 records of 10 KB went into 64 KiB segments without a roll");
    }

    #[test]
    fn a_segment_named_but_not_made_durable_poisons_its_log() {
        // Only the directory sync after the rename fails: the directory may hold the
        // new segment (for a replaced empty one, in its place), so nothing more may be
        // written to the log, whose active segment it may no longer name.
        let root = tempfile::tempdir().unwrap();
        let marker = root.path().file_name().unwrap().to_str().unwrap().to_owned();
        let rolled = root.path().join("rolled");
        let replaced = root.path().join("replaced");
        let mut log = PartitionLog::open(&rolled, options(64 * 1024)).unwrap();
        PartitionLog::open(&replaced, options(64 * 1024))
            .unwrap()
            .close()
            .unwrap();
        let mut bigger = PartitionLog::open(&replaced, options(1 << 20)).unwrap();
        fail::cfg("dir-fsync", &format!("return({marker})")).unwrap();
        let roll = append_until_refused(&mut log);
        // An empty 64 KiB segment, a batch of five 15 KB records: replaced, not sealed.
        let value = vec![7u8; 15 * 1024];
        let batch: Vec<Record> = (0..5).map(|_| Record::new(1, &value)).collect();
        let replace = bigger.append(&batch).unwrap_err();
        fail::remove("dir-fsync");
        for (what, error, log) in [
            ("a roll", roll, &mut log),
            ("a replacement", replace, &mut bigger),
        ] {
            assert!(matches!(error, StorageError::Poisoned { .. }), "{what}: {error}");
            assert!(error.to_string().contains("after naming it"), "{what}: {error}");
            let again = log.append(&[Record::new(1, b"later")]).unwrap_err();
            assert!(matches!(again, StorageError::Poisoned { .. }), "{what}: {again}");
        }
        drop((log, bigger));
        // Reopened, each holds what it acked, and takes appends again.
        let log = PartitionLog::open(&rolled, options(64 * 1024)).unwrap();
        assert!(
            log.next_offset() >= 5,
            "the acked records are there: {}",
            log.next_offset()
        );
        let mut bigger = PartitionLog::open(&replaced, options(1 << 20)).unwrap();
        assert_eq!(bigger.next_offset(), 0);
        bigger.append(&batch).unwrap();
    }
}
