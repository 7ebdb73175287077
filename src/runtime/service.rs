//! What one shard does for others: serve fetches of the partitions it owns, report their
//! status, and hand job answers to the connections waiting on it. Requests arrive on a
//! bounded channel per shard; fetches that wait for new records run as their own tasks.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::protocol::FetchFrom;
use crate::protocol::message::begin_batches;
use crate::protocol::records::RecordsWriter;
use crate::protocol::status::{ConsumerStatus, NamedConsumerStatus, PartitionStatus, ReplicaStatus};
use crate::runtime::consumers::{self, OpResult, PartitionOp};
use crate::runtime::error::EngineError;
use crate::runtime::provenance::END_HEADER;
use crate::runtime::shard::{Shard, until_append};
use crate::storage::batch::encode_batch;
use crate::storage::{Header, Record, RecordView, Stored};

/// Requests a shard's service channel holds before senders wait.
pub const SERVICE_CHANNEL_MAX: usize = 1024;
/// Most bytes of records one fetch returns, whatever the client asks.
pub const FETCH_BYTES_MAX: u32 = 1 << 20;
/// Most records one fetch returns.
pub const FETCH_RECORDS_MAX: u32 = 10_000;
/// The longest a fetch waits for new records.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

/// A fetch, owned so that it can cross to the owner shard.
#[derive(Debug, Clone)]
pub struct FetchOrder {
    pub topic: usize,
    pub partition: u32,
    pub from: FetchFrom,
    pub max_records: u32,
    pub max_bytes: u32,
    pub wait_ms: u32,
    pub request_id: u64,
    /// Answer with the stored batches (BATCHES) rather than records (FETCHED).
    pub batches: bool,
}

pub enum ShardRequest {
    Fetch {
        order: FetchOrder,
        reply: flume::Sender<FetchAnswer>,
    },
    Status {
        reply: flume::Sender<ShardStatus>,
    },
    /// A consumer request or a read for a partition this shard owns.
    Partition {
        op: PartitionOp,
        reply: flume::Sender<OpResult>,
    },
    /// A peer takes this partition over: stop writing it here and say where it ends
    /// (after every append this shard made; none follows).
    Fence {
        topic: usize,
        partition: u32,
        reply: flume::Sender<u64>,
    },
    /// Records of a partition from `from` for a peer taking it over, in the protocol's
    /// record encoding: `(first offset, count, bytes)`, or why not.
    Copy {
        topic: usize,
        partition: u32,
        from: u64,
        reply: flume::Sender<Result<Copied, EngineError>>,
    },
    /// Replication of a partition this shard owns (`cluster::replica`).
    Replica(crate::runtime::cluster::replica::ReplicaRequest),
    /// A reply stage's answer to a job taken on this shard, or why a stage failed it.
    Answer {
        job: u64,
        answer: JobOutcome,
    },
    /// The state a `state` stage holds for a key of an input partition this shard owns
    /// (inner `None`: no state for that key; outer `None`: the stage does not run here).
    State {
        stage: usize,
        partition: u32,
        key: Vec<u8>,
        reply: flume::Sender<Option<Option<Vec<u8>>>>,
    },
}

/// What the task waiting on a job gets: the answer, or why a stage failed the job.
pub type JobOutcome = std::result::Result<Answer, String>;

/// An answer handed to the task waiting on a job.
#[derive(Debug, Clone)]
pub struct Answer {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    pub shard: usize,
    pub partitions: Vec<PartitionStatus>,
    /// Jobs taken here and still waiting for their answer.
    pub jobs_waiting: usize,
    pub load: crate::protocol::status::ShardLoad,
}

