//! One TCP client: read frames, dispatch requests (many in flight), write responses.
//!
//! Limits, so that no client can hurt the others: a frame over `max_frame_bytes` is
//! refused from its length prefix alone; a frame begun but not finished within
//! `io_timeout` closes the connection; responses not taken by the client within
//! `io_timeout` close it too; the responses a connection may owe at once are bounded by
//! a byte budget, and while it is spent the connection reads no further requests. The
//! read buffer starts small, so that thousands of idle connections cost little.

use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Semaphore, StaticPermit};

use crate::protocol::consumer::{
    ReclaimedReply, encode_acked, encode_committed, encode_consumers, encode_length, encode_reclaimed,
};
use crate::protocol::message::{
    encode_answer, encode_error, encode_metadata, encode_produced, encode_status,
};
use crate::protocol::{ErrorCode, ProtocolError, RawFrame, Request, parse_frame};
use crate::runtime::service::{FETCH_BYTES_MAX, FetchOrder};
use crate::runtime::shard::Shard;
use crate::server::{self, Front};
use crate::server::{api, consumer_api};

/// Bytes of responses one connection may owe at once.
const RESPONSE_BUDGET: u64 = 8 << 20;
/// What a produce response is charged against the budget.
const SMALL_RESPONSE: u64 = 512;
/// What a job answer or status document is charged.
const LARGE_RESPONSE: u64 = 64 << 10;
/// Responses queued for the writer.
const OUTGOING_MAX: usize = 256;
/// The smallest read; idle connections hold no more than this.
const READ_MIN: usize = 4 << 10;
/// The largest single read.
const READ_MAX: usize = 1 << 20;

type Outgoing = (Vec<u8>, Option<StaticPermit>);

pub async fn accept_loop(shard: Rc<Shard>, front: Rc<Front>, fd: RawFd) {
    // Safety: `fd` is a listening socket bound for this shard and owned by nothing else.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let metrics = std::sync::Arc::clone(&shard.shared.metrics);
    while !shard.shared.control.is_stopping() {
        let stream = server::accept(&listener, "TCP").await;
        let Some(open) = server::admit(&metrics, &front, "TCP") else {
            glommio::spawn_local(refuse(stream, front.max_connections)).detach();
            continue;
        };
        let (shard, front) = (Rc::clone(&shard), Rc::clone(&front));
        glommio::spawn_local(async move {
            serve(shard, front, stream).await;
            drop(open);
        })
        .detach();
    }
}

async fn refuse(mut stream: TcpStream, limit: usize) {
    let mut out = Vec::new();
    let message = format!(
        "the server holds its limit of {limit} connections; retry later or raise ingest.max_connections"
    );
    encode_error(&mut out, 0, ErrorCode::Overloaded, &message);
    let _ = api::within(Duration::from_secs(1), stream.write_all(&out)).await;
    let _ = stream.close().await;
}

