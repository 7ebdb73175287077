//! Peer connections over TCP: the listener (every connection opens with a HELLO naming
//! the cluster; with the cluster's TLS, after a handshake in which the peer proved what
//! it is with a certificate), gossip in and out, and the hand-over of data connections
//! to the engine.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cluster::error::ClusterError;
use crate::cluster::frame::{self, Body, Fields, Kind};
use crate::cluster::membership::{GossipOut, Input};
use crate::cluster::stream::PeerStream;
use crate::cluster::view::ViewCell;
use crate::tls::peer::PeerTls;

/// Peer connections one peer accepts at once; more are closed at once.
pub const PEER_CONNECTIONS_MAX: usize = 256;
/// Gossip messages queued for sending before new ones are dropped.
pub const GOSSIP_QUEUE: usize = 1024;
/// Connecting to a peer, and writing one frame to it, give up after this.
pub const PEER_IO_TIMEOUT: Duration = Duration::from_millis(500);
/// A TLS handshake between peers, and a connection's first bytes, give up after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Gossip queued for one peer before newer messages to it are dropped (like datagrams).
const GOSSIP_PER_PEER: usize = 64;
/// A peer's gossip thread with nothing sent to it for this long ends (made again when
/// there is).
const GOSSIP_IDLE: Duration = Duration::from_secs(30);
/// A refused connection is logged once per address in this long (a misconfigured peer
/// retries many times a second).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// A connection with nothing to read for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keepalive on every peer connection: the first probe after this long without
/// traffic, then one every `KEEPALIVE_INTERVAL`, the connection dropped after
/// `KEEPALIVE_PROBES` unanswered. A peer gone behind a cut (its FIN or RST lost) is
/// noticed within about 25 s; without it a data connection, which reads without a
/// timeout, held its thread and one of `PEER_CONNECTIONS_MAX` slots for good.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// Turns TCP keepalive on for a peer connection (`KEEPALIVE_IDLE`).
fn keep_alive(stream: &TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// What a connection is for, said in its HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    Gossip = 1,
    Data = 2,
    /// The metadata group's messages (`consensus::network`).
    Raft = 3,
}

/// Serves a data connection (forwarded records, fetches) once the engine runs. `from`
/// is the peer's address, one its certificate names when the cluster has TLS.
pub trait DataPlane: Send + Sync {
    fn serve(&self, from: SocketAddr, stream: PeerStream);
}

/// Where the engine plugs its data plane in once it has started.
pub type DataSlot = Arc<OnceLock<Arc<dyn DataPlane>>>;

/// The HELLO frame a connection opens with.
pub fn hello(cluster: &str, me: SocketAddr, purpose: Purpose) -> Vec<u8> {
    let body = Body::default()
        .str8(cluster)
        .str8(&me.to_string())
        .u8(purpose as u8)
        .u16(frame::PROTOCOL)
        .0;
    frame::framed(Kind::Hello, 0, &body)
}

/// What a HELLO says: the cluster id, the sender's peer address, and the purpose byte,
/// once its protocol is this build's (else an error naming both).
pub fn decode_hello(body: &[u8]) -> Result<(&str, SocketAddr, u8), ClusterError> {
    let mut fields = Fields(body);
    let cluster = fields.str8()?;
    let from: SocketAddr = fields
        .str8()?
        .parse()
        .map_err(|_| ClusterError::Frame("a HELLO whose sender is not an address".into()))?;
    let purpose = fields.u8()?;
    let protocol = match fields.0 {
        [] => None,
        _ => Some(fields.u16()?),
    };
    if protocol != Some(frame::PROTOCOL) {
        let theirs = protocol.map_or(
            "no peer protocol version (a flowd from before versions, 2026-12-04)".to_owned(),
            |v| format!("peer protocol {v}"),
        );
        return Err(ClusterError::Refused(format!(
            "refused the peer at {from}: it speaks {theirs}, this peer speaks peer protocol {}; every peer of a cluster runs the same flowd build (restart them all on one)",
            frame::PROTOCOL
        )));
    }
    Ok((cluster, from, purpose))
}

