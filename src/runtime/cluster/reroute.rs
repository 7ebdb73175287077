//! Batches refused because their partition moves between peers (or its leader lacks a
//! quorum), and engine batches lost with their leader, are routed again: in the order
//! they came, after a short pause (the view may not have changed here yet), to
//! whichever peer owns the partition then, until one takes them (a client's, until the
//! patience runs out: an engine producer's waits on). A refused batch was not written,
//! so sending it again writes it once; a lost one goes marked uncertain (`already.rs`).
//!
//! One batch per partition is on its way at a time: the next goes only once the last
//! is acked or failed (its ack is watched), or came back refused again, and then goes
//! first. So batches routed again land in the order they came, and a producer's
//! batches to a partition stay in send order (the provenance rule) even when the new
//! owner refuses one while it takes the partition over: every batch that goes in is
//! marked (`Batch::rerouted`), and its producer's next batches to the partition wait
//! until it is settled (`Emitter::keep_order`) instead of going straight past it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::runtime::cluster::peers::Peers;
use crate::runtime::error::EngineError;
use crate::runtime::mesh::Batch;

/// Refused batches queued for the rerouter before the refusing side waits.
const REROUTE_QUEUE: usize = 1024;
/// Batches the rerouter holds while no owner takes them.
const HELD_MAX: usize = 4096;
/// The pause before a refused batch is sent again.
const PAUSE: Duration = Duration::from_millis(20);
/// How long a client's batch may wait for an owner before it fails (an engine
/// producer's waits on, said this often).
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Why a batch may find no peer to take it, for the log.
const WHY_NO_OWNER: &str = "it is moving, or its leader has too few replicas alive for a write: the cluster is changing, split, or a peer holding it is unreachable";

struct Held {
    topic: usize,
    batch: Batch,
    due: Instant,
}

/// The way into the rerouter, for the shards' refusals and the links alike: its queue,
/// and how many batches it holds (queued or held; a leaving peer waits for none,
/// `Peers::unsettled`). Every batch that goes in is marked `Batch::rerouted`.
#[derive(Clone)]
pub struct Queue {
    tx: flume::Sender<(usize, Batch)>,
    held: Arc<AtomicUsize>,
}

impl Queue {
    /// The queue, and its receiving end for `run`.
    pub fn new() -> (Queue, flume::Receiver<(usize, Batch)>) {
        let (tx, rx) = flume::bounded(REROUTE_QUEUE);
        let queue = Queue {
            tx,
            held: Arc::new(AtomicUsize::new(0)),
        };
        (queue, rx)
    }

    /// Hands `batch` (of topic `topic`) in, waiting while the queue is full. With the
    /// rerouter gone (the engine stopping) the batch fails.
    pub async fn send(&self, topic: usize, batch: Batch) {
        self.count_in(&batch);
        if let Err(flume::SendError((_, batch))) = self.tx.send_async((topic, batch)).await {
            self.stopping(batch);
        }
    }

    /// `send` from a thread that may block.
    pub fn send_blocking(&self, topic: usize, batch: Batch) {
        self.count_in(&batch);
        if let Err(flume::SendError((_, batch))) = self.tx.send((topic, batch)) {
            self.stopping(batch);
        }
    }

    /// `send` without waiting: the batch back if the queue is full.
    pub fn try_send(&self, topic: usize, batch: Batch) -> Option<Batch> {
        self.count_in(&batch);
        match self.tx.try_send((topic, batch)) {
            Ok(()) => None,
            Err(flume::TrySendError::Full((_, batch))) => {
                self.left();
                Some(batch)
            }
            Err(flume::TrySendError::Disconnected((_, batch))) => {
                self.stopping(batch);
                None
            }
        }
    }

    /// Batches queued for the rerouter or held by it.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn count_in(&self, batch: &Batch) {
        batch.rerouted();
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    /// One batch is no longer with the rerouter (sent on, failed, or given back).
    fn left(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }

    fn stopping(&self, batch: Batch) {
        self.left();
        batch.ack.failed(EngineError::Stopping);
    }
}

