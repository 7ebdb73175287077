//! A batch written to a partition and waiting for its ack: until the log is durable
//! there (group commit), and for a replicated partition until a quorum of its replicas
//! holds it. An engine producer's batch to a replicated partition is kept whole until
//! then: if this peer cannot ack it (its leadership moved first, or no quorum came in
//! time), it goes to the partition's next leader marked uncertain (`already.rs`) rather
//! than be left unanswered, as a link sends on a batch lost with its peer (`peers.rs`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::cluster::replica::ReplicaState;
use crate::runtime::mesh::{Ack, Batch, Payload};
use crate::runtime::shard::LocalPartition;
use crate::storage::StorageError;

/// A batch written here, until its producer is answered.
pub(crate) struct PendingAck {
    pub(crate) partition: Rc<LocalPartition>,
    pub(crate) first: u64,
    pub(crate) end: u64,
    pub(crate) ack: Ack,
    /// A replicated partition's batch waits for its quorum (the high-water mark) too,
    /// while this peer leads (that epoch, or a later one still holding the batch),
    /// until the deadline.
    pub(crate) quorum: Option<(Arc<ReplicaState>, u32, std::time::Instant)>,
    /// An engine producer's batch, whose batches to a partition must land in send
    /// order: this peer's stage's or source's, a peer's stage's (it says its lead), or
    /// any a peer sends again. (A peer's source's batch says neither: not marked.)
    pub(crate) engine: bool,
    /// This peer's engine producer's batch to a replicated partition, kept until a
    /// quorum holds it: if it cannot be acked here (its leadership moved first, or no
    /// quorum came in time), it goes to the partition's next leader marked uncertain,
    /// as a link sends on a batch lost with its peer (`peers.rs`). Its producer hears
    /// of it only as acked there (or stale), never as lost.
    pub(crate) again: Option<Again>,
}

/// What a batch kept for sending again needs besides its ack and partition.
pub(crate) struct Again {
    topic: usize,
    /// Its records whole: a replayed batch's front its log held was not appended, yet
    /// the next leader may hold less.
    records: Payload,
    lead: Option<u32>,
    uncertain: Option<u64>,
    refused: Option<std::time::Instant>,
}

impl Again {
    /// `batch`'s ack, and what sending it again needs if it is to be kept (`whole`:
    /// its records before a replay's front was dropped).
    pub(crate) fn keep(
        keep: bool,
        topic: usize,
        whole: Option<Payload>,
        batch: Batch,
    ) -> (Ack, Option<Again>) {
        let again = keep.then(|| Again {
            topic,
            records: whole.unwrap_or(batch.records),
            lead: batch.lead,
            uncertain: batch.uncertain,
            refused: batch.refused,
        });
        (batch.ack, again)
    }

    /// The batch to send on to the partition's next leader, marked uncertain from
    /// `first`, where it was written here (a replica holding it holds it at the same
    /// offsets).
    pub(crate) fn batch(self, partition: u32, first: u64, ack: Ack) -> (usize, Batch) {
        let mut batch = Batch::new(partition, self.records, ack);
        batch.lead = self.lead;
        batch.uncertain = Some(self.uncertain.map_or(first, |from| from.min(first)));
        batch.refused = self.refused;
        (self.topic, batch)
    }
}

/// What the acker found of a batch waiting for its ack.
pub(crate) enum Look {
    Wait,
    Acked,
    /// It cannot be acked here: why.
    Unsure(&'static str),
    /// Its log failed.
    Failed(StorageError),
}

pub(crate) fn look(pending: &PendingAck, me: Option<std::net::SocketAddr>, now: Instant) -> Look {
    if let (Some((state, epoch, deadline)), Some(me)) = (&pending.quorum, me) {
        let hwm = crate::runtime::cluster::leader::refresh_hwm(me, state, &pending.partition);
        let ours = ours(pending, state, *epoch);
        return if ours == Some(false) {
            Look::Unsure("its leadership moved to another peer before a quorum of replicas held it")
        } else if ours == Some(true) && hwm >= pending.end {
            Look::Acked
        } else if now >= *deadline {
            Look::Unsure("a quorum of its replicas did not hold it in time")
        } else {
            Look::Wait
        };
    }
    let log = pending.partition.log.borrow();
    if let Err(error) = log.health() {
        return Look::Failed(error);
    }
    if log.durable_offset() >= pending.end {
        Look::Acked
    } else {
        Look::Wait
    }
}

/// Whether a batch written here in `epoch` is still this peer's to ack: it leads that
/// epoch, or leads a later one (a set change, which fences and elects it again) and
/// its log still holds the batch as written then (only this peer wrote batches of
/// that epoch). Following the leader of a later epoch, its copy a prefix of that
/// leader's log (its view says so), it acks once that leader's high-water mark passed
/// the batch, still held as written. `None`: not known yet (fenced and not chosen
/// again, or following a leader whose view it has not yet).
pub(crate) fn ours(pending: &PendingAck, state: &ReplicaState, epoch: u32) -> Option<bool> {
    let still_held = || {
        let (held, until) = pending.partition.log.borrow().epoch_end(epoch);
        held == epoch && until >= pending.end
    };
    match state.leads() {
        Some(now) if now == epoch => Some(true),
        Some(now) if now > epoch => Some(still_held()),
        Some(_) => Some(false),
        None if state.is_follower() && state.epoch() > epoch => {
            if !still_held() {
                Some(false)
            } else if state.is_viewed() {
                Some(true)
            } else {
                None
            }
        }
        None if state.is_follower() => Some(false),
        None => None,
    }
}

/// A copy of an engine producer's records, kept whole before a replay's front is
/// dropped: only this peer's producers' records (`Payload::Owned`) are kept.
pub(crate) fn whole_copy(payload: &Payload) -> Option<Payload> {
    match payload {
        Payload::Owned(records) => Some(Payload::Owned(records.clone())),
        _ => None,
    }
}
