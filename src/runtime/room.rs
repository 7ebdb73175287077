//! Engine producers' batches that a full disk refused, waiting for room.
//!
//! A client's batch refused for a full disk is told so, and its client sends it again
//! or not. An engine producer's (a stage's, a source's, on this peer) cannot be told:
//! its progress waits for the batch's ack, and it goes on sending its next ones. Had
//! the batch been dropped, a later one of the same producer, written once there was
//! room, would carry a further provenance point, and a replay (after a restart, or
//! when another peer takes the input's lead over) would take the dropped outputs as
//! written and skip them: lost, with nothing said. So such a batch waits here and is
//! appended once there is room; a later engine batch that comes meanwhile waits behind
//! it (in order), while clients' and peers' batches go on to be served (or refused
//! for the full disk) at once. In a cluster a full peer hands its leaderships over,
//! and a waiting batch tried again on a peer that no longer leads its partition goes
//! to its next leader like any batch that comes to a non-leader.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::runtime::mesh::Batch;

/// Batches waiting at most; past it the inbox takes nothing new until the first is
/// written (its senders wait on the channel).
const WAITING_MAX: usize = 64;
/// The first pause before a refused batch is tried again, doubling up to the longest.
const PAUSE_MIN: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_secs(1);

/// One inbox's waiting batches, in the order they came.
pub struct RoomWait {
    waiting: VecDeque<Batch>,
    /// The pause before the first is tried again, and when that is.
    pause: Duration,
    due: Instant,
    /// The batch handed out last was the first of those waiting: if it does not come
    /// back (`hold`), it was written (or went on) and the next is tried at once.
    tried: bool,
}

impl Default for RoomWait {
    fn default() -> RoomWait {
        RoomWait {
            waiting: VecDeque::new(),
            pause: PAUSE_MIN,
            due: Instant::now(),
            tried: false,
        }
    }
}

impl RoomWait {
    /// The next batch to append: the first waiting one when its pause is over, else the
    /// next to come on `receiver` (an engine producer's goes behind those waiting).
    /// `None` once the channel is closed, or `stopping` while batches wait (not
    /// acked, their producers' progress stays before them: a restart replays them).
    pub async fn next(
        &mut self,
        receiver: &flume::Receiver<Batch>,
        stopping: impl Fn() -> bool,
    ) -> Option<Batch> {
        if std::mem::take(&mut self.tried) {
            // The one tried last did not come back: it was written (or sent on).
            self.pause = PAUSE_MIN;
            self.due = Instant::now();
            if self.waiting.is_empty() {
                tracing::info!(
                    "the batches that waited for room on the disk are written (or sent on to their partitions' next leaders)"
                );
            }
        }
        loop {
            if self.waiting.is_empty() {
                return receiver.recv_async().await.ok();
            }
            if stopping() {
                return None;
            }
            let now = Instant::now();
            if now >= self.due || self.waiting.len() >= WAITING_MAX {
                if now < self.due {
                    glommio::timer::sleep(self.due - now).await;
                }
                self.tried = true;
                return self.waiting.pop_front();
            }
            let due = self.due - now;
            let came = futures_lite::future::or(async { Some(receiver.recv_async().await) }, async {
                glommio::timer::sleep(due).await;
                None
            })
            .await;
            match came {
                None => continue,
                Some(Err(_)) => return None,
                Some(Ok(batch)) if batch.ack.is_engine() => self.waiting.push_back(batch),
                Some(Ok(batch)) => return Some(batch),
            }
        }
    }

    /// `batch`, an engine producer's, was refused for a full disk (`why`): it waits,
    /// first if it was the first waiting (tried again, the pause grows), else last.
    pub fn hold(&mut self, batch: Batch, why: &str, topic: &str) {
        if std::mem::take(&mut self.tried) {
            self.pause = (self.pause * 2).min(PAUSE_MAX);
            self.waiting.push_front(batch);
        } else {
            if self.waiting.is_empty() {
                tracing::warn!(
                    "{why}: a stage's or source's batch for partition {} of \"{topic}\" waits for room and is written once there is (it is not dropped; later ones wait behind it)",
                    batch.partition
                );
                self.pause = PAUSE_MIN;
            }
            self.waiting.push_back(batch);
        }
        self.due = Instant::now() + self.pause;
    }
}
