//! Client requests about a partition another peer leads, relayed to that peer's client
//! listener and answered back through this one: fetches, consumer requests (claim, ack,
//! reclaim, ack-and-commit), range and length reads, and state reads work through any
//! peer (a FETCH_BATCHES gets the leader's stored batches as they are). A cluster's
//! status asks every live peer for its own at once (`statuses`).
//!
//! One connection per (shard, peer, client), made when first needed and dropped on any
//! error or on an answer that does not come. On a server with credentials a request
//! goes on for the client that made it, so the leader checks the same permissions
//! again and no peer speaks for a client with more than the client's own: every peer
//! needs the same credentials file. Between peers in mutual TLS (`--peer-tls-*`) the
//! connection is TLS with the peer certificates (ALPN `flowd-relay/1`, `tls::peer`),
//! whatever the doors speak, and its first frame VOUCHes for the client's credential
//! by name: no token leaves the peer it was given to, and a client that proved itself
//! by certificate is relayed too. Between plaintext peers the connection is plaintext
//! and its first frame is AUTH with the client's token (a client known by certificate
//! only is not relayed: it is told to ask the leader); a leader whose doors speak TLS
//! refuses it, and the client is told why. Requests are pipelined on it under ids of its own
//! (many clients' ids would collide): a relayed frame's id is rewritten, and its
//! answer's id set back. A relayed frame carries `FLAG_RELAYED`, so the peer serves it
//! itself and never relays it on: two views that disagree for a moment cannot bounce a
//! request between peers. A request that gets no answer is answered `unavailable`,
//! saying it may or may not have been applied (an ack that was relayed and then lost
//! may have been applied); nothing is retried here.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use rustls_pki_types::ServerName;

use crate::cluster::view::PeerState;
use crate::protocol::frame::{FLAG_RELAYED, RawFrame};
use crate::protocol::message::{Response, encode_error};
use crate::protocol::status::Status;
use crate::protocol::{ErrorCode, ProtocolError, Request, parse_frame};
use crate::runtime::cluster::peers::Peers;
use crate::runtime::service::FETCH_WAIT_MAX;
use crate::runtime::shard::Shard;
use crate::server::api::{self, within};
use crate::server::outgoing::{WriteEnd, write_queued};
use crate::tls::peer::PeerTls;

/// Requests in flight on one relay connection; more wait for room.
const IN_FLIGHT_MAX: u64 = 256;
/// How long a relayed request waits for its answer; past it the connection is dropped.
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How long making the connection may take.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// The least limit on an answer: a consumer listing, a claim's or range's records.
const ANSWER_BYTES_MIN: usize = 64 << 20;

/// The largest answer taken: a fetch answer holds its first stored batch whole, as a
/// peer frame does (`cluster::frame::frame_limit`).
fn answer_bytes_max() -> usize {
    ANSWER_BYTES_MIN.max(crate::cluster::frame::frame_limit())
}

/// This shard's relay connections, by the client address of the peer and the client
/// they speak for; a handle that relays for one client (`as_client`).
#[derive(Clone)]
pub struct Relays {
    links: Rc<RefCell<HashMap<LinkKey, Rc<Link>>>>,
    /// The peers' mutual TLS: relays go in it, vouching for their client by name.
    tls: Option<Arc<PeerTls>>,
    /// Who this handle's requests go on for (the client, as it proved itself here).
    client: Client,
}

/// The client a relay speaks for, on a server with credentials.
#[derive(Clone, Default)]
struct Client {
    /// Its credential's name (VOUCHed for in mutual TLS).
    name: Option<Rc<str>>,
    /// Its token, when it gave one (AUTH in plaintext).
    token: Option<Rc<str>>,
}

/// A relay connection: the peer's client listener, and who it speaks for (the
/// credential's name in mutual TLS, the token in plaintext).
type LinkKey = (SocketAddr, Option<Rc<str>>);

/// The request id of a relay connection's AUTH or VOUCH (relayed requests count from 1).
const AUTH_ID: u64 = 0;

/// Where a relayed request's answer goes: the answer frame, or why there is none.
type Waiter = flume::Sender<Result<Vec<u8>, String>>;

/// One connection to a peer's client listener.
struct Link {
    /// Taken when the link breaks, which ends its writer.
    writes: RefCell<Option<flume::Sender<Vec<u8>>>>,
    pending: RefCell<HashMap<u64, Waiter>>,
    next: Cell<u64>,
    room: Semaphore,
    /// Lost or given up: the next request makes a new connection.
    broken: Cell<bool>,
}