/// Runs until the engine's peers are gone.
pub fn run(peers: Weak<Peers>, refused: flume::Receiver<(usize, Batch)>) {
    let mut held: VecDeque<Held> = VecDeque::new();
    let mut on_its_way: HashMap<(usize, u32), Arc<AtomicBool>> = HashMap::new();
    loop {
        // Held batches are looked at every pause at least: one may wait for the batch
        // on its way before it, not only for its own due time.
        let wait = match held.front() {
            None => Duration::from_millis(100),
            Some(h) => h
                .due
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), PAUSE),
        };
        if held.len() < HELD_MAX {
            match refused.recv_timeout(wait) {
                Ok((topic, batch)) => take(&mut held, topic, batch),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => return,
            }
            while held.len() < HELD_MAX
                && let Ok((topic, batch)) = refused.try_recv()
            {
                take(&mut held, topic, batch);
            }
        } else {
            std::thread::sleep(wait);
        }
        let Some(peers) = peers.upgrade() else {
            return;
        };
        send_due(&peers, &mut held, &mut on_its_way);
    }
}

fn take(held: &mut VecDeque<Held>, topic: usize, mut batch: Batch) {
    batch.refused.get_or_insert_with(Instant::now);
    let mut entry = Held {
        topic,
        batch,
        due: Instant::now() + PAUSE,
    };
    // Sent on by this rerouter and back: the oldest of its partition, it goes first.
    if entry.batch.ack.unwatch() {
        held.push_front(entry);
    } else {
        held.push_back(entry);
    }
}

/// Sends on, in order, the held batches that are due and whose partition has none on
/// its way; a partition whose batch must wait keeps its later ones waiting too.
fn send_due(
    peers: &Peers,
    held: &mut VecDeque<Held>,
    on_its_way: &mut HashMap<(usize, u32), Arc<AtomicBool>>,
) {
    let now = Instant::now();
    on_its_way.retain(|_, settled| !settled.load(Ordering::Acquire));
    let mut waiting: HashSet<(usize, u32)> = on_its_way.keys().copied().collect();
    let mut kept = VecDeque::with_capacity(held.len());
    while let Some(Held {
        topic,
        mut batch,
        due,
    }) = held.pop_front()
    {
        let key = (topic, batch.partition);
        if waiting.contains(&key) || due > now {
            waiting.insert(key);
            kept.push_back(Held { topic, batch, due });
            continue;
        }
        if batch.refused.is_some_and(|at| now.duration_since(at) >= PATIENCE) {
            if !batch.ack.is_engine() {
                peers.reroute.left();
                give_up(peers, topic, batch);
                continue;
            }
            // An engine producer's batch waits on, said every `PATIENCE`: stopping the
            // peer would take its other partitions away too, while the cluster is
            // already short (a partition of it cut off, a quorum down), and restarted
            // it would write the batch again all the same.
            tracing::warn!(
                "no peer has taken a stage's or source's batch for partition {} of \"{}\" for {} s ({WHY_NO_OWNER}); it waits on and is written once one does",
                batch.partition,
                peers.topic_name(topic),
                PATIENCE.as_secs()
            );
            batch.refused = Some(now);
        }
        let Some(sender) = peers.route_now(topic, batch.partition) else {
            // Placed here but still being taken over: wait.
            waiting.insert(key);
            kept.push_back(Held {
                topic,
                batch,
                due: now + PAUSE,
            });
            continue;
        };
        let settled = batch.ack.watch();
        match sender.try_send(batch) {
            Ok(()) => {
                peers.reroute.left();
                on_its_way.insert(key, settled);
                waiting.insert(key);
            }
            Err(flume::TrySendError::Full(mut batch)) => {
                batch.ack.unwatch();
                waiting.insert(key);
                kept.push_back(Held { topic, batch, due });
            }
            Err(flume::TrySendError::Disconnected(batch)) => peers.reroute.stopping(batch),
        }
    }
    *held = kept;
}

/// A client's batch no peer took within `PATIENCE`: its client is told it was not written.
fn give_up(peers: &Peers, topic: usize, batch: Batch) {
    let (name, partition) = (peers.topic_name(topic), batch.partition);
    tracing::warn!(
        "no peer took a client's batch for partition {partition} of \"{name}\" within {} s ({WHY_NO_OWNER}); its client is told it was not written",
        PATIENCE.as_secs()
    );
    batch.ack.failed(EngineError::Unavailable(format!(
        "partition {partition} of \"{name}\" is moving between peers and no peer took it within {} s; the records were not written, retry",
        PATIENCE.as_secs()
    )));
}