/// Serves this shard's requests until the engine stops.
pub async fn run(shard: Rc<Shard>, requests: flume::Receiver<ShardRequest>) {
    while let Ok(request) = requests.recv_async().await {
        match request {
            ShardRequest::Fetch { order, reply } => {
                let task_shard = Rc::clone(&shard);
                shard.tasks.spawn(async move {
                    let frame = fetch_local(&task_shard, &order).await;
                    let _ = reply.send_async(frame).await;
                });
            }
            ShardRequest::Partition { op, reply } => {
                let task_shard = Rc::clone(&shard);
                shard.tasks.spawn(async move {
                    let outcome = consumers::run(&task_shard, op).await;
                    let _ = reply.send_async(outcome).await;
                });
            }
            ShardRequest::Replica(request) => crate::runtime::cluster::replica::handle(&shard, request).await,
            ShardRequest::Status { reply } => {
                let _ = reply.send_async(status(&shard)).await;
            }
            ShardRequest::Fence {
                topic,
                partition,
                reply,
            } => {
                if let Some(peers) = &shard.shared.peers {
                    peers.ownership.fence(topic, partition);
                }
                let end = shard.partition(topic, partition).log.borrow().next_offset();
                let _ = reply.send_async(end).await;
            }
            ShardRequest::Copy {
                topic,
                partition,
                from,
                reply,
            } => {
                let task_shard = Rc::clone(&shard);
                shard.tasks.spawn(async move {
                    let shard = task_shard;
                    // Only durable records are copied: wait (bounded) for the ones asked.
                    let local = Rc::clone(shard.partition(topic, partition));
                    let deadline = Instant::now() + COPY_WAIT_MAX;
                    loop {
                        let seen = local.appends();
                        let (durable, next) = {
                            let log = local.log.borrow();
                            (log.committed_offset(), log.next_offset())
                        };
                        if durable > from || next <= from || Instant::now() >= deadline {
                            break;
                        }
                        let control = &shard.shared.control;
                        if control.is_stopping() {
                            break;
                        }
                        until_append(&local, seen, control, Some(deadline)).await;
                    }
                    let copied = copy(&shard, topic, partition, from);
                    let _ = reply.send_async(copied).await;
                });
            }
            ShardRequest::State {
                stage,
                partition,
                key,
                reply,
            } => {
                let states = shard.states.borrow().get(&(stage, partition)).cloned();
                let state = states.map(|s| s.borrow().get(&key).cloned());
                let _ = reply.send_async(state).await;
            }
            ShardRequest::Answer { job, answer } => {
                if let Some(waiter) = shard.jobs.borrow_mut().remove(&job) {
                    // The caller may have timed out and gone; the answer is dropped then.
                    let _ = waiter.try_send(answer);
                } else if let Some(gather) = shard.gathers.borrow_mut().remove(&job) {
                    // A branch's answer to a scatter_gather stage; bounded by its window.
                    let _ = gather.try_send((job, answer));
                }
            }
        }
    }
}

/// How long a copy waits for the records it asks for to become durable.
const COPY_WAIT_MAX: Duration = Duration::from_secs(10);

/// Records a copy takes at most: one batch's worth, like any producer's.
const COPY_RECORDS_MAX: usize = crate::runtime::emitter::BATCH_RECORDS_MAX;
const COPY_BYTES_MAX: usize = crate::runtime::emitter::BATCH_BYTES_MAX;

/// Copied records: `(first offset, count, records in the protocol's encoding)`.
pub type Copied = (u64, u32, Vec<u8>);

fn copy(shard: &Shard, topic: usize, partition: u32, from: u64) -> Result<Copied, EngineError> {
    let log = shard.partition(topic, partition).log.borrow();
    if from < log.start_offset() {
        return Err(EngineError::Unavailable(format!(
            "this peer holds partition {partition} of \"{}\" from offset {} only (retention removed older records), not from {from}",
            shard.shared.spec.topics[topic].name,
            log.start_offset()
        )));
    }
    // A copy is appended as one batch, and a batch must fit in one segment: bound it by
    // the records' size on disk too (the claimer runs the same topic settings).
    let capacity = crate::storage::log::batch_bytes_max_for(log.options().segment_bytes);
    let mut on_disk = 0u64;
    let mut bytes = Vec::new();
    let mut count = 0u32;
    let mut records = log.read_committed(from);
    for view in records.by_ref() {
        let headers: Vec<(&str, &[u8])> = view.headers().collect();
        let frame =
            crate::runtime::bounds::stored_record_bytes(view.key(), view.value(), headers.iter().copied());
        if count > 0
            && (count as usize >= COPY_RECORDS_MAX
                || bytes.len() >= COPY_BYTES_MAX
                || on_disk + frame > capacity)
        {
            break;
        }
        on_disk += frame;
        crate::protocol::wire::encode_record(
            &mut bytes,
            Some(view.timestamp_ms()),
            view.key(),
            view.value(),
            &headers,
        );
        count += 1;
    }
    refuse_damage(count > 0, records.end())?;
    Ok((from, count, bytes))
}