impl Link {
    /// Marks it broken and tells every request waiting on it why.
    fn fail(&self, reason: &str) {
        self.broken.set(true);
        self.writes.borrow_mut().take();
        self.room.close();
        for (_, waiter) in self.pending.borrow_mut().drain() {
            let _ = waiter.try_send(Err(reason.to_owned()));
        }
    }
}

/// Where a request goes on to.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The peer that leads its partition (its peer address).
    pub peer: SocketAddr,
    /// That peer's client listener (in mutual TLS its certificate is the one of its
    /// peer port, naming `peer`'s address).
    pub to: SocketAddr,
    /// How long the request may wait there by itself (a long-poll fetch), on top of
    /// `ANSWER_WAIT`.
    pub wait: Duration,
}

/// Where `request` goes on to, when another peer leads what it is about and it may go
/// on: not one already relayed, and only requests about one partition (a claim of any
/// partition, a whole topic's length, jobs, admin and status are served here).
pub fn route(shard: &Shard, request: &Request<'_>, flags: u16) -> Option<Route> {
    if flags & FLAG_RELAYED != 0 {
        return None;
    }
    let peers = shard.shared.peers.as_ref()?;
    let spec = &shard.shared.spec;
    let mut wait = Duration::ZERO;
    let (topic, partition) = match request {
        Request::Fetch(f) | Request::FetchBatches(f) => {
            wait = Duration::from_millis(f.wait_ms.into()).min(FETCH_WAIT_MAX);
            (spec.topic_index(f.topic)?, f.partition)
        }
        Request::Claim(c) => (spec.topic_index(c.topic)?, c.partition?),
        Request::Ack(r) | Request::Reclaim(r) | Request::AckCommit(r, _) | Request::Seek(r, _) => {
            (spec.topic_index(r.topic)?, r.partition)
        }
        Request::Range(r) => (spec.topic_index(r.topic)?, r.spec.partition),
        Request::Length { topic, partition } => (spec.topic_index(topic)?, (*partition)?),
        Request::State { stage, key } => {
            let (_, input, partition) = api::state_partition(spec, stage, key)?;
            (input, partition)
        }
        _ => return None,
    };
    if partition >= spec.topics[topic].partitions {
        return None;
    }
    let peer = peers.owner(topic, partition)?;
    Some(Route {
        peer,
        to: peers.client_of(peer)?,
        wait,
    })
}

/// A state read (`GET /state/STAGE/KEY` through HTTP) relayed as the protocol's STATE:
/// the state, `None` when the key has none, or the leader's error.
pub async fn state(
    relays: &Relays,
    route: Route,
    stage: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut frame = Vec::new();
    Request::State { stage, key }.encode(0, &mut frame);
    let answer = relays.relay(route, frame, 0).await;
    let parsed = parse_frame(&answer, answer.len())?
        .ok_or_else(|| ProtocolError::new(ErrorCode::Internal, "a relayed answer cut short (a bug)"))?;
    match Response::decode(&parsed.header, parsed.body)? {
        Response::Answer(record) => Ok(Some(record.value)),
        // The stage exists (routed by it, and every peer runs the same dataflow): the
        // key has no state there.
        Response::Error {
            code: ErrorCode::UnknownState,
            ..
        } => Ok(None),
        Response::Error { code, message, .. } => Err(ProtocolError::new(code, message)),
        other => Err(ProtocolError::new(
            ErrorCode::Internal,
            format!("the peer {} answered a state read with {other:?}", route.peer),
        )),
    }
}

/// How long a peer's own status may take to come into a cluster's status: past the 5 s
/// its shards each have to answer it.
pub const STATUS_WAIT: Duration = Duration::from_secs(8);

/// Every other peer's own status, asked of all at once through their client listeners
/// (STATUS with scope 1): each one's, or why it did not come (a peer not alive is not
/// asked). In the order of this peer's view.
pub async fn statuses(relays: &Relays, peers: &Peers) -> Vec<(SocketAddr, Result<Status, String>)> {
    let view = peers.cluster.view.get();
    let mut frame = Vec::new();
    Request::Status { local: true }.encode(0, &mut frame);
    let asks = view.others.iter().map(|m| {
        let (addr, client, state) = (m.id.addr, m.id.client, m.state);
        let frame = frame.clone();
        async move {
            let answer = match (state, client) {
                (PeerState::Alive, Some(to)) => relays
                    .exchange(addr.ip(), to, frame, STATUS_WAIT, Silence::Forgotten)
                    .await
                    .and_then(|answer| own_status(&answer)),
                (PeerState::Alive, None) => Err("its client listener is not known yet".to_owned()),
                (state, _) => Err(format!("it is {}", format!("{state:?}").to_lowercase())),
            };
            (addr, answer)
        }
    });
    join_all(asks.collect()).await
}

