//! One task's reading of one partition of its shard, the same for every task that reads
//! (stages, reply and scatter-gather stages, exec stages, sink forwarders): where it
//! stands (a named reader, shown in status, holding the partition's writers back by
//! `max_lag`), what it may read (durable records only, and none at or past a range a
//! hand-over is copying in), and its wait for the next append when it caught up.
//!
//! A round: `start` (`begin`: notes the appends seen; `resume`: moves the position past
//! what retention deleted), the records of `readable` read from the log the round borrows, `publish`
//! of where the round ended, then `pause` (waits for an append, the stop or the
//! task's own deadline if the round read nothing: no timer runs while nothing is due). What a task does with each record is its own.

use std::cell::{Cell, Ref};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::runtime::shard::{LocalPartition, Shard};
use crate::storage::{PartitionLog, RecordView};

pub struct PartitionReader {
    input: Rc<LocalPartition>,
    name: String,
    /// The reader's position as the partition sees it.
    cell: Rc<Cell<u64>>,
    /// The partition's appends when the round started.
    seen: u64,
}

/// In a cluster, how long an idle reader goes at most without looking again: who leads
/// its partition moves with the peers' gossip and metadata, which no append announces.
/// On one machine nothing but an append (or the stop) can give it work.
pub const CLUSTER_RECHECK: Duration = Duration::from_millis(100);

/// `until`, or sooner in a cluster: who leads a task's input moves with the peers, which
/// no append announces, so a waiting task looks again every `CLUSTER_RECHECK`.
pub fn recheck_in_cluster(shard: &Shard, until: Option<Instant>) -> Option<Instant> {
    if shard.shared.peers.is_none() {
        return until;
    }
    let recheck = Instant::now() + CLUSTER_RECHECK;
    Some(until.map_or(recheck, |u| u.min(recheck)))
}

impl PartitionReader {
    /// Reads `input` as `name` from `position` (the reader registered before the task
    /// ran, if there is one: its position stands).
    pub fn new(input: Rc<LocalPartition>, name: impl Into<String>, position: u64) -> PartitionReader {
        let name = name.into();
        let cell = input.reader(&name, position);
        PartitionReader {
            input,
            name,
            cell,
            seen: 0,
        }
    }

    pub fn input(&self) -> &Rc<LocalPartition> {
        &self.input
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a round at `position`: `begin`, then `resume`.
    pub fn start(&mut self, shard: &Shard, position: u64) -> u64 {
        self.begin();
        self.resume(shard, position)
    }

    /// Notes the appends seen so far: one after this wakes the round's `pause`.
    pub fn begin(&mut self) {
        self.seen = self.input.appends();
    }

    /// `position`, moved past records retention deleted (counted and logged).
    pub fn resume(&self, shard: &Shard, position: u64) -> u64 {
        shard.resume_at(&self.input, &self.name, position)
    }

    /// The partition's log, for one round's reads (let go of it before any await).
    pub fn log(&self) -> Ref<'_, PartitionLog> {
        self.input.log.borrow()
    }

    /// The records a task may read from `position` in `log`: durable ones (read
    /// committed), up to the first one of a range being copied in.
    pub fn readable<'l>(
        &'l self,
        log: &'l PartitionLog,
        position: u64,
    ) -> impl Iterator<Item = RecordView<'l>> + 'l {
        let input = &self.input;
        log.read_committed(position)
            .take_while(move |view| !input.is_copied(view.offset()))
    }

    /// Says where the task stands: everything below `position` is read.
    pub fn publish(&self, position: u64) {
        self.cell.set(position);
    }

    /// Ends a round that read `read` records: if none, waits for the next append, the
    /// stop, or `until` (the task's own next deadline: a window to close, a commit due);
    /// otherwise goes on at once. With nothing due, no timer runs.
    pub async fn pause(&mut self, shard: &Shard, read: usize, until: Option<Instant>) {
        if read > 0 {
            return;
        }
        let until = recheck_in_cluster(shard, until);
        crate::runtime::shard::until_append(&self.input, self.seen, &shard.shared.control, until).await;
    }

    /// The appends the round started with, for a task that waits on more than this.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}
