//! The engine's side of the cluster: who owns each partition under the current view,
//! and the links that carry batches and fetches to the peers that own them.
//!
//! One link per (peer, topic): a writer thread sends PRODUCE frames in the order their
//! batches arrive (so one producer's batches to one partition stay in order, as in the
//! local mesh), a reader thread takes ACKED/ERROR frames and tells each batch's waiter.
//! At most `LINK_IN_FLIGHT` batches wait for their acks per link, and a write waits as
//! long as the owner is alive and takes bytes: a slow owner slows its writers, it never
//! fails their batches (backpressure, not a timeout). A batch the owner
//! refuses because the partition moves (REDIRECT), or that could not be sent at all, goes
//! to the rerouter (`reroute.rs`), which sends it on to the owner of the moment.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use crate::cluster::consensus::Metadata;
use crate::cluster::data;
use crate::cluster::frame::{self, Kind};
use crate::cluster::rendezvous;
use crate::cluster::stream::PeerStream;
use crate::cluster::transport::{Dialer, Purpose};
use crate::cluster::{Cluster, View};
use crate::protocol::wire::encode_record;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::cluster::answers::Answerers;
use crate::runtime::cluster::ownership::Ownership;
use crate::runtime::cluster::replica::{Found, ReplicatedTopic, Replication};
use crate::runtime::cluster::reroute;
use crate::runtime::error::EngineError;
use crate::runtime::error::RuntimeError;
use crate::runtime::mesh::{Ack, Batch, CHANNEL_BATCHES_MAX, Payload, RemoteRoute};
use crate::runtime::service::FetchAnswer;
use crate::runtime::service::FetchOrder;
use crate::runtime::shard::Shared;

/// Batches one link has sent and not yet seen acked.
pub const LINK_IN_FLIGHT: usize = 64;
/// Fetches queued for one peer.
const FETCH_QUEUE: usize = 64;
/// How long a link keeps trying to reach its peer before it gives a batch up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);
/// How long a link waits for a peer gossip has alive to take any byte of a batch
/// before it gives the connection up (each wait is the socket's write timeout).
const STUCK_WRITE: Duration = Duration::from_secs(30);

/// A link's queue and the link (for what it has in flight).
type LinkHandle = (flume::Sender<Batch>, Arc<Link>);

/// `owners[topic][partition]`: the peer that owns it, `None` for this one.
type Owners = Vec<Vec<Option<SocketAddr>>>;

pub struct Peers {
    pub cluster: Arc<Cluster>,
    topics: Vec<(String, u32)>,
    owners: RwLock<(u64, Arc<Owners>)>,
    links: Mutex<HashMap<(SocketAddr, usize), LinkHandle>>,
    fetchers: Mutex<HashMap<SocketAddr, flume::Sender<Fetch>>>,
    shared: OnceLock<Weak<Shared>>,
    /// Where each partition stands here: served, being taken over, or away.
    pub ownership: Ownership,
    /// Batches refused because their partition moves, for the rerouter (which counts
    /// them until it sent them on).
    pub reroute: reroute::Queue,
    reroute_rx: Mutex<Option<flume::Receiver<(usize, Batch)>>>,
    /// Batches other peers sent here, queued on a shard and not yet answered: a leaving
    /// peer waits for none, so that no sender is left without an answer.
    pub answering: AtomicUsize,
    /// The replicated partitions: their roles here, quorums and promises.
    pub replication: Arc<Replication>,
    /// Jobs' answers for callers on other peers.
    answerers: Answerers,
}

/// A fetch for a partition another peer owns, and where its answer frame goes.
pub struct Fetch {
    pub topic: String,
    pub order: FetchOrder,
    pub reply: flume::Sender<FetchAnswer>,
}

