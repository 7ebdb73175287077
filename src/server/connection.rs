//! One TCP client: read frames, dispatch requests (many in flight), write responses.
//!
//! Limits, so that no client can hurt the others:
//! - a frame over `max_frame_bytes` is refused from its length prefix alone;
//! - a frame must arrive whole within `io_timeout` of its first byte, however it
//!   trickles in; a connection with nothing begun and nothing in flight for
//!   `idle_timeout` is closed; responses not taken within `io_timeout` close it too;
//! - a frame over `admission::FREE_BYTES` takes its bytes from the shard's budget
//!   (`max_buffered_bytes`) before they are read, and holds them until its request is
//!   answered: while the budget is spent, such connections wait without reading;
//! - every request is charged against the connection's budget for what it holds (its
//!   body until answered, the response it may get), and while that is spent the
//!   connection reads no further requests;
//! - on a server with credentials, nothing but AUTH is served before AUTH, which must
//!   come within `io_timeout` of connecting, in a frame of at most 4 KiB.
//!
//! The read buffer starts small and is sized exactly for a large frame, so thousands of
//! idle connections cost little and no frame costs more than its size.

use std::os::fd::RawFd;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::server::door::Stream as TcpStream;
use crate::server::outgoing::{WriteEnd, write_queued};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::sync::{Semaphore, StaticPermit};

use crate::protocol::consumer::{
    ReclaimedReply, encode_acked, encode_committed, encode_consumers, encode_length, encode_reclaimed,
    encode_sought,
};
use crate::protocol::frame::FLAG_RELAYED;
use crate::protocol::message::{
    encode_answer, encode_error, encode_metadata, encode_produced, encode_status,
};
use crate::protocol::wire::NULL_VALUE_HEADER;
use crate::protocol::{ErrorCode, ProtocolError, RawFrame, Request, parse_frame};
use crate::runtime::service::{FETCH_BYTES_MAX, FetchOrder};
use crate::runtime::shard::Shard;
use crate::server::admission::{Charge, FREE_BYTES, Refusal};
use crate::server::{self, Front};
use crate::server::{api, consumer_api, relay};

/// Bytes a connection may owe at once beyond its largest frame: responses, and the
/// bodies of requests not yet answered.
const RESPONSE_BUDGET: u64 = 8 << 20;
/// What a request with a small answer is charged against the budget.
const SMALL_RESPONSE: u64 = 512;
/// What a status document or a consumer listing is charged.
const LARGE_RESPONSE: u64 = 1 << 20;
/// What a record in an answer may take: one record may go over a fetch's byte limit.
const RECORD_RESPONSE: u64 = 1 << 20;
/// Responses queued for the writer.
const OUTGOING_MAX: usize = 256;
/// The smallest read; idle connections hold no more than this.
const READ_MIN: usize = 4 << 10;
/// The largest single read.
const READ_MAX: usize = 1 << 20;
/// The largest frame read before AUTH on a server with credentials (an AUTH frame is
/// under 100 bytes).
const PRE_AUTH_FRAME_MAX: usize = 4 << 10;

/// What a request holds until its response is written: its share of the connection's
/// budget, and of the shard's budget when its frame was large.
struct Held {
    _permit: StaticPermit,
    _charge: Option<Charge>,
}

type Outgoing = (Vec<u8>, Option<Held>);

pub async fn accept_loop(shard: Rc<Shard>, front: Rc<Front>, fd: RawFd) {
    let speaks = server::door::Speaks {
        what: "TCP",
        plain_answer: tls_required,
        relays: true,
    };
    server::accept_loop(shard, front, fd, speaks, serve, refuse).await;
}

/// What a plaintext client on the TLS port reads: one ERROR frame it can decode.
fn tls_required() -> Vec<u8> {
    let mut out = Vec::new();
    encode_error(
        &mut out,
        0,
        ErrorCode::TlsRequired,
        "this port speaks TLS: connect with --tls (and --ca FILE when the server's certificate is not signed by a CA this machine trusts)",
    );
    out
}

