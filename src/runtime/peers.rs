//! The engine's side of the cluster: who owns each partition under the current view,
//! and the links that carry batches and fetches to the peers that own them.
//!
//! One link per (peer, topic): a writer thread sends PRODUCE frames in the order their
//! batches arrive (so one producer's batches to one partition stay in order, as in the
//! local mesh), a reader thread takes ACKED/ERROR frames and tells each batch's waiter.
//! At most `LINK_IN_FLIGHT` batches wait for their acks per link.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use crate::cluster::frame::{self, Body, Fields, Kind};
use crate::cluster::rendezvous;
use crate::cluster::transport::{self, Purpose};
use crate::cluster::{Cluster, View};
use crate::protocol::wire::encode_record;
use crate::protocol::{ErrorCode, FetchFrom, ProtocolError};
use crate::runtime::error::RuntimeError;
use crate::runtime::mesh::{Ack, Batch, CHANNEL_BATCHES_MAX, Payload, RemoteRoute};
use crate::runtime::service::FetchOrder;
use crate::runtime::shard::Shared;

/// Batches one link has sent and not yet seen acked.
pub const LINK_IN_FLIGHT: usize = 64;
/// Fetches queued for one peer.
const FETCH_QUEUE: usize = 64;
/// How long a link keeps trying to reach its peer before it gives a batch up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

/// `owners[topic][partition]`: the peer that owns it, `None` for this one.
type Owners = Vec<Vec<Option<SocketAddr>>>;

pub struct Peers {
    pub cluster: Arc<Cluster>,
    topics: Vec<(String, u32)>,
    owners: RwLock<(u64, Arc<Owners>)>,
    links: Mutex<HashMap<(SocketAddr, usize), flume::Sender<Batch>>>,
    fetchers: Mutex<HashMap<SocketAddr, flume::Sender<Fetch>>>,
    shared: OnceLock<Weak<Shared>>,
}

/// A fetch for a partition another peer owns, and where its answer frame goes.
pub struct Fetch {
    pub topic: String,
    pub order: FetchOrder,
    pub reply: flume::Sender<Vec<u8>>,
}

impl Peers {
    pub fn new(cluster: Arc<Cluster>, topics: Vec<(String, u32)>) -> Peers {
        let owners = owners_of(&cluster.view.get(), &topics);
        Peers {
            cluster,
            topics,
            owners: RwLock::new((0, Arc::new(owners))),
            links: Mutex::new(HashMap::new()),
            fetchers: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
        }
    }

