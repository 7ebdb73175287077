//! JSON over HTTP/1.1 with hyper, on the same shards and the same operations as the
//! binary protocol: `POST/GET /topics/T`, `POST /jobs/NAME`, `GET /status`, `GET /`
//! (the status page) and `GET /metrics` (Prometheus text). A contract (DESIGN.md 5).
//! Codemap: this file (accepting, the watchdog, routing, records) → `consumers`
//! (consumers and range reads) → `reply` (the answers and request shapes both share) →
//! `io` (hyper over a glommio stream); `guard` refuses what a browser page could forge;
//! `login` lets a browser in on a server with credentials (a session cookie).

use crate::server::door::Stream;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::auth::Need;
use crate::metrics;
use crate::protocol::consumer::AdminAction;
use crate::protocol::message::Response as FrameResponse;
use crate::protocol::{FetchFrom, ProtocolError, parse_frame};
use crate::runtime::service::{FETCH_RECORDS_MAX, FetchOrder};
use crate::runtime::shard::Shard;
use crate::server::admission::{Charge, FREE_BYTES, Refusal};
use crate::server::{self, Front, api, page, relay};

mod consumers;
mod guard;
mod io;
mod login;
mod replay;
mod reply;

use io::{HyperIo, Phase};
use reply::{Reply, error, json, offset_strings, percent_decode, produce_group, protocol_error, text};
// Also what the HTTP fuzz target drives (fuzz/fuzz_targets/http_bodies.rs).
pub use reply::{parse_records, query_param};

/// Records one `GET /topics/T` returns unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;

pub async fn accept_loop(shard: Rc<Shard>, front: Rc<Front>, fd: RawFd) {
    let speaks = server::door::Speaks {
        what: "HTTP",
        plain_answer: tls_required,
        relays: false,
    };
    server::accept_loop(shard, front, fd, speaks, serve, refuse).await;
}

