//! The Kafka protocol's door: Kafka producers and consumers (kcat, librdkafka,
//! kafka-python, the Java client) on flowd's partitions, unchanged. Records produced here
//! are the records `flowd tail`, stages and named consumers see, and the reverse.
//!
//! Kafka's messages come from the `kafka-protocol` crate, generated from Kafka's own
//! schemas; this door only maps them onto the engine, except for the records inside a
//! record batch, which it reads and writes itself (`batch`, `inflate`: the crate keeps
//! headers in a map and trusts the counts a batch claims). A connection is served one request
//! at a time, in order, so its answers go out in the order asked (what Kafka promises per
//! connection). Each request is bounded like a binary frame: at most
//! `ingest.max_frame_bytes`, whole within `io_timeout` of its first byte (large ones take
//! their bytes from the shard's budget first), and a connection silent for
//! `idle_timeout` is closed. A request this door does not serve (its API, or its version)
//! is logged with what it was and the connection closed; ApiVersions tells clients what
//! is served, so the clients named above never send one.
//!
//! Codemap: `versions` (what is served; ApiVersions) → `request` (a request's bytes
//! decoded: head, then body) → `brokers` (this door alone, or
//! every peer's; leaders and coordinators) → `metadata` → `produce` (batches in, durable
//! acks out) and `producers` (idempotence) → `fetch` (Fetch with long polls,
//! ListOffsets) → `records` (Kafka records to flowd's and back) over `batch` (a batch's
//! records, every count checked first) and `inflate` (decompression within a limit) →
//! `group` and `groups`
//! (consumer groups; commits as named consumers' SEEK) → `topics` → `sasl` (who the
//! client is) → `errors` (flowd's refusals as Kafka's error codes).

mod batch;
mod brokers;
mod errors;
mod fetch;
mod group;
mod groups;
mod inflate;
mod metadata;
mod produce;
mod producers;
pub mod records;
pub mod request;
mod sasl;
mod topics;
mod versions;

/// What every shard's Kafka door shares: the consumer groups and the idempotent
/// producers' sequences.
#[derive(Debug, Default)]
pub struct Shared {
    groups: groups::Groups,
    producers: producers::Producers,
}

use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use crate::runtime::shard::Shard;
use crate::server::admission::{Charge, FREE_BYTES, Refusal};
use crate::server::door::{self, Stream};
use crate::server::{Front, api};
use request::Body;

/// Accepts Kafka clients on this shard's socket until the engine stops.
pub async fn accept_loop(shard: Rc<Shard>, front: Rc<Front>, fd: RawFd) {
    let speaks = door::Speaks {
        what: "Kafka",
        // A Kafka client has no frame for "speak TLS": it is closed, and the log says why.
        plain_answer: Vec::new,
        relays: false,
    };
    crate::server::accept_loop(shard, front, fd, speaks, serve, refuse).await;
}

/// A connection over the limits: Kafka has no frame to say so before a request, so it is
/// closed (the refusal is logged and counted by the accept loop).
async fn refuse(mut stream: Stream, _refusal: Refusal) {
    let _ = stream.close().await;
}

/// Requests read ahead of their answers, at most: a client pipelining more waits.
const IN_FLIGHT: usize = 16;

/// A request's answer as it stands once read: due now, or from a task still running.
enum Answer {
    Ready(Option<Reply>),
    Later(glommio::task::JoinHandle<Result<Option<Reply>, String>>),
}

/// A response frame, and the budget it holds until written (a fetch's).
type Reply = (Vec<u8>, Option<Charge>);