/// A peer's own status from its answer frame.
fn own_status(answer: &[u8]) -> Result<Status, String> {
    let parsed = parse_frame(answer, answer.len())
        .map_err(|e| e.to_string())?
        .ok_or("an answer cut short")?;
    match Response::decode(&parsed.header, parsed.body).map_err(|e| e.to_string())? {
        Response::Status(json) => {
            serde_json::from_slice(&json).map_err(|e| format!("its status is not one this peer reads: {e}"))
        }
        Response::Error { message, .. } => Err(message),
        other => Err(format!("it answered a status request with {other:?}")),
    }
}

/// Runs `futures` together on this task: their outputs, in their order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future ended"))
        .collect()
}

/// The whole frame `frame` was parsed from, as it came.
pub fn frame_bytes(frame: &RawFrame<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + frame.body.len());
    out.extend_from_slice(&((12 + frame.body.len()) as u32).to_le_bytes());
    out.push(frame.header.version);
    out.push(frame.header.kind);
    out.extend_from_slice(&frame.header.flags.to_le_bytes());
    out.extend_from_slice(&frame.header.request_id.to_le_bytes());
    out.extend_from_slice(frame.body);
    out
}

impl Relays {
    /// No connections yet; in mutual TLS with `tls` when the peers speak it.
    pub fn new(tls: Option<Arc<PeerTls>>) -> Relays {
        Relays {
            links: Rc::default(),
            tls,
            client: Client::default(),
        }
    }

    /// The same connections, relaying for the client that proved to be the credential
    /// `name` (with `token`, when it gave one).
    pub fn as_client(&self, name: Option<&str>, token: Option<&str>) -> Relays {
        Relays {
            links: Rc::clone(&self.links),
            tls: self.tls.clone(),
            client: Client {
                name: name.map(Rc::from),
                token: token.map(Rc::from),
            },
        }
    }

    /// Sends `frame` (a whole client frame, its id `id`) to the client listener of the
    /// peer `route` names and returns the answer frame with its id set back to `id`, or
    /// an `unavailable` error frame saying why there is none.
    pub async fn relay(&self, route: Route, frame: Vec<u8>, id: u64) -> Vec<u8> {
        let Route { peer, to, wait } = route;
        match self
            .exchange(peer.ip(), to, frame, ANSWER_WAIT + wait, Silence::BreaksLink)
            .await
        {
            Ok(mut answer) => {
                answer[8..16].copy_from_slice(&id.to_le_bytes());
                answer
            }
            Err(reason) => {
                let mut out = Vec::new();
                encode_error(
                    &mut out,
                    id,
                    ErrorCode::Unavailable,
                    &format!(
                        "the request went on to the peer {peer} that leads its partition (client listener {to}) and got no answer ({reason}); it may or may not have been applied: ask again"
                    ),
                );
                out
            }
        }
    }

    /// Sends `frame` to the client listener `to` of the peer at `peer` and waits (at
    /// most `wait`) for its answer.
    async fn exchange(
        &self,
        peer: IpAddr,
        to: SocketAddr,
        mut frame: Vec<u8>,
        wait: Duration,
        silence: Silence,
    ) -> Result<Vec<u8>, String> {
        if self.tls.is_none() && self.client.name.is_some() && self.client.token.is_none() {
            return Err(
                "the client proved itself by certificate, and a peer relays for such a client only in mutual TLS between peers (--peer-tls-*): send the request to the partition's leader (flowd status names it)"
                    .to_owned(),
            );
        }
        // Until the frame is queued nothing here waits but for room, so requests a
        // client pipelined reach the peer in the order it sent them.
        let link = self.link(peer, to);
        let _permit = link
            .room
            .acquire_permit(1)
            .await
            .map_err(|_| "the connection to it was lost".to_owned())?;
        let mine = link.next.get();
        link.next.set(mine.wrapping_add(1));
        frame[8..16].copy_from_slice(&mine.to_le_bytes());
        let flags = u16::from_le_bytes([frame[6], frame[7]]) | FLAG_RELAYED;
        frame[6..8].copy_from_slice(&flags.to_le_bytes());
        let (tx, rx) = flume::bounded(1);
        link.pending.borrow_mut().insert(mine, tx);
        // Room for every permit: never full; gone once the link broke.
        let queued = link
            .writes
            .borrow()
            .as_ref()
            .is_some_and(|w| w.try_send(frame).is_ok());
        if !queued {
            link.pending.borrow_mut().remove(&mine);
            return Err("the connection to it was lost".to_owned());
        }
        match within(wait, rx.recv_async()).await {
            Some(Ok(answer)) => answer,
            Some(Err(_)) => Err("the connection to it was lost".to_owned()),
            None => {
                let reason = format!("no answer within {}", humantime::format_duration(wait));
                match silence {
                    Silence::BreaksLink => link.fail(&reason),
                    // Its answer, if it comes, finds no one waiting and is dropped.
                    Silence::Forgotten => {
                        link.pending.borrow_mut().remove(&mine);
                    }
                }
                Err(reason)
            }
        }
    }