async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let mut out = Vec::new();
    encode_error(&mut out, 0, ErrorCode::Overloaded, &refusal.message());
    let _ = api::within(Duration::from_secs(1), stream.write_all(&out)).await;
    let _ = stream.close().await;
}

/// Where a connection's reading stands.
struct Reading {
    /// When the first byte of the frame being read arrived.
    frame_started: Option<Instant>,
    /// The budget taken for the frame being read, if it is large.
    charge: Option<Charge>,
}

/// Who the client proved to be, on a server with credentials.
struct Session {
    identity: Option<std::sync::Arc<crate::auth::Identity>>,
    /// The relays, with this client's token once it gave one.
    relays: relay::Relays,
    /// When AUTH must have come by (a closed gate, no identity yet).
    auth_by: Option<Instant>,
    /// The peer of this cluster relaying on this connection (mutual TLS), who may
    /// VOUCH for its clients.
    relayer: Option<String>,
}

/// Serves one connection until the client closes it or breaks a rule.
pub async fn serve(shard: Rc<Shard>, front: Rc<Front>, stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let certified = stream.client_name().map(str::to_owned);
    let relayer = stream.relayer().map(str::to_owned);
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (out_tx, out_rx) = flume::bounded::<Outgoing>(OUTGOING_MAX);
    let writer_task = glommio::spawn_local(write_loop(writer, out_rx, front.io_timeout, peer.clone()));
    let budget_total = RESPONSE_BUDGET + front.max_frame_bytes as u64;
    let budget = Rc::new(Semaphore::new(budget_total));
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut last_read_full = false;
    let mut reading = Reading {
        frame_started: None,
        charge: None,
    };
    let mut session = Session {
        identity: None,
        relays: front.relays.clone(),
        auth_by: front.gate.closed().then(|| Instant::now() + front.io_timeout),
        relayer,
    };
    // A client certificate naming a credential proves it: no AUTH needed.
    if session.auth_by.is_some()
        && let Some(identity) = certified.and_then(|name| front.gate.certified(&name))
    {
        tracing::debug!(%peer, name = %identity.name, "client certificate accepted");
        session.relays = front.relays.as_client(Some(&identity.name), None);
        session.identity = Some(identity);
        session.auth_by = None;
    }
    let reason = 'conn: loop {
        // Every whole frame buffered, in order.
        loop {
            // Before AUTH on a closed gate only a small frame is read: a stranger makes
            // the server hold no more than that.
            if session.auth_by.is_some()
                && let Some(prefix) = buf.get(start..start + 4)
            {
                let length = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
                if length > PRE_AUTH_FRAME_MAX {
                    shard.shared.metrics.auth_refused.add(1);
                    send_error(&shard, &out_tx, 0, &crate::server::gate::unauthenticated()).await;
                    break 'conn format!(
                        "a frame of {length} bytes before AUTH (at most {PRE_AUTH_FRAME_MAX} are read before it)"
                    );
                }
            }
            match parse_frame(&buf[start..], front.max_frame_bytes) {
                Ok(Some(frame)) => {
                    let len = frame.len;
                    // The frame's charge goes with its request, until it is answered.
                    let charge = reading.charge.take();
                    if let Err(reason) =
                        dispatch(&shard, &front, &mut session, frame, &out_tx, &budget, charge).await
                    {
                        break 'conn reason;
                    }
                    start += len;
                    reading.frame_started = None;
                }
                Ok(None) => break,
                Err(error) => {
                    send_error(&shard, &out_tx, 0, &error).await;
                    break 'conn error.message;
                }
            }
        }
        buf.drain(..start);
        start = 0;
        if buf.is_empty() && buf.capacity() > READ_MAX {
            buf = Vec::new();
        }
        if !buf.is_empty() && reading.frame_started.is_none() {
            reading.frame_started = Some(Instant::now());
        }
        // Read what the frame in progress still needs, else a small or growing chunk.
        let total = buf
            .get(..4)
            .map(|prefix| u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize + 4);
        let want = match total {
            Some(total) => total.saturating_sub(buf.len()).clamp(READ_MIN, READ_MAX),
            None if last_read_full => 64 << 10,
            None => READ_MIN,
        };
        if let Some(total) = total
            && total as u64 > FREE_BYTES
            && reading.charge.is_none()
        {
            // A large frame: its bytes come from the shard's budget before they are read.
            let deadline = reading.frame_started.expect("a prefix was read") + front.io_timeout;
            let left = deadline.saturating_duration_since(Instant::now());
            match api::within(left, Charge::take(&front.buffered, total as u64)).await {
                Some(Some(charge)) => reading.charge = Some(charge),
                Some(None) => break "the engine is stopping".to_owned(),
                None => {
                    shard.shared.metrics.slow_frames.add(1);
                    break format!(
                        "a frame of {total} bytes stayed unfinished for {} (the server's buffer budget was spent meanwhile)",
                        humantime::format_duration(front.io_timeout)
                    );
                }
            }
            buf.reserve_exact(total.saturating_sub(buf.len()));
        }
        let old = buf.len();
        buf.resize(old + want, 0);
        let deadline = reading.frame_started.map(|t| t + front.io_timeout);
        // Without AUTH yet on a closed gate, the connection has until `auth_by`.
        let deadline = match (deadline, session.auth_by) {
            (Some(frame), Some(auth)) => Some(frame.min(auth)),
            (frame, auth) => frame.or(auth),
        };
        let read = read_within(
            &mut reader,
            &mut buf[old..],
            deadline,
            &front,
            &budget,
            budget_total,
        )
        .await;
        match read {
            Read::Bytes(Ok(0)) => {
                buf.truncate(old);
                if old == 0 {
                    break "closed by the client".to_owned();
                }
                break format!("closed by the client inside a frame ({old} bytes of it arrived)");
            }
            Read::Bytes(Ok(n)) => {
                buf.truncate(old + n);
                last_read_full = n == want;
            }
            Read::Bytes(Err(error)) => {
                buf.truncate(old);
                break format!("read failed: {error}");
            }
            Read::FrameTimeout if session.auth_by.is_some_and(|by| Instant::now() >= by) => {
                shard.shared.metrics.auth_refused.add(1);
                let error = crate::server::gate::unauthenticated();
                send_error(&shard, &out_tx, 0, &error).await;
                break format!(
                    "no AUTH within {} of connecting",
                    humantime::format_duration(front.io_timeout)
                );
            }
            Read::FrameTimeout => {
                buf.truncate(old);
                shard.shared.metrics.slow_frames.add(1);
                break format!(
                    "a frame stayed unfinished for {} ({} bytes of it arrived)",
                    humantime::format_duration(front.io_timeout),
                    old
                );
            }
            Read::Idle => {
                shard.shared.metrics.idle_closed.add(1);
                break format!(
                    "idle for {} with nothing in flight",
                    humantime::format_duration(front.idle_timeout)
                );
            }
        }
    };
    if reason == "closed by the client" {
        tracing::debug!(%peer, "connection closed");
    } else {
        tracing::info!(%peer, %reason, "connection closed");
    }
    drop(out_tx);
    writer_task.await;
}

