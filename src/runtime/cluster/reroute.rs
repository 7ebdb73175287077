//! Batches refused because their partition moves between peers are routed again: in
//! the order refused, after a short pause (the view may not have changed here yet), to
//! whichever peer owns the partition then, until one takes them or the patience runs
//! out. A batch refused this way was not written, so sending it again writes it once.

use std::collections::VecDeque;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::runtime::cluster::peers::Peers;
use crate::runtime::error::EngineError;
use crate::runtime::error::RuntimeError;
use crate::runtime::mesh::{Ack, Batch};

/// Refused batches queued for the rerouter before the refusing side waits.
pub const REROUTE_QUEUE: usize = 1024;
/// Batches the rerouter holds while no owner takes them.
const HELD_MAX: usize = 4096;
/// The pause before a refused batch is sent again.
const PAUSE: Duration = Duration::from_millis(20);
/// How long a batch may wait for an owner before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

struct Held {
    topic: usize,
    batch: Batch,
    due: Instant,
}

/// Runs until the engine's peers are gone.
pub fn run(peers: Weak<Peers>, refused: flume::Receiver<(usize, Batch)>) {
    let mut held: VecDeque<Held> = VecDeque::new();
    loop {
        let wait = held
            .front()
            .map_or(Duration::from_millis(100), |h| {
                h.due.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1));
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
        send_due(&peers, &mut held);
    }
}

fn take(held: &mut VecDeque<Held>, topic: usize, mut batch: Batch) {
    batch.refused.get_or_insert_with(Instant::now);
    held.push_back(Held {
        topic,
        batch,
        due: Instant::now() + PAUSE,
    });
}

/// Sends the held batches from the front while their owner takes them; stops at the
/// first that must wait, so batches leave in the order they were refused.
fn send_due(peers: &Peers, held: &mut VecDeque<Held>) {
    let now = Instant::now();
    while let Some(front) = held.front() {
        if front.due > now {
            return;
        }
        let Held { topic, batch, due } = held.pop_front().expect("front exists");
        if batch.refused.is_some_and(|at| now.duration_since(at) >= PATIENCE) {
            peers.rerouting.fetch_sub(1, Ordering::AcqRel);
            give_up(peers, topic, batch);
            continue;
        }
        let Some(sender) = peers.route_now(topic, batch.partition) else {
            // Placed here but still being taken over: wait.
            held.push_front(Held {
                topic,
                batch,
                due: now + PAUSE,
            });
            return;
        };
        match sender.try_send(batch) {
            Ok(()) => {
                peers.rerouting.fetch_sub(1, Ordering::AcqRel);
            }
            Err(flume::TrySendError::Full(batch)) => {
                held.push_front(Held { topic, batch, due });
                return;
            }
            Err(flume::TrySendError::Disconnected(batch)) => {
                peers.rerouting.fetch_sub(1, Ordering::AcqRel);
                batch.ack.failed(EngineError::Stopping);
            }
        }
    }
}

fn give_up(peers: &Peers, topic: usize, batch: Batch) {
    let (name, partition) = (peers.topic_name(topic), batch.partition);
    let error = RuntimeError::NoOwner {
        topic: name.to_string(),
        partition,
        waited_s: PATIENCE.as_secs(),
    };
    tracing::warn!("{error}");
    if let Ack::Generation(_) = batch.ack
        && let Some(shared) = peers.shared()
    {
        shared.control.fail(error);
        return;
    }
    batch.ack.failed(EngineError::Unavailable(format!(
            "partition {partition} of \"{name}\" is moving between peers and no peer took it within {} s; the records were not written, retry",
            PATIENCE.as_secs()
        )));
}