pub fn status(shard: &Shard) -> ShardStatus {
    let spec = &shard.shared.spec;
    let mut partitions: Vec<PartitionStatus> = shard
        .partitions
        .values()
        .map(|p| {
            let log = p.log.borrow();
            let next = log.next_offset();
            let segments = log.segments();
            PartitionStatus {
                topic: spec.topics[p.topic].name.clone(),
                partition: p.partition,
                shard: shard.index,
                start_offset: log.start_offset(),
                next_offset: next,
                durable_offset: log.durable_offset(),
                segments: segments.len(),
                bytes: segments.iter().map(|s| s.data_bytes).sum(),
                consumers: p
                    .readers()
                    .into_iter()
                    .map(|(name, position)| ConsumerStatus {
                        name,
                        position,
                        // Never phantom after retention: only records held count.
                        lag: next.saturating_sub(position.max(log.start_offset())),
                    })
                    .collect(),
                named: shard
                    .consumers
                    .of_partition(p.topic, p.partition)
                    .into_iter()
                    .map(|(group, c)| NamedConsumerStatus {
                        group,
                        committed: c.committed,
                        lag: c.lag(log.start_offset(), log.committed_offset()),
                        claimed: c.claim.map_or(0, |claim| claim.range.to - claim.range.from),
                        reclaims: c.reclaims,
                        state: c.state.name().into(),
                        skipped: c.skipped,
                    })
                    .collect(),
                standing: shard
                    .shared
                    .peers
                    .as_ref()
                    .map(|peers| peers.ownership.standing(p.topic, p.partition)),
                replica: shard
                    .shared
                    .peers
                    .as_ref()
                    .filter(|peers| peers.replication.is_replicated(p.topic))
                    .map(|peers| {
                        let state = peers.replication.state(p.topic, p.partition);
                        let view = state.view();
                        let (alive, needed) = crate::runtime::cluster::replica::replicas_alive(peers, state);
                        ReplicaStatus {
                            role: view.role.to_string(),
                            epoch: view.epoch,
                            leader: view.leader.map(|a| a.to_string()),
                            replicas: view.replicas.iter().map(|a| a.to_string()).collect(),
                            learners: view.learners.iter().map(|a| a.to_string()).collect(),
                            moving: view.role == "leader"
                                && crate::runtime::cluster::controller::moving(peers, p.topic, p.partition),
                            hwm: view.hwm,
                            followers: view.followers.iter().map(|(a, e)| (a.to_string(), *e)).collect(),
                            alive,
                            needed,
                            absent: crate::runtime::cluster::controller::absent(peers, p.topic, p.partition),
                            damaged: state.damage(),
                        }
                    }),
                peer: None,
                unreadable: log.damage().map(str::to_owned),
            }
        })
        .collect();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    ShardStatus {
        shard: shard.index,
        partitions,
        jobs_waiting: shard.jobs.borrow().len(),
        load: shard.load(),
    }
}

/// A fetch's answer: a FETCHED frame of the records (written straight from the log in
/// the protocol's record encoding, `protocol::records`, so that no door copies them
/// again), or why not (the door encodes that in its own protocol).
pub type FetchAnswer = Result<Vec<u8>, EngineError>;

/// Reads a partition this shard owns into a FETCHED frame, waiting up to the order's
/// wait for a first record. Read committed: only durable records are served, and the
/// frame's end is the durable point. End-of-input markers are engine bookkeeping and
/// skipped.
/// A fetch served by whoever owns the partition: this shard, another shard of this peer,
/// or the peer that serves it (a partition this peer is taking over is refused as such).
pub async fn fetch(shard: &Rc<Shard>, order: FetchOrder) -> FetchAnswer {
    let topic = &shard.shared.spec.topics[order.topic].name;
    if let Some(peers) = &shard.shared.peers {
        if let Some(peer) = peers.owner(order.topic, order.partition) {
            let (tx, rx) = flume::bounded(1);
            let fetch = crate::runtime::cluster::peers::Fetch {
                topic: topic.clone(),
                order,
                reply: tx,
            };
            peers
                .fetcher(peer)
                .send_async(fetch)
                .await
                .map_err(|_| EngineError::Stopping)?;
            return rx.recv_async().await.map_err(|_| EngineError::Stopping)?;
        }
        if !peers.ownership.serving(order.topic, order.partition) {
            return Err(EngineError::TakingOver {
                topic: topic.clone(),
                partition: order.partition,
            });
        }
    }
    let to = crate::runtime::placement::owner(order.partition, shard.shared.shards);
    if to == shard.index {
        return fetch_local(shard, &order).await;
    }
    let (tx, rx) = flume::bounded(1);
    let request = ShardRequest::Fetch { order, reply: tx };
    shard.shared.services[to]
        .send_async(request)
        .await
        .map_err(|_| EngineError::Stopping)?;
    rx.recv_async().await.map_err(|_| EngineError::Stopping)?
}