/// What a read came to.
enum Read {
    Bytes(std::io::Result<usize>),
    /// The frame being read passed its deadline.
    FrameTimeout,
    /// Nothing begun and nothing in flight for the idle timeout.
    Idle,
}

/// Reads into `into`: by the frame's `deadline` when one is begun; otherwise waits as
/// long as requests are in flight, and closes after `idle_timeout` with none. The read
/// is one future throughout (never dropped and restarted), so no byte is lost.
async fn read_within(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    into: &mut [u8],
    deadline: Option<Instant>,
    front: &Front,
    budget: &Semaphore,
    budget_total: u64,
) -> Read {
    let mut read = pin!(reader.read(into));
    loop {
        let limit = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => front.idle_timeout,
        };
        match api::within(limit, read.as_mut()).await {
            Some(bytes) => return Read::Bytes(bytes),
            None if deadline.is_some() => return Read::FrameTimeout,
            // Requests in flight (a long-poll fetch, a job): not idle.
            None if budget.available() < budget_total => continue,
            None => return Read::Idle,
        }
    }
}

/// Writes responses as they come, coalescing what is queued into one write.
async fn write_loop(
    writer: futures_lite::io::WriteHalf<TcpStream>,
    responses: flume::Receiver<Outgoing>,
    timeout: Duration,
    peer: String,
) {
    match write_queued(writer, &responses, timeout, |(bytes, _)| bytes).await {
        WriteEnd::Done => {}
        WriteEnd::Failed(error) => tracing::info!(%peer, %error, "connection closed: write failed"),
        WriteEnd::TimedOut => {
            tracing::warn!(%peer, timeout = %humantime::format_duration(timeout), "connection closed: the client took no responses for the whole timeout")
        }
    }
}

