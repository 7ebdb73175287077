//! Faults a test injects, and the one door every segment fdatasync goes through
//! (`SyncFaults::sync_data`, which also counts them for `/metrics`).
//!
//! Fail points: named places where a test may make the process fail as a disk or a crash
//! would, to prove what the engine does then. They exist only in builds with the
//! `failpoints` feature, which the test suite turns on (Cargo.toml's dev-dependency on
//! flowd itself) and no other build does: in a release binary each call below is empty.
//!
//! A test sets them in the environment of the `flowd` it starts, in the `fail` crate's
//! syntax (`FAILPOINTS="name=action;..."`, where an action is `return`, `return(ARG)`,
//! `N*off->return`, ...; see the crate's docs):
//!
//! | point            | what `return` does                                              |
//! |------------------|-----------------------------------------------------------------|
//! | `fdatasync`      | the fdatasync of a segment file fails with EIO (`return(TEXT)`: only of a file whose path contains TEXT) |
//! | `dir-fsync`      | the fsync of a partition directory fails with EIO (`return(TEXT)`: only of one whose path contains TEXT) |
//! | `journal-txn-written` | SIGKILL once a transaction's journal entry is written, before it is durable |
//! | `journal-txn-durable` | SIGKILL once the entry is durable, before any part is appended |
//! | `journal-txn-part`    | SIGKILL once the first of several parts is appended (the others perhaps not yet) |
//! | `journal-txn-parts`   | SIGKILL once every part is appended, before the `applied` entry |
//! | `kafka-idempotent-durable` | SIGKILL once an idempotent Kafka producer's batch is durable, before its answer |
//! | `shard-panic`    | (`return(N)`) shard N panics as it starts                         |
//! | `peer-produce`   | (`sleep(MS)`) the reader of a peer's data connection stalls before it queues a forwarded batch, as behind a full inbox |
//! | `peer-produce-led` | (`sleep(MS)`) the same, for a stage's batch (one made for a lead of its input) |
//! | `replica-append-TOPIC` | (`sleep(MS)`) a follower of a partition of TOPIC stalls before it appends the batches a fetch brought, as a slow replica would |

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A seam for tests: makes fdatasync fail as a failing disk would, after `n` successes.
#[derive(Debug, Clone, Default)]
pub struct SyncFaults {
    successes_left: Option<Arc<AtomicU64>>,
}

impl SyncFaults {
    /// Every fdatasync after the first `successes` fails with EIO.
    pub fn fail_after(successes: u64) -> SyncFaults {
        SyncFaults {
            successes_left: Some(Arc::new(AtomicU64::new(successes))),
        }
    }

    /// fdatasync `file` (named `path`), unless a fault is due.
    pub(crate) fn sync_data(&self, file: &std::fs::File, path: &std::path::Path) -> io::Result<()> {
        if let Some(left) = &self.successes_left {
            let allowed = left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !allowed {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        if sync_fails("fdatasync", path) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        FSYNCS.fetch_add(1, Ordering::Relaxed);
        crate::storage::io::sync_data(file, path)
    }
}

/// fdatasyncs of segment files by this process, for `/metrics`.
pub static FSYNCS: AtomicU64 = AtomicU64::new(0);

/// The names of the crash points of a consumer-journal transaction, in order.
pub const JOURNAL_TXN_POINTS: [&str; 4] = [
    "journal-txn-written",
    "journal-txn-durable",
    "journal-txn-part",
    "journal-txn-parts",
];

/// Whether the fail point `point` (`fdatasync`, `dir-fsync`) says this sync of `path`
/// fails: set to `return` for every path, `return(TEXT)` for those containing TEXT.
pub fn sync_fails(point: &str, path: &std::path::Path) -> bool {
    #[cfg(feature = "failpoints")]
    {
        if let Some(only) = fail::eval(point, |arg| arg) {
            return only.is_none_or(|text| path.to_string_lossy().contains(&text));
        }
    }
    let _ = (point, path);
    false
}

/// Panics, as a bug would, if the fail point `name` is set to `return(N)` and `n` is N.
pub fn panic_point(name: &str, n: usize) {
    #[cfg(feature = "failpoints")]
    {
        if fail::eval(name, |arg| arg).is_some_and(|arg| arg.and_then(|a| a.parse().ok()) == Some(n)) {
            panic!("fail point {name}: panicking in {n}");
        }
    }
    let _ = (name, n);
}

/// Kills this process with SIGKILL, as a crash would, if the fail point `name` is set.
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        if fail::eval(name, |_| ()).is_some() {
            tracing::warn!("fail point {name}: killing the process");
            // SAFETY: kill(2) of this very process; nothing after it runs.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
    let _ = name;
}

/// Holds this thread at the fail point `name` (its action `sleep(MS)`), as a stalled
/// engine would: for tests of what waits on it.
pub fn stall_point(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        let _ = fail::eval(name, |_| ());
    }
    let _ = name;
}

/// Reads the fail points set in `FAILPOINTS`; the binary calls it once at start. A
/// malformed value is an error that says so.
pub fn setup() -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        if let Ok(value) = std::env::var("FAILPOINTS") {
            for point in value.split(';').filter(|p| !p.trim().is_empty()) {
                let (name, actions) = point
                    .split_once('=')
                    .ok_or_else(|| format!("FAILPOINTS: \"{point}\" is not name=actions"))?;
                fail::cfg(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS: {point}: {e}"))?;
            }
        }
    }
    Ok(())
}
