//! The cross-core mesh: bounded channels carrying batches of records to the shard that
//! owns their partition, and the acknowledgements that come back.
//!
//! One bounded flume channel per (topic, destination shard), shared by every sender, so
//! that a full channel slows exactly the producers writing into that topic (a slow stage
//! never blocks an unrelated one) and the waits follow the dataflow's acyclic graph,
//! which cannot deadlock. Each sender's batches arrive in the order sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::storage::batch::CheckedBatch;
use crate::storage::{Header, Record};

/// Batches a channel holds before its senders wait.
pub const CHANNEL_BATCHES_MAX: usize = 16;

/// A header's name on a record on its way: the engine's own are `&'static str`, a
/// client's (carried from a stage's input to its outputs) are owned.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// A header borrowed from a stored record (a client's, carried on), owned to go on.
pub fn owned_header((name, value): (&str, &[u8])) -> (HeaderName, Vec<u8>) {
    (HeaderName::Owned(name.to_owned()), value.to_vec())
}

/// A record on its way to its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(HeaderName, Vec<u8>)>,
}

impl OwnedRecord {
    pub fn byte_len(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }
}

/// Records for one partition, appended as one atomic batch.
#[derive(Debug)]
pub struct Batch {
    pub partition: u32,
    pub records: Payload,
    /// Told when the batch is durable.
    pub ack: Ack,
    /// A copy of another peer's records taking a partition over: appended only where
    /// its first record keeps its offset, and while the partition is still being taken.
    pub copy_at: Option<u64>,
    /// When a peer first refused it because the partition moves: it is routed again
    /// until it lands, for a bounded time from then.
    pub refused: Option<std::time::Instant>,
    /// A batch of this partition's leader in that epoch, for this peer's replica:
    /// appended as it is, at the offset it has.
    pub replica: Option<u32>,
    /// An engine producer's batch sent to a leader that was lost before it answered (or
    /// that refused it), so it may be written: the partition's leader appends it only
    /// if its log holds no record from this offset on with the batch's last provenance
    /// point (`flowd-src`), so that sending it again never writes it twice.
    pub uncertain: Option<u64>,
    /// A stage's batch made while this peer led the stage's input partition in this
    /// epoch: the output partition's leader refuses it once a later lead's batch of
    /// the same producer came (`stale.rs`).
    pub lead: Option<u32>,
    /// Written on this peer or not at all: a batch whose door checked it as the
    /// partition's leader (a Kafka idempotent producer's sequences). Refused because the
    /// partition moves, it fails instead of going on to the new leader, whose door never
    /// checked it (its producer sends it again there, after asking Metadata).
    pub here_only: bool,
}

impl Batch {
    pub fn new(partition: u32, records: Payload, ack: Ack) -> Batch {
        Batch {
            partition,
            records,
            ack,
            copy_at: None,
            refused: None,
            replica: None,
            uncertain: None,
            lead: None,
            here_only: false,
        }
    }
}

/// The records of a batch: built by a producer inside the engine, or copied from a
/// client's frame in their wire encoding (validated when the frame was decoded).
#[derive(Debug)]
pub enum Payload {
    Owned(Vec<OwnedRecord>),
    /// A client's batch in the storage format, checked whole at the door, appended as
    /// it came.
    Batch(Box<CheckedBatch>),
    Wire {
        /// Records back to back, each in the protocol's record encoding.
        bytes: Vec<u8>,
        count: usize,
        /// The timestamp of records sent without one: when the server took them.
        stamp_ms: i64,
    },
}

impl Batch {
    /// A batch refused, unwritten, because its partition moves: itself, to be routed to
    /// the partition's next owner, or `None` if it had to be written here (`here_only`),
    /// when it has been failed, saying it was not written.
    pub fn to_route_again(self, topic: &str) -> Option<Batch> {
        if !self.here_only {
            return Some(self);
        }
        self.ack.failed(crate::runtime::error::EngineError::Unavailable(format!(
            "partition {} of \"{topic}\" moved away from this peer before the batch was written; it was not written: send it to the partition's leader now",
            self.partition
        )));
        None
    }