/// AUTH: the token's identity for the rest of the connection, answered AUTHED; an
/// unknown token is answered `unauthenticated` and ends the connection. On an open gate
/// any AUTH is answered AUTHED with an empty name.
async fn authenticate(
    shard: &Rc<Shard>,
    front: &Front,
    session: &mut Session,
    token: &str,
    id: u64,
    out: &flume::Sender<Outgoing>,
) -> Result<(), String> {
    let proof = match front.gate.closed() {
        false => None,
        true => Some(front.gate.identify(token).ok_or_else(|| {
            let error = ProtocolError::new(
                ErrorCode::Unauthenticated,
                "the token is not one of this server's credentials (mistyped, or removed): `flowd token add` makes one",
            );
            (error, "AUTH with an unknown token".to_owned())
        })),
    };
    if let Some(Ok(identity)) = &proof {
        session.relays = front.relays.as_client(Some(&identity.name), Some(token));
    }
    proved(shard, session, id, out, proof).await
}

/// VOUCH: a peer relaying over mutual TLS names the credential its client proved to
/// it; that credential's identity serves the rest of the connection, answered AUTHED.
/// From anyone else, or naming a credential this server lacks, it ends the connection.
async fn vouch(
    shard: &Rc<Shard>,
    front: &Front,
    session: &mut Session,
    name: &str,
    id: u64,
    out: &flume::Sender<Outgoing>,
) -> Result<(), String> {
    let proof = match (&session.relayer, front.gate.closed()) {
        (None, _) => Some(Err((
            ProtocolError::new(
                ErrorCode::Forbidden,
                "VOUCH is taken only from a peer of this cluster relaying in mutual TLS; a client gives AUTH",
            ),
            "VOUCH from a connection that is no relaying peer".to_owned(),
        ))),
        (Some(_), false) => None,
        (Some(relayer), true) => Some(front.gate.certified(name).ok_or_else(|| {
            let error = ProtocolError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "the peer {relayer} relays for the credential {name:?}, which is not one of this server's: every peer needs the same credentials file"
                ),
            );
            (error, format!("VOUCH by {relayer} for an unknown credential {name:?}"))
        })),
    };
    proved(shard, session, id, out, proof).await
}

/// How AUTH and VOUCH end: with `None` (an open gate) AUTHED with an empty name; with
/// an identity, AUTHED with its name and the identity kept for the rest of the
/// connection; with a refusal, its error sent (counted), and why the connection ends.
async fn proved(
    shard: &Shard,
    session: &mut Session,
    id: u64,
    out: &flume::Sender<Outgoing>,
    proof: Option<Result<std::sync::Arc<crate::auth::Identity>, (ProtocolError, String)>>,
) -> Result<(), String> {
    let mut bytes = Vec::new();
    match proof {
        None => crate::protocol::message::encode_authed(&mut bytes, id, ""),
        Some(Ok(identity)) => {
            crate::protocol::message::encode_authed(&mut bytes, id, &identity.name);
            session.identity = Some(identity);
            session.auth_by = None;
        }
        Some(Err((error, reason))) => {
            shard.shared.metrics.auth_refused.add(1);
            send_error(shard, out, id, &error).await;
            return Err(reason);
        }
    }
    let _ = out.send_async((bytes, None)).await;
    Ok(())
}

async fn send_error(shard: &Shard, out: &flume::Sender<Outgoing>, id: u64, error: &ProtocolError) {
    shard.shared.metrics.error(error.code);
    let mut bytes = Vec::new();
    encode_error(&mut bytes, id, error.code, &error.message);
    let _ = out.send_async((bytes, None)).await;
}