/// Serves one connection until the client closes it or breaks a rule.
pub async fn serve(shard: Rc<Shard>, front: Rc<Front>, stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (out_tx, out_rx) = flume::bounded::<Outgoing>(OUTGOING_MAX);
    let writer_task = glommio::spawn_local(write_loop(writer, out_rx, front.io_timeout, peer.clone()));
    let budget = Rc::new(Semaphore::new(RESPONSE_BUDGET));
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut last_read_full = false;
    let reason = 'conn: loop {
        // Every whole frame buffered, in order.
        loop {
            match parse_frame(&buf[start..], front.max_frame_bytes) {
                Ok(Some(frame)) => {
                    let len = frame.len;
                    if !dispatch(&shard, &front, frame, &out_tx, &budget).await {
                        break 'conn "the engine is stopping".to_owned();
                    }
                    start += len;
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
        // Read what the frame in progress still needs, else a small or growing chunk.
        let want = match buf.get(..4) {
            Some(prefix) => {
                let total = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize + 4;
                total.saturating_sub(buf.len()).clamp(READ_MIN, READ_MAX)
            }
            None if last_read_full => 64 << 10,
            None => READ_MIN,
        };
        let old = buf.len();
        buf.resize(old + want, 0);
        let read = if old > 0 {
            match api::within(front.io_timeout, reader.read(&mut buf[old..])).await {
                Some(read) => read,
                None => {
                    buf.truncate(old);
                    break format!(
                        "a frame stayed unfinished for {} ({} bytes of it arrived)",
                        humantime::format_duration(front.io_timeout),
                        old
                    );
                }
            }
        } else {
            reader.read(&mut buf[old..]).await
        };
        match read {
            Ok(0) => {
                buf.truncate(old);
                if old == 0 {
                    break "closed by the client".to_owned();
                }
                break format!("closed by the client inside a frame ({old} bytes of it arrived)");
            }
            Ok(n) => {
                buf.truncate(old + n);
                last_read_full = n == want;
            }
            Err(error) => {
                buf.truncate(old);
                break format!("read failed: {error}");
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

/// Writes responses as they come, coalescing what is queued into one write.
async fn write_loop(
    writer: futures_lite::io::WriteHalf<TcpStream>,
    responses: flume::Receiver<Outgoing>,
    timeout: Duration,
    peer: String,
) {
    let mut writer = futures_lite::io::BufWriter::with_capacity(64 << 10, writer);
    while let Ok((bytes, permit)) = responses.recv_async().await {
        let mut batch = vec![(bytes, permit)];
        while let Ok(more) = responses.try_recv() {
            batch.push(more);
            if batch.len() >= 64 {
                break;
            }
        }
        let written = api::within(timeout, async {
            for (bytes, _) in &batch {
                writer.write_all(bytes).await?;
            }
            writer.flush().await
        })
        .await;
        match written {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::info!(%peer, %error, "connection closed: write failed");
                break;
            }
            None => {
                tracing::warn!(%peer, timeout = %humantime::format_duration(timeout), "connection closed: the client took no responses for the whole timeout");
                break;
            }
        }
    }
    let _ = writer.close().await;
}

async fn send_error(shard: &Shard, out: &flume::Sender<Outgoing>, id: u64, error: &ProtocolError) {
    shard.shared.metrics.error(error.code);
    let mut bytes = Vec::new();
    encode_error(&mut bytes, id, error.code, &error.message);
    let _ = out.send_async((bytes, None)).await;
}

/// Handles one request; false when the connection should end.
async fn dispatch(
    shard: &Rc<Shard>,
    front: &Rc<Front>,
    frame: RawFrame<'_>,
    out: &flume::Sender<Outgoing>,
    budget: &Rc<Semaphore>,
) -> bool {
    let id = frame.header.request_id;
    let request = match Request::decode(&frame.header, frame.body) {
        Ok(request) => request,
        Err(error) => {
            send_error(shard, out, id, &error).await;
            return true;
        }
    };
    let cost = match &request {
        Request::Produce(_) | Request::Metadata => SMALL_RESPONSE,
        Request::Fetch(f) => u64::from(f.max_bytes.min(FETCH_BYTES_MAX)) + SMALL_RESPONSE,
        Request::Job(_) | Request::Status | Request::ConsumerAdmin(_) => LARGE_RESPONSE,
        Request::Claim(c) => u64::from(c.max_bytes.min(FETCH_BYTES_MAX)) + SMALL_RESPONSE,
        Request::Range(r) => u64::from(r.spec.max_bytes.min(FETCH_BYTES_MAX)) + SMALL_RESPONSE,
        Request::Ack(_) | Request::Reclaim(_) | Request::AckCommit(..) | Request::Length { .. } => {
            SMALL_RESPONSE
        }
        Request::State { .. } => LARGE_RESPONSE,
    };
    // While the budget is spent (a client not reading), this connection reads no more.
    let Ok(permit) = budget.acquire_static_permit(cost).await else {
        return false;
    };
    match request {
        Request::Produce(groups) => match api::produce(shard, &groups).await {
            Ok(pending) => {
                let (shard, out) = (Rc::clone(shard), out.clone());
                glommio::spawn_local(async move {
                    let mut bytes = Vec::new();
                    match pending.wait(&shard).await {
                        Ok(runs) => encode_produced(&mut bytes, id, &runs),
                        Err(error) => {
                            shard.shared.metrics.error(error.code);
                            encode_error(&mut bytes, id, error.code, &error.message);
                        }
                    }
                    let _ = out.send_async((bytes, Some(permit))).await;
                })
                .detach();
            }
            Err(error) => send_error(shard, out, id, &error).await,
        },
        Request::Fetch(f) => {
            let topic = f.topic.to_owned();
            let order = FetchOrder {
                topic: 0,
                partition: f.partition,
                from: f.from,
                max_records: f.max_records,
                max_bytes: f.max_bytes,
                wait_ms: f.wait_ms,
                request_id: id,
            };
            let (shard, out) = (Rc::clone(shard), out.clone());
            glommio::spawn_local(async move {
                let bytes = api::fetch(&shard, &topic, order).await;
                let _ = out.send_async((bytes, Some(permit))).await;
            })
            .detach();
        }
        Request::Metadata => {
            let mut bytes = Vec::new();
            encode_metadata(
                &mut bytes,
                id,
                &api::metadata(shard, front.max_frame_bytes as u32),
            );
            let _ = out.send_async((bytes, Some(permit))).await;
        }
        Request::Status => {
            let (shard, front, out) = (Rc::clone(shard), Rc::clone(front), out.clone());
            glommio::spawn_local(async move {
                let rate = front.rate(shard.shared.metrics.records_in.get());
                let status = api::status(&shard, front.started, &front.listeners, rate).await;
                let json = serde_json::to_vec(&status).expect("status serializes");
                let mut bytes = Vec::new();
                encode_status(&mut bytes, id, &json);
                let _ = out.send_async((bytes, Some(permit))).await;
            })
            .detach();
        }
        Request::Job(job) => {
            let name = job.job.to_owned();
            let timeout = (job.timeout_ms > 0).then(|| Duration::from_millis(job.timeout_ms.into()));
            let key = job.record.key.map(<[u8]>::to_vec);
            let value = job.record.value.to_vec();
            let headers: Vec<(String, Vec<u8>)> = job
                .record
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect();
            let (shard, out) = (Rc::clone(shard), out.clone());
            glommio::spawn_local(async move {
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
                let _ = out.send_async((bytes, Some(permit))).await;
            })
            .detach();
        }
        Request::State { stage, key } => {
            let (stage, key) = (stage.to_owned(), key.to_vec());
            let (shard, out) = (Rc::clone(shard), out.clone());
            glommio::spawn_local(async move {
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
                let _ = out.send_async((bytes, Some(permit))).await;
            })
            .detach();
        }
        Request::Claim(_)
        | Request::Ack(_)
        | Request::Reclaim(_)
        | Request::AckCommit(..)
        | Request::ConsumerAdmin(_)
        | Request::Range(_)
        | Request::Length { .. } => {
            // The task owns a copy of the body. Tasks start in the order spawned and run
            // until they first wait, so a pipelined ack settles before the next claim.
            let (header, body) = (frame.header, frame.body.to_vec());
            let (shard, out) = (Rc::clone(shard), out.clone());
            glommio::spawn_local(async move {
                let bytes = match Request::decode(&header, &body) {
                    Ok(request) => consumer_request(&shard, request, id).await,
                    Err(error) => Err(error),
                };
                let bytes = bytes.unwrap_or_else(|error| {
                    shard.shared.metrics.error(error.code);
                    let mut bytes = Vec::new();
                    encode_error(&mut bytes, id, error.code, &error.message);
                    bytes
                });
                let _ = out.send_async((bytes, Some(permit))).await;
            })
            .detach();
        }
    }
    true
}

/// The response frame to a consumer request or a range/length read.
async fn consumer_request(
    shard: &Rc<Shard>,
    request: Request<'_>,
    id: u64,
) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    match request {
        Request::Claim(r) => return consumer_api::claim(shard, &r, id).await,
        Request::Range(r) => return consumer_api::range(shard, &r, id).await,
        Request::Ack(r) => {
            let (from, to) = consumer_api::ack(shard, &r).await?;
            encode_acked(&mut out, id, r.partition, from, to);
        }
        Request::Reclaim(r) => {
            let (from, to, reclaims, outcome) = consumer_api::reclaim(shard, &r).await?;
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
            let ((from, to), runs) = consumer_api::ack_commit(shard, &r, &groups).await?;
            encode_committed(&mut out, id, r.partition, from, to, &runs);
        }
        Request::ConsumerAdmin(r) => {
            let cursors = consumer_api::admin(shard, &r).await?;
            let json = serde_json::to_vec(&cursors).expect("cursors serialize");
            encode_consumers(&mut out, id, &json);
        }
        Request::Length { topic, partition } => {
            let n = consumer_api::length(shard, topic, partition).await?;
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
