//! A replicated partition's leader: the follower fetches it answers (its batches as
//! they are on disk, or where the follower's copy diverges), and its high-water mark,
//! moved as far as a majority of copies of its view hold durably.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cluster::frame::{self, Kind};
use crate::cluster::replication::{self as wire, ReplicaFetch};
use crate::runtime::cluster::copy_pace;
use crate::runtime::cluster::replica::{LEADER, ReplicaState, Replication};
use crate::runtime::error::EngineError;
use crate::runtime::shard::{LocalPartition, Shard};
use crate::storage::Stored;

/// How long a leader's batch may wait for its quorum before its producer is told it
/// may or may not have been written.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a follower's fetch waits at the leader for new batches.
pub const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Most bytes of batches one fetch answer carries.
const FETCH_BYTES: usize = 1 << 20;

/// Moves a leader's high-water mark as far as its quorum allows (see the module doc);
/// called after each follower fetch and by the acker. Returns it.
pub fn refresh_hwm(me: SocketAddr, state: &ReplicaState, partition: &LocalPartition) -> u64 {
    if state.role.load(Ordering::Acquire) != LEADER {
        return state.hwm();
    }
    let mut log = partition.log.borrow_mut();
    let quorum = state.quorum();
    let mut ends: Vec<u64> = quorum
        .replicas
        .iter()
        .map(|r| {
            if *r == me {
                log.durable_offset()
            } else {
                quorum.ends.get(r).copied().unwrap_or(0)
            }
        })
        .collect();
    if ends.is_empty() {
        return state.hwm();
    }
    ends.sort_unstable_by(|a, b| b.cmp(a));
    let majority = ends[ends.len() / 2];
    let hwm = state.hwm().max(majority).min(log.next_offset());
    drop(quorum);
    // Readers are let as far as the mark, also when the mark itself did not move: a
    // fetch answer of the previous epoch's leader, on its way while this peer was
    // elected, raises it (the follower's thread) after the election set the readers'
    // limit. A new leader's stages, consumers and fetches then saw nothing acked
    // before its epoch until a write of its own came.
    if hwm > state.hwm() || log.commit_limit().is_none_or(|limit| limit < hwm) {
        state.hwm.fetch_max(hwm, Ordering::AcqRel);
        log.set_commit_limit(Some(hwm));
        drop(log);
        partition.woken();
    }
    hwm
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_fetch(
    shard: &Rc<Shard>,
    replication: &Replication,
    topic: usize,
    partition: u32,
    from: SocketAddr,
    request: u64,
    fetch: &ReplicaFetch,
) -> Vec<u8> {
    let state = replication.state(topic, partition);
    let local = Rc::clone(shard.partition(topic, partition));
    if !state.is_leader(fetch.epoch) {
        let error = EngineError::Unavailable(format!(
            "this peer does not lead partition {partition} of \"{}\" in epoch {} (it is {:?} in epoch {})",
            replication.topics[topic].name,
            fetch.epoch,
            state.view().role,
            state.epoch.load(Ordering::Acquire)
        ));
        return frame::error(request, 0, &error.to_string());
    }
    let hwm = state.hwm();
    let start = local.log.borrow().start_offset();
    if fetch.offset < start {
        // Retention deleted what the follower asks for: it starts its copy again here.
        return frame::framed(Kind::ReplicaData, request, &wire::encode_begins(hwm, start));
    }
    {
        // The follower's copy equals this one up to its offset only if this log holds its
        // last epoch and that epoch goes at least as far here (KIP-101's check).
        let (epoch, end) = local.log.borrow().epoch_end(fetch.last_epoch);
        if epoch != fetch.last_epoch || end < fetch.offset {
            return frame::framed(
                Kind::ReplicaData,
                request,
                &wire::encode_diverged(hwm, epoch, end),
            );
        }
    }
    {
        let quorum = state.quorum();
        if !quorum.replicas.contains(&from) && !quorum.learners.contains(&from) {
            return frame::error(
                request,
                0,
                &format!("peer {from} holds no replica of this partition"),
            );
        }
    }
    // Counted only from a copy of this epoch's log (its view says so, durably) on the
    // data directory the metadata records for it: a replica back on a wiped directory
    // copies like a learner until a new epoch records its new one. A learner's end is
    // kept for the controller and `flowd status`, never counted.
    let counted = {
        let mut quorum = state.quorum();
        let same_storage = quorum.recorded(from, fetch.storage);
        let counted = quorum.replicas.contains(&from) && same_storage;
        if fetch.view == fetch.epoch && same_storage {
            quorum.ends.insert(from, fetch.durable.min(fetch.offset));
        } else {
            quorum.ends.remove(&from);
        }
        counted
    };
    let hwm = refresh_hwm(replication.me.addr, state, &local);
    // Wait for something to send, at most the fetch's wait.
    let deadline =
        std::time::Instant::now() + Duration::from_millis(u64::from(fetch.wait_ms)).min(FETCH_WAIT);
    loop {
        let seen = local.appends();
        if local.log.borrow().next_offset() > fetch.offset || std::time::Instant::now() >= deadline {
            break;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        futures_lite::future::or(local.on_append(), glommio::timer::sleep(left)).await;
        if local.appends() == seen && !state.is_leader(fetch.epoch) {
            break;
        }
    }
    let (mut out, count_at) = {
        let log = local.log.borrow();
        let mut out = Vec::new();
        frame::encode(&mut out, Kind::ReplicaData, request, &[]);
        let count_at = wire::begin_data(
            &mut out,
            hwm.max(state.hwm()),
            state.start.load(Ordering::Acquire),
        );
        // `sent`: batches in the answer so far (each earlier turn added one).
        let mut batches = log.read_batches(fetch.offset, u64::MAX);
        for (sent, stored) in batches.by_ref().enumerate() {
            let Stored::Batch {
                bytes, base_offset, ..
            } = stored
            else {
                // A format-1 segment: written before replication existed; not replicated.
                // With nothing sent, an error (the follower retries after a pause), never an
                // empty answer it would ask again at once.
                if sent == 0 {
                    return frame::error(
                        request,
                        0,
                        &format!(
                            "partition {partition} of \"{}\" holds records in the format before replication (1) from offset {}: they cannot be copied to a replica; give the topic replicas = 1 until retention removes them",
                            replication.topics[topic].name, fetch.offset
                        ),
                    );
                }
                break;
            };
            if base_offset < fetch.offset {
                // The follower's copy ends inside one of this log's batches: their batches
                // differ there (copies made before replication). It cuts back to the batch's
                // start and asks again, or says loudly that it cannot.
                let epoch = crate::storage::format::BatchHeader::read_trusted(bytes).leader_epoch;
                return frame::framed(
                    Kind::ReplicaData,
                    request,
                    &wire::encode_diverged(hwm, epoch, base_offset),
                );
            }
            if out.len() > 64 && out.len() + bytes.len() > FETCH_BYTES {
                break;
            }
            wire::push_batch(&mut out, count_at, bytes);
        }
        // A damaged batch next (`storage::reader`): with nothing sent, an error the
        // follower waits after, as above.
        if out.len() == count_at + 4
            && let Err(damage) = batches.end()
        {
            return frame::error(request, 0, &damage.to_string());
        }
        (out, count_at)
    };
    // A copy its quorum does not count goes out at the peer's copy pace; past the
    // longest wait, an answer without batches (the copier asks again).
    if !counted && out.len() > count_at + 4 {
        match replication.copy_pace.book(out.len()) {
            Some(wait) if wait.is_zero() => {}
            Some(wait) => glommio::timer::sleep(wait).await,
            None => {
                glommio::timer::sleep(copy_pace::MOST_WAIT).await;
                out.truncate(count_at + 4);
                out[count_at..count_at + 4].copy_from_slice(&0u32.to_le_bytes());
            }
        }
    }
    // The frame's length prefix, now that the body is whole.
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}