    /// Tells the engine producer that sent it, if one did, that it goes round the
    /// rerouter (`reroute::Queue` marks every batch it takes): its next batches to the
    /// partition wait until it is settled (`Emitter::keep_order`), so that none
    /// overtakes it there.
    pub fn rerouted(&self) {
        if let Some(generation) = self.ack.generation() {
            generation.rerouted[self.partition as usize].store(true, Ordering::Release);
        }
    }

    /// The `flowd-src` header of the batch's last record: the producer and how far its
    /// outputs in this partition are once the batch is written (`provenance`).
    pub fn last_source(&self) -> Option<Vec<u8>> {
        let header = crate::runtime::provenance::SOURCE_HEADER;
        match &self.records {
            Payload::Owned(records) => records
                .last()?
                .headers
                .iter()
                .find(|(name, _)| *name == header)
                .map(|(_, value)| value.clone()),
            Payload::Wire { bytes, count, .. } => {
                let mut cursor = crate::protocol::wire::Cursor::new(bytes);
                let mut last = None;
                for _ in 0..*count {
                    last = Some(cursor.record().ok()?);
                }
                last?
                    .headers
                    .iter()
                    .find(|(name, _)| *name == header)
                    .map(|(_, value)| value.to_vec())
            }
            Payload::Batch(_) => None,
        }
    }
}

/// Who waits for a batch to be durable.
#[derive(Debug)]
pub enum Ack {
    /// A producer inside the engine, counting its generation's batches.
    Generation(Arc<Generation>),
    /// A client request: told the offsets, or why the batch was refused. The number
    /// tells the request's batches apart (two topics may share a partition number).
    Client(flume::Sender<ClientAck>, usize),
    /// A batch another peer routed here, told by its request id.
    Peer(flume::Sender<(u64, ClientAck)>, u64),
    /// A batch the rerouter sent on: `settled` is set once it is acked or failed, so
    /// that the next one for its partition goes only then (`reroute.rs`).
    Watched(Box<Ack>, Arc<std::sync::atomic::AtomicBool>),
}

/// `Ok((batch number, first offset, next offset))` once durable.
pub type ClientAck = Result<(usize, u64, u64), crate::runtime::error::EngineError>;

impl Ack {
    pub fn durable(&self, partition: u32, first: u64, next: u64) {
        match self {
            Ack::Generation(generation) => generation.acked(partition, next),
            // The client may have gone away; nobody is left to tell.
            Ack::Client(tx, part) => drop(tx.try_send(Ok((*part, first, next)))),
            Ack::Peer(tx, request) => drop(tx.try_send((*request, Ok((0, first, next))))),
            Ack::Watched(inner, settled) => {
                inner.durable(partition, first, next);
                settled.store(true, Ordering::Release);
            }
        }
    }

    /// Whether a producer inside the engine waits on it (rather than a client or a peer).
    pub fn is_engine(&self) -> bool {
        self.generation().is_some()
    }

    /// The engine producer's generation it counts in, if an engine producer waits on it.
    pub fn generation(&self) -> Option<&Arc<Generation>> {
        match self {
            Ack::Generation(generation) => Some(generation),
            Ack::Watched(inner, _) => inner.generation(),
            Ack::Client(..) | Ack::Peer(..) => None,
        }
    }

    /// Puts the ack under a watch (`Ack::Watched`): the flag returned is set once the
    /// batch is acked or failed.
    pub fn watch(&mut self) -> Arc<std::sync::atomic::AtomicBool> {
        let settled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inner = std::mem::replace(self, Ack::Peer(flume::bounded(0).0, 0));
        *self = Ack::Watched(Box::new(inner), Arc::clone(&settled));
        settled
    }