    /// The connection to `to` (the client listener of the peer at `peer`); a new one
    /// (connecting in the background, its requests queued meanwhile) if there is none
    /// or it broke.
    fn link(&self, peer: IpAddr, to: SocketAddr) -> Rc<Link> {
        let who = match self.tls {
            Some(_) => self.client.name.clone(),
            None => self.client.token.clone(),
        };
        let key = (to, who);
        if let Some(link) = self.links.borrow().get(&key)
            && !link.broken.get()
        {
            return Rc::clone(link);
        }
        let (writes, queued) = flume::bounded(IN_FLIGHT_MAX as usize + 1);
        let mut first = Vec::new();
        match (&self.tls, &key.1) {
            (Some(_), Some(name)) => Request::Vouch { name }.encode(AUTH_ID, &mut first),
            (None, Some(token)) => Request::Auth { token }.encode(AUTH_ID, &mut first),
            (_, None) => {}
        }
        if !first.is_empty() {
            writes.try_send(first).expect("a new queue has room");
        }
        let link = Rc::new(Link {
            writes: RefCell::new(Some(writes)),
            pending: RefCell::new(HashMap::new()),
            next: Cell::new(1),
            room: Semaphore::new(IN_FLIGHT_MAX),
            broken: Cell::new(false),
        });
        let tls = self.tls.clone();
        glommio::spawn_local(run_link(peer, to, tls, queued, Rc::clone(&link))).detach();
        self.links.borrow_mut().insert(key, Rc::clone(&link));
        link
    }
}

/// What a request not answered in time does to its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// The link is failed (every request on it with it) and made again: a relayed
    /// request's peer that stays silent past its wait is taken as lost.
    BreaksLink,
    /// Only this request is given up: a status, which a busy peer may take long to
    /// gather, must not fail the requests others relay over the same link.
    Forgotten,
}

/// Connects (in mutual TLS with `tls`, to the peer at `peer`), then reads answers and
/// writes the queued frames until the link breaks.
async fn run_link(
    peer: IpAddr,
    to: SocketAddr,
    tls: Option<Arc<PeerTls>>,
    queued: flume::Receiver<Vec<u8>>,
    link: Rc<Link>,
) {
    let no_time = || {
        format!(
            "no connection within {}",
            humantime::format_duration(CONNECT_WAIT)
        )
    };
    let stream = match within(CONNECT_WAIT, TcpStream::connect(to)).await {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => return link.fail(&format!("cannot connect: {error}")),
        None => return link.fail(&no_time()),
    };
    let ends = match (stream.local_addr(), stream.peer_addr()) {
        (Ok(local), Ok(peer)) => crate::net::not_itself(local, peer).map_err(|e| e.to_string()),
        (Err(error), _) | (_, Err(error)) => Err(error.to_string()),
    };
    if let Err(error) = ends {
        return link.fail(&format!("cannot connect: {error}"));
    }
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return carry(stream, queued, link).await;
    };
    let connector = futures_rustls::TlsConnector::from(tls.relay_client());
    let stream = match within(
        CONNECT_WAIT,
        connector.connect(ServerName::IpAddress(peer.into()), stream),
    )
    .await
    {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => {
            tracing::warn!(
                %peer, %to, %error,
                "the TLS handshake of a relay failed: does that peer run with peer TLS and this cluster's CA (--peer-tls-*)?"
            );
            return link.fail(&format!("the TLS handshake failed: {error}"));
        }
        None => return link.fail(&no_time()),
    };
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    if let Err(error) = tls.cluster_peer(chain) {
        return link.fail(&error.to_string());
    }
    carry(stream, queued, link).await;
}

/// Reads answers and writes the queued frames on `stream` until the link breaks.
async fn carry<S>(stream: S, queued: flume::Receiver<Vec<u8>>, link: Rc<Link>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = futures_lite::io::split(stream);
    let weak = Rc::downgrade(&link);
    glommio::spawn_local(read_loop(reader, link)).detach();
    write_loop(writer, queued, weak).await;
}

