//! A replicated partition's follower: one thread per partition and epoch that asks the
//! leader for the batches after its copy, appends them as they are (through the owner
//! shard's inbox), cuts its copy back where the leader says it diverges, starts it
//! again where the leader's log begins when retention deleted what it lacks, and records
//! its view once the leader found its copy a prefix of its own that holds everything
//! the leader began its epoch with. A learner runs the same loop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::cluster::frame::Kind;
use crate::cluster::replication::{self as wire, ReplicaData, ReplicaFetch};
use crate::cluster::transport::Requests;
use crate::runtime::cluster::leader::{FETCH_WAIT, QUORUM_TIMEOUT};
use crate::runtime::cluster::peers::Peers;
use crate::runtime::cluster::replica::{CopyChange, FOLLOWER, ReplicaRequest, ReplicaState};
use crate::runtime::mesh::{Ack, Batch, Payload};
use crate::runtime::placement::owner;
use crate::runtime::service::ShardRequest;
use crate::storage::batch::CheckedBatch;

/// A follower that cannot reach its leader waits this long before it tries again.
const RETRY: Duration = Duration::from_millis(100);

/// A follower's fetch loop for one partition in one epoch: ends when this peer stops
/// following it in that epoch, or the engine stops.
pub(super) fn follow(peers: Weak<Peers>, topic: usize, partition: u32, epoch: u32, leader: SocketAddr) {
    let mut links: Option<Requests> = None;
    // The shard takes the role a moment after `watch` asked it to; a busy shard may take
    // longer. The loop ends once the shard took it, or once the metadata (or a promise)
    // moved past this epoch (`watch` then started the next role's own loop): never while
    // this role stands untaken, or the copy would stop here with nothing said.
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        let Some(strong) = peers.upgrade() else { return };
        let state = strong.replication.state(topic, partition);
        if state.follows(epoch) {
            break;
        }
        let named = strong
            .cluster
            .consensus
            .metadata()
            .get()
            .assignment(strong.topic_name(topic), partition)
            .is_some_and(|a| a.epoch == epoch && a.leader == leader);
        let stopping = strong.shared().is_none_or(|s| s.control.is_stopping());
        if !named || stopping || state.promised.load(Ordering::Acquire) > epoch {
            return;
        }
        if !said && started.elapsed() > Duration::from_secs(5) {
            tracing::warn!(
                "partition {partition} of \"{}\": this peer's shard has not taken its role as the follower of {leader} in epoch {epoch} after 5 s; the copy waits for it",
                strong.topic_name(topic)
            );
            said = true;
        }
        drop(strong);
        std::thread::sleep(Duration::from_millis(5));
    }
    loop {
        let Some(peers) = peers.upgrade() else { return };
        let Some(shared) = peers.shared() else { return };
        let state = Arc::clone(peers.replication.state(topic, partition));
        if shared.control.is_stopping()
            || state.role.load(Ordering::Acquire) != FOLLOWER
            || state.epoch.load(Ordering::Acquire) != epoch
            || state.promised.load(Ordering::Acquire) > epoch
        {
            return;
        }
        let service = &shared.services[owner(partition, shared.shards)];
        let (tx, rx) = flume::bounded(1);
        let position = ShardRequest::Replica(ReplicaRequest::Position {
            topic,
            partition,
            reply: tx,
        });
        if service.send(position).is_err() {
            return;
        }
        let Ok((offset, last_epoch, durable)) = rx.recv() else {
            return;
        };
        let fetch = ReplicaFetch {
            topic: peers.topic_name(topic).to_string(),
            partition,
            epoch,
            offset,
            last_epoch,
            durable,
            view: peers.replication.view(topic, partition),
            wait_ms: FETCH_WAIT.as_millis() as u32,
            storage: peers.replication.copy_id(topic, partition),
        };
        let links = links
            .get_or_insert_with(|| Requests::new(&peers.cluster.dialer, FETCH_WAIT + Duration::from_secs(2)));
        let answer = links.request(
            leader,
            Kind::ReplicaFetch,
            &wire::encode_fetch(&fetch),
            Kind::ReplicaData,
        );
        let body = match answer {
            Ok(body) => body,
            Err(error) => {
                tracing::debug!(
                    "fetching partition {partition} of \"{}\" from {leader}: {error}",
                    fetch.topic
                );
                drop(peers);
                std::thread::sleep(RETRY);
                continue;
            }
        };
        match wire::decode_data(&body) {
            Ok(ReplicaData::Diverged { hwm, epoch: e, end }) => {
                state.hwm.fetch_max(hwm, Ordering::AcqRel);
                let change = CopyChange::CutBack { epoch: e, end };
                if !change_copy(&shared, &state, &fetch, topic, epoch, change) {
                    return;
                }
            }
            Ok(ReplicaData::Begins { hwm, start }) => {
                state.hwm.fetch_max(hwm, Ordering::AcqRel);
                let change = CopyChange::StartAt { start };
                if !change_copy(&shared, &state, &fetch, topic, epoch, change) {
                    return;
                }
            }
            Ok(ReplicaData::Batches { hwm, start, batches }) => {
                state.hwm.fetch_max(hwm, Ordering::AcqRel);
                // The leader found this copy a prefix of its own: once it is durable as
                // far as the leader's log went when its epoch began, it is a copy of
                // this epoch's log, holding every record acked before it (unless the
                // epoch ended while the fetch was on its way). A shorter copy taking the
                // view would win an election over an older view's copy that holds
                // acked records this one does not.
                if !state.follows(epoch) {
                    return;
                }
                let holds_start = fetch.durable >= start && fetch.offset >= start;
                let viewed = if holds_start {
                    peers.replication.set_view(topic, partition, epoch)
                } else {
                    Ok(())
                };
                if let Err(error) = viewed {
                    tracing::error!("partition {partition} of \"{}\": {error}", fetch.topic);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                // A damaged copy is whole again once it holds, durably, its leader's
                // high-water mark in a copy of its view: every record acked so far (it
                // was counted for none since the damage).
                if holds_start
                    && fetch.durable >= hwm
                    && state.is_damaged()
                    && peers.replication.view(topic, partition) == epoch
                {
                    match peers.replication.healed(topic, partition) {
                        Ok(()) => tracing::info!(
                            "partition {partition} of \"{}\": the damaged copy holds every acked record again (to offset {hwm}) and counts again",
                            fetch.topic
                        ),
                        Err(error) => {
                            tracing::error!("partition {partition} of \"{}\": {error}", fetch.topic)
                        }
                    }
                }
                if let Err(error) = append(&shared, topic, partition, epoch, &batches) {
                    if peers.cluster.me_full() {
                        // Said once by the shard; the copy waits for room.
                        tracing::debug!("partition {partition} of \"{}\": {error}", fetch.topic);
                        std::thread::sleep(Duration::from_secs(1));
                    } else {
                        tracing::warn!(
                            "partition {partition} of \"{}\" from {leader}: {error}",
                            fetch.topic
                        );
                        std::thread::sleep(RETRY);
                    }
                }
            }
            Err(error) => {
                tracing::warn!("a bad answer from {leader}: {error}");
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// Has the owner shard change the copy as the leader said. False when this fetch loop
/// is over: the engine stops, or the epoch ended meanwhile (the copy was left as it
/// was). A change refused while it still follows is loud: this replica cannot follow,
/// the others still hold the quorum; it asks again after a pause.
fn change_copy(
    shared: &crate::runtime::shard::Shared,
    state: &ReplicaState,
    fetch: &ReplicaFetch,
    topic: usize,
    epoch: u32,
    change: CopyChange,
) -> bool {
    let service = &shared.services[owner(fetch.partition, shared.shards)];
    let (tx, rx) = flume::bounded(1);
    let request = ShardRequest::Replica(ReplicaRequest::Change {
        topic,
        partition: fetch.partition,
        following: epoch,
        change,
        reply: tx,
    });
    if service.send(request).is_err() {
        return false;
    }
    if let Ok(Err(error)) = rx.recv() {
        if !state.follows(epoch) {
            return false;
        }
        tracing::error!("partition {} of \"{}\": {error}", fetch.partition, fetch.topic);
        shared.metrics.replica_failures.add(1);
        std::thread::sleep(Duration::from_secs(1));
    }
    true
}

/// Appends a leader's batches through the owner shard's copy lane and waits until the last
/// is durable (the next fetch says so).
fn append(
    shared: &crate::runtime::shard::Shared,
    topic: usize,
    partition: u32,
    epoch: u32,
    batches: &[&[u8]],
) -> Result<(), String> {
    let Some(last) = batches.len().checked_sub(1) else {
        return Ok(());
    };
    #[cfg(feature = "failpoints")]
    crate::storage::faults::stall_point(&format!("replica-append-{}", shared.spec.topics[topic].name));
    // Their own lane: never behind a producer's batch held for its readers.
    let inbox = &shared.mesh.copies[topic][owner(partition, shared.shards)];
    let (tx, rx) = flume::bounded(batches.len());
    for (i, bytes) in batches.iter().enumerate() {
        let checked = CheckedBatch::check(bytes).map_err(|e| format!("a replicated batch: {e}"))?;
        let mut batch = Batch::new(
            partition,
            Payload::Batch(Box::new(checked)),
            Ack::Client(tx.clone(), i),
        );
        batch.replica = Some(epoch);
        inbox
            .send(batch)
            .map_err(|_| "the engine is stopping".to_string())?;
    }
    for _ in 0..=last {
        match rx.recv_timeout(QUORUM_TIMEOUT) {
            Ok(Ok((i, _, _))) if i == last => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("a replicated batch was not made durable in time".into()),
        }
    }
    Ok(())
}
