//! The thread-per-core runtime behind `flowd run`: one pinned glommio executor per core,
//! each owning a share of the topic partitions and running the stages, sources and sink
//! forwarders that read them.
//!
//! Codemap: `placement` (who owns what) → `mesh` (cross-core channels) → `shard` (one
//! core's partitions, inboxes, acker) → `stage`, `source`, `sink` (the tasks), with
//! `emitter` (routing and batching), `provenance` and `progress`/`commit` (exactly-once
//! restarts).

mod acks;
pub mod already;
pub mod bounds;
pub mod cluster;
pub mod commit;
pub mod consumers;
pub mod emitter;
pub mod error;
pub mod exec_stage;
pub mod failure;
pub mod journal_recovery;
pub mod mesh;
pub mod placement;
mod plan;
pub mod progress;
pub mod provenance;
pub mod reader;
pub mod reply;
pub mod retention;
pub mod room;
pub mod scatter_stage;
pub mod service;
pub mod shard;
pub mod sink;
pub mod source;
pub mod stage;
pub mod stale;
pub mod takeover;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::config::DataflowSpec;
use crate::runtime::shard::Shared;
use error::Result;
pub use error::RuntimeError;
pub use plan::{core_count, private_data_dir};

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

/// What serves clients on the engine's shards (the front doors, `crate::server`, which
/// stand above the engine): the engine opens them on every shard once its tasks run,
/// and knows nothing else of them.
pub trait Doors: Send + Sync {
    /// Opens the doors of `shard` (number `shard.index`), on its executor.
    fn open(&self, shard: &Rc<shard::Shard>);
}

/// A started engine: its shards run until `wait` sees a stop.
pub struct Engine {
    shared: Arc<Shared>,
    handles: Vec<plan::ShardHandle>,
    finishable: Option<usize>,
    started: Instant,
}

/// Plans a dataflow and starts its shards, with no doors (`server::start` opens them).
pub fn start(spec: DataflowSpec) -> Result<Engine> {
    start_in(spec, None, None)
}

/// `start`, as one peer of `cluster` when given (it owns the partitions placement gives
/// it and routes the rest to their owners), opening `doors` on every shard.
pub fn start_in(
    spec: DataflowSpec,
    cluster: Option<Arc<Cluster>>,
    doors: Option<Arc<dyn Doors>>,
) -> Result<Engine> {
    let started = Instant::now();
    let plan = plan::plan(spec, cluster)?;
    let shared = Arc::clone(&plan.shared);
    let finishable = plan.finishable;
    let handles = plan::spawn(plan, doors)?;
    Ok(Engine {
        shared,
        handles,
        finishable,
        started,
    })
}

impl Engine {
    /// Asks every shard to flush, sync and stop; `wait` then returns.
    pub fn stop(&self) {
        self.shared.control.stop();
    }

    /// Waits until every bounded input is done, `stop` is set, `Engine::stop` is called
    /// or a fatal error occurs; then stops and joins every shard. It sleeps on the
    /// engine's news: whoever sets `stop` later calls `Control::nudge` after.
    pub fn wait(self, stop: &AtomicBool) -> Result<RunSummary> {
        let control = &self.shared.control;
        let all_finished = || {
            self.finishable
                .is_some_and(|n| control.finished.load(Ordering::Acquire) >= n)
        };
        // Woken by the engine's news (a stop, a finished task, a signal's nudge).
        control.block_until(|| stop.load(Ordering::Acquire) || control.is_stopping() || all_finished());
        let finished = !stop.load(Ordering::Acquire) && !control.is_stopping() && all_finished();
        control.stop();
        let mut first_error = None;
        for (shard, handle) in self.handles.into_iter().enumerate() {
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
            shards: self.shared.shards,
            finished,
            records_in: control.records_in.load(Ordering::Relaxed),
            records_out: control.records_out.load(Ordering::Relaxed),
            records_failed: control.records_failed.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        })
    }
}

/// Runs a dataflow until its (bounded) input is done, a signal (SIGINT/SIGTERM) arrives,
/// or a fatal error occurs. On the way out every log is synced. `ready` is called once
/// the engine runs (its doors, bound before, take connections).
pub fn run(
    spec: DataflowSpec,
    cluster: Option<Arc<Cluster>>,
    doors: Option<Arc<dyn Doors>>,
    ready: impl FnOnce(),
) -> Result<RunSummary> {
    // Before anything slow: a signal during start-up must stop the run cleanly too (it
    // waits in the set's pipe until the thread below takes it).
    let cannot = |e: std::io::Error| RuntimeError::Shard {
        shard: 0,
        reason: format!("cannot handle signals: {e}"),
    };
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
            .map_err(cannot)?;
    let signals_handle = signals.handle();
    let signalled = Arc::new(AtomicBool::new(false));
    let engine = start_in(spec, cluster.clone(), doors)?;
    {
        // A thread asleep on the signals' pipe: it sets the flag and wakes the waiters.
        let (flag, shared) = (Arc::clone(&signalled), Arc::clone(&engine.shared));
        std::thread::Builder::new()
            .name("flowd-signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    flag.store(true, Ordering::Release);
                    shared.control.nudge();
                }
            })
            .map_err(cannot)?;
    }
    ready();
    // In a cluster a signal first hands this peer's partitions over (the engine keeps
    // serving the peers that copy them), then stops the engine.
    let stop = match &engine.shared.peers {
        Some(peers) => {
            let handed = Arc::new(AtomicBool::new(false));
            let (peers, shared, done) = (Arc::clone(peers), Arc::clone(&engine.shared), Arc::clone(&handed));
            std::thread::Builder::new()
                .name("flowd-leave".into())
                .spawn(move || {
                    let control = &shared.control;
                    control.block_until(|| signalled.load(Ordering::Acquire) || control.is_stopping());
                    if !shared.control.is_stopping() {
                        cluster::handover::leave(&peers, &shared, cluster::handover::LEAVE_PATIENCE);
                    }
                    done.store(true, Ordering::Release);
                    // The main thread waits on the engine's news for this flag.
                    shared.control.nudge();
                })
                .map_err(|e| RuntimeError::Shard {
                    shard: 0,
                    reason: format!("cannot start the leave thread: {e}"),
                })?;
            handed
        }
        None => signalled,
    };
    let summary = engine.wait(&stop);
    signals_handle.close();
    // Tell the others now rather than leave them to find out by suspicion.
    if let Some(cluster) = cluster {
        cluster.leave(Duration::from_secs(1));
    }
    summary
}
