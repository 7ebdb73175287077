//! `StorageError`: every way the storage layer fails, each with what to do about it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "corrupt segment {}: the batch at byte {position}, holding records from offset {offset}: {reason}; \
         this data was synced before, so it is damaged on disk, not torn by a crash. \
         Restore the partition from a backup or replica; or, accepting the loss of this \
         segment's records and all later ones, move those segment files out of the directory",
        path.display()
    )]
    CorruptFrame {
        path: PathBuf,
        offset: u64,
        position: u64,
        reason: String,
    },

    #[error(
        "corrupt segment {}: {reason}. Restore the partition from a backup or replica, or \
         move this segment away if the records it held may be lost",
        path.display()
    )]
    CorruptSegment { path: PathBuf, reason: String },

    #[error(
        "damaged segment {}: the batch at byte {position}, holding records from offset {offset}, \
         is no longer what was written and checked there ({reason}): the disk, or something \
         writing to the file, changed it since. Reads of this partition stop before it until \
         flowd restarts: \
         restarted, a replicated partition's copy is set aside and copied again from its \
         replicas; one with a single copy refuses to start, naming the segment (`flowd inspect` \
         shows it), to be restored from a backup",
        path.display()
    )]
    DamagedOnRead {
        path: PathBuf,
        /// The first offset the damaged batch holds.
        offset: u64,
        position: u64,
        reason: String,
    },

    #[error(
        "partition {} is poisoned: an fsync failed ({cause}), so what reached the disk is \
         unknown and nothing more is acknowledged. Check the disk (dmesg, free space), then \
         restart flowd: recovery keeps every record that did reach it",
        dir.display()
    )]
    Poisoned { dir: PathBuf, cause: String },

    #[error(
        "a record of about {bytes} bytes is over this partition's limit of {max} bytes; \
         send a smaller record or raise max_record_bytes (at most segment_bytes - 8 KiB)"
    )]
    RecordTooLarge { bytes: u64, max: u64 },

    #[error(
        "a batch of about {bytes} bytes does not fit in one segment of {capacity} bytes, and a \
         batch is only atomic within a segment; send smaller batches or raise segment_bytes"
    )]
    BatchTooLarge { bytes: u64, capacity: u64 },

    #[error("a record has {count} headers; at most {max} are allowed")]
    TooManyHeaders { count: usize, max: usize },

    #[error("a header name of {len} bytes is over the limit of {max} bytes")]
    HeaderNameTooLong { len: usize, max: usize },

    #[error(
        "a replica's batch starts at offset {got} but this copy of the partition ends at {expected}: \
         it is appended only where it continues the copy (fetch again from {expected})"
    )]
    ReplicaGap { expected: u64, got: u64 },
    #[error(
        "cannot cut partition {} back to offset {offset}: {reason}; move the partition's directory away \
         to have it copied whole from its leader", dir.display()
    )]
    Truncate {
        dir: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "cannot start partition {} again at offset {offset}: it holds records up to {end}, and only a \
         copy that ends before its leader's log begins starts again (a bug if seen)", dir.display()
    )]
    Restart { dir: PathBuf, offset: u64, end: u64 },
    #[error("invalid storage option: {0}")]
    InvalidOptions(String),
    #[error(
        "the disk of {} is full ({source}): no new segment fits, so this partition takes no \
         more writes until space is freed (retention, a bigger disk); what it holds reads on",
        dir.display()
    )]
    NoSpace {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { action, path, source }
    }

    /// True when the disk (or the quota) is full: the log is unchanged and appendable
    /// again once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::NoSpace { .. })
    }

    /// True when the data on disk is damaged (as opposed to an I/O or usage failure).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StorageError::CorruptFrame { .. }
                | StorageError::CorruptSegment { .. }
                | StorageError::DamagedOnRead { .. }
        )
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