impl Peers {
    pub fn new(
        cluster: Arc<Cluster>,
        replicated: Vec<ReplicatedTopic>,
        data_dir: &std::path::Path,
        found: Vec<(usize, u32, Found)>,
    ) -> Result<Peers, RuntimeError> {
        let replication = Arc::new(
            Replication::open(cluster.me, replicated.clone(), data_dir, cluster.copy_rate, found)
                .map_err(|reason| RuntimeError::Shard { shard: 0, reason })?,
        );
        let topics: Vec<(String, u32)> = replicated.into_iter().map(|t| (t.name, t.partitions)).collect();
        let answerers = Answerers::new(cluster.dialer.clone());
        let owners = owners_of(
            &cluster.view.get(),
            &cluster.consensus.metadata().get(),
            &replication,
            &topics,
        );
        let (reroute, reroute_rx) = reroute::Queue::new();
        Ok(Peers {
            cluster,
            ownership: Ownership::new(topics.iter().map(|(_, n)| *n)),
            topics,
            owners: RwLock::new((u64::MAX, Arc::new(owners))),
            links: Mutex::new(HashMap::new()),
            fetchers: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
            reroute,
            reroute_rx: Mutex::new(Some(reroute_rx)),
            answering: AtomicUsize::new(0),
            answerers,
            replication,
        })
    }

    /// Starts the rerouter and the hand-over of partitions; links report a lost peer to
    /// the engine through `shared`.
    pub fn attach(self: &Arc<Self>, shared: &Arc<Shared>) -> Result<(), RuntimeError> {
        let _ = self.shared.set(Arc::downgrade(shared));
        // A stray (a group founded alone beside a running one) stops the engine.
        let stopping = Arc::downgrade(shared);
        self.cluster.consensus.on_stray(move |message| {
            if let Some(shared) = stopping.upgrade() {
                shared.control.fail(RuntimeError::StrayGroup(message));
            }
        });
        let thread = |e: std::io::Error| RuntimeError::Shard {
            shard: 0,
            reason: format!("cannot start a cluster thread: {e}"),
        };
        if let Some(refused) = self.reroute_rx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let peers = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("flowd-reroute".into())
                .spawn(move || reroute::run(peers, refused))
                .map_err(thread)?;
        }
        let peers = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("flowd-handover".into())
            .spawn(move || crate::runtime::cluster::handover::run(peers))
            .map_err(thread)?;
        if (0..self.topics.len()).any(|t| self.replication.is_replicated(t)) {
            let peers = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("flowd-replicas".into())
                .spawn(move || crate::runtime::cluster::replica::watch(peers))
                .map_err(thread)?;
            let peers = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("flowd-controller".into())
                .spawn(move || crate::runtime::cluster::controller::run(peers))
                .map_err(thread)?;
        }
        Ok(())
    }

    pub fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.get().and_then(Weak::upgrade)
    }

    pub fn topic_name(&self, topic: usize) -> &str {
        &self.topics[topic].0
    }

    /// `(name, partitions)` of every topic, by index.
    pub fn topics(&self) -> &[(String, u32)] {
        &self.topics
    }

    /// Hands a batch refused because its partition moves to the rerouter (from a shard).
    /// A batch that must be written here or not at all fails instead: it was not written.
    pub async fn refuse(&self, topic: usize, batch: Batch) {
        if let Some(batch) = batch.to_route_again(self.topic_name(topic)) {
            self.reroute.send(topic, batch).await;
        }
    }

    /// `refuse` without waiting: the batch back if the rerouter's queue is full.
    pub fn refuse_now(&self, topic: usize, batch: Batch) -> Option<Batch> {
        let batch = batch.to_route_again(self.topic_name(topic))?;
        self.reroute.try_send(topic, batch)
    }

    /// Batches this peer routes on and has no answer for yet: held by the rerouter,
    /// queued on a link or sent and not acked. A leaving peer waits for zero, so that
    /// no batch it took is left without an answer when it goes.
    pub fn unsettled(&self) -> usize {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        self.reroute.held()
            + links
                .values()
                .map(|(tx, link)| tx.len() + link.lock().batches.len())
                .sum::<usize>()
    }

    /// Where a batch for `partition` of `topic` goes now: the owner peer's link, or this
    /// peer's shard if it serves the partition; `None` while this peer still takes it over.
    pub fn route_now(&self, topic: usize, partition: u32) -> Option<flume::Sender<Batch>> {
        match self.owner(topic, partition) {
            Some(to) => Some(self.link(to, topic)),
            None if self.ownership.serving(topic, partition) => {
                let shared = self.shared()?;
                let shard = crate::runtime::placement::owner(partition, shared.shards);
                Some(shared.mesh.inboxes[topic][shard].clone())
            }
            None => None,
        }
    }

    /// Owners under the current view (and, for replicated topics, the metadata's
    /// leaders), recomputed when either changed.
    pub fn owners(&self) -> Arc<Owners> {
        let metadata = self.cluster.consensus.metadata();
        let version = self.cluster.view.version().wrapping_mul(1 << 20) ^ metadata.version();
        {
            let slot = self.owners.read().unwrap_or_else(|e| e.into_inner());
            if slot.0 == version {
                return Arc::clone(&slot.1);
            }
        }
        let view = self.cluster.view.get();
        let owners = Arc::new(owners_of(&view, &metadata.get(), &self.replication, &self.topics));
        *self.owners.write().unwrap_or_else(|e| e.into_inner()) = (version, Arc::clone(&owners));
        owners
    }

    /// The peer owning `partition` of `topic`; `None` if this one does.
    pub fn owner(&self, topic: usize, partition: u32) -> Option<SocketAddr> {
        self.owners()[topic][partition as usize]
    }

    /// Where the clients of the peer at `peer` connect, as its identity says; `None`
    /// for a peer this one does not know or one without a client listener.
    pub fn client_of(&self, peer: SocketAddr) -> Option<SocketAddr> {
        let view = self.cluster.view.get();
        view.others
            .iter()
            .find(|m| m.id.addr == peer)
            .and_then(|m| m.id.client)
    }

    /// The peers this one sees alive (or suspect) with a Kafka listener, this one
    /// included: the brokers a Kafka door names.
    pub fn kafka_brokers(&self) -> Vec<crate::cluster::identity::PeerId> {
        let view = self.cluster.view.get();
        view.live().into_iter().filter(|id| id.kafka.is_some()).collect()
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

    /// The queue of ANSWER frames for jobs whose callers are on the peer `to`.
    pub fn answerer(&self, to: SocketAddr) -> flume::Sender<Vec<u8>> {
        self.answerers
            .to(to, || self.shared().map(|s| Arc::clone(&s.metrics)))
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
        let dialer = self.cluster.dialer.clone();
        let spawned = std::thread::Builder::new()
            .name("flowd-peer-fetch".into())
            .spawn(move || run_fetcher(to, &dialer, rx));
        if spawned.is_ok() {
            fetchers.insert(to, tx.clone());
        }
        tx
    }

    fn link(&self, to: SocketAddr, topic: usize) -> flume::Sender<Batch> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sender, _)) = links.get(&(to, topic))
            && !sender.is_disconnected()
        {
            return sender.clone();
        }
        let (tx, rx) = flume::bounded(CHANNEL_BATCHES_MAX);
        let link = Arc::new(Link {
            to,
            topic: self.topics[topic].0.clone(),
            dialer: self.cluster.dialer.clone(),
            pending: Mutex::new(Pending::default()),
            room: Condvar::new(),
            shared: self.shared.get().cloned(),
            reroute: self.reroute.clone(),
            topic_index: topic,
            replicated: self.replication.is_replicated(topic),
        });
        let running = Arc::clone(&link);
        let spawned = std::thread::Builder::new()
            .name("flowd-peer-link".into())
            .spawn(move || running.run(rx));
        if spawned.is_ok() {
            links.insert((to, topic), (tx.clone(), link));
        }
        tx
    }
}

