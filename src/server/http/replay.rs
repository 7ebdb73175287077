//! Dead letters replayed: `POST /topics/T/replay?partition=P[&from=A][&to=B][&topic=DEST]`
//! copies the records `A..B` of a dead-letter topic's partition (from the replay's place
//! to the partition's end by default) back to the topic each came from (its
//! `flowd-dead-from` header), or to DEST, without the engine's headers (but the null mark
//! of a tombstone, which stays one).
//!
//! Once each: the replay is the named consumer [`REPLAY_GROUP`] of the dead-letter topic,
//! and each step is one claim and one ack-and-commit (the copies and the ack as one
//! journal transaction). Records before its place were replayed or passed over already;
//! asking for them again is refused with what to do (reset the consumer). Two replays of
//! one partition at once: the second finds the claim pending and is refused. A replay
//! that fails part way has its claim given back, and says how far it got.
//!
//! Answers `{"replayed": N, "from": A, "to": B, "topics": {DEST: N, ...}}`.

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use hyper::StatusCode;

use super::consumers::number;
use super::reply::{Reply, error, json, produce_group, protocol_error, query_param};
use crate::consumer::cursor::{OnMax, Options, Position, Start};
use crate::protocol::consumer::{AdminAction, AdminRequest, ClaimRequest, ConsumerRef};
use crate::protocol::message::Response as FrameResponse;
use crate::protocol::wire::{NULL_VALUE_HEADER, goes_with_value};
use crate::protocol::{ErrorCode, OwnedWireRecord, ProtocolError};
use crate::runtime::failure::DEAD_FROM_HEADER;
use crate::runtime::shard::Shard;
use crate::server::consumer_api;
use crate::server::relay::Relays;

