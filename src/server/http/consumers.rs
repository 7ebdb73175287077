//! Consumers and range reads over HTTP (a contract, like the rest of the HTTP API):
//!
//! - `POST /consumers/T/G/claim?count=N[&partition=P][&create=START]` with, on create,
//!   `reclaim_timeout=DURATION`, `max_reclaims=N`, `then=disable|continue|dead_letter`
//!   and `dead_letter=TOPIC`; START is `earliest` (`>`), `new` (`$>`), an offset (start
//!   after it), or `@MS` (a time);
//!   answers `{"partition","from","to","next_offset","records":[...]}`.
//! - `POST /consumers/T/G/ack?partition=P`, `.../reclaim?partition=P`,
//!   `.../commit?partition=P&to=TOPIC` (body as `POST /topics/T`: an ack and a produce as one),
//!   `.../disable`, `.../resume`; `DELETE /consumers/T/G`; `GET /consumers[?topic=T]`,
//!   `GET /consumers/T/G`: the cursors as JSON.
//! - `POST /consumers/T/G/reset?to=earliest|latest|OFFSET|@MS[&partition=P]` and
//!   `POST /consumers/T/G/skip?count=N[&partition=P]`: an existing consumer moved (on
//!   every partition it has, or on one); answers `[{"partition","from","to"}]`, the
//!   committed offsets before and after.
//! - `GET /topics/T/range?partition=P` with `from`/`after` (inclusive/exclusive start),
//!   `to`/`before` (inclusive/exclusive end), `by=time`, `reverse=true`, `limit=N`;
//!   `GET /topics/T/length[?partition=P]`.

// The handlers' error is the HTTP response itself, built once per request: its size
// does not matter, and boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::rc::Rc;

use hyper::StatusCode;

use super::reply::{
    Reply, error, json, offset_strings, parse_records, produce_group, protocol_error, query_param,
};
use crate::consumer::cursor::{OnMax, Options, Position, Start};
use crate::protocol::consumer::{
    AdminAction, AdminRequest, Bound, ClaimRequest, ConsumerRef, RangeRequest, RangeSpec,
};
use crate::protocol::message::Response as FrameResponse;
use crate::protocol::{ProtocolError, parse_frame};
use crate::runtime::shard::Shard;
use crate::server::consumer_api;
use crate::server::relay::Relays;

fn bad(message: String) -> Reply {
    error(StatusCode::BAD_REQUEST, &message)
}

pub(super) fn number<T: std::str::FromStr>(query: &str, name: &str) -> Result<Option<T>, Reply> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("{name}={v} is not a number"))),
    }
}

fn partition(query: &str) -> Result<u32, Reply> {
    number(query, "partition")?.ok_or_else(|| bad("name the claim's partition: ?partition=P".into()))
}

/// A response frame decoded, or the error it carries as an HTTP error.
pub(super) fn decode(shard: &Shard, frame: &[u8]) -> Result<FrameResponse, Reply> {
    let decoded = parse_frame(frame, usize::MAX)
        .ok()
        .flatten()
        .and_then(|f| FrameResponse::decode(&f.header, f.body).ok());
    match decoded {
        Some(FrameResponse::Error { code, message, .. }) => {
            Err(protocol_error(shard, &ProtocolError::new(code, message)))
        }
        Some(response) => Ok(response),
        None => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an unreadable response (a bug)",
        )),
    }
}

/// Records as `flowd tail --json` prints them (client headers included), in one JSON
/// array; a dead letter also has `dead_reason` and `dead_from` (`TOPIC/PARTITION/OFFSET`).
pub fn records_json(
    topic: &str,
    partition: u32,
    records: &[(u64, crate::protocol::OwnedWireRecord)],
) -> serde_json::Value {
    use crate::runtime::failure::{DEAD_FROM_HEADER, DEAD_REASON_HEADER};
    records
        .iter()
        .map(|(offset, r)| {
            let mut json = crate::protocol::json::record_json(
                topic,
                partition,
                *offset,
                r.timestamp_ms.unwrap_or_default(),
                r.key.as_deref(),
                &r.value,
            );
            crate::protocol::json::put_headers(
                &mut json,
                r.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            );
            for (header, field) in [
                (DEAD_REASON_HEADER, "dead_reason"),
                (DEAD_FROM_HEADER, "dead_from"),
            ] {
                if let Some((_, v)) = r.headers.iter().find(|(n, _)| n == header) {
                    json[field] = String::from_utf8_lossy(v).into_owned().into();
                }
            }
            json
        })
        .collect()
}