impl RemoteRoute for Peers {
    fn owner(&self, topic: usize, partition: u32) -> Option<SocketAddr> {
        Peers::owner(self, topic, partition)
    }

    fn link_to(&self, to: SocketAddr, topic: usize) -> flume::Sender<Batch> {
        self.link(to, topic)
    }
}

/// A replicated partition belongs to the leader the metadata group chose (this peer
/// while it has none: writes wait here until one is chosen); any other to its
/// rendezvous owner among the live peers.
fn owners_of(
    view: &View,
    metadata: &Metadata,
    replication: &Replication,
    topics: &[(String, u32)],
) -> Owners {
    let live = view.placement();
    topics
        .iter()
        .enumerate()
        .map(|(t, (name, partitions))| {
            (0..*partitions)
                .map(|p| {
                    let owner = if replication.is_replicated(t) {
                        metadata.assignment(name, p).map_or(view.me.addr, |a| a.leader)
                    } else {
                        rendezvous::owner(&live, name, p).peer.addr
                    };
                    (owner != view.me.addr).then_some(owner)
                })
                .collect()
        })
        .collect()
}

/// One (peer, topic) link.
struct Link {
    to: SocketAddr,
    topic: String,
    dialer: Dialer,
    pending: Mutex<Pending>,
    room: Condvar,
    shared: Option<Weak<Shared>>,
    /// The rerouter, for batches the owner redirects or that never left.
    reroute: reroute::Queue,
    topic_index: usize,
    /// Whether the topic is replicated: an engine producer's batch lost with its leader
    /// goes to the next one (`lost`).
    replicated: bool,
}