/// The named consumer a replay moves on the dead-letter topic.
pub const REPLAY_GROUP: &str = "flowd-replay";
/// Records per step (one claim, one ack-and-commit).
const STEP_RECORDS: u64 = 256;
/// A replay that died mid-step has its claim reclaimed after this.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// The topic a dead letter came from: `TOPIC/PARTITION/OFFSET` in its header.
fn origin(record: &OwnedWireRecord) -> Option<String> {
    let (_, from) = record.headers.iter().find(|(n, _)| n == DEAD_FROM_HEADER)?;
    let from = std::str::from_utf8(from).ok()?;
    from.split('/')
        .next()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

pub async fn replay(shard: &Rc<Shard>, relays: &Relays, topic: &str, query: &str) -> Reply {
    match replay_inner(shard, relays, topic, query).await {
        Ok(reply) | Err(reply) => reply,
    }
}

async fn replay_inner(shard: &Rc<Shard>, relays: &Relays, topic: &str, query: &str) -> Result<Reply, Reply> {
    let fail = |e: ProtocolError| protocol_error(shard, &e);
    let partition: u32 = number(query, "partition")?
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "name the partition: ?partition=P"))?;
    let from: Option<u64> = number(query, "from")?;
    let to: Option<u64> = number(query, "to")?;
    let dest = query_param(query, "topic");
    let r = ConsumerRef {
        topic,
        group: REPLAY_GROUP,
        partition,
    };
    let listed = match consumer_api::admin(
        shard,
        Some(relays),
        &AdminRequest {
            action: AdminAction::List,
            topic,
            group: REPLAY_GROUP,
        },
    )
    .await
    {
        Ok(listed) => listed,
        // The first replay of this topic: the first claim makes the consumer.
        Err(e) if e.code == ErrorCode::UnknownConsumer => Vec::new(),
        Err(e) => return Err(fail(e)),
    };
    let cursor = listed.iter().find(|c| c.partition == partition);
    if cursor.is_some_and(|c| c.claimed.is_some()) {
        return Err(error(
            StatusCode::CONFLICT,
            &format!("a replay of {topic}/{partition} is in flight; try again once it is done"),
        ));
    }
    let place = cursor.map_or(0, |c| c.committed);
    let from = from.unwrap_or(place);
    if from < place {
        return Err(error(
            StatusCode::CONFLICT,
            &format!(
                "records of {topic}/{partition} before {place} were replayed or passed over already; to replay \
                 them again, reset the replay: POST /consumers/{topic}/{REPLAY_GROUP}/reset?to={from}&partition={partition}"
            ),
        ));
    }
    // A new replay consumer starts at `from` (made by the first claim, with a claim
    // timeout); an existing one is moved there, passing over what lies between.
    let start = match from {
        0 => Start::Earliest,
        from => Start::After(from - 1),
    };
    if cursor.is_some() && from > place {
        consumer_api::seek(shard, Some(relays), &r, Position::Offset(from))
            .await
            .map_err(fail)?;
    }
    let mut at = from;
    let mut replayed = 0u64;
    let mut topics: BTreeMap<String, u64> = BTreeMap::new();
    // Without `to`: up to the partition's end when the replay began, so dead letters
    // that keep coming cannot keep it going.
    let mut to = to;
    // Bounded: every step moves `at` forward by at least one record towards `to`, or ends.
    loop {
        let count = match to {
            Some(to) if at >= to => break,
            Some(to) => (to - at).min(STEP_RECORDS),
            None => STEP_RECORDS,
        };
        let claim = ClaimRequest {
            topic,
            group: REPLAY_GROUP,
            partition: Some(partition),
            count: count as u32,
            max_bytes: 1 << 20,
            create: Some(Options {
                start: start.clone(),
                reclaim_timeout_ms: Some(CLAIM_TIMEOUT.as_millis() as u64),
                max_reclaims: None,
                on_max: OnMax::Disable,
            }),
        };
        let frame = consumer_api::claim(shard, Some(relays), &claim, 0)
            .await
            .map_err(fail)?;
        let claimed = match super::consumers::decode(shard, &frame)? {
            FrameResponse::Claimed(c) => c,
            _ => {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "a claim got another answer (a bug)",
                ));
            }
        };
        if claimed.partition.is_none() || claimed.to <= claimed.from {
            break;
        }
        to = to.or(Some(claimed.next_offset));
        let step = copy_back(shard, relays, &r, &claimed.records, dest.as_deref()).await;
        match step {
            Ok(counts) => {
                for (t, n) in counts {
                    *topics.entry(t).or_default() += n;
                }
                replayed += claimed.records.len() as u64;
                at = claimed.to;
            }
            Err(reply) => {
                // Given back, so the replay can be asked again; what went before stays done.
                let _ = consumer_api::reclaim(shard, Some(relays), &r).await;
                tracing::warn!(
                    topic,
                    partition,
                    replayed,
                    "a dead-letter replay stopped at offset {at}"
                );
                return Err(reply);
            }
        }
    }
    tracing::info!(
        topic,
        partition,
        replayed,
        "dead letters {from}..{at} replayed: {topics:?}"
    );
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"replayed": replayed, "from": from, "to": at, "topics": topics}),
    ))
}

/// One claimed step copied to the records' origins (or `dest`) and acked as one.
async fn copy_back(
    shard: &Rc<Shard>,
    relays: &Relays,
    r: &ConsumerRef<'_>,
    records: &[(u64, OwnedWireRecord)],
    dest: Option<&str>,
) -> Result<BTreeMap<String, u64>, Reply> {
    let mut by_topic: BTreeMap<String, Vec<OwnedWireRecord>> = BTreeMap::new();
    for (offset, record) in records {
        let Some(to) = dest.map(str::to_owned).or_else(|| origin(record)) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "record {}/{}/{offset} has no {DEAD_FROM_HEADER} header to say where it came from; \
                     name where it goes: &topic=TOPIC",
                    r.topic, r.partition
                ),
            ));
        };
        let mut copy = record.clone();
        // A tombstone replayed is one again: the null mark goes on with the value.
        copy.headers.retain(|(n, _)| goes_with_value(n));
        by_topic.entry(to).or_default().push(copy);
    }
    let mut encoded: Vec<Vec<u8>> = by_topic.keys().map(|_| Vec::new()).collect();
    let groups: Vec<_> = by_topic
        .iter()
        .zip(encoded.iter_mut())
        .map(|((t, records), buf)| produce_group(t, records, buf))
        .collect();
    consumer_api::ack_commit(shard, Some(relays), r, &groups, &[NULL_VALUE_HEADER])
        .await
        .map_err(|e| protocol_error(shard, &e))?;
    Ok(by_topic.into_iter().map(|(t, rs)| (t, rs.len() as u64)).collect())
}