/// What a plain-HTTP client on the HTTPS port reads before it is closed.
fn tls_required() -> Vec<u8> {
    let body = serde_json::json!({
        "error": "this port speaks TLS: use https:// (and --cacert FILE when the server's certificate is not signed by a CA this machine trusts)"
    })
    .to_string();
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection over a limit with a 503 that says which, then closes it.
async fn refuse(mut stream: Stream, refusal: Refusal) {
    use futures_lite::AsyncWriteExt;
    let body = serde_json::json!({ "error": refusal.message() }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = api::within(
        std::time::Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
    let _ = stream.close().await;
}

/// Serves one HTTP connection with hyper, under a watchdog that closes it when a
/// request's head does not arrive whole within `io_timeout` of its first byte, or when
/// it sits idle (no request begun, none being served) for `idle_timeout`.
async fn serve(shard: Rc<Shard>, front: Rc<Front>, stream: Stream) {
    let phase = Rc::new(Cell::new(Phase::Idle(Instant::now())));
    let service = {
        let (shard, front, phase) = (Rc::clone(&shard), Rc::clone(&front), Rc::clone(&phase));
        let certified: Option<Rc<str>> = stream.client_name().map(Rc::from);
        hyper::service::service_fn(move |request| {
            let (shard, front, phase) = (Rc::clone(&shard), Rc::clone(&front), Rc::clone(&phase));
            let certified = certified.clone();
            async move {
                phase.set(Phase::Serving);
                let reply = route(&shard, &front, request, certified).await;
                phase.set(Phase::Idle(Instant::now()));
                Ok::<_, std::convert::Infallible>(reply)
            }
        })
    };
    let io = HyperIo::watched(stream, Rc::clone(&phase));
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let watched = futures_lite::future::or(async { Some(connection.await) }, async {
        watchdog(&shard, &front, &phase).await;
        None
    });
    if let Some(Err(error)) = watched.await {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Returns once the connection broke a time rule (and counts and logs which).
async fn watchdog(shard: &Shard, front: &Front, phase: &Cell<Phase>) {
    loop {
        let now = Instant::now();
        let (deadline, what) = match phase.get() {
            Phase::Idle(since) => (since + front.idle_timeout, "idle"),
            Phase::Head(started) => (started + front.io_timeout, "head"),
            Phase::Serving => (now + WATCH_EVERY, "serving"),
        };
        if now >= deadline {
            let metrics = &shard.shared.metrics;
            if what == "idle" {
                metrics.idle_closed.add(1);
                tracing::debug!(
                    "HTTP connection closed: idle for {}",
                    humantime::format_duration(front.idle_timeout)
                );
            } else {
                metrics.slow_frames.add(1);
                tracing::info!(
                    "HTTP connection closed: a request's head did not arrive whole within {}",
                    humantime::format_duration(front.io_timeout)
                );
            }
            return;
        }
        glommio::timer::sleep((deadline - now).min(WATCH_EVERY)).await;
    }
}

/// How often the watchdog looks again, at most.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

async fn route(
    shard: &Rc<Shard>,
    front: &Rc<Front>,
    request: Request<Incoming>,
    certified: Option<Rc<str>>,
) -> Reply {
    shard.shared.metrics.http_requests.add(1);
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    if let Err(refused) = guard::check(&method, request.headers(), &front.http_hosts) {
        shard.shared.metrics.http_refused.add(1);
        tracing::info!("HTTP {method} {path} refused: {}", refused.message);
        return error(refused.status, &refused.message);
    }
    // Probes carry no credentials, and these answer nothing but health.
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => return json(StatusCode::OK, &serde_json::json!({"ok": true})),
        (&Method::GET, ["readyz"]) => {
            let status = front.status(shard, true, &front.relays).await;
            let why = crate::server::health::why_not_ready(&status, shard.shared.control.is_stopping());
            return match why.is_empty() {
                true => json(StatusCode::OK, &serde_json::json!({"ready": true})),
                false => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"ready": false, "why": why}),
                ),
            };
        }
        _ => {}
    }
    match (&method, segments.as_slice()) {
        (&Method::POST, ["login"]) => return login::log_in(front, shard, request).await,
        (&Method::POST, ["logout"]) => return login::log_out(front, request.headers()),
        _ => {}
    }
    // The console's place: a browser refused there is asked to log in.
    let console = method == Method::GET && segments.as_slice() == [""];
    let (identity, relays) = match bearer(front, request.headers(), certified.as_deref()) {
        Ok(who) => who,
        // A browser asking for the console is asked to log in.
        Err(e) if console => {
            shard.shared.metrics.auth_refused.add(1);
            let why = match login::session_id(request.headers()) {
                Some(_) => "Your session ended: log in again.",
                None if request.headers().contains_key(hyper::header::AUTHORIZATION) => &e.message,
                None => "",
            };
            return login::page(StatusCode::UNAUTHORIZED, why);
        }
        Err(e) => {
            shard.shared.metrics.auth_refused.add(1);
            let mut reply = protocol_error(shard, &e);
            reply.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"flowd\""),
            );
            return reply;
        }
    };
    let to = query_param(&query, "to");
    let dead_letter = query_param(&query, "dead_letter");
    let needs = needs_of(&method, &segments, to.as_deref(), dead_letter.as_deref());
    if let Err(e) = front.gate.allow(identity.as_deref(), &needs) {
        shard.shared.metrics.auth_refused.add(1);
        // A browser logged in as one who may not see the console may log in as another.
        if console {
            return login::page(StatusCode::FORBIDDEN, &e.message);
        }
        return protocol_error(shard, &e);
    }
    let relays = &relays;
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => {
            let status = front.status(shard, local_asked(&query), relays).await;
            // Logged in to the console: who, and a way out.
            let session = login::session_id(request.headers())
                .is_some()
                .then(|| identity.as_ref().map(|i| i.name.as_str()))
                .flatten();
            text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(&status, session),
            )
        }
        (&Method::GET, ["status"]) => {
            let status = front.status(shard, local_asked(&query), relays).await;
            json(
                StatusCode::OK,
                &serde_json::to_value(&status).expect("status serializes"),
            )
        }
        (&Method::GET, ["metrics"]) => {
            // Each peer's own: a scraper asks every peer.
            let status = front.status(shard, true, relays).await;
            let lag: u64 = status
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .flat_map(|p| &p.consumers)
                .map(|c| c.lag)
                .sum();
            let extra = [
                (
                    "flowd_consumer_lag_records",
                    "Records not yet read by the dataflow's stages and sinks, summed",
                    lag,
                ),
                (
                    "flowd_console_history_bytes",
                    "Bytes the console's metric history holds (bounded)",
                    front.history.bytes() as u64,
                ),
            ];
            let mut body = shard.shared.metrics.render(&extra);
            let partitions: Vec<metrics::PartitionGauges<'_>> = status
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (t.name.as_str(), p)))
                .map(|(topic, p)| metrics::PartitionGauges {
                    topic,
                    partition: p.partition,
                    start_offset: p.start_offset,
                    next_offset: p.next_offset,
                    durable_offset: p.durable_offset,
                    segments: p.segments as u64,
                    bytes: p.bytes,
                })
                .collect();
            metrics::render_partitions(&mut body, &partitions);
            metrics::render_shards(&mut body, status.uptime_secs, &status.shards);
            let replicas: Vec<_> = status
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .filter_map(move |p| p.replica.as_ref().map(|r| (t.name.as_str(), p.partition, r)))
                })
                .collect();
            if !replicas.is_empty() {
                metrics::render_replicas(&mut body, &replicas);
            }
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        (&Method::POST, ["topics", topic]) => {
            let topic = (*topic).to_owned();
            match body(front, request).await {
                Ok((bytes, _charge)) => post_records(shard, &topic, &bytes).await,
                Err(reply) => reply,
            }
        }
        (&Method::POST, ["topics", topic, "replay"]) => replay::replay(shard, relays, topic, &query).await,
        (&Method::GET, ["history"]) => {
            let prefixes: Vec<String> = query_param(&query, "series")
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
            json(StatusCode::OK, &front.history.json(&prefixes))
        }
        (&Method::GET, ["topics", topic]) => get_records(shard, topic, &query).await,
        (&Method::GET, ["topics", topic, what]) => {
            consumers::topic_read(shard, relays, topic, what, &query).await
        }
        (&Method::GET, ["consumers"]) => {
            let topic = query_param(&query, "topic").unwrap_or_default();
            consumers::consumer_admin(shard, relays, AdminAction::List, &topic, "").await
        }
        (&Method::GET, ["consumers", topic, group]) => {
            consumers::consumer_admin(shard, relays, AdminAction::List, topic, group).await
        }
        (&Method::DELETE, ["consumers", topic, group]) => {
            consumers::consumer_admin(shard, relays, AdminAction::Destroy, topic, group).await
        }
        (&Method::POST, ["consumers", topic, group, action]) => {
            let (topic, group, action) = ((*topic).to_owned(), (*group).to_owned(), (*action).to_owned());
            match body(front, request).await {
                Ok((bytes, _charge)) => {
                    consumers::consumer_post(shard, relays, &topic, &group, &action, &query, &bytes).await
                }
                Err(reply) => reply,
            }
        }
        (&Method::POST, ["jobs", name]) => {
            let name = (*name).to_owned();
            let key = query_param(&query, "key").map(String::into_bytes);
            // `?timeout=2s`: this job's own timeout instead of the job's configured one.
            let timeout = match query_param(&query, "timeout").map(|t| humantime::parse_duration(&t)) {
                None => None,
                Some(Ok(t)) if !t.is_zero() && t <= api::JOB_TIMEOUT_MAX => Some(t),
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "timeout is a duration from 1ms to 1h, such as ?timeout=2s",
                    );
                }
            };
            match body(front, request).await {
                Ok((bytes, _charge)) => match api::job(shard, &name, timeout, key.as_deref(), &bytes, &[])
                    .await
                {
                    Ok(answer) => {
                        let kind = if serde_json::from_slice::<serde::de::IgnoredAny>(&answer.value).is_ok() {
                            "application/json"
                        } else {
                            "text/plain; charset=utf-8"
                        };
                        text(StatusCode::OK, kind, answer.value)
                    }
                    Err(e) => protocol_error(shard, &e),
                },
                Err(reply) => reply,
            }
        }
        (&Method::GET, ["state", stage, key]) => {
            let key = percent_decode(key);
            let request = crate::protocol::Request::State {
                stage,
                key: key.as_bytes(),
            };
            let state = match relay::route(shard, &request, 0) {
                Some(leader) => relay::state(relays, leader, stage, key.as_bytes()).await,
                None => api::state(shard, stage, key.as_bytes()).await,
            };
            match state {
                Ok(Some(state)) => text(StatusCode::OK, "application/json", state),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    &format!("stage \"{stage}\" holds no state for key \"{key}\""),
                ),
                Err(e) => protocol_error(shard, &e),
            }
        }
        (_, ["state", _, _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not served on {path}"),
        ),
        (_, ["" | "status" | "metrics" | "consumers"])
        | (_, ["topics" | "jobs", _])
        | (_, ["topics" | "consumers", _, _])
        | (_, ["consumers", _, _, _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not served on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!(
                "nothing at {path}; see /, /status, /metrics, /topics/NAME, /jobs/NAME, /state/STAGE/KEY, /consumers"
            ),
        ),
    }
}

