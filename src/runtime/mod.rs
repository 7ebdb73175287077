//! The thread-per-core runtime behind `flowd run`: one pinned glommio executor per core,
//! each owning a share of the topic partitions and running the stages, sources and sink
//! forwarders that read them.
//!
//! Codemap: `placement` (who owns what) → `mesh` (cross-core channels) → `shard` (one
//! core's partitions, inboxes, acker) → `stage`, `source`, `sink` (the tasks), with
//! `emitter` (routing and batching), `provenance` and `progress`/`commit` (exactly-once
//! restarts).

pub mod commit;
pub mod emitter;
pub mod error;
pub mod mesh;
pub mod placement;
mod plan;
pub mod progress;
pub mod provenance;
pub mod shard;
pub mod sink;
pub mod source;
pub mod stage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::DataflowSpec;
use error::Result;
pub use error::RuntimeError;

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub shards: usize,
    /// Every bounded input was processed to its end.
    pub finished: bool,
    pub records_in: u64,
    pub records_out: u64,
    pub records_failed: u64,
    pub elapsed: Duration,
}

/// Runs a dataflow until its (bounded) input is done, a signal (SIGINT/SIGTERM) arrives,
/// or a fatal error occurs. On the way out every log is synced.
pub fn run(spec: DataflowSpec) -> Result<RunSummary> {
    let started = Instant::now();
    // Before anything slow: a signal during start-up must stop the run cleanly too.
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&signalled)).map_err(|e| RuntimeError::Shard {
            shard: 0,
            reason: format!("cannot handle signals: {e}"),
        })?;
    }
    let plan = plan::plan(spec)?;
    let shared = Arc::clone(&plan.shared);
    let finishable = plan.finishable;
    let shards = plan.shards.len();
    let handles = plan::spawn(plan)?;
    let control = &shared.control;
    let mut finished = false;
    loop {
        if signalled.load(Ordering::Acquire) || control.is_stopping() {
            break;
        }
        if let Some(n) = finishable
            && control.finished.load(Ordering::Acquire) >= n
        {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    control.stop();
    let mut first_error = None;
    for (shard, handle) in handles.into_iter().enumerate() {
        let joined = handle.join().map_err(|e| RuntimeError::Shard {
            shard,
            reason: e.to_string(),
        });
        if let Err(error) = joined.and_then(|r| r) {
            first_error.get_or_insert(error);
        }
    }
    if let Some(error) = control.take_failure().or(first_error) {
        return Err(error);
    }
    Ok(RunSummary {
        shards,
        finished,
        records_in: control.records_in.load(Ordering::Relaxed),
        records_out: control.records_out.load(Ordering::Relaxed),
        records_failed: control.records_failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}