/// Handles one request; why the connection should end, when it should.
async fn dispatch(
    shard: &Rc<Shard>,
    front: &Rc<Front>,
    session: &mut Session,
    frame: RawFrame<'_>,
    out: &flume::Sender<Outgoing>,
    budget: &Rc<Semaphore>,
    charge: Option<Charge>,
) -> Result<(), String> {
    let id = frame.header.request_id;
    let request = match Request::decode(&frame.header, frame.body) {
        Ok(request) => request,
        Err(error) => {
            send_error(shard, out, id, &error).await;
            return Ok(());
        }
    };
    if let Request::Auth { token } = request {
        return authenticate(shard, front, session, token, id, out).await;
    }
    if let Request::Vouch { name } = request {
        return vouch(shard, front, session, name, id, out).await;
    }
    if front.gate.closed() && session.identity.is_none() {
        shard.shared.metrics.auth_refused.add(1);
        send_error(shard, out, id, &crate::server::gate::unauthenticated()).await;
        return Err("a request before AUTH".to_owned());
    }
    if let Err(error) = front
        .gate
        .allow(session.identity.as_deref(), &crate::server::gate::needs(&request))
    {
        shard.shared.metrics.auth_refused.add(1);
        send_error(shard, out, id, &error).await;
        return Ok(());
    }
    // Charged for what it holds until answered: its body (a produce's records, an
    // ack-and-commit's), and the most its response can take.
    let body = frame.body.len() as u64;
    let fetched =
        |max_bytes: u32| u64::from(max_bytes.min(FETCH_BYTES_MAX)) + RECORD_RESPONSE + SMALL_RESPONSE;
    let cost = match &request {
        Request::Produce(_) | Request::ProduceBatch { .. } | Request::AckCommit(..) => body + SMALL_RESPONSE,
        Request::Metadata
        | Request::Ack(_)
        | Request::Reclaim(_)
        | Request::Seek(..)
        | Request::Length { .. } => SMALL_RESPONSE,
        Request::Fetch(f) | Request::FetchBatches(f) => fetched(f.max_bytes),
        Request::Claim(c) => fetched(c.max_bytes),
        Request::Range(r) => fetched(r.spec.max_bytes),
        Request::Job(_) => body + RECORD_RESPONSE,
        Request::State { .. } => RECORD_RESPONSE,
        Request::Status { .. } | Request::ConsumerAdmin(_) => LARGE_RESPONSE,
        Request::Auth { .. } | Request::Vouch { .. } => SMALL_RESPONSE,
    };
    // A single request may always go alone, whatever it costs.
    let cost = cost.min(RESPONSE_BUDGET + front.max_frame_bytes as u64);
    // While the budget is spent (a client not reading), this connection reads no more.
    let Ok(permit) = budget.acquire_static_permit(cost).await else {
        return Err("the engine is stopping".to_owned());
    };
    let held = Held {
        _permit: permit,
        _charge: charge,
    };
    // About a partition another peer leads: that peer answers it, through here.
    if let Some(route) = relay::route(shard, &request, frame.header.flags) {
        let bytes = relay::frame_bytes(&frame);
        let (relays, out) = (session.relays.clone(), out.clone());
        shard.tasks.spawn(async move {
            let answer = relays.relay(route, bytes, id).await;
            let _ = out.send_async((answer, Some(held))).await;
        });
        return Ok(());
    }
    let produced = match &request {
        Request::Produce(groups) => Some(api::produce(shard, groups, api::Engine::default()).await),
        Request::ProduceBatch {
            topic,
            partition,
            batch,
        } => Some(api::produce_batch(shard, topic, *partition, batch).await),
        _ => None,
    };
    match request {
        Request::Produce(_) | Request::ProduceBatch { .. } => match produced.expect("a produce") {
            Ok(pending) => {
                let (shard, out) = (Rc::clone(shard), out.clone());
                let tasks = Rc::clone(&shard.tasks);
                tasks.spawn(async move {
                    let mut bytes = Vec::new();
                    match pending.wait(&shard).await {
                        Ok(runs) => encode_produced(&mut bytes, id, &runs),
                        Err(error) => {
                            shard.shared.metrics.error(error.code);
                            encode_error(&mut bytes, id, error.code, &error.message);
                        }
                    }
                    let _ = out.send_async((bytes, Some(held))).await;
                });
            }
            Err(error) => send_error(shard, out, id, &error).await,
        },
        Request::Fetch(ref f) | Request::FetchBatches(ref f) => {
            let topic = f.topic.to_owned();
            let order = FetchOrder {
                topic: 0,
                partition: f.partition,
                from: f.from,
                max_records: f.max_records,
                max_bytes: f.max_bytes,
                wait_ms: f.wait_ms,
                request_id: id,
                batches: matches!(request, Request::FetchBatches(_)),
            };
            let (shard, out) = (Rc::clone(shard), out.clone());
            let tasks = Rc::clone(&shard.tasks);
            tasks.spawn(async move {
                let bytes = api::fetch(&shard, &topic, order).await;
                let _ = out.send_async((bytes, Some(held))).await;
            });
        }
        Request::Metadata => {
            let mut bytes = Vec::new();
            encode_metadata(
                &mut bytes,
                id,
                &api::metadata(shard, front.max_frame_bytes as u32),
            );
            let _ = out.send_async((bytes, Some(held))).await;
        }
        Request::Status { local } => {
            // A status relayed from another peer gathering the cluster's is this peer's own.
            let local = local || frame.header.flags & FLAG_RELAYED != 0;
            let (shard, front, out) = (Rc::clone(shard), Rc::clone(front), out.clone());
            let relays = session.relays.clone();
            let tasks = Rc::clone(&shard.tasks);
            tasks.spawn(async move {
                let status = front.status(&shard, local, &relays).await;
                let json = serde_json::to_vec(&status).expect("status serializes");
                let mut bytes = Vec::new();
                encode_status(&mut bytes, id, &json);
                let _ = out.send_async((bytes, Some(held))).await;
            });
        }
        Request::Job(job) => {
            let name = job.job.to_owned();
            let timeout = (job.timeout_ms > 0).then(|| Duration::from_millis(job.timeout_ms.into()));
            if timeout.is_some_and(|t| t > api::JOB_TIMEOUT_MAX) {
                let error = ProtocolError::new(
                    ErrorCode::Invalid,
                    format!(
                        "a job's timeout is at most {} ms, not {}",
                        api::JOB_TIMEOUT_MAX.as_millis(),
                        job.timeout_ms
                    ),
                );
                send_error(shard, out, id, &error).await;
                return Ok(());
            }
            let key = job.record.key.map(<[u8]>::to_vec);
            let value = job.record.value.to_vec();
            let headers: Vec<(String, Vec<u8>)> = job
                .record
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect();
            let (shard, out) = (Rc::clone(shard), out.clone());
            let tasks = Rc::clone(&shard.tasks);
            tasks.spawn(async move {
                let headers: Vec<(&str, &[u8])> =
                    headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                let mut bytes = Vec::new();
                match api::job(&shard, &name, timeout, key.as_deref(), &value, &headers).await {
                    Ok(answer) => encode_answer(&mut bytes, id, answer.key.as_deref(), &answer.value),
                    Err(error) => {
                        shard.shared.metrics.error(error.code);
                        encode_error(&mut bytes, id, error.code, &error.message);
                    }
                }
                let _ = out.send_async((bytes, Some(held))).await;
            });
        }
        Request::State { stage, key } => {
            let (stage, key) = (stage.to_owned(), key.to_vec());
            let (shard, out) = (Rc::clone(shard), out.clone());
            let tasks = Rc::clone(&shard.tasks);
            tasks.spawn(async move {
                let mut bytes = Vec::new();
                let error = match api::state(&shard, &stage, &key).await {
                    Ok(Some(state)) => {
                        encode_answer(&mut bytes, id, Some(&key), &state);
                        None
                    }
                    Ok(None) => Some(ProtocolError::new(
                        ErrorCode::UnknownState,
                        format!(
                            "stage \"{stage}\" holds no state for key \"{}\"",
                            String::from_utf8_lossy(&key)
                        ),
                    )),
                    Err(error) => Some(error),
                };
                if let Some(error) = error {
                    shard.shared.metrics.error(error.code);
                    encode_error(&mut bytes, id, error.code, &error.message);
                }
                let _ = out.send_async((bytes, Some(held))).await;
            });
        }
        // Answered before the budget (`authenticate`, `vouch`).
        Request::Auth { .. } | Request::Vouch { .. } => {}
        Request::Claim(_)
        | Request::Ack(_)
        | Request::Reclaim(_)
        | Request::AckCommit(..)
        | Request::Seek(..)
        | Request::ConsumerAdmin(_)
        | Request::Range(_)
        | Request::Length { .. } => {
            // The task owns a copy of the body. Tasks start in the order spawned and run
            // until they first wait, so a pipelined ack settles before the next claim.
            let (header, body) = (frame.header, frame.body.to_vec());
            let (shard, relays, out) = (Rc::clone(shard), session.relays.clone(), out.clone());
            // A peer relaying in mutual TLS may write the null mark (a dead letter's
            // replay of a tombstone, asked of another peer); a client none.
            let engine: &[&str] = match session.relayer {
                Some(_) => &[NULL_VALUE_HEADER],
                None => &[],
            };
            let tasks = Rc::clone(&shard.tasks);
            tasks.spawn(async move {
                // A request relayed here is served here: never relayed on.
                let relays = (header.flags & FLAG_RELAYED == 0).then_some(&relays);
                let bytes = match Request::decode(&header, &body) {
                    Ok(request) => consumer_request(&shard, relays, request, id, engine).await,
                    Err(error) => Err(error),
                };
                let bytes = bytes.unwrap_or_else(|error| {
                    shard.shared.metrics.error(error.code);
                    let mut bytes = Vec::new();
                    encode_error(&mut bytes, id, error.code, &error.message);
                    bytes
                });
                let _ = out.send_async((bytes, Some(held))).await;
            });
        }
    }
    Ok(())
}