/// What a link's connection owes answers for.
#[derive(Default)]
struct Pending {
    /// Request id -> the connection it went on and the batch, until its answer comes.
    batches: HashMap<u64, (u64, Batch)>,
    /// The connection whose reader runs, if one does: once it stopped, nothing it would
    /// answer may be added (the writer connects anew).
    reading: Option<u64>,
    connections: u64,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(self: Arc<Self>, batches: flume::Receiver<Batch>) {
        let mut stream: Option<PeerStream> = None;
        let mut next_id: u64 = 1;
        let mut out = Vec::new();
        while let Ok(batch) = batches.recv() {
            // A connection whose reader runs, with room for one more batch; two tries.
            let mut slot = None;
            for _ in 0..2 {
                if stream.is_none() {
                    stream = self.connect();
                }
                if stream.is_none() {
                    break;
                }
                let mut pending = self.lock();
                while pending.reading.is_some() && pending.batches.len() >= LINK_IN_FLIGHT {
                    pending = self.room.wait(pending).unwrap_or_else(|e| e.into_inner());
                }
                if let Some(connection) = pending.reading {
                    slot = Some((pending, connection));
                    break;
                }
                drop(pending);
                stream = None;
            }
            let (Some((mut pending, connection)), Some(writer)) = (slot, stream.as_mut()) else {
                // Never sent: route it again (the view may move its partition elsewhere).
                self.reroute(batch);
                continue;
            };
            out.clear();
            encode_produce(&mut out, next_id, &self.topic, &batch);
            if out.len() - 4 > frame::frame_limit() {
                // Never with one dataflow on every peer (a batch fits its segment, and
                // the limit takes the largest): refused here, loudly, not by the owner
                // tearing the link and failing every batch in flight with it.
                drop(pending);
                let error = EngineError::TooLarge(format!(
                    "a batch of {} bytes for partition {} of \"{}\" is over the peer frame limit of {} bytes; run the same dataflow on every peer",
                    out.len() - 4,
                    batch.partition,
                    self.topic,
                    frame::frame_limit()
                ));
                self.fail(&batch.ack, error);
                continue;
            }
            pending.batches.insert(next_id, (connection, batch));
            drop(pending);
            next_id += 1;
            if let Err(error) = self.write_patiently(writer, &out) {
                tracing::warn!("lost the link to peer {}: {error}", self.to);
                let _ = writer.shutdown(std::net::Shutdown::Both);
                stream = None;
                // The reader sees the shutdown and fails what is pending.
            }
        }
    }