/// Writes the queued frames, coalesced; ends on an error or once the link is gone.
async fn write_loop<S: AsyncWrite + Unpin>(
    writer: futures_lite::io::WriteHalf<S>,
    queued: flume::Receiver<Vec<u8>>,
    link: std::rc::Weak<Link>,
) {
    let reason = match write_queued(writer, &queued, ANSWER_WAIT, Vec::as_slice).await {
        WriteEnd::Done => return,
        WriteEnd::Failed(error) => format!("write failed: {error}"),
        WriteEnd::TimedOut => "it took nothing for the whole answer wait".to_owned(),
    };
    if let Some(link) = link.upgrade() {
        link.fail(&reason);
    }
}

/// Hands each answer to the request waiting for it; on an error, end of stream or an
/// answer overdue, fails every request still waiting.
async fn read_loop<S: AsyncRead + Unpin>(mut reader: futures_lite::io::ReadHalf<S>, link: Rc<Link>) {
    let reason = loop {
        let mut prefix = [0u8; 4];
        // One read throughout (never dropped and restarted, so no byte is lost): an
        // idle connection is kept until the peer closes it, a broken one is left.
        let read = {
            let mut read = pin!(reader.read_exact(&mut prefix));
            loop {
                match within(ANSWER_WAIT, read.as_mut()).await {
                    Some(read) => break Some(read),
                    None if link.broken.get() => break None,
                    None => continue,
                }
            }
        };
        match read {
            Some(Ok(())) => {}
            Some(Err(error)) => break format!("read failed: {error}"),
            None => break "given up".to_owned(),
        }
        let len = u32::from_le_bytes(prefix) as usize;
        let max = answer_bytes_max();
        if !(12..=max).contains(&len) {
            break format!("an answer of {len} bytes (from 12 to {max} are taken)");
        }
        let mut answer = vec![0u8; 4 + len];
        answer[..4].copy_from_slice(&prefix);
        match within(ANSWER_WAIT, reader.read_exact(&mut answer[4..])).await {
            Some(Ok(())) => {}
            Some(Err(error)) => break format!("read failed: {error}"),
            None => break "an answer stayed unfinished".to_owned(),
        }
        let id = u64::from_le_bytes(answer[8..16].try_into().expect("8 bytes"));
        if id == AUTH_ID && answer[5] == crate::protocol::Kind::Error as u8 {
            let refusal = parse_frame(&answer, answer.len())
                .ok()
                .flatten()
                .and_then(|f| Response::decode(&f.header, f.body).ok());
            if let Some(Response::Error {
                code: ErrorCode::TlsRequired,
                ..
            }) = refusal
            {
                tracing::warn!(
                    "a peer's client listener speaks TLS, and this cluster's peers speak plaintext, so relays to it \
                     cannot go: a request about a partition that peer leads must be sent to it (flowd status names \
                     it); give the peers certificates (--peer-tls-*) and relays go in mutual TLS"
                );
                break "the peer's client listener speaks TLS, and relays between plaintext peers do not: send the request to the partition's leader, or give the peers certificates (--peer-tls-*)".to_owned();
            }
            let why = match refusal {
                Some(Response::Error { message, .. }) => message,
                other => format!("{other:?}"),
            };
            tracing::warn!(
                "a peer's client listener refused the client this peer relays for ({why}): \
                 every peer needs the same credentials file"
            );
            break format!("the peer refused the client ({why}): every peer needs the same credentials file");
        }
        let waiter = link.pending.borrow_mut().remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.try_send(Ok(answer));
        }
    };
    link.fail(&reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::encode_produce;
    use crate::protocol::wire::OwnedWireRecord;

    #[test]
    fn a_parsed_frame_is_put_back_byte_for_byte() {
        let mut sent = Vec::new();
        let record = OwnedWireRecord {
            timestamp_ms: None,
            key: Some(b"k".to_vec()),
            value: b"value".to_vec(),
            headers: vec![("h".to_string(), b"v".to_vec())],
        };
        encode_produce(&mut sent, 77, "events", Some(3), &[record]);
        Request::State {
            stage: "count",
            key: b"apple",
        }
        .encode(78, &mut sent);
        let first = parse_frame(&sent, 1 << 20).unwrap().unwrap();
        let second = parse_frame(&sent[first.len..], 1 << 20).unwrap().unwrap();
        assert_eq!(frame_bytes(&first), &sent[..first.len]);
        assert_eq!(frame_bytes(&second), &sent[first.len..]);
    }
}