fn create_options(query: &str) -> Result<Option<Options>, Reply> {
    let Some(start) = query_param(query, "create") else {
        return Ok(None);
    };
    let start = match start.as_str() {
        ">" | "" | "earliest" => Start::Earliest,
        "$>" | "new" => Start::New,
        other => match other.strip_prefix('@') {
            Some(ms) => Start::Time(
                ms.parse()
                    .map_err(|_| bad(format!("create=@{ms} is not a time in ms")))?,
            ),
            None => Start::After(
                other
                    .parse()
                    .map_err(|_| bad(format!("create={other} is not >, $>, an offset or @MS")))?,
            ),
        },
    };
    let reclaim_timeout_ms = match query_param(query, "reclaim_timeout") {
        None => None,
        Some(v) => Some(
            humantime::parse_duration(&v)
                .map_err(|e| bad(format!("reclaim_timeout={v}: {e}")))?
                .as_millis() as u64,
        ),
    };
    let on_max = match query_param(query, "then").as_deref() {
        None | Some("disable") => OnMax::Disable,
        Some("continue") => OnMax::Continue,
        Some("dead_letter") => OnMax::DeadLetter(
            query_param(query, "dead_letter")
                .ok_or_else(|| bad("then=dead_letter needs dead_letter=TOPIC".into()))?,
        ),
        Some(other) => return Err(bad(format!("then={other}: use disable, continue or dead_letter"))),
    };
    Ok(Some(Options {
        start,
        reclaim_timeout_ms,
        max_reclaims: number(query, "max_reclaims")?,
        on_max,
    }))
}

fn admin_action(action: &str) -> Option<AdminAction> {
    match action {
        "disable" => Some(AdminAction::Disable),
        "resume" => Some(AdminAction::Resume),
        _ => None,
    }
}

pub async fn consumer_admin(
    shard: &Rc<Shard>,
    relays: &Relays,
    action: AdminAction,
    topic: &str,
    group: &str,
) -> Reply {
    match consumer_api::admin(shard, Some(relays), &AdminRequest { action, topic, group }).await {
        Ok(cursors) => json(
            StatusCode::OK,
            &serde_json::to_value(&cursors).expect("cursors serialize"),
        ),
        Err(e) => protocol_error(shard, &e),
    }
}

/// `POST /consumers/T/G/ACTION`.
pub async fn consumer_post(
    shard: &Rc<Shard>,
    relays: &Relays,
    topic: &str,
    group: &str,
    action: &str,
    query: &str,
    body: &[u8],
) -> Reply {
    match consumer_post_inner(shard, relays, topic, group, action, query, body).await {
        Ok(reply) | Err(reply) => reply,
    }
}