    /// Writes all of `bytes` for as long as the peer takes them: an owner slower than
    /// this writer (a full inbox, a pause shorter than failure detection) slows it,
    /// which holds its batches' senders back, rather than tearing the link and failing
    /// every batch in flight. It gives up when gossip has the peer down, the engine
    /// stops, or nothing at all was taken for `STUCK_WRITE` (a peer alive to gossip
    /// whose engine takes nothing).
    fn write_patiently(&self, writer: &mut PeerStream, mut bytes: &[u8]) -> std::io::Result<()> {
        let mut progress = std::time::Instant::now();
        while !bytes.is_empty() {
            match writer.write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    progress = std::time::Instant::now();
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.is_down() || self.is_stopping() {
                        return Err(error);
                    }
                    if progress.elapsed() >= STUCK_WRITE {
                        return Err(std::io::Error::new(
                            error.kind(),
                            format!(
                                "it took nothing for {} s though gossip has it alive",
                                STUCK_WRITE.as_secs()
                            ),
                        ));
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn is_stopping(&self) -> bool {
        self.shared
            .as_ref()
            .and_then(Weak::upgrade)
            .is_none_or(|shared| shared.control.is_stopping())
    }

    /// Whether this peer's view has the link's peer down.
    fn is_down(&self) -> bool {
        let Some(shared) = self.shared.as_ref().and_then(Weak::upgrade) else {
            return false;
        };
        shared.peers.as_ref().is_some_and(|peers| {
            let view = peers.cluster.view.get();
            view.others.iter().any(|m| m.id.addr == self.to) && view.member(self.to).is_none()
        })
    }

    /// Connects (retrying for a while: the peer may be starting) and starts the reader.
    fn connect(self: &Arc<Self>) -> Option<PeerStream> {
        let deadline = std::time::Instant::now() + CONNECT_PATIENCE;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.dialer.connect(self.to, Purpose::Data) {
                Ok(stream) => {
                    let reader = stream.try_clone().ok()?;
                    let this = Arc::clone(self);
                    let connection = {
                        let mut pending = self.lock();
                        pending.connections += 1;
                        pending.reading = Some(pending.connections);
                        pending.connections
                    };
                    let spawned = std::thread::Builder::new()
                        .name("flowd-peer-acks".into())
                        .spawn(move || this.read_acks(reader, connection));
                    if spawned.is_err() {
                        self.lock().reading = None;
                        return None;
                    }
                    return Some(stream);
                }
                // Gossip says it is down: its batches are routed again at once (to whoever
                // owns or leads their partitions by then) rather than wait out the patience.
                Err(error) if std::time::Instant::now() >= deadline || self.is_down() => {
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

    fn read_acks(&self, mut stream: PeerStream, connection: u64) {
        let reason = loop {
            let frame = match frame::read(&mut stream) {
                Ok(Some(frame)) => frame,
                Ok(None) => break "the peer closed the connection".to_string(),
                Err(error) => break error.to_string(),
            };
            let Some(batch) = self.take(frame.request) else {
                continue;
            };
            match frame.kind {
                Kind::Acked => match data::decode_acked(&frame.body) {
                    Ok((first, next)) => batch.ack.durable(batch.partition, first, next),
                    Err(_) => {
                        self.give_up(batch, "a malformed ACKED frame");
                        break "a malformed ACKED frame".to_string();
                    }
                },
                Kind::Redirect => self.reroute(batch),
                Kind::Stale => match data::decode_stale(&frame.body) {
                    Ok(latest) => batch.ack.stale(latest),
                    Err(_) => {
                        self.give_up(batch, "a malformed STALE frame");
                        break "a malformed STALE frame".to_string();
                    }
                },
                Kind::Error => {
                    let (code, message) = frame::read_error(&frame.body);
                    let code = ErrorCode::from_u16(code).unwrap_or(ErrorCode::Unavailable);
                    // Refused, or written without its quorum in time: it may be written.
                    self.lost(batch, ProtocolError::new(code, message).into());
                }
                other => {
                    self.give_up(batch, "an unexpected answer");
                    break format!("an unexpected {other:?} frame");
                }
            }
        };
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let pending: Vec<Batch> = {
            let mut pending = self.lock();
            if pending.reading == Some(connection) {
                pending.reading = None;
            }
            // In the order they were sent: a producer's batches to a partition are routed
            // again in their order.
            let mut ours: Vec<u64> = pending
                .batches
                .iter()
                .filter(|(_, (c, _))| *c == connection)
                .map(|(id, _)| *id)
                .collect();
            ours.sort_unstable();
            ours.iter()
                .filter_map(|id| pending.batches.remove(id))
                .map(|(_, batch)| batch)
                .collect()
        };
        self.room.notify_all();
        for batch in pending {
            self.give_up(batch, &reason);
        }
    }

    fn reroute(&self, batch: Batch) {
        self.reroute.send_blocking(self.topic_index, batch);
    }

    fn take(&self, request: u64) -> Option<Batch> {
        let taken = self.lock().batches.remove(&request).map(|(_, batch)| batch);
        self.room.notify_all();
        taken
    }

    /// A batch whose outcome is unknown: it may have been written.
    fn give_up(&self, batch: Batch, reason: &str) {
        let error = EngineError::Unavailable(format!(
            "the peer {} owning partition {} of \"{}\" did not answer ({reason}); the records may or may not have been written",
            self.to, batch.partition, self.topic
        ));
        self.lost(batch, error);
    }

    /// A batch that may or may not be written. An engine producer's batch to a
    /// replicated partition goes to whichever peer leads it next, marked uncertain: that
    /// leader writes it only if it does not hold it yet (from where the producer's last
    /// acked batch there ended), so it is written once either way. Anything else fails
    /// with `error` (an engine producer's stops the engine: its restart settles it).
    fn lost(&self, mut batch: Batch, error: EngineError) {
        if let Some(generation) = batch.ack.generation()
            && self.replicated
        {
            let from = generation.end(batch.partition);
            batch.uncertain = Some(batch.uncertain.map_or(from, |f| f.min(from)));
            tracing::info!(
                "a batch for partition {} of \"{}\" goes to its next leader, written there only if it is not yet: {error}",
                batch.partition,
                self.topic
            );
            self.reroute(batch);
            return;
        }
        self.fail(&batch.ack, error);
    }

    fn fail(&self, ack: &Ack, error: EngineError) {
        if ack.is_engine()
            && let Some(shared) = self.shared.as_ref().and_then(Weak::upgrade)
        {
            shared.control.fail(RuntimeError::Peer {
                peer: self.to,
                reason: error.to_string(),
            });
        }
        ack.failed(error);
    }
}

/// A PRODUCE frame for `batch`: its records in the protocol's record encoding (a
/// PRODUCE_AGAIN for a batch that may be written already).
fn encode_produce(out: &mut Vec<u8>, request: u64, topic: &str, batch: &Batch) {
    let body = match &batch.records {
        Payload::Wire {
            bytes,
            count,
            stamp_ms,
        } => data::produce_head(topic, batch.partition, *count as u32, *stamp_ms).bytes(bytes),
        // A client's batch goes on to its owner converted once to the peer wire's
        // records (its timestamps are stamped by now).
        Payload::Batch(checked) => {
            let mut body = data::produce_head(topic, batch.partition, checked.record_count(), 0);
            for r in checked.records() {
                let headers: Vec<(&str, &[u8])> = r.headers().collect();
                encode_record(&mut body.0, Some(r.timestamp_ms()), r.key(), r.value(), &headers);
            }
            body
        }
        Payload::Owned(records) => {
            let mut body = data::produce_head(topic, batch.partition, records.len() as u32, 0);
            for r in records {
                let headers: Vec<(&str, &[u8])> = r
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_ref(), v.as_slice()))
                    .collect();
                encode_record(
                    &mut body.0,
                    Some(r.timestamp_ms),
                    r.key.as_deref(),
                    &r.value,
                    &headers,
                );
            }
            body
        }
    };
    match (batch.lead, batch.uncertain) {
        (Some(lead), again) => frame::encode(
            out,
            Kind::ProduceLed,
            request,
            &data::encode_produce_led(lead, again, &body.0),
        ),
        (None, None) => frame::encode(out, Kind::Produce, request, &body.0),
        (None, Some(from)) => frame::encode(
            out,
            Kind::ProduceAgain,
            request,
            &data::encode_produce_again(from, &body.0),
        ),
    }
}

/// A FETCH frame's body for `order` on `topic`.
pub fn encode_fetch(topic: &str, order: &FetchOrder) -> Vec<u8> {
    data::encode_fetch(&data::Fetch {
        topic,
        partition: order.partition,
        from: order.from,
        max_records: order.max_records,
        max_bytes: order.max_bytes,
        wait_ms: order.wait_ms,
    })
}

/// Serves the fetches for one peer, one at a time over one connection.
fn run_fetcher(to: SocketAddr, dialer: &Dialer, fetches: flume::Receiver<Fetch>) {
    let mut stream: Option<PeerStream> = None;
    let mut out = Vec::new();
    while let Ok(fetch) = fetches.recv() {
        let request_id = fetch.order.request_id;
        let answer = (|| -> Result<Vec<u8>, String> {
            if stream.is_none() {
                stream = Some(dialer.connect(to, Purpose::Data).map_err(|e| e.to_string())?);
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
        let frame = answer.map_err(|reason| {
            stream = None;
            EngineError::Unavailable(format!(
                "the peer {to} owning partition {} of \"{}\" did not answer the fetch: {reason}",
                fetch.order.partition, fetch.topic
            ))
        });
        let _ = fetch.reply.send(frame);
    }
}