    /// Takes the ack from under its watch, if it is under one, telling the watch it is
    /// settled (the batch came back to be routed again); whether it was.
    pub fn unwatch(&mut self) -> bool {
        if !matches!(self, Ack::Watched(..)) {
            return false;
        }
        let Ack::Watched(inner, settled) = std::mem::replace(self, Ack::Peer(flume::bounded(0).0, 0)) else {
            unreachable!("checked above");
        };
        settled.store(true, Ordering::Release);
        *self = *inner;
        self.unwatch();
        true
    }

    /// The batch was not written: it was made for an earlier lead of its producer's
    /// input than one its partition's leader knows of (`stale.rs`), whose lead writes
    /// its outputs. Its producer must not count it as written (`Generation::stale`).
    pub fn stale(&self, latest: u32) {
        match self {
            Ack::Generation(generation) => generation.stale(),
            Ack::Peer(tx, request) => drop(tx.try_send((
                *request,
                Err(crate::runtime::error::EngineError::StaleLead { latest }),
            ))),
            Ack::Client(tx, _) => {
                drop(tx.try_send(Err(crate::runtime::error::EngineError::StaleLead { latest })))
            }
            Ack::Watched(inner, settled) => {
                inner.stale(latest);
                settled.store(true, Ordering::Release);
            }
        }
    }

    /// The batch was refused or cannot be made durable.
    pub fn failed(&self, error: crate::runtime::error::EngineError) {
        match self {
            // An engine producer's batch failing is fatal; the caller stops the engine.
            Ack::Generation(_) => {}
            Ack::Client(tx, _) => drop(tx.try_send(Err(error))),
            Ack::Peer(tx, request) => drop(tx.try_send((*request, Err(error)))),
            Ack::Watched(inner, settled) => {
                inner.failed(error);
                settled.store(true, Ordering::Release);
            }
        }
    }
}

/// The batches one producer sent between two progress snapshots. When `pending` is
/// zero they are all settled, and `ends` says where each partition's last one ended;
/// `stale` says one of them was not written (`Ack::stale`), so that no snapshot from
/// this one on may be stored.
#[derive(Debug)]
pub struct Generation {
    pending: AtomicUsize,
    ends: Vec<AtomicU64>,
    stale: std::sync::atomic::AtomicBool,
    /// Per partition: a batch of it went round the rerouter (`Batch::rerouted`).
    rerouted: Vec<std::sync::atomic::AtomicBool>,
}

impl Generation {
    pub fn new(partitions: u32) -> Arc<Generation> {
        Arc::new(Generation {
            pending: AtomicUsize::new(0),
            ends: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            stale: std::sync::atomic::AtomicBool::new(false),
            rerouted: (0..partitions)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        })
    }