/// Serves one connection: the reader takes each request in turn (a produce's batches
/// sent to their partitions before the next is read, so appends keep the client's
/// order), the answers are awaited in the order asked and written as they come.
async fn serve(shard: Rc<Shard>, front: Rc<Front>, stream: Stream) {
    let peer = stream.peer_addr();
    let Some(me) = stream.local_addr() else {
        return;
    };
    // A client certificate the TLS door verified proves a credential of that name.
    let identity = stream.client_name().and_then(|name| front.gate.certified(name));
    let mut who = sasl::Who {
        gate: std::sync::Arc::clone(&front.gate),
        relays: match &identity {
            Some(identity) => front.relays.as_client(Some(&identity.name), None),
            None => front.relays.clone(),
        },
        identity,
        cluster: shard.shared.peers.clone(),
        reached: me,
    };
    let mut exchange = sasl::Exchange::default();
    let auth_by = (!who.proved()).then(|| Instant::now() + front.io_timeout);
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (answers_tx, answers_rx) = flume::bounded::<Answer>(IN_FLIGHT);
    let (out_tx, out_rx) = flume::bounded::<Reply>(IN_FLIGHT);
    let io_timeout = front.io_timeout;
    let writing = glommio::spawn_local(async move {
        crate::server::outgoing::write_queued(writer, &out_rx, io_timeout, |r: &Reply| r.0.as_slice()).await
    });
    // Answers in the order asked; the first failure ends the connection.
    let ordering = glommio::spawn_local(async move {
        while let Ok(answer) = answers_rx.recv_async().await {
            let answer = match answer {
                Answer::Ready(answer) => Ok(answer),
                Answer::Later(task) => task.await.unwrap_or_else(|| Err("the engine is stopping".into())),
            };
            match answer {
                Ok(Some(bytes)) => {
                    if out_tx.send_async(bytes).await.is_err() {
                        return None;
                    }
                }
                Ok(None) => {}
                Err(why) => return Some(why),
            }
        }
        None
    });
    let mut why = loop {
        // Until it proved itself, a client has until `auth_by`, not `idle_timeout`.
        let wait = match auth_by.filter(|_| !who.proved()) {
            Some(by) => by.saturating_duration_since(Instant::now()),
            None => front.idle_timeout,
        };
        let request = match read_request(&front, &mut reader, wait).await {
            Ok(Some(request)) => request,
            Ok(None) if !who.proved() => {
                shard.shared.metrics.auth_refused.add(1);
                break Some(format!(
                    "no SASL authentication within {} (this server asks for credentials)",
                    humantime::format_duration(front.io_timeout)
                ));
            }
            Ok(None) => break None,
            Err(why) => break Some(why),
        };
        let (answer, close) = match take(&shard, &front, request.bytes, &mut who, &mut exchange).await {
            Ok(answer) => answer,
            Err(why) => break Some(why),
        };
        if answers_tx.send_async(answer).await.is_err() {
            // The answers stopped (a failed one, or the writer): said below.
            break None;
        }
        if let Some(why) = close {
            shard.shared.metrics.auth_refused.add(1);
            break Some(why);
        }
    };
    drop(answers_tx);
    why = why.or(ordering.await);
    match writing.await {
        crate::server::outgoing::WriteEnd::Failed(error) => {
            why = why.or(Some(format!("write failed: {error}")))
        }
        crate::server::outgoing::WriteEnd::TimedOut => {
            why = why.or(Some(format!(
                "a response not taken within {}",
                humantime::format_duration(io_timeout)
            )))
        }
        crate::server::outgoing::WriteEnd::Done => {}
    }
    if let Some(why) = why {
        tracing::warn!(?peer, "Kafka connection closed: {why}");
    }
}

/// A request's bytes (after the size), with the budget its size took.
struct Request {
    bytes: Bytes,
    _charge: Option<Charge>,
}

/// The next request: `None` when the client closed (or stayed silent for
/// `idle_timeout`) between requests.
async fn read_request(
    front: &Front,
    stream: &mut (impl futures_lite::AsyncRead + Unpin),
    wait: std::time::Duration,
) -> Result<Option<Request>, String> {
    let mut size = [0u8; 4];
    match api::within(wait, stream.read(&mut size[..1])).await {
        Some(Ok(0)) | None => return Ok(None),
        Some(Ok(_)) => {}
        Some(Err(error)) => return Err(format!("read failed: {error}")),
    }
    let deadline = Instant::now() + front.io_timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let late = || {
        format!(
            "a request not whole within {} of its first byte",
            humantime::format_duration(front.io_timeout)
        )
    };
    match api::within(left(), stream.read_exact(&mut size[1..])).await {
        Some(Ok(())) => {}
        Some(Err(error)) => return Err(format!("read failed inside a request's size: {error}")),
        None => return Err(late()),
    }
    let len = i32::from_be_bytes(size);
    let Ok(len) = usize::try_from(len) else {
        return Err(format!("a request size of {len} bytes"));
    };
    if len < 8 || len > front.max_frame_bytes {
        return Err(format!(
            "a request of {len} bytes (from 8 to ingest.max_frame_bytes, {}, are read)",
            front.max_frame_bytes
        ));
    }
    let charge = if len as u64 > FREE_BYTES {
        match api::within(left(), Charge::take(&front.buffered, len as u64)).await {
            Some(Some(charge)) => Some(charge),
            Some(None) => return Err("the engine is stopping".into()),
            None => return Err(late()),
        }
    } else {
        None
    };
    let mut bytes = vec![0u8; len];
    match api::within(left(), stream.read_exact(&mut bytes)).await {
        Some(Ok(())) => Ok(Some(Request {
            bytes: Bytes::from(bytes),
            _charge: charge,
        })),
        Some(Err(error)) => Err(format!("read failed inside a request of {len} bytes: {error}")),
        None => Err(late()),
    }
}

