//! Progress commits: a snapshot of a producer's position is stored only once every batch
//! it sent before the snapshot is durable.
//!
//! A batch its partition's leader refused as an earlier lead's (`stale.rs`) is settled
//! but not written: no snapshot from its own on is stored, and none after it, until
//! the producer leads again (`lead_again`). Its next lead replays from the progress
//! stored before it and writes what the log lacks; stored past it, that progress would
//! say the refused outputs were written, and a replay would skip them.

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
    /// A batch was refused as an earlier lead's: nothing is stored until `lead_again`.
    fenced: bool,
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
            fenced: false,
        }
    }

    pub fn stored(&self) -> &Progress {
        &self.stored
    }

    pub fn is_due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// When the next snapshot is due.
    pub fn due_at(&self) -> Instant {
        self.last + self.interval
    }

    /// Takes a snapshot: `candidate` is stored once what `emitter` sent so far is
    /// durable. Call right after a flush. False if it was refused (`snapshot_with`).
    #[must_use = "a refused snapshot is taken again once due, or the progress stays behind"]
    pub fn snapshot(&mut self, emitter: &mut Emitter, candidate: Progress) -> bool {
        self.snapshot_with(emitter, None, candidate)
    }

    /// The last snapshot of a stopping producer (`snapshot_with`): never refused, so
    /// that what it did last is committed once its batches are durable (`settle`).
    pub fn last_snapshot(&mut self, emitter: &mut Emitter, side: Option<&mut Emitter>, candidate: Progress) {
        self.push(emitter, side, candidate);
    }

    /// A snapshot that also waits for what `side` sent so far. The side output's
    /// positions are not recorded: its records are not deduplicated on replay.
    ///
    /// False when `SNAPSHOTS_PENDING_MAX` snapshots wait already: the batches sent
    /// since the last one join the next, and the caller takes one again once it is due
    /// (what it did stays to be committed).
    #[must_use = "a refused snapshot is taken again once due, or the progress stays behind"]
    pub fn snapshot_with(
        &mut self,
        emitter: &mut Emitter,
        side: Option<&mut Emitter>,
        candidate: Progress,
    ) -> bool {
        self.last = Instant::now();
        if self.pending.len() >= SNAPSHOTS_PENDING_MAX && !candidate.done {
            return false;
        }
        self.push(emitter, side, candidate);
        true
    }

    fn push(&mut self, emitter: &mut Emitter, side: Option<&mut Emitter>, candidate: Progress) {
        let generation = emitter.rotate();
        let side = side.map(Emitter::rotate);
        if self.fenced {
            return;
        }
        self.pending.push_back(Snapshot {
            candidate,
            generation,
            side,
        });
    }

    /// Whether a batch was refused as an earlier lead's since the producer last took
    /// its lead: nothing it does is stored until it leads again.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// The producer takes its input's lead (again), from the progress stored: snapshots
    /// are stored again.
    pub fn lead_again(&mut self) {
        self.fenced = false;
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
            if snapshot.generation.is_stale() || snapshot.side.as_ref().is_some_and(|g| g.is_stale()) {
                tracing::info!(
                    "a batch was refused as made for an earlier lead of its producer's input (a later lead writes its outputs): the progress in {} stays at input {} until this peer leads the input again",
                    self.path.display(),
                    self.stored.next
                );
                self.fenced = true;
                self.pending.clear();
                break;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use crate::ops::Output;
    use crate::runtime::mesh::{self, Batch};

    fn emitter() -> (Emitter, flume::Receiver<Batch>) {
        let text = "[engine]\ndata_dir = \"/tmp/x\"\n[[topic]]\nname = \"in\"\n[[topic]]\nname = \"out\"\npartitions = 1\n\
                    [[stage]]\nname = \"s\"\nfrom = \"in\"\nop = { map = \".\" }\nto = \"out\"\n";
        let spec = crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid");
        let (mesh, mut receivers) = mesh::build(2, 1);
        let (_, rx, _) = receivers[0].remove(1);
        (
            Emitter::new("p".into(), 1, &spec, &Route::Spread, None, &mesh).unwrap(),
            rx,
        )
    }

    /// A committer with nothing stored, its progress file's path (in a directory kept
    /// while the first value lives), and an emitter whose batches it waits for.
    fn fresh() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Emitter,
        flume::Receiver<Batch>,
        Committer,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p").join("s.json");
        let (emitter, rx) = emitter();
        let committer = Committer::new(path.clone(), Progress::default(), false, Duration::ZERO);
        (dir, path, emitter, rx, committer)
    }

    /// Emits one output for input `n`, flushes, and returns the batch sent.
    fn send(emitter: &mut Emitter, rx: &flume::Receiver<Batch>, n: u64) -> Batch {
        let output = Output {
            timestamp_ms: 1,
            key: None,
            value: vec![b'x'; 10],
        };
        emitter.emit(n, 0, output).unwrap();
        futures_lite::future::block_on(emitter.flush()).unwrap();
        rx.try_recv().expect("the flush sent a batch")
    }

    fn stored(path: &std::path::Path) -> Option<Progress> {
        progress::load(path).unwrap()
    }

    #[test]
    fn a_snapshot_is_stored_only_once_its_batches_are_durable_and_in_order() {
        let (_dir, path, mut emitter, rx, mut committer) = fresh();
        let first = send(&mut emitter, &rx, 0);
        assert!(committer.snapshot(&mut emitter, Progress::at(1, &Default::default(), false)));
        let second = send(&mut emitter, &rx, 1);
        assert!(committer.snapshot(&mut emitter, Progress::at(2, &Default::default(), false)));
        committer.complete(1).unwrap();
        assert_eq!(stored(&path), None, "nothing is durable yet");
        // The second batch is durable before the first: its snapshot must wait.
        second.ack.durable(0, 1, 2);
        committer.complete(1).unwrap();
        assert_eq!(
            stored(&path),
            None,
            "a later snapshot never passes an earlier one"
        );
        first.ack.durable(0, 0, 1);
        committer.complete(1).unwrap();
        let progress = stored(&path).expect("both snapshots are durable");
        assert_eq!(progress.next, 2);
        assert_eq!(
            progress.output_ends.get(&0),
            Some(&2),
            "where its last output ended"
        );
        assert!(committer.is_settled());
        assert_eq!(committer.stored(), &progress);
    }

    #[test]
    fn no_progress_past_a_batch_refused_as_an_earlier_leads_is_stored_until_the_producer_leads_again() {
        let (_dir, path, mut emitter, rx, mut committer) = fresh();
        let mut batches = Vec::new();
        for n in 0..3 {
            batches.push(send(&mut emitter, &rx, n));
            assert!(committer.snapshot(&mut emitter, Progress::at(n + 1, &Default::default(), false)));
        }
        batches[0].ack.durable(0, 0, 1);
        batches[1].ack.stale(7);
        batches[2].ack.durable(0, 1, 2);
        committer.complete(1).unwrap();
        assert_eq!(
            stored(&path).map(|p| p.next),
            Some(1),
            "stored up to the refused batch, not past it"
        );
        assert!(committer.is_fenced() && committer.is_settled());
        // Fenced: what it does next is not stored, durable or not.
        let fourth = send(&mut emitter, &rx, 3);
        assert!(committer.snapshot(&mut emitter, Progress::at(4, &Default::default(), false)));
        fourth.ack.durable(0, 2, 3);
        futures_lite::future::block_on(committer.settle(1)).unwrap();
        assert_eq!(stored(&path).map(|p| p.next), Some(1));
        assert_eq!(committer.stored().next, 1, "a lead taken again replays from here");
        // It leads again (from the progress stored): snapshots are stored again.
        committer.lead_again();
        let fifth = send(&mut emitter, &rx, 4);
        assert!(committer.snapshot(&mut emitter, Progress::at(5, &Default::default(), false)));
        fifth.ack.durable(0, 3, 4);
        committer.complete(1).unwrap();
        assert_eq!(stored(&path).map(|p| p.next), Some(5));
        assert!(!committer.is_fenced());
    }

    #[test]
    fn snapshots_past_the_pending_bound_fold_into_the_next_and_the_last_one_always_counts() {
        let (_dir, path, mut emitter, rx, mut committer) = fresh();
        let mut batches = Vec::new();
        for n in 0..SNAPSHOTS_PENDING_MAX as u64 + 3 {
            batches.push(send(&mut emitter, &rx, n));
            let taken = committer.snapshot(&mut emitter, Progress::at(n + 1, &Default::default(), false));
            assert_eq!(
                taken,
                n < SNAPSHOTS_PENDING_MAX as u64,
                "snapshot {n} behind a full queue"
            );
        }
        // The final snapshot (done) is taken even with the queue full.
        batches.push(send(&mut emitter, &rx, 100));
        assert!(committer.snapshot(&mut emitter, Progress::at(101, &Default::default(), true)));
        for (i, batch) in batches.iter().enumerate() {
            batch.ack.durable(0, i as u64, i as u64 + 1);
        }
        committer.complete(1).unwrap();
        let progress = stored(&path).unwrap();
        assert!(progress.done && progress.next == 101, "{progress:?}");
        assert_eq!(progress.output_ends.get(&0), Some(&(batches.len() as u64)));
    }

    #[test]
    fn a_stopping_producers_last_snapshot_is_taken_behind_a_full_queue() {
        let (_dir, path, mut emitter, rx, mut committer) = fresh();
        let mut batches = Vec::new();
        for n in 0..SNAPSHOTS_PENDING_MAX as u64 {
            batches.push(send(&mut emitter, &rx, n));
            assert!(committer.snapshot(&mut emitter, Progress::at(n + 1, &Default::default(), false)));
        }
        batches.push(send(&mut emitter, &rx, 50));
        committer.last_snapshot(&mut emitter, None, Progress::at(51, &Default::default(), false));
        for (i, batch) in batches.iter().enumerate() {
            batch.ack.durable(0, i as u64, i as u64 + 1);
        }
        futures_lite::future::block_on(committer.settle(1)).unwrap();
        let progress = stored(&path).unwrap();
        assert_eq!(progress.next, 51, "the last position is committed: {progress:?}");
        assert_eq!(progress.output_ends.get(&0), Some(&(batches.len() as u64)));
    }
}