pub async fn fetch_local(shard: &Shard, order: &FetchOrder) -> FetchAnswer {
    let Some(partition) = shard.partitions.get(&(order.topic, order.partition)) else {
        return Err(EngineError::Internal(
            "fetch sent to a shard that does not own the partition".into(),
        ));
    };
    if let Some(error) = shard.unconfirmed(order.topic, order.partition) {
        return Err(error);
    }
    let deadline = Instant::now() + Duration::from_millis(order.wait_ms.into()).min(FETCH_WAIT_MAX);
    let position = {
        let log = partition.log.borrow();
        match order.from {
            FetchFrom::Offset(o) => o.max(log.start_offset()),
            FetchFrom::Earliest => log.start_offset(),
            FetchFrom::Latest => log.committed_offset(),
            FetchFrom::Time(t) => log.offset_at_time(t)?.unwrap_or(log.committed_offset()),
        }
    };
    loop {
        let seen = partition.appends();
        if partition.log.borrow().committed_offset() > position
            || Instant::now() >= deadline
            || shard.shared.control.is_stopping()
        {
            break;
        }
        // A long poll: woken by the append it waits for, or its deadline.
        until_append(partition, seen, &shard.shared.control, Some(deadline)).await;
    }
    let log = partition.log.borrow();
    let mut out = Vec::new();
    if order.batches {
        let mut writer = begin_batches(
            &mut out,
            order.request_id,
            log.start_offset(),
            log.committed_offset(),
            position,
        );
        let mut batches = log.read_committed_batches(position);
        copy_batches(
            &mut writer,
            &mut out,
            batches.by_ref(),
            order.max_records,
            order.max_bytes,
        );
        refuse_damage(writer.count() > 0, batches.end())?;
        writer.finish(&mut out);
        return Ok(out);
    }
    let mut writer = RecordsWriter::fetched(
        &mut out,
        order.request_id,
        log.start_offset(),
        log.committed_offset(),
    );
    copy_read(
        &mut writer,
        &mut out,
        log.read_committed(position),
        log.committed_offset().saturating_sub(position),
        order.max_records,
        order.max_bytes,
    )?;
    writer.finish(&mut out);
    Ok(out)
}

/// `copy_records` over a read of the log, refused if the read met damage before it gave
/// a record (`refuse_damage`).
pub fn copy_read(
    writer: &mut RecordsWriter,
    out: &mut Vec<u8>,
    mut records: crate::storage::Records<'_>,
    available: u64,
    max_records: u32,
    max_bytes: u32,
) -> Result<Option<u64>, EngineError> {
    let read_to = copy_records(writer, out, records.by_ref(), available, max_records, max_bytes);
    refuse_damage(read_to.is_some(), records.end())?;
    Ok(read_to)
}

/// A read that met damage (`storage::reader`) before it gave anything is refused with
/// it, which says what to do; one that gave records first answers with them, and the
/// next read, which starts at the damage, is refused. Never a short answer that looks
/// like the end of the partition.
fn refuse_damage(gave: bool, end: Result<(), crate::storage::StorageError>) -> Result<(), EngineError> {
    match end {
        Err(damage) if !gave => Err(damage.into()),
        _ => Ok(()),
    }
}

/// Pushes stored batches into `writer` as they are (a run of format-1 records is made one
/// batch, converted once), until they hold `max_records` or take `max_bytes` (each
/// clamped to the fetch limits; at least one batch goes, whole).
pub fn copy_batches<'a>(
    writer: &mut RecordsWriter,
    out: &mut Vec<u8>,
    stored: impl IntoIterator<Item = Stored<'a>>,
    max_records: u32,
    max_bytes: u32,
) {
    let max_records = u64::from(max_records.clamp(1, FETCH_RECORDS_MAX));
    let max_bytes = max_bytes.clamp(1, FETCH_BYTES_MAX) as usize;
    let body_start = out.len();
    let mut records = 0u64;
    let mut frames: Vec<RecordView<'a>> = Vec::new();
    // What the format-1 records waiting to become one batch will take, at most.
    let mut pending = 0usize;
    let full = |records: u64, out: &Vec<u8>, pending: usize| {
        records >= max_records || out.len() - body_start + pending >= max_bytes
    };
    for unit in stored {
        match unit {
            Stored::Frame(view) => {
                let headers: Vec<(&str, &[u8])> = view.headers().collect();
                pending +=
                    crate::runtime::bounds::stored_record_bytes(view.key(), view.value(), headers) as usize;
                frames.push(view);
                records += 1;
            }
            Stored::Batch {
                bytes, record_count, ..
            } => {
                push_frames(writer, out, &mut frames);
                pending = 0;
                if writer.count() > 0 && full(records, out, 0) {
                    return;
                }
                writer.push_bytes(out, bytes);
                records += u64::from(record_count);
            }
        }
        if full(records, out, pending) {
            break;
        }
    }
    push_frames(writer, out, &mut frames);
}