/// Who an HTTP request comes from (`Authorization: Bearer TOKEN`) on a closed gate, and
/// the relays that go on with its token; on an open gate nobody, and the relays as they
/// are. A missing or unknown token is `unauthenticated` (401).
fn bearer(
    front: &Front,
    headers: &hyper::HeaderMap,
    certified: Option<&str>,
) -> Result<(Option<std::sync::Arc<crate::auth::Identity>>, relay::Relays), ProtocolError> {
    if !front.gate.closed() {
        return Ok((None, front.relays.clone()));
    }
    // Without a bearer token, the client certificate's name, if it names a credential.
    if !headers.contains_key(hyper::header::AUTHORIZATION)
        && let Some(identity) = certified.and_then(|name| front.gate.certified(name))
    {
        let relays = front.relays.as_client(Some(&identity.name), None);
        return Ok((Some(identity), relays));
    }
    // Then the console's session, whose token is checked as a bearer token is.
    let session = match headers.contains_key(hyper::header::AUTHORIZATION) {
        true => None,
        false => login::session_id(headers).and_then(|id| front.gate.sessions.token(id, Instant::now())),
    };
    let token = match &session {
        Some(token) => token.as_str(),
        None => headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(crate::server::gate::unauthenticated)?,
    };
    let identity = front.gate.identify(token).ok_or_else(|| {
        ProtocolError::new(
            crate::protocol::ErrorCode::Unauthenticated,
            "the bearer token is not one of this server's credentials (mistyped, or removed)",
        )
    })?;
    let relays = front.relays.as_client(Some(&identity.name), Some(token));
    Ok((Some(identity), relays))
}