/// Takes one request: its answer now (ApiVersions, Metadata), or a task that makes it
/// (a produce's acks, once its batches were sent; a fetch); `None` is no answer due (a
/// produce with acks 0). An error closes the connection, saying why.
async fn take(
    shard: &Rc<Shard>,
    front: &Rc<Front>,
    bytes: Bytes,
    who: &mut sasl::Who,
    exchange: &mut sasl::Exchange,
) -> Result<(Answer, Option<String>), String> {
    let (head, bytes) = match request::open(bytes)? {
        request::Opened::Served(head, bytes) => (head, bytes),
        request::Opened::VersionsUnserved { version, correlation } => {
            // Answered in version 0, which every client reads, with the versions served.
            return encode(ApiKey::ApiVersions, 0, correlation, &versions::answer(version))
                .map(|b| (Answer::Ready(Some((b, None))), None));
        }
    };
    let request::Head {
        key,
        version,
        correlation,
    } = head;
    if !who.proved()
        && !matches!(
            key,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    {
        return Err(format!(
            "a {key:?} request before SASL authentication: this server asks for credentials (SASL PLAIN, \
             the credential's name as the user and its token as the password)"
        ));
    }
    let ready = |body: Result<Vec<u8>, String>| body.map(|b| Answer::Ready(Some((b, None))));
    let later = |task| Ok(Answer::Later(glommio::spawn_local(task).detach()));
    let mut close = None;
    let answer = match request::body(head, bytes)? {
        Body::SaslHandshake(request) => ready(encode(
            key,
            version,
            correlation,
            &sasl::handshake(&request, exchange),
        )),
        Body::SaslAuthenticate(request) => {
            let (answer, proved) = sasl::authenticate(&request, exchange, who);
            if !proved {
                close = Some(format!(
                    "SASL authentication failed: {}",
                    answer.error_message.as_ref().map_or("", |m| m.as_str())
                ));
            }
            ready(encode(key, version, correlation, &answer))
        }
        Body::ApiVersions => ready(encode(key, version, correlation, &versions::answer(version))),
        Body::Metadata(request) => {
            let cluster_id = shard
                .shared
                .peers
                .as_deref()
                .map_or("flowd", |peers| peers.cluster.cluster_id.as_str());
            let answer = metadata::answer(shard, &request, version, &who.brokers(), cluster_id);
            ready(encode(key, version, correlation, &answer))
        }
        Body::Produce(request) => {
            let sent = produce::send_all(
                shard,
                &shared(front)?,
                request,
                who,
                front.io_timeout,
                front.max_frame_bytes,
            )
            .await;
            let shard = Rc::clone(shard);
            later(Box::pin(async move {
                match sent.answer(&shard).await {
                    Some(answer) => encode(key, version, correlation, &answer).map(|b| Some((b, None))),
                    None => Ok(None),
                }
            }) as Later)
        }
        Body::Fetch(request) => {
            let (shard, front, who) = (Rc::clone(shard), Rc::clone(front), who.clone());
            later(Box::pin(async move {
                // The response's room, taken from the shard's budget before it is read
                // and held until it is written: a client pipelining fetches holds at
                // most what the budget gives.
                let room = usize::try_from(request.max_bytes.max(1))
                    .unwrap_or(usize::MAX)
                    .min(fetch::RESPONSE_BYTES_MAX)
                    .min(front.max_frame_bytes);
                let charge =
                    match api::within(front.io_timeout, Charge::take(&front.buffered, room as u64)).await {
                        Some(Some(charge)) => charge,
                        Some(None) => return Err("the engine is stopping".to_owned()),
                        None => {
                            return Err(format!(
                                "a fetch waited {} for room in the server's buffer budget",
                                humantime::format_duration(front.io_timeout)
                            ));
                        }
                    };
                let answer = fetch::answer(&shard, &request, room, &who).await;
                encode(key, version, correlation, &answer).map(|b| Some((b, Some(charge))))
            }) as Later)
        }
        Body::ListOffsets(request) => {
            let (shard, who) = (Rc::clone(shard), who.clone());
            later(Box::pin(async move {
                let answer = fetch::list_offsets(&shard, &request, &who).await;
                encode(key, version, correlation, &answer).map(|b| Some((b, None)))
            }) as Later)
        }
        Body::CreateTopics(request) => ready(encode(
            key,
            version,
            correlation,
            &topics::create(&shard.shared.spec, &request),
        )),
        Body::DeleteTopics(request) => {
            let answer = topics::delete(&shard.shared.spec, &request, version);
            ready(encode(key, version, correlation, &answer))
        }
        Body::InitProducerId(request) => {
            let answer = shared(front)?.producers.init(&request);
            ready(encode(key, version, correlation, &answer))
        }
        Body::FindCoordinator(request) => ready(encode(
            key,
            version,
            correlation,
            &groups::find_coordinator(&request, version, &who.brokers()),
        )),
        Body::JoinGroup(request) => {
            let (groups, who) = (shared(front)?, who.clone());
            later(Box::pin(async move {
                let answer = groups::join(&groups.groups, request, version, &who).await;
                encode(key, version, correlation, &answer).map(|b| Some((b, None)))
            }) as Later)
        }
        Body::SyncGroup(request) => {
            let (groups, who) = (shared(front)?, who.clone());
            later(Box::pin(async move {
                let answer = groups::sync(&groups.groups, request, &who).await;
                encode(key, version, correlation, &answer).map(|b| Some((b, None)))
            }) as Later)
        }
        Body::Heartbeat(request) => {
            let answer = groups::heartbeat(&shared(front)?.groups, &request, who);
            ready(encode(key, version, correlation, &answer))
        }
        Body::LeaveGroup(request) => {
            let answer = groups::leave(&shared(front)?.groups, &request, version, who);
            ready(encode(key, version, correlation, &answer))
        }
        Body::OffsetCommit(request) => {
            let (shard, groups, who) = (Rc::clone(shard), shared(front)?, who.clone());
            later(Box::pin(async move {
                let answer = groups::offset_commit(&shard, &groups.groups, request, &who).await;
                encode(key, version, correlation, &answer).map(|b| Some((b, None)))
            }) as Later)
        }
        Body::OffsetFetch(request) => {
            let (shard, who) = (Rc::clone(shard), who.clone());
            later(Box::pin(async move {
                let answer = groups::offset_fetch(&shard, request, version, &who).await;
                encode(key, version, correlation, &answer).map(|b| Some((b, None)))
            }) as Later)
        }
    }?;
    Ok((answer, close))
}

/// What the door's shards share (there whenever the Kafka door is open).
fn shared(front: &Front) -> Result<std::sync::Arc<Shared>, String> {
    front
        .kafka_shared
        .clone()
        .ok_or_else(|| "a Kafka request on a shard without the Kafka door's shared state (a bug)".to_owned())
}

/// A request's answer being made.
type Later = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<Reply>, String>>>>;

/// `body` as a whole response frame: its size, its header, itself.
fn encode<R: Encodable>(key: ApiKey, version: i16, correlation: i32, body: &R) -> Result<Vec<u8>, String> {
    let failed = |e: &dyn std::fmt::Display| format!("a {key:?} v{version} response did not encode: {e}");
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation;
    header
        .encode(&mut buf, key.response_header_version(version))
        .map_err(|e| failed(&e))?;
    body.encode(&mut buf, version).map_err(|e| failed(&e))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| format!("a {key:?} response over 2 GiB"))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}