/// Format-1 records, as one batch of format 2.
fn push_frames(writer: &mut RecordsWriter, out: &mut Vec<u8>, frames: &mut Vec<RecordView<'_>>) {
    if frames.is_empty() {
        return;
    }
    let headers: Vec<Vec<Header<'_>>> = frames
        .iter()
        .map(|v| v.headers().map(|(name, value)| Header { name, value }).collect())
        .collect();
    let records: Vec<Record<'_>> = frames
        .iter()
        .zip(&headers)
        .map(|(v, headers)| Record {
            timestamp_ms: v.timestamp_ms(),
            key: v.key(),
            value: v.value(),
            headers,
        })
        .collect();
    let mut batch = Vec::new();
    encode_batch(&records, frames[0].offset(), false, &mut batch);
    writer.push_bytes(out, &batch);
    frames.clear();
}

/// Pushes `views` into `writer`, skipping end-of-input markers (engine bookkeeping),
/// until `max_records` are written or they take `max_bytes` (each clamped to the fetch
/// limits; at least one record goes). `available` is how many records `views` can hold
/// at most (the log's bound): with the first record's size it sizes `out` once, so a
/// claim of a thousand records does not grow the frame a dozen times, copying it each
/// time. Returns the offset after the last record read, markers included.
pub fn copy_records<'a>(
    writer: &mut RecordsWriter,
    out: &mut Vec<u8>,
    views: impl IntoIterator<Item = RecordView<'a>>,
    available: u64,
    max_records: u32,
    max_bytes: u32,
) -> Option<u64> {
    let max_records = max_records.clamp(1, FETCH_RECORDS_MAX);
    let max_bytes = max_bytes.clamp(1, FETCH_BYTES_MAX) as usize;
    let body_start = out.len();
    let mut read_to = None;
    for view in views {
        if writer.count() >= max_records || (writer.count() > 0 && out.len() - body_start >= max_bytes) {
            break;
        }
        read_to = Some(view.offset() + 1);
        let headers: Vec<(&str, &[u8])> = view.headers().collect();
        if headers.iter().any(|(name, _)| *name == END_HEADER) {
            continue;
        }
        let before = out.len();
        writer.push(
            out,
            view.offset(),
            view.timestamp_ms(),
            view.key(),
            view.value(),
            &headers,
        );
        if writer.count() == 1 {
            out.reserve(room_for_the_rest(
                out.len() - before,
                available,
                max_records,
                max_bytes,
            ));
        }
    }
    read_to
}

/// Bytes to reserve after a first record of `first` bytes: as many more of its size as
/// `available` and `max_records` allow, never more than `max_bytes` (the frame's bound;
/// records of other sizes grow it as usual).
fn room_for_the_rest(first: usize, available: u64, max_records: u32, max_bytes: usize) -> usize {
    let rest = available.min(u64::from(max_records)).saturating_sub(1);
    usize::try_from(rest).map_or(max_bytes, |rest| first.saturating_mul(rest).min(max_bytes))
}

#[cfg(test)]
mod tests {
    use super::room_for_the_rest;

    #[test]
    fn a_frame_is_sized_for_the_records_the_log_holds_and_never_past_its_byte_bound() {
        // A thousand asked, five held: room for four more of the first's size.
        assert_eq!(room_for_the_rest(110, 5, 1000, 1 << 20), 440);
        // Ten thousand held, a thousand asked: room for 999 more.
        assert_eq!(room_for_the_rest(110, 10_000, 1000, 1 << 20), 109_890);
        // Large records: never more than the frame's byte bound.
        assert_eq!(room_for_the_rest(100_000, 1000, 1000, 1 << 20), 1 << 20);
        assert_eq!(room_for_the_rest(usize::MAX / 2, u64::MAX, 10_000, 4096), 4096);
        // Only the first record there, or none: nothing more.
        assert_eq!(room_for_the_rest(110, 1, 1000, 1 << 20), 0);
        assert_eq!(room_for_the_rest(110, 0, 1000, 1 << 20), 0);
    }
}
