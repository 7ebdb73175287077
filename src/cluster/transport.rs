//! Peer connections over TCP: the listener (every connection opens with a HELLO naming
//! the cluster), gossip in and out, and the hand-over of data connections to the engine.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cluster::error::ClusterError;
use crate::cluster::frame::{self, Body, Fields, Kind};
use crate::cluster::membership::Input;
use crate::cluster::view::ViewCell;

/// Peer connections one peer accepts at once; more are closed at once.
pub const PEER_CONNECTIONS_MAX: usize = 256;
/// Gossip messages queued for sending before new ones are dropped.
pub const GOSSIP_QUEUE: usize = 1024;
/// Connecting to a peer, and writing one frame to it, give up after this.
pub const PEER_IO_TIMEOUT: Duration = Duration::from_millis(500);
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

/// Serves a data connection (forwarded records, fetches) once the engine runs.
pub trait DataPlane: Send + Sync {
    fn serve(&self, from: SocketAddr, stream: TcpStream);
}

/// Where the engine plugs its data plane in once it has started.
pub type DataSlot = Arc<OnceLock<Arc<dyn DataPlane>>>;

/// The HELLO frame a connection opens with.
pub fn hello(cluster: &str, me: SocketAddr, purpose: Purpose) -> Vec<u8> {
    let body = Body::default()
        .str8(cluster)
        .str8(&me.to_string())
        .u8(purpose as u8)
        .0;
    frame::framed(Kind::Hello, 0, &body)
}

/// What a HELLO says: the cluster id, the sender's peer address, and the purpose byte.
pub fn decode_hello(body: &[u8]) -> Result<(&str, SocketAddr, u8), ClusterError> {
    let mut fields = Fields(body);
    let cluster = fields.str8()?;
    let from: SocketAddr = fields
        .str8()?
        .parse()
        .map_err(|_| ClusterError::Frame("a HELLO whose sender is not an address".into()))?;
    let purpose = fields.u8()?;
    Ok((cluster, from, purpose))
}

/// Opens a connection to `to` and says hello.
pub fn connect(
    to: SocketAddr,
    cluster: &str,
    me: SocketAddr,
    purpose: Purpose,
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&to, PEER_IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    keep_alive(&stream)?;
    stream.set_write_timeout(Some(PEER_IO_TIMEOUT))?;
    stream.write_all(&hello(cluster, me, purpose))?;
    Ok(stream)
}

/// How long a data connection waits for the engine to start serving.
const DATA_PLANE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Listener {
    pub cluster: String,
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

    fn serve(&self, mut stream: TcpStream) -> Result<(), ClusterError> {
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_write_timeout(Some(PEER_IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        keep_alive(&stream)?;
        let Some(first) = frame::read(&mut stream)? else {
            return Ok(());
        };
        if first.kind != Kind::Hello {
            return Err(ClusterError::Frame(
                "a peer connection must open with HELLO".into(),
            ));
        }
        let (cluster, from, purpose) = decode_hello(&first.body)?;
        if cluster != self.cluster {
            let error = ClusterError::OtherCluster {
                ours: self.cluster.clone(),
                theirs: cluster.to_string(),
            };
            tracing::warn!("refused {from}: {error}");
            let _ = stream.write_all(&frame::error(0, 0, &error.to_string()));
            return Err(error);
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
                let reply = match self.consensus.answer(&frame.body) {
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

/// Sends gossip: one cached connection per peer, dropped on the first error (SWIM
/// treats a lost message like a lost datagram).
pub fn send_gossip(cluster: String, me: SocketAddr, outgoing: flume::Receiver<(SocketAddr, Vec<u8>)>) {
    let mut streams: HashMap<SocketAddr, TcpStream> = HashMap::new();
    let mut out = Vec::new();
    while let Ok((to, data)) = outgoing.recv() {
        out.clear();
        frame::encode(&mut out, Kind::Gossip, 0, &data);
        let stream = match streams.entry(to) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                match connect(to, &cluster, me, Purpose::Gossip) {
                    Ok(stream) => entry.insert(stream),
                    Err(error) => {
                        tracing::debug!("cannot reach peer {to}: {error}");
                        continue;
                    }
                }
            }
        };
        if let Err(error) = stream.write_all(&out) {
            tracing::debug!("lost the connection to peer {to}: {error}");
            streams.remove(&to);
        }
    }
}

/// Requests to other peers over data connections, one kept per peer (made when first
/// needed, dropped on any error): each request waits for its one answer, at most
/// `timeout`. What the hand-over, the controller's fences and a follower's fetches use.
pub struct Requests {
    cluster: String,
    me: SocketAddr,
    timeout: Duration,
    streams: HashMap<SocketAddr, TcpStream>,
    next: u64,
}

impl Requests {
    pub fn new(cluster: &str, me: SocketAddr, timeout: Duration) -> Requests {
        Requests {
            cluster: cluster.to_string(),
            me,
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
                    let stream =
                        connect(to, &self.cluster, self.me, Purpose::Data).map_err(|e| e.to_string())?;
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
        let dialed = connect(to, "flowd", to, Purpose::Gossip).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        keep_alive(&accepted).unwrap();
        for stream in [&dialed, &accepted] {
            let socket = socket2::SockRef::from(stream);
            assert!(socket.keepalive().unwrap());
            assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        }
    }
}