/// How this peer connects to the others: its cluster, the address it gives, and the
/// cluster's TLS when it has one.
#[derive(Clone)]
pub struct Dialer {
    pub cluster: String,
    pub me: SocketAddr,
    pub tls: Option<Arc<PeerTls>>,
}

impl Dialer {
    /// Opens a connection to `to` (shaking hands in TLS: `to` must present a
    /// certificate of the cluster's CA for its address) and says hello.
    pub fn connect(&self, to: SocketAddr, purpose: Purpose) -> std::io::Result<PeerStream> {
        let socket = TcpStream::connect_timeout(&to, PEER_IO_TIMEOUT)?;
        crate::net::check(&socket)?;
        socket.set_nodelay(true)?;
        keep_alive(&socket)?;
        socket.set_write_timeout(Some(PEER_IO_TIMEOUT))?;
        let mut stream = match &self.tls {
            None => PeerStream::Plain(socket),
            Some(tls) => {
                socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
                let duplex = tls
                    .dial(socket, to.ip())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()))?;
                duplex.socket().set_read_timeout(None)?;
                PeerStream::Tls(Box::new(duplex))
            }
        };
        stream.write_all(&hello(&self.cluster, self.me, purpose))?;
        Ok(stream)
    }
}

/// Whether a connection opens with a TLS ClientHello (within its read timeout, at most
/// `HANDSHAKE_TIMEOUT`); `None` when it closed before sending a byte (a port check).
/// Only peeks: the bytes stay for the handshake or the HELLO.
fn opens_with_tls(socket: &TcpStream) -> std::io::Result<Option<bool>> {
    let mut first = [0u8; 6];
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let n = socket.peek(&mut first)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(tls) = crate::tls::client_hello(&first[..n]) {
            return Ok(Some(tls));
        }
        if Instant::now() >= deadline {
            return Ok(Some(false));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Logs refusals of peers, each reason once per address in `REFUSAL_LOG_EVERY` (or as
/// often as made with `every`; the rest at debug level): loud about a misconfigured
/// peer, without flooding the log.
pub struct Refusals {
    last: Mutex<HashMap<(IpAddr, String), Instant>>,
    every: Duration,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals::every(REFUSAL_LOG_EVERY)
    }
}

impl Refusals {
    /// Says each reason once per address in `every`.
    pub fn every(every: Duration) -> Refusals {
        Refusals {
            last: Mutex::new(HashMap::new()),
            every,
        }
    }

    /// `reason` names the refusal without the connection's port.
    pub fn warn(&self, from: IpAddr, reason: &str, message: &str) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() > PEER_CONNECTIONS_MAX {
            last.retain(|_, at| now.duration_since(*at) < self.every);
            if last.len() > PEER_CONNECTIONS_MAX {
                // A flood from many addresses: forget them all rather than grow.
                last.clear();
            }
        }
        let key = (from, reason.to_owned());
        let due = last
            .get(&key)
            .is_none_or(|at| now.duration_since(*at) >= self.every);
        if due {
            last.insert(key, now);
            tracing::warn!("{message}");
        } else {
            tracing::debug!("{message}");
        }
    }
}

/// How long a data connection waits for the engine to start serving.
const DATA_PLANE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Listener {
    pub cluster: String,
    /// The cluster's TLS: every connection must shake hands with a certificate of it.
    pub tls: Option<Arc<PeerTls>>,
    pub refusals: Refusals,
    pub gossip: flume::Sender<Input>,
    pub view: Arc<ViewCell>,
    pub data: DataSlot,
    pub consensus: Arc<crate::cluster::Consensus>,
    pub open: Arc<AtomicUsize>,
}

impl Listener {
    /// Accepts until the process ends.
    pub fn run(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if self.open.load(Ordering::Acquire) >= PEER_CONNECTIONS_MAX {
                tracing::warn!("{PEER_CONNECTIONS_MAX} peer connections are open; closing a new one");
                continue;
            }
            self.open.fetch_add(1, Ordering::AcqRel);
            let this = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name("flowd-peer-in".into())
                .spawn(move || {
                    if let Err(error) = this.serve(stream) {
                        tracing::debug!("peer connection closed: {error}");
                    }
                    this.open.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The connection as a peer stream once it proved what it is: with TLS, after a
    /// handshake with a certificate of the cluster (its subject returned); `None` for
    /// one that closed before its first byte.
    fn open(
        &self,
        socket: TcpStream,
    ) -> Result<Option<(PeerStream, Option<crate::tls::peer::Certified>)>, ClusterError> {
        let addr = socket.peer_addr()?;
        socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let Some(tls_first) = opens_with_tls(&socket)? else {
            return Ok(None);
        };
        match (&self.tls, tls_first) {
            (None, false) => Ok(Some((PeerStream::Plain(socket), None))),
            (None, true) => {
                let message = format!(
                    "refused a peer at {addr} that speaks TLS: this peer's port is plaintext; give every peer --peer-tls-cert, --peer-tls-key and --peer-tls-ca of one cluster CA"
                );
                self.refusals.warn(addr.ip(), "tls on a plaintext port", &message);
                Err(ClusterError::Refused(message))
            }
            (Some(_), false) => {
                let message = format!(
                    "refused a peer at {addr} that speaks plaintext on this TLS peer port: give it --peer-tls-cert, --peer-tls-key and --peer-tls-ca of this cluster's CA"
                );
                self.refusals.warn(addr.ip(), "plaintext on a tls port", &message);
                let mut socket = socket;
                let _ = socket.write_all(&frame::error(
                    0,
                    0,
                    "this peer's port speaks TLS: give this peer --peer-tls-cert, --peer-tls-key and --peer-tls-ca of the cluster's CA",
                ));
                Err(ClusterError::Refused(message))
            }
            (Some(tls), true) => match tls.accept(socket) {
                Ok((duplex, certified)) => Ok(Some((PeerStream::Tls(Box::new(duplex)), Some(certified)))),
                Err(error) => {
                    let reason = error.to_string();
                    let message = format!("refused a peer at {addr}: {reason}");
                    self.refusals.warn(addr.ip(), &reason, &message);
                    Err(ClusterError::Refused(message))
                }
            },
        }
    }

    fn serve(&self, socket: TcpStream) -> Result<(), ClusterError> {
        socket.set_write_timeout(Some(PEER_IO_TIMEOUT))?;
        socket.set_nodelay(true)?;
        keep_alive(&socket)?;
        let ip = socket.peer_addr()?.ip();
        let Some((mut stream, certified)) = self.open(socket)? else {
            return Ok(());
        };
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        let Some(first) = frame::read(&mut stream)? else {
            return Ok(());
        };
        if first.kind != Kind::Hello {
            return Err(ClusterError::Frame(
                "a peer connection must open with HELLO".into(),
            ));
        }
        let (cluster, from, purpose) = match decode_hello(&first.body) {
            Ok(hello) => hello,
            Err(ClusterError::Refused(message)) => {
                self.refusals.warn(ip, "peer protocol", &message);
                let _ = stream.write_all(&frame::error(0, 0, &message));
                return Err(ClusterError::Refused(message));
            }
            Err(error) => return Err(error),
        };
        if cluster != self.cluster {
            let error = ClusterError::OtherCluster {
                ours: self.cluster.clone(),
                theirs: cluster.to_string(),
            };
            tracing::warn!("refused {from}: {error}");
            let _ = stream.write_all(&frame::error(0, 0, &error.to_string()));
            return Err(error);
        }
        // The address it gives must be its certificate's: a peer cannot speak for another.
        if let (Some(certified), Some(tls)) = (&certified, &self.tls)
            && !tls.speaks_for(certified, from.ip())
        {
            let subject = &certified.subject;
            let named = crate::tls::peer::named(subject);
            let message = format!(
                "refused a peer that says it is {from}: its certificate ({}) is for {named}, and none of those is (or was last found at) {} (the names are looked up again: a peer that moved is taken on its next try); issue it one for the address or name it listens on (flowd cert issue NAME --cluster {} --host HOST)",
                subject.name.as_deref().unwrap_or("no name"),
                from.ip(),
                self.cluster,
            );
            self.refusals
                .warn(from.ip(), &format!("{from} {named}"), &message);
            let _ = stream.write_all(&frame::error(0, 0, &message));
            return Err(ClusterError::Refused(message));
        }
        self.view.heard_from(from);
        if purpose == Purpose::Raft as u8 {
            while let Some(frame) = frame::read(&mut stream)? {
                if frame.kind != Kind::Raft {
                    return Err(ClusterError::Frame(format!(
                        "a {:?} frame on a consensus connection",
                        frame.kind
                    )));
                }
                let reply = match self.consensus.answer(from, &frame.body) {
                    Ok(body) => frame::framed(Kind::RaftReply, frame.request, &body),
                    Err(message) => frame::error(frame.request, 0, &message),
                };
                stream.write_all(&reply)?;
            }
            return Ok(());
        }
        if purpose == Purpose::Data as u8 {
            // The engine plugs in moments after gossip starts: a peer that connects in
            // between waits for it rather than see its batches dropped.
            let deadline = std::time::Instant::now() + DATA_PLANE_PATIENCE;
            while self.data.get().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if let Some(data) = self.data.get() {
                data.serve(from, stream);
            }
            return Ok(());
        }
        while let Some(frame) = frame::read(&mut stream)? {
            if frame.kind != Kind::Gossip {
                return Err(ClusterError::Frame(format!(
                    "a {:?} frame on a gossip connection",
                    frame.kind
                )));
            }
            self.view.heard_from(from);
            // Like a datagram: dropped when the membership thread is behind.
            let _ = self.gossip.try_send(Input::Data(frame.body));
        }
        Ok(())
    }
}

/// Sends gossip: a thread per peer (so a peer that is slow to connect to, paused or
/// shaking hands, never holds up gossip to the others), each with one connection,
/// dropped on the first error, and a bounded queue: SWIM treats a message dropped when
/// the queue is full, or lost with a connection, like a lost datagram. A peer's thread
/// ends once nothing was sent to it for `GOSSIP_IDLE` (its queue is dropped here, so it
/// writes what was queued first). Each message is counted `done` on `out` once written
/// or dropped (a leaving peer waits for them).
pub fn send_gossip(dialer: Dialer, outgoing: flume::Receiver<(SocketAddr, Vec<u8>)>, out: GossipOut) {
    let mut peers: HashMap<SocketAddr, (flume::Sender<Vec<u8>>, Instant)> = HashMap::new();
    loop {
        let message = outgoing.recv_timeout(GOSSIP_IDLE);
        peers.retain(|_, (queue, last)| !queue.is_disconnected() && last.elapsed() < GOSSIP_IDLE);
        let (to, data) = match message {
            Ok(message) => message,
            Err(flume::RecvTimeoutError::Timeout) => continue,
            Err(flume::RecvTimeoutError::Disconnected) => return,
        };
        if !peers.contains_key(&to) {
            if peers.len() >= PEER_CONNECTIONS_MAX {
                tracing::debug!("gossip to {to} dropped: {PEER_CONNECTIONS_MAX} peers have gossip threads");
                out.done(1);
                continue;
            }
            let (queue, messages) = flume::bounded(GOSSIP_PER_PEER);
            let dialer = dialer.clone();
            let done = out.clone();
            let spawned = std::thread::Builder::new()
                .name("flowd-gossip-to".into())
                .spawn(move || gossip_to(&dialer, to, &messages, &done));
            if spawned.is_err() {
                tracing::debug!("gossip to {to} dropped: cannot start its thread");
                out.done(1);
                continue;
            }
            peers.insert(to, (queue, Instant::now()));
        }
        let (queue, last) = peers.get_mut(&to).expect("inserted above");
        *last = Instant::now();
        if queue.try_send(data).is_err() {
            // Full (its connection is behind), or its thread is gone.
            tracing::debug!("gossip to {to} dropped: its sender is behind");
            out.done(1);
        }
    }
}

/// Writes the gossip for `to` until its queue is dropped.
fn gossip_to(dialer: &Dialer, to: SocketAddr, messages: &flume::Receiver<Vec<u8>>, out: &GossipOut) {
    let mut stream: Option<PeerStream> = None;
    let mut bytes = Vec::new();
    while let Ok(first) = messages.recv() {
        bytes.clear();
        frame::encode(&mut bytes, Kind::Gossip, 0, &first);
        let mut taken = 1;
        while let Ok(more) = messages.try_recv() {
            frame::encode(&mut bytes, Kind::Gossip, 0, &more);
            taken += 1;
        }
        if stream.is_none() {
            match dialer.connect(to, Purpose::Gossip) {
                Ok(s) => stream = Some(s),
                Err(error) => tracing::debug!("cannot reach peer {to}: {error}"),
            }
        }
        if let Some(s) = stream.as_mut()
            && let Err(error) = s.write_all(&bytes)
        {
            tracing::debug!("lost the connection to peer {to}: {error}");
            stream = None;
        }
        out.done(taken);
    }
}

/// Requests to other peers over data connections, one kept per peer (made when first
/// needed, dropped on any error): each request waits for its one answer, at most
/// `timeout`. What the hand-over, the controller's fences and a follower's fetches use.
pub struct Requests {
    dialer: Dialer,
    timeout: Duration,
    streams: HashMap<SocketAddr, PeerStream>,
    next: u64,
}

impl Requests {
    pub fn new(dialer: &Dialer, timeout: Duration) -> Requests {
        Requests {
            dialer: dialer.clone(),
            timeout,
            streams: HashMap::new(),
            next: 0,
        }
    }

    /// Sends `body` as a `kind` frame to `to` and returns the body of its `answer`
    /// frame; an ERROR frame's message, or what went wrong on the way, otherwise.
    pub fn request(
        &mut self,
        to: SocketAddr,
        kind: Kind,
        body: &[u8],
        answer: Kind,
    ) -> Result<Vec<u8>, String> {
        self.next += 1;
        let request = self.next;
        let result = (|| {
            let stream = match self.streams.entry(to) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let stream = self
                        .dialer
                        .connect(to, Purpose::Data)
                        .map_err(|e| e.to_string())?;
                    stream
                        .set_read_timeout(Some(self.timeout))
                        .map_err(|e| e.to_string())?;
                    e.insert(stream)
                }
            };
            stream
                .write_all(&frame::framed(kind, request, body))
                .map_err(|e| e.to_string())?;
            match frame::read(stream).map_err(|e| e.to_string())? {
                Some(f) if f.kind == answer && f.request == request => Ok(f.body),
                Some(f) if f.kind == Kind::Error => Err(frame::read_error(&f.body).1),
                Some(f) => Err(format!("an unexpected {:?} frame", f.kind)),
                None => Err("the peer closed the connection".to_string()),
            }
        })();
        if result.is_err() {
            self.streams.remove(&to);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_connections_keep_alive_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let dialer = Dialer {
            cluster: "flowd".into(),
            me: to,
            tls: None,
        };
        let dialed = dialer.connect(to, Purpose::Gossip).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        keep_alive(&accepted).unwrap();
        for stream in [dialed.socket(), &accepted] {
            let socket = socket2::SockRef::from(stream);
            assert!(socket.keepalive().unwrap());
            assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        }
    }
}
