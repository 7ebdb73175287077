//! The storage core: durable, zero-copy, recoverable partition logs.
//!
//! Codemap: `format` (bytes on disk) → `record` (what is archived) → `segment` (one
//! mapped file) → `recovery` (scan, judge, mend) → `log` (a partition: segments, appends,
//! reads, retention) with `writer` (records to a batch, pwrite), `batch` (a batch made elsewhere, checked), `sync` (durability
//! modes, group commit, sealing) and `index` (seeks).
//! `layout` names files and directories; `inspect` reports on a data dir offline; `io`
//! is every call that changes a data dir, `powercut` records them for the power-cut
//! simulator and `faults` holds the fail points tests set.

pub mod batch;
pub mod error;
pub mod faults;
pub mod format;
pub mod index;
pub mod inspect;
pub mod io;
pub mod layout;
pub mod log;
pub mod powercut;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod retention;
pub(crate) mod segment;
pub mod sync;
pub(crate) mod writer;

pub use error::StorageError;
pub use faults::SyncFaults;
pub use log::{
    AppendReceipt, LogOptions, PartitionLog, RecoveryReport, RetentionReport, SegmentInfo, TornTail,
    batch_bytes_max_for, record_bytes_max_for,
};
pub use reader::{Batches, Records};
pub use record::{Header, Record, RecordView, Stored, header_bytes_bound, stored_bytes_bound};
pub use retention::RetentionPolicy;
pub use sync::Durability;