async fn consumer_post_inner(
    shard: &Rc<Shard>,
    relays: &Relays,
    topic: &str,
    group: &str,
    action: &str,
    query: &str,
    body: &[u8],
) -> Result<Reply, Reply> {
    let fail = |e: ProtocolError| protocol_error(shard, &e);
    match action {
        "claim" => {
            let request = ClaimRequest {
                topic,
                group,
                partition: number(query, "partition")?,
                count: number(query, "count")?.unwrap_or(100),
                max_bytes: 1 << 20,
                create: create_options(query)?,
            };
            let frame = consumer_api::claim(shard, Some(relays), &request, 0)
                .await
                .map_err(fail)?;
            match decode(shard, &frame)? {
                FrameResponse::Claimed(c) => Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "partition": c.partition,
                        "from": c.from,
                        "to": c.to,
                        "next_offset": c.next_offset,
                        "records": records_json(topic, c.partition.unwrap_or(0), &c.records),
                    }),
                )),
                _ => Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "a claim got another answer (a bug)",
                )),
            }
        }
        "ack" => {
            let p = partition(query)?;
            let r = ConsumerRef {
                topic,
                group,
                partition: p,
            };
            let (from, to) = consumer_api::ack(shard, Some(relays), &r).await.map_err(fail)?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"partition": p, "from": from, "to": to}),
            ))
        }
        "reclaim" => {
            let p = partition(query)?;
            let r = ConsumerRef {
                topic,
                group,
                partition: p,
            };
            let (from, to, reclaims, outcome) = consumer_api::reclaim(shard, Some(relays), &r)
                .await
                .map_err(fail)?;
            let outcome = ["redeliver", "disabled", "skipped", "dead_letter"][outcome as usize];
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"partition": p, "from": from, "to": to, "reclaims": reclaims, "outcome": outcome}),
            ))
        }
        "commit" => {
            let p = partition(query)?;
            let to_topic =
                query_param(query, "to").ok_or_else(|| bad("name the output topic: ?to=TOPIC".into()))?;
            let records = parse_records(body).map_err(|m| fail(ProtocolError::malformed(m)))?;
            let mut encoded = Vec::new();
            let group_records = produce_group(&to_topic, &records, &mut encoded);
            let r = ConsumerRef {
                topic,
                group,
                partition: p,
            };
            let ((from, to), runs) =
                consumer_api::ack_commit(shard, Some(relays), &r, std::slice::from_ref(&group_records), &[])
                    .await
                    .map_err(fail)?;
            let offsets = offset_strings(&runs);
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"partition": p, "from": from, "to": to, "offsets": offsets}),
            ))
        }
        "reset" | "skip" => {
            let to = match action {
                "skip" => Position::Skip(
                    number(query, "count")?
                        .ok_or_else(|| bad("say how many records to skip: ?count=N".into()))?,
                ),
                _ => query_param(query, "to")
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e: String| {
                        bad(format!("reset to what? {e}: ?to=earliest, latest, OFFSET or @MS"))
                    })?,
            };
            let only: Option<u32> = number(query, "partition")?;
            let listed = consumer_api::admin(
                shard,
                Some(relays),
                &AdminRequest {
                    action: AdminAction::List,
                    topic,
                    group,
                },
            )
            .await
            .map_err(fail)?;
            let mut moved = Vec::new();
            for cursor in listed.iter().filter(|c| only.is_none_or(|p| p == c.partition)) {
                let r = ConsumerRef {
                    topic,
                    group,
                    partition: cursor.partition,
                };
                let offset = consumer_api::seek(shard, Some(relays), &r, to)
                    .await
                    .map_err(fail)?;
                moved.push(serde_json::json!({"partition": cursor.partition, "from": cursor.committed, "to": offset}));
            }
            if moved.is_empty() {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "topic \"{topic}\" has no consumer \"{group}\"{}: list them with GET /consumers?topic={topic}",
                        only.map(|p| format!(" on partition {p}")).unwrap_or_default()
                    ),
                ));
            }
            Ok(json(StatusCode::OK, &serde_json::Value::Array(moved)))
        }
        other => match admin_action(other) {
            Some(action) => Ok(consumer_admin(shard, relays, action, topic, group).await),
            None => Err(error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no consumer action \"{other}\"; use claim, ack, reclaim, commit, reset, skip, disable or resume"
                ),
            )),
        },
    }
}

fn bound(query: &str, inclusive: &str, exclusive: &str) -> Result<Bound, Reply> {
    match (number::<i64>(query, inclusive)?, number::<i64>(query, exclusive)?) {
        (Some(_), Some(_)) => Err(bad(format!("give {inclusive} or {exclusive}, not both"))),
        (Some(v), None) => Ok(Bound::Included(v)),
        (None, Some(v)) => Ok(Bound::Excluded(v)),
        (None, None) => Ok(Bound::Unbounded),
    }
}

/// `GET /topics/T/range` and `GET /topics/T/length`.
pub async fn topic_read(shard: &Rc<Shard>, relays: &Relays, topic: &str, what: &str, query: &str) -> Reply {
    let inner = async {
        let fail = |e: ProtocolError| protocol_error(shard, &e);
        match what {
            "length" => {
                let n = consumer_api::length(shard, Some(relays), topic, number(query, "partition")?)
                    .await
                    .map_err(fail)?;
                Ok(json(StatusCode::OK, &serde_json::json!({ "length": n })))
            }
            "range" => {
                let p: u32 = number(query, "partition")?.unwrap_or(0);
                let by_time = match query_param(query, "by").as_deref() {
                    None | Some("offset") => false,
                    Some("time") => true,
                    Some(other) => return Err(bad(format!("by={other}: use offset or time"))),
                };
                let request = RangeRequest {
                    topic,
                    spec: RangeSpec {
                        partition: p,
                        by_time,
                        reverse: matches!(query_param(query, "reverse").as_deref(), Some("true" | "1")),
                        from: bound(query, "from", "after")?,
                        to: bound(query, "to", "before")?,
                        limit: number(query, "limit")?.unwrap_or(100),
                        max_bytes: 1 << 20,
                    },
                };
                let frame = consumer_api::range(shard, Some(relays), &request, 0)
                    .await
                    .map_err(fail)?;
                match decode(shard, &frame)? {
                    FrameResponse::Fetched(f) => {
                        Ok(json(StatusCode::OK, &records_json(topic, p, &f.records)))
                    }
                    _ => Err(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "a range read got another answer (a bug)",
                    )),
                }
            }
            other => Err(error(
                StatusCode::NOT_FOUND,
                &format!("nothing at /topics/{topic}/{other}; use range or length"),
            )),
        }
    };
    match inner.await {
        Ok(reply) | Err(reply) => reply,
    }
}