/// The response frame to a consumer request or a range/length read; what another peer
/// leads is asked of it through `relays` (a claim of any partition, a whole topic's
/// length: a request about one partition came here relayed, or is relayed whole).
/// `engine`: the engine headers an ack-and-commit's records may carry.
async fn consumer_request(
    shard: &Rc<Shard>,
    relays: Option<&relay::Relays>,
    request: Request<'_>,
    id: u64,
    engine: &[&str],
) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    match request {
        Request::Claim(r) => return consumer_api::claim(shard, relays, &r, id).await,
        Request::Range(r) => return consumer_api::range(shard, relays, &r, id).await,
        Request::Ack(r) => {
            let (from, to) = consumer_api::ack(shard, relays, &r).await?;
            encode_acked(&mut out, id, r.partition, from, to);
        }
        Request::Seek(r, to) => {
            let offset = consumer_api::seek(shard, relays, &r, to).await?;
            encode_sought(&mut out, id, r.partition, offset);
        }
        Request::Reclaim(r) => {
            let (from, to, reclaims, outcome) = consumer_api::reclaim(shard, relays, &r).await?;
            let reply = ReclaimedReply {
                partition: r.partition,
                from,
                to,
                reclaims,
                outcome,
            };
            encode_reclaimed(&mut out, id, &reply);
        }
        Request::AckCommit(r, groups) => {
            let ((from, to), runs) = consumer_api::ack_commit(shard, relays, &r, &groups, engine).await?;
            encode_committed(&mut out, id, r.partition, from, to, &runs);
        }
        Request::ConsumerAdmin(r) => {
            let cursors = consumer_api::admin(shard, relays, &r).await?;
            let json = serde_json::to_vec(&cursors).expect("cursors serialize");
            encode_consumers(&mut out, id, &json);
        }
        Request::Length { topic, partition } => {
            let n = consumer_api::length(shard, relays, topic, partition).await?;
            encode_length(&mut out, id, n);
        }
        _ => {
            return Err(ProtocolError::new(
                ErrorCode::Internal,
                "not a consumer request (a bug)",
            ));
        }
    }
    Ok(out)
}
