//! Durability: the three modes, the group-commit syncer, and poisoning after a failed fsync.
//!
//! The tracker knows two points of a partition: how far it is written (in the page cache,
//! visible to readers) and how far it is durable (an fdatasync covering it returned Ok).
//! An ack is given for an offset once it is below the durable point:
//! - `every`: the writer itself fdatasyncs after each append, before returning.
//! - `group`: a syncer thread fdatasyncs whatever has been written while its previous
//!   fdatasync ran (group commit), then moves the durable point and wakes the waiters.
//!   Under load every fsync covers many appends; idle, an append waits for one fsync.
//! - `none`: written is durable (it survives the process being killed, since the page
//!   cache belongs to the kernel, but not a machine crash).
//!
//! Sealing a full segment (fdatasync, seal marker, fdatasync) is the syncer's job too in
//! `group` and `none` mode, off the writer's path. Seals are queued (at most
//! `SEALS_PENDING_MAX`) and always run before any later sync, so the durable point never
//! passes a segment whose seal is not on disk.
//!
//! After one failed fdatasync the partition is poisoned: Linux may already have dropped
//! the dirty pages that failed to write, so a retry could "succeed" without the data.
//! Nothing more is acked and every later append fails; a restart recovers from the disk.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::storage::faults::SyncFaults;
use crate::storage::segment::{SegmentFile, SyncPoint};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// fdatasync before each ack.
    Every,
    /// Group commit: acks after the next batched fdatasync.
    #[default]
    Group,
    /// Ack on write to the page cache: survives a process crash, not a power loss.
    None,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Durability, String> {
        match s {
            "every" => Ok(Durability::Every),
            "group" => Ok(Durability::Group),
            "none" => Ok(Durability::None),
            other => Err(format!(
                "unknown durability \"{other}\"; expected \"every\", \"group\" or \"none\""
            )),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Every => "every",
            Durability::Group => "group",
            Durability::None => "none",
        })
    }
}

/// What the writer has put in the page cache and wants made durable.
#[derive(Clone)]
pub(crate) struct Written {
    pub file: Arc<SegmentFile>,
    pub point: SyncPoint,
    /// Bytes appended to the partition since it was opened: for the unsynced bound.
    pub bytes_total: u64,
}

/// Segments rolled away from, waiting for the syncer to seal them. A writer that rolls
/// faster than the disk seals waits.
pub const SEALS_PENDING_MAX: usize = 2;

/// A closed segment to seal.
pub(crate) struct Seal {
    pub file: Arc<SegmentFile>,
    pub point: SyncPoint,
    pub bytes_total: u64,
}

struct State {
    written: Option<Written>,
    seals: VecDeque<Seal>,
    durable_bytes_total: u64,
    poisoned: Option<String>,
    syncer_idle: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the syncer when there is something to sync (or it must stop).
    work: Condvar,
    /// Wakes appenders and ack waiters when the durable point moves or poison sets in.
    done: Condvar,
    durable_offset: AtomicU64,
    poisoned: AtomicBool,
    faults: SyncFaults,
}

/// Tracks the durable point of one partition and, in `group` mode, runs its syncer.
pub(crate) struct SyncTracker {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
}