/// What an HTTP request needs (`auth::permission`): as its protocol twin does.
fn needs_of<'a>(
    method: &Method,
    segments: &[&'a str],
    to: Option<&'a str>,
    dead_letter: Option<&'a str>,
) -> Vec<Need<'a>> {
    match (method, segments) {
        (&Method::GET, ["" | "status" | "metrics" | "history"]) => vec![Need::Status],
        // What a dead letter goes back to is read from it: only an admin may.
        (&Method::POST, ["topics", _, "replay"]) => vec![Need::Admin],
        (&Method::POST, ["topics", topic]) => vec![Need::Produce(topic)],
        (&Method::GET, ["topics", topic] | ["topics", topic, _]) => vec![Need::Consume(topic)],
        (&Method::GET, ["consumers", topic, group]) => vec![Need::Consume(topic), Need::Group(group)],
        (&Method::POST, ["consumers", _, _, "disable" | "resume"]) => vec![Need::Admin],
        (&Method::POST, ["consumers", topic, group, action]) => {
            let mut needs = vec![Need::Consume(topic), Need::Group(group)];
            match (*action, to, dead_letter) {
                ("commit", Some(to), _) => needs.push(Need::Produce(to)),
                ("claim", _, Some(dead_letter)) => needs.push(Need::Produce(dead_letter)),
                _ => {}
            }
            needs
        }
        (_, ["consumers", ..]) => vec![Need::Admin],
        (&Method::POST, ["jobs", job]) => vec![Need::Jobs(job)],
        (&Method::GET, ["state", stage, _]) => vec![Need::State(stage)],
        // Nothing is served there (404 or 405): nothing to allow.
        _ => Vec::new(),
    }
}

/// The status `GET /status` and `GET /` show: the cluster's, or with `?local` (or
/// `?local=true`) this peer's own.
/// Whether a status query asks for this peer's own (`local`, `local=true`, `local=1`).
fn local_asked(query: &str) -> bool {
    reply::query_param(query, "local").is_some_and(|v| matches!(v.as_str(), "" | "true" | "1"))
}

/// The request body, at most `max_frame_bytes`, whole within `io_timeout`. A body over
/// `admission::FREE_BYTES` (or of unknown length) first takes its bytes from the shard's
/// budget, which the caller holds (the returned charge) until it has answered.
async fn body(front: &Front, request: Request<Incoming>) -> Result<(Bytes, Option<Charge>), Reply> {
    let limit = front.max_frame_bytes;
    let started = Instant::now();
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let over_limit = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over the limit of {limit} bytes; send fewer records per request"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        // Refused from its length alone; what the client sends meanwhile is read and
        // dropped (never kept), within io_timeout, so that it hears why.
        let mut body = request.into_body();
        let _ = api::within(front.io_timeout, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
        return Err(over_limit());
    }
    let charge_bytes = declared.unwrap_or(limit as u64);
    let charge = if charge_bytes > FREE_BYTES {
        match api::within(front.io_timeout, Charge::take(&front.buffered, charge_bytes)).await {
            Some(Some(charge)) => Some(charge),
            Some(None) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping")),
            None => {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server's buffer budget stayed spent for the whole io_timeout; retry",
                ));
            }
        }
    } else {
        None
    };
    let left = front.io_timeout.saturating_sub(started.elapsed());
    match api::within(left, Limited::new(request.into_body(), limit).collect()).await {
        Some(Ok(collected)) => Ok((collected.to_bytes(), charge)),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(over_limit()),
        Some(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body: {e}"),
        )),
        None => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
    }
}