    /// Links report a lost peer to the engine through this.
    pub fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(Arc::downgrade(shared));
    }

    /// Owners under the current view, recomputed when the view changed.
    pub fn owners(&self) -> Arc<Owners> {
        let version = self.cluster.view.version();
        {
            let slot = self.owners.read().unwrap_or_else(|e| e.into_inner());
            if slot.0 == version {
                return Arc::clone(&slot.1);
            }
        }
        let view = self.cluster.view.get();
        let owners = Arc::new(owners_of(&view, &self.topics));
        *self.owners.write().unwrap_or_else(|e| e.into_inner()) = (view.version, Arc::clone(&owners));
        owners
    }

    /// The peer owning `partition` of `topic`; `None` if this one does.
    pub fn owner(&self, topic: usize, partition: u32) -> Option<SocketAddr> {
        self.owners()[topic][partition as usize]
    }

    /// Partitions this peer's view gives each peer: `(address, count)`.
    pub fn partition_counts(&self) -> HashMap<SocketAddr, usize> {
        let mut counts = HashMap::new();
        for topic in self.owners().iter() {
            for owner in topic {
                *counts.entry(owner.unwrap_or(self.cluster.me.addr)).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Queues a fetch for the peer `to`.
    pub fn fetcher(&self, to: SocketAddr) -> flume::Sender<Fetch> {
        let mut fetchers = self.fetchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = fetchers.get(&to)
            && !sender.is_disconnected()
        {
            return sender.clone();
        }
        let (tx, rx) = flume::bounded(FETCH_QUEUE);
        let cluster = self.cluster.cluster_id.clone();
        let me = self.cluster.me.addr;
        let spawned = std::thread::Builder::new()
            .name("flowd-peer-fetch".into())
            .spawn(move || run_fetcher(to, cluster, me, rx));
        if spawned.is_ok() {
            fetchers.insert(to, tx.clone());
        }
        tx
    }

    fn link(&self, to: SocketAddr, topic: usize) -> flume::Sender<Batch> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = links.get(&(to, topic))
            && !sender.is_disconnected()
        {
            return sender.clone();
        }
        let (tx, rx) = flume::bounded(CHANNEL_BATCHES_MAX);
        let link = Arc::new(Link {
            to,
            topic: self.topics[topic].0.clone(),
            cluster: self.cluster.cluster_id.clone(),
            me: self.cluster.me.addr,
            pending: Mutex::new(HashMap::new()),
            room: Condvar::new(),
            shared: self.shared.get().cloned(),
        });
        let spawned = std::thread::Builder::new()
            .name("flowd-peer-link".into())
            .spawn(move || link.run(rx));
        if spawned.is_ok() {
            links.insert((to, topic), tx.clone());
        }
        tx
    }
}

impl RemoteRoute for Peers {
    fn route(&self, topic: usize, partition: u32) -> Option<flume::Sender<Batch>> {
        let to = self.owner(topic, partition)?;
        Some(self.link(to, topic))
    }
}

fn owners_of(view: &View, topics: &[(String, u32)]) -> Owners {
    let live = view.live();
    topics
        .iter()
        .map(|(name, partitions)| {
            (0..*partitions)
                .map(|p| {
                    let owner = rendezvous::owner(&live, name, p).peer;
                    (owner.addr != view.me.addr).then_some(owner.addr)
                })
                .collect()
        })
        .collect()
}

/// One (peer, topic) link.
struct Link {
    to: SocketAddr,
    topic: String,
    cluster: String,
    me: SocketAddr,
    /// Request id -> the batch's partition and waiter.
    pending: Mutex<HashMap<u64, (u32, Ack)>>,
    room: Condvar,
    shared: Option<Weak<Shared>>,
}

impl Link {
    fn run(self: Arc<Self>, batches: flume::Receiver<Batch>) {
        let mut stream: Option<TcpStream> = None;
        let mut next_id: u64 = 1;
        let mut out = Vec::new();
        while let Ok(batch) = batches.recv() {
            if stream.is_none() {
                stream = self.connect();
            }
            let Some(writer) = stream.as_mut() else {
                self.give_up(batch.partition, &batch.ack, "cannot connect");
                continue;
            };
            out.clear();
            encode_produce(&mut out, next_id, &self.topic, &batch);
            {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                while pending.len() >= LINK_IN_FLIGHT {
                    pending = self.room.wait(pending).unwrap_or_else(|e| e.into_inner());
                }
                pending.insert(next_id, (batch.partition, batch.ack));
            }
            next_id += 1;
            if let Err(error) = writer.write_all(&out) {
                tracing::warn!("lost the link to peer {}: {error}", self.to);
                let _ = writer.shutdown(std::net::Shutdown::Both);
                stream = None;
                // The reader sees the shutdown and fails what is pending.
            }
        }
    }

    /// Connects (retrying for a while: the peer may be starting) and starts the reader.
    fn connect(self: &Arc<Self>) -> Option<TcpStream> {
        let deadline = std::time::Instant::now() + CONNECT_PATIENCE;
        let mut pause = Duration::from_millis(20);
        loop {
            match transport::connect(self.to, &self.cluster, self.me, Purpose::Data) {
                Ok(stream) => {
                    let reader = stream.try_clone().ok()?;
                    let this = Arc::clone(self);
                    std::thread::Builder::new()
                        .name("flowd-peer-acks".into())
                        .spawn(move || this.read_acks(reader))
                        .ok()?;
                    return Some(stream);
                }
                Err(error) if std::time::Instant::now() >= deadline => {
                    tracing::warn!("cannot reach peer {}: {error}", self.to);
                    return None;
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn read_acks(&self, mut stream: TcpStream) {
        let reason = loop {
            let frame = match frame::read(&mut stream) {
                Ok(Some(frame)) => frame,
                Ok(None) => break "the peer closed the connection".to_string(),
                Err(error) => break error.to_string(),
            };
            let Some((partition, ack)) = self.take(frame.request) else {
                continue;
            };
            let mut fields = Fields(&frame.body);
            match frame.kind {
                Kind::Acked => match (fields.u64(), fields.u64()) {
                    (Ok(first), Ok(next)) => ack.durable(partition, first, next),
                    _ => break "a malformed ACKED frame".to_string(),
                },
                Kind::Error => {
                    let (code, message) = frame::read_error(&frame.body);
                    let code = ErrorCode::from_u16(code).unwrap_or(ErrorCode::Unavailable);
                    self.fail(&ack, ProtocolError::new(code, message));
                }
                other => break format!("an unexpected {other:?} frame"),
            }
        };
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let pending: Vec<(u32, Ack)> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, v)| v)
            .collect();
        self.room.notify_all();
        for (partition, ack) in pending {
            self.give_up(partition, &ack, &reason);
        }
    }

    fn take(&self, request: u64) -> Option<(u32, Ack)> {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request);
        self.room.notify_all();
        taken
    }

    /// A batch whose outcome is unknown: it may have been written.
    fn give_up(&self, partition: u32, ack: &Ack, reason: &str) {
        let error = ProtocolError::new(
            ErrorCode::Unavailable,
            format!(
                "the peer {} owning partition {partition} of \"{}\" did not answer ({reason}); the records may or may not have been written",
                self.to, self.topic
            ),
        );
        self.fail(ack, error);
    }

    fn fail(&self, ack: &Ack, error: ProtocolError) {
        if let Ack::Generation(_) = ack
            && let Some(shared) = self.shared.as_ref().and_then(Weak::upgrade)
        {
            shared.control.fail(RuntimeError::Peer {
                peer: self.to,
                reason: error.message.clone(),
            });
        }
        ack.failed(error);
    }
}

/// A PRODUCE frame for `batch`: its records in the protocol's record encoding.
fn encode_produce(out: &mut Vec<u8>, request: u64, topic: &str, batch: &Batch) {
    let mut body = Body::default().str8(topic).u32(batch.partition);
    match &batch.records {
        Payload::Wire {
            bytes,
            count,
            stamp_ms,
        } => {
            body = body.u32(*count as u32).i64(*stamp_ms).bytes(bytes);
        }
        Payload::Owned(records) => {
            body = body.u32(records.len() as u32).i64(0);
            for r in records {
                let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                encode_record(
                    &mut body.0,
                    Some(r.timestamp_ms),
                    r.key.as_deref(),
                    &r.value,
                    &headers,
                );
            }
        }
    }
    frame::encode(out, Kind::Produce, request, &body.0);
}

/// A FETCH frame's body for `order` on `topic`.
pub fn encode_fetch(topic: &str, order: &FetchOrder) -> Vec<u8> {
    let (from, offset) = match order.from {
        FetchFrom::Offset(o) => (0, o),
        FetchFrom::Earliest => (1, 0),
        FetchFrom::Latest => (2, 0),
        FetchFrom::Time(t) => (3, t as u64),
    };
    Body::default()
        .str8(topic)
        .u32(order.partition)
        .u8(from)
        .u64(offset)
        .u32(order.max_records)
        .u32(order.max_bytes)
        .u32(order.wait_ms)
        .0
}

/// Serves the fetches for one peer, one at a time over one connection.
fn run_fetcher(to: SocketAddr, cluster: String, me: SocketAddr, fetches: flume::Receiver<Fetch>) {
    let mut stream: Option<TcpStream> = None;
    let mut out = Vec::new();
    while let Ok(fetch) = fetches.recv() {
        let request_id = fetch.order.request_id;
        let answer = (|| -> Result<Vec<u8>, String> {
            if stream.is_none() {
                stream =
                    Some(transport::connect(to, &cluster, me, Purpose::Data).map_err(|e| e.to_string())?);
            }
            let s = stream.as_mut().expect("connected above");
            // A long poll may wait this long at the owner, plus the way there and back.
            s.set_read_timeout(Some(
                Duration::from_millis(u64::from(fetch.order.wait_ms)) + Duration::from_secs(10),
            ))
            .map_err(|e| e.to_string())?;
            out.clear();
            frame::encode(
                &mut out,
                Kind::Fetch,
                request_id,
                &encode_fetch(&fetch.topic, &fetch.order),
            );
            s.write_all(&out).map_err(|e| e.to_string())?;
            match frame::read(s).map_err(|e| e.to_string())? {
                Some(f) if f.kind == Kind::Frame => Ok(f.body),
                Some(f) if f.kind == Kind::Error => Err(frame::read_error(&f.body).1),
                Some(f) => Err(format!("an unexpected {:?} frame", f.kind)),
                None => Err("the peer closed the connection".into()),
            }
        })();
        let frame = answer.unwrap_or_else(|reason| {
            stream = None;
            let error = ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "the peer {to} owning partition {} of \"{}\" did not answer the fetch: {reason}",
                    fetch.order.partition, fetch.topic
                ),
            );
            crate::runtime::service::error_frame(request_id, &error)
        });
        let _ = fetch.reply.send(frame);
    }
}