impl SyncTracker {
    pub fn new(durability: Durability, durable_offset: u64, faults: SyncFaults, name: &str) -> SyncTracker {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                written: None,
                seals: VecDeque::with_capacity(SEALS_PENDING_MAX),
                durable_bytes_total: 0,
                poisoned: None,
                syncer_idle: false,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            durable_offset: AtomicU64::new(durable_offset),
            poisoned: AtomicBool::new(false),
            faults,
        });
        // `every` syncs and seals on the writer's thread; the others need a syncer.
        let syncer = (durability != Durability::Every).then(|| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("flowd-sync {name}"))
                .spawn(move || run_syncer(&shared))
                .expect("the OS refused to start a syncer thread")
        });
        SyncTracker { shared, syncer }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    pub fn faults(&self) -> &SyncFaults {
        &self.shared.faults
    }

    /// Offsets below this are durable.
    pub fn durable_offset(&self) -> u64 {
        self.shared.durable_offset.load(Ordering::Acquire)
    }

    pub fn poisoned(&self) -> Option<String> {
        if !self.shared.poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.lock().poisoned.clone()
    }

    pub fn poison(&self, cause: String) {
        poison(&self.shared, &mut self.lock(), cause);
    }

    /// Moves the durable point forward (never back) after a sync that covered
    /// `offset_end` and `bytes_total`, and wakes whoever waits for it.
    pub fn mark_durable(&self, offset_end: u64, bytes_total: u64) {
        let mut state = self.lock();
        mark_durable(&self.shared, &mut state, offset_end, bytes_total);
    }

    /// In `none` mode: written is durable; no lock, no wake-ups (nobody waits).
    pub fn mark_written_durable(&self, offset_end: u64) {
        self.shared.durable_offset.fetch_max(offset_end, Ordering::AcqRel);
    }

    /// `group` mode: hands the written point to the syncer, then holds the writer back
    /// while more than `unsynced_bytes_max` bytes wait for an fsync (backpressure).
    pub fn publish(&self, written: Written, unsynced_bytes_max: u64) -> Result<(), String> {
        let mut state = self.lock();
        let bytes_total = written.bytes_total;
        state.written = Some(written);
        if state.syncer_idle {
            self.shared.work.notify_one();
        }
        while state.poisoned.is_none() && bytes_total - state.durable_bytes_total > unsynced_bytes_max {
            state = self.shared.done.wait(state).expect("sync state lock poisoned");
        }
        state.poisoned.clone().map_or(Ok(()), Err)
    }

    /// Blocks until every offset below `offset_end` is durable, or the partition is
    /// poisoned.
    pub fn wait_durable(&self, offset_end: u64) -> Result<(), String> {
        if self.durable_offset() >= offset_end {
            return Ok(());
        }
        let mut state = self.lock();
        loop {
            if let Some(cause) = &state.poisoned {
                return Err(cause.clone());
            }
            if self.durable_offset() >= offset_end {
                return Ok(());
            }
            state = self.shared.done.wait(state).expect("sync state lock poisoned");
        }
    }

    /// Hands a segment the writer has rolled away from to the syncer to seal, waiting
    /// while `SEALS_PENDING_MAX` seals are already queued. The syncer stops syncing the
    /// segment as a written point: its seal covers the rest.
    pub fn seal_in_background(&self, seal: Seal) -> Result<(), String> {
        let mut state = self.lock();
        state.written = None;
        while state.poisoned.is_none() && state.seals.len() >= SEALS_PENDING_MAX {
            state = self.shared.done.wait(state).expect("sync state lock poisoned");
        }
        if let Some(cause) = &state.poisoned {
            return Err(cause.clone());
        }
        state.seals.push_back(seal);
        if state.syncer_idle {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Stops the syncer after it has synced what was published, and lets go of the files
    /// it held.
    pub fn shutdown(&mut self) {
        // A panic in the syncer is a bug; surface it rather than hide it.
        self.stop_syncer().expect("syncer thread panicked");
        let mut state = self.lock();
        state.written = None;
        state.seals.clear();
    }

    fn stop_syncer(&mut self) -> std::thread::Result<()> {
        let Some(syncer) = self.syncer.take() else {
            return Ok(());
        };
        self.lock().shutdown = true;
        self.shared.work.notify_one();
        syncer.join()
    }
}

impl Drop for SyncTracker {
    fn drop(&mut self) {
        // Never panic in drop; a syncer panic was already reported on its thread.
        let _ = self.stop_syncer();
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().expect("sync state lock poisoned")
}

fn poison(shared: &Shared, state: &mut State, cause: String) {
    if state.poisoned.is_none() {
        state.poisoned = Some(cause);
        shared.poisoned.store(true, Ordering::Release);
    }
    shared.done.notify_all();
}

fn mark_durable(shared: &Shared, state: &mut State, offset_end: u64, bytes_total: u64) {
    state.durable_bytes_total = state.durable_bytes_total.max(bytes_total);
    shared.durable_offset.fetch_max(offset_end, Ordering::AcqRel);
    shared.done.notify_all();
}

/// The syncer's loop: seal what was rolled away from, then fdatasync what was written
/// meanwhile (group commit) and publish it; sleep when there is neither.
fn run_syncer(shared: &Shared) {
    let mut state = lock(shared);
    loop {
        if let Some(seal) = state.seals.front() {
            let (file, point, bytes_total) = (Arc::clone(&seal.file), seal.point, seal.bytes_total);
            drop(state);
            let sealed = file.seal(point, &shared.faults);
            state = lock(shared);
            state.seals.pop_front();
            match sealed {
                Ok(()) => mark_durable(shared, &mut state, point.next_offset, bytes_total),
                Err(error) => {
                    let cause = format!("sealing {} failed: {error}", file.path().display());
                    poison(shared, &mut state, cause);
                    return;
                }
            }
            continue;
        }
        let pending = state
            .written
            .as_ref()
            .filter(|w| w.point.next_offset > shared.durable_offset.load(Ordering::Acquire));
        let Some(target) = pending.cloned() else {
            if state.shutdown || state.poisoned.is_some() {
                return;
            }
            state.syncer_idle = true;
            state = shared.work.wait(state).expect("sync state lock poisoned");
            state.syncer_idle = false;
            continue;
        };
        drop(state);
        // The writer published `target` after its bytes were in the page cache, so this
        // fdatasync covers them (and perhaps more, which is harmless).
        let synced = target.file.sync(target.point, &shared.faults);
        state = lock(shared);
        match synced {
            Ok(()) => mark_durable(shared, &mut state, target.point.next_offset, target.bytes_total),
            Err(error) => {
                let cause = format!("fdatasync of {} failed: {error}", target.file.path().display());
                poison(shared, &mut state, cause);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_names_parse_and_print_back_and_others_say_what_is_expected() {
        for d in [Durability::Every, Durability::Group, Durability::None] {
            assert_eq!(d.to_string().parse::<Durability>().unwrap(), d);
        }
        let error = "always".parse::<Durability>().unwrap_err();
        assert_eq!(
            error,
            "unknown durability \"always\"; expected \"every\", \"group\" or \"none\""
        );
    }

    #[test]
    fn the_durable_point_only_moves_forward_and_covered_waits_return_at_once() {
        let tracker = SyncTracker::new(Durability::Every, 5, SyncFaults::default(), "t");
        assert_eq!(tracker.durable_offset(), 5);
        tracker.mark_durable(10, 1000);
        tracker.mark_durable(7, 700);
        assert_eq!(tracker.durable_offset(), 10, "never back");
        assert_eq!(tracker.wait_durable(10), Ok(()));
        tracker.mark_written_durable(12);
        assert_eq!(tracker.durable_offset(), 12);
        assert_eq!(tracker.poisoned(), None);
    }

    #[test]
    fn poison_wakes_a_waiter_with_its_cause_and_the_first_cause_stays() {
        let tracker = Arc::new(SyncTracker::new(Durability::Every, 0, SyncFaults::default(), "t"));
        let waiter = {
            let tracker = Arc::clone(&tracker);
            std::thread::spawn(move || tracker.wait_durable(100))
        };
        // The waiter blocks until something happens; poison is what happens.
        tracker.mark_durable(50, 500);
        tracker.poison("fdatasync of seg failed: EIO".into());
        tracker.poison("a later failure".into());
        assert_eq!(
            waiter.join().unwrap(),
            Err("fdatasync of seg failed: EIO".to_string())
        );
        assert_eq!(
            tracker.poisoned().as_deref(),
            Some("fdatasync of seg failed: EIO")
        );
        // Offsets made durable before the poison are still durable.
        assert_eq!(tracker.wait_durable(50), Ok(()));
        assert!(tracker.wait_durable(51).is_err());
    }

    #[test]
    fn sync_faults_let_n_fdatasyncs_pass_then_fail_every_one_with_eio() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        let faults = SyncFaults::fail_after(2);
        assert!(faults.sync_data(&file, &path).is_ok());
        assert!(faults.sync_data(&file, &path).is_ok());
        for _ in 0..3 {
            let error = faults.sync_data(&file, &path).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::EIO));
        }
        // Clones share the count: the log's writer and its syncer see one disk.
        let shared = SyncFaults::fail_after(1);
        assert!(shared.clone().sync_data(&file, &path).is_ok());
        assert!(shared.sync_data(&file, &path).is_err());
        assert!(SyncFaults::default().sync_data(&file, &path).is_ok());
    }
}