async fn post_records(shard: &Rc<Shard>, topic: &str, body: &[u8]) -> Reply {
    let records = match parse_records(body) {
        Ok(records) => records,
        Err(message) => return protocol_error(shard, &ProtocolError::malformed(message)),
    };
    let mut encoded = Vec::new();
    let group = produce_group(topic, &records, &mut encoded);
    let outcome = match api::produce(shard, std::slice::from_ref(&group), api::Engine::default()).await {
        Ok(pending) => pending.wait(shard).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(runs) => {
            let offsets = offset_strings(&runs);
            json(StatusCode::OK, &serde_json::json!({ "offsets": offsets }))
        }
        Err(e) => protocol_error(shard, &e),
    }
}

async fn get_records(shard: &Rc<Shard>, topic: &str, query: &str) -> Reply {
    let number = |name: &str, default: u64| -> Result<u64, Box<Reply>> {
        match query_param(query, name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    &format!("{name}={v} is not a number"),
                ))
            }),
        }
    };
    let partition = match number("partition", 0) {
        Ok(p) => p.min(u64::from(u32::MAX)) as u32,
        Err(reply) => return *reply,
    };
    let from = match query_param(query, "offset") {
        None => FetchFrom::Earliest,
        Some(v) => match api::parse_from(&v) {
            Some(from) => from,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("offset={v} is not earliest, latest or a number"),
                );
            }
        },
    };
    let limit = match number("limit", u64::from(DEFAULT_LIMIT)) {
        Ok(l) => l.clamp(1, u64::from(FETCH_RECORDS_MAX)) as u32,
        Err(reply) => return *reply,
    };
    let order = FetchOrder {
        topic: 0,
        partition,
        from,
        max_records: limit,
        max_bytes: u32::MAX,
        wait_ms: 0,
        request_id: 0,
        batches: false,
    };
    let frame = api::fetch(shard, topic, order).await;
    let decoded = parse_frame(&frame, usize::MAX)
        .ok()
        .flatten()
        .and_then(|f| FrameResponse::decode(&f.header, f.body).ok());
    match decoded {
        Some(FrameResponse::Fetched(fetched)) => json(
            StatusCode::OK,
            &consumers::records_json(topic, partition, &fetched.records),
        ),
        Some(FrameResponse::Error { code, message, .. }) => {
            protocol_error(shard, &ProtocolError::new(code, message))
        }
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the fetch came back unreadable (a bug)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_records() {
        type Case<'a> = (&'a str, Vec<(Option<&'a str>, &'a str)>);
        let cases: &[Case<'_>] = &[
            (
                r#"["a", 1, {"x":2}]"#,
                vec![(None, "a"), (None, "1"), (None, r#"{"x":2}"#)],
            ),
            (
                r#"[{"key":"k","value":"v"}, {"value":{"n":1}}]"#,
                vec![(Some("k"), "v"), (None, r#"{"n":1}"#)],
            ),
            (
                "\"a\"\n{\"key\":\"k\",\"value\":\"b\"}\n\n",
                vec![(None, "a"), (Some("k"), "b")],
            ),
            (
                r#"[{"key":"k","value":"v","other":1}]"#,
                vec![(None, r#"{"key":"k","other":1,"value":"v"}"#)],
            ),
        ];
        for (body, expected) in cases {
            let got: Vec<(Option<String>, String)> = parse_records(body.as_bytes())
                .unwrap()
                .into_iter()
                .map(|r| {
                    (
                        r.key.map(|k| String::from_utf8(k).unwrap()),
                        String::from_utf8(r.value).unwrap(),
                    )
                })
                .collect();
            let expected: Vec<(Option<String>, String)> = expected
                .iter()
                .map(|(k, v)| (k.map(str::to_owned), (*v).to_owned()))
                .collect();
            assert_eq!(got, expected, "{body}");
        }
        for bad in ["", "[]", "[1,", "{\"a\":", "\n\n"] {
            assert!(parse_records(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_values_decode() {
        assert_eq!(query_param("a=1&key=x%20y+z", "key").as_deref(), Some("x y z"));
        assert_eq!(query_param("a=1", "key"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
