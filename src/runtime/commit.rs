//! Progress commits: a snapshot of a producer's position is stored only once every batch
//! it sent before the snapshot is durable.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime::emitter::Emitter;
use crate::runtime::error::Result;
use crate::runtime::mesh::Generation;
use crate::runtime::progress::{self, Progress};

/// Snapshots waiting for their batches; beyond this, batches join the newest one.
const SNAPSHOTS_PENDING_MAX: usize = 8;
/// How long a stopping producer waits for its last batches to become durable.
pub const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);

struct Snapshot {
    candidate: Progress,
    generation: Arc<Generation>,
    /// Batches of a second output (an exec stage's dead letters) it waits for too.
    side: Option<Arc<Generation>>,
}

pub struct Committer {
    path: PathBuf,
    durable: bool,
    interval: Duration,
    last: Instant,
    stored: Progress,
    pending: VecDeque<Snapshot>,
}

impl Committer {
    pub fn new(path: PathBuf, stored: Progress, durable: bool, interval: Duration) -> Committer {
        Committer {
            path,
            durable,
            interval,
            last: Instant::now(),
            stored,
            pending: VecDeque::new(),
        }
    }

    pub fn stored(&self) -> &Progress {
        &self.stored
    }

    pub fn is_due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// Takes a snapshot: `candidate` is stored once what `emitter` sent so far is
    /// durable. Call right after a flush.
    pub fn snapshot(&mut self, emitter: &mut Emitter, candidate: Progress) {
        self.snapshot_with(emitter, None, candidate);
    }

    /// A snapshot that also waits for what `side` sent so far. The side output's
    /// positions are not recorded: its records are not deduplicated on replay.
    pub fn snapshot_with(&mut self, emitter: &mut Emitter, side: Option<&mut Emitter>, candidate: Progress) {
        self.last = Instant::now();
        if self.pending.len() >= SNAPSHOTS_PENDING_MAX && !candidate.done {
            return;
        }
        let generation = emitter.rotate();
        self.pending.push_back(Snapshot {
            candidate,
            generation,
            side: side.map(Emitter::rotate),
        });
    }

    /// Stores the newest snapshot whose batches are all durable.
    pub fn complete(&mut self, partitions: u32) -> Result<()> {
        let mut newest = None;
        while self
            .pending
            .front()
            .is_some_and(|s| s.generation.is_durable() && s.side.as_ref().is_none_or(|g| g.is_durable()))
        {
            let snapshot = self.pending.pop_front().expect("just checked");
            let mut candidate = snapshot.candidate;
            candidate.output_ends = self.stored.output_ends.clone();
            for q in 0..partitions {
                let end = snapshot.generation.end(q);
                if end > 0 {
                    let slot = candidate.output_ends.entry(q).or_default();
                    *slot = (*slot).max(end);
                }
            }
            self.stored = candidate.clone();
            newest = Some(candidate);
        }
        match newest {
            Some(progress) => progress::store(&self.path, &progress, self.durable),
            None => Ok(()),
        }
    }

    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// Waits (bounded) until every snapshot is stored.
    pub async fn settle(&mut self, partitions: u32) -> Result<()> {
        let deadline = Instant::now() + FINAL_COMMIT_WAIT;
        loop {
            self.complete(partitions)?;
            if self.is_settled() || Instant::now() >= deadline {
                return Ok(());
            }
            glommio::timer::sleep(Duration::from_micros(500)).await;
        }
    }
}