    pub fn sent(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// The batch for `partition` ending before `end` is durable.
    pub fn acked(&self, partition: u32, end: u64) {
        self.ends[partition as usize].fetch_max(end, Ordering::AcqRel);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// A batch of it was refused as an earlier lead's (`Ack::stale`): settled, not
    /// written.
    pub fn stale(&self) {
        self.stale.store(true, Ordering::Release);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a batch of it was refused as an earlier lead's.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Whether a batch of it to `partition` went round the rerouter.
    pub fn was_rerouted(&self, partition: u32) -> bool {
        self.rerouted[partition as usize].load(Ordering::Acquire)
    }

    /// Whether no batch of it waits for its ack.
    pub fn is_durable(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Where the last durable batch to `partition` ended; 0 if none was sent.
    pub fn end(&self, partition: u32) -> u64 {
        self.ends[partition as usize].load(Ordering::Acquire)
    }
}

/// Where batches for partitions another peer owns go (the cluster's links).
pub trait RemoteRoute: Send + Sync {
    /// The peer owning `partition` of `topic`; `None` if this peer owns it.
    fn owner(&self, topic: usize, partition: u32) -> Option<std::net::SocketAddr>;
    /// The channel of batches of `topic` to the peer `to`.
    fn link_to(&self, to: std::net::SocketAddr, topic: usize) -> flume::Sender<Batch>;
}

/// The senders of every (topic, shard) channel; cloned into every shard.
#[derive(Clone)]
pub struct Mesh {
    /// `inboxes[topic][shard]`.
    pub inboxes: Vec<Vec<flume::Sender<Batch>>>,
    /// `copies[topic][shard]`: a follower's copies of its leaders' batches, in a lane of
    /// their own beside the inbox, so that a producer's batch held there for its
    /// partition's readers never holds them (`Shard::wait_for_room`).
    pub copies: Vec<Vec<flume::Sender<Batch>>>,
    /// In a cluster: the partitions other peers own.
    pub remote: Option<Arc<dyn RemoteRoute>>,
}

impl Mesh {
    /// The channel a batch for `partition` of `topic` goes into: the owner shard's inbox
    /// here, or the link to the peer that owns it.
    pub fn sender(&self, topic: usize, partition: u32) -> std::borrow::Cow<'_, flume::Sender<Batch>> {
        self.sender_to(topic, partition, self.route_of(topic, partition))
    }

    /// The channel into `route` (from `route_of`): the link to that peer, or for `None`
    /// the owner shard's inbox here.
    fn sender_to(
        &self,
        topic: usize,
        partition: u32,
        route: Option<std::net::SocketAddr>,
    ) -> std::borrow::Cow<'_, flume::Sender<Batch>> {
        if let (Some(remote), Some(to)) = (&self.remote, route) {
            return std::borrow::Cow::Owned(remote.link_to(to, topic));
        }
        let shards = self.inboxes[topic].len();
        std::borrow::Cow::Borrowed(&self.inboxes[topic][crate::runtime::placement::owner(partition, shards)])
    }

    /// Where a batch for `partition` of `topic` goes now: the peer owning it, or `None`
    /// for this peer's own shard.
    pub fn route_of(&self, topic: usize, partition: u32) -> Option<std::net::SocketAddr> {
        self.remote.as_ref()?.owner(topic, partition)
    }

    /// Sends `batch` to the owner of its partition of `topic`, waiting while that inbox
    /// is full; an error only once the engine is stopping (the inbox is gone).
    pub async fn send(&self, topic: usize, batch: Batch) -> Result<(), crate::runtime::error::EngineError> {
        let route = self.route_of(topic, batch.partition);
        self.send_to(topic, batch, route).await
    }

    /// As `send`, into `route` as `route_of` found it (a producer that looked already).
    pub async fn send_to(
        &self,
        topic: usize,
        batch: Batch,
        route: Option<std::net::SocketAddr>,
    ) -> Result<(), crate::runtime::error::EngineError> {
        self.sender_to(topic, batch.partition, route)
            .send_async(batch)
            .await
            .map_err(|_| crate::runtime::error::EngineError::Stopping)
    }
}

/// The channels one shard receives on: `(topic, inbox, copies)`.
pub type Inboxes = Vec<(usize, flume::Receiver<Batch>, flume::Receiver<Batch>)>;

/// A fresh mesh, and per shard the receivers it serves.
pub fn build(topics: usize, shards: usize) -> (Mesh, Vec<Inboxes>) {
    let mut inboxes = vec![Vec::with_capacity(shards); topics];
    let mut copies = vec![Vec::with_capacity(shards); topics];
    let mut receivers: Vec<Vec<_>> = (0..shards).map(|_| Vec::new()).collect();
    for (topic, (senders, copy_senders)) in inboxes.iter_mut().zip(copies.iter_mut()).enumerate() {
        for shard_receivers in receivers.iter_mut() {
            let (tx, rx) = flume::bounded(CHANNEL_BATCHES_MAX);
            let (copy_tx, copy_rx) = flume::bounded(CHANNEL_BATCHES_MAX);
            senders.push(tx);
            copy_senders.push(copy_tx);
            shard_receivers.push((topic, rx, copy_rx));
        }
    }
    (
        Mesh {
            inboxes,
            copies,
            remote: None,
        },
        receivers,
    )
}

/// Borrowed `Record`s (what the log appends) over a batch's payload. Wire payloads were
/// validated when their frame was decoded; a failure here is a bug, reported as `None`.
pub fn with_payload<R>(payload: &Payload, f: impl FnOnce(&[Record<'_>]) -> R) -> Option<R> {
    match payload {
        Payload::Owned(records) => Some(with_records(records, f)),
        Payload::Batch(batch) => {
            let views: Vec<_> = batch.records().collect();
            let headers: Vec<Vec<Header<'_>>> = views
                .iter()
                .map(|v| v.headers().map(|(name, value)| Header { name, value }).collect())
                .collect();
            let parts = views
                .iter()
                .zip(headers)
                .map(|(v, headers)| (v.timestamp_ms(), v.key(), v.value(), headers))
                .collect();
            Some(with_parts(parts, f))
        }
        Payload::Wire {
            bytes,
            count,
            stamp_ms,
        } => {
            let mut cursor = crate::protocol::wire::Cursor::new(bytes);
            let mut wire = Vec::with_capacity(*count);
            for _ in 0..*count {
                wire.push(cursor.record().ok()?);
            }
            let parts = wire
                .iter()
                .map(|r| {
                    let headers = r
                        .headers
                        .iter()
                        .map(|&(name, value)| Header { name, value })
                        .collect();
                    (r.timestamp_ms.unwrap_or(*stamp_ms), r.key, r.value, headers)
                })
                .collect();
            Some(with_parts(parts, f))
        }
    }
}

/// Borrowed `Record`s (what the log appends) over owned ones.
pub fn with_records<R>(records: &[OwnedRecord], f: impl FnOnce(&[Record<'_>]) -> R) -> R {
    let parts = records
        .iter()
        .map(|r| {
            let headers = r
                .headers
                .iter()
                .map(|(name, value)| Header { name, value })
                .collect();
            (r.timestamp_ms, r.key.as_deref(), r.value.as_slice(), headers)
        })
        .collect();
    with_parts(parts, f)
}

/// `(timestamp, key, value, headers)` of each record, as the `Record`s the log appends.
type Parts<'a> = Vec<(i64, Option<&'a [u8]>, &'a [u8], Vec<Header<'a>>)>;

fn with_parts<R>(parts: Parts<'_>, f: impl FnOnce(&[Record<'_>]) -> R) -> R {
    let records: Vec<Record<'_>> = parts
        .iter()
        .map(|(timestamp_ms, key, value, headers)| Record {
            timestamp_ms: *timestamp_ms,
            key: *key,
            value,
            headers,
        })
        .collect();
    f(&records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::error::EngineError;

    fn client_batch(here_only: bool) -> (Batch, flume::Receiver<ClientAck>) {
        let (tx, rx) = flume::bounded(1);
        let mut batch = Batch::new(
            3,
            Payload::Wire {
                bytes: Vec::new(),
                count: 0,
                stamp_ms: 0,
            },
            Ack::Client(tx, 0),
        );
        batch.here_only = here_only;
        (batch, rx)
    }

    #[test]
    fn a_batch_checked_by_this_peer_as_leader_fails_where_another_is_routed_on() {
        let (batch, answer) = client_batch(false);
        assert!(
            batch.to_route_again("events").is_some(),
            "an ordinary batch goes on"
        );
        assert!(answer.try_recv().is_err(), "and is not answered yet");

        let (batch, answer) = client_batch(true);
        assert!(
            batch.to_route_again("events").is_none(),
            "a here-only batch stops here"
        );
        match answer.try_recv() {
            Ok(Err(EngineError::Unavailable(message))) => {
                assert!(message.contains("it was not written"), "{message}");
                assert!(message.contains("partition 3 of \"events\""), "{message}");
            }
            other => panic!("expected the batch failed as not written, got {other:?}"),
        }
    }
}
