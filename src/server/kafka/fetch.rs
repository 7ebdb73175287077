//! Fetch and ListOffsets: reads of the partitions, served by their owners (here or on
//! another peer) through the same path as the binary protocol's FETCH.
//!
//! A fetch reads every partition asked at once; when none has a record past its offset
//! and the client allows a wait (`max_wait_ms`), the door waits on all of them and
//! answers as soon as one has records, or when the wait is over. The response stays
//! within the request's `max_bytes` (at most `RESPONSE_BYTES_MAX`, taken from the shard's
//! buffer budget until written); a partition left out
//! for room is answered with no records and its marks, and the client asks again.
//! Offsets are Kafka's: an offset before the partition's start or past its end is
//! answered OFFSET_OUT_OF_RANGE, never moved silently.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};

use super::sasl::Who;
use super::{errors, records};
use crate::auth::Need;
use crate::protocol::frame::parse_frame;
use crate::protocol::message::{Fetched, Response};
use crate::protocol::{FetchFrom, ProtocolError};
use crate::runtime::service::FetchOrder;
use crate::runtime::shard::Shard;
use crate::server::api;

/// The most a fetch response carries, whatever the client allows (and never over
/// `ingest.max_frame_bytes`).
pub const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// ListOffsets's timestamps that name a place, not a time.
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

/// One partition read: its records from `from`, or (with `max_bytes` 0) only its marks.
pub(super) async fn read(
    shard: &Rc<Shard>,
    topic: &str,
    partition: u32,
    from: FetchFrom,
    max_bytes: u32,
    wait_ms: u32,
) -> Result<Fetched, ProtocolError> {
    let Some(index) = shard.shared.spec.topic_index(topic) else {
        return Err(crate::runtime::error::EngineError::UnknownTopic(topic.to_owned()).into());
    };
    let (from, max_records) = match max_bytes {
        // The end holds no record yet: a read there returns the marks alone.
        0 => (FetchFrom::Latest, 1),
        _ => (from, crate::runtime::service::FETCH_RECORDS_MAX),
    };
    let order = FetchOrder {
        topic: index,
        partition,
        from,
        max_records,
        max_bytes: max_bytes.max(1),
        wait_ms,
        request_id: 0,
        batches: false,
    };
    let frame = api::fetch(shard, topic, order).await;
    let raw = parse_frame(&frame, usize::MAX)?.ok_or_else(|| {
        ProtocolError::new(
            crate::protocol::ErrorCode::Internal,
            "a fetch's answer was cut short",
        )
    })?;
    match Response::decode(&raw.header, raw.body)? {
        Response::Fetched(fetched) => Ok(fetched),
        Response::Error { code, message, .. } => Err(ProtocolError::new(code, message)),
        other => Err(ProtocolError::new(
            crate::protocol::ErrorCode::Internal,
            format!("a fetch was answered {other:?}"),
        )),
    }
}

/// What one asked partition came to.
struct Part {
    topic: usize,
    partition: i32,
    fetch_offset: i64,
    max_bytes: u32,
    outcome: Result<Fetched, ProtocolError>,
}

impl Part {
    fn has_records(&self) -> bool {
        self.outcome.as_ref().is_ok_and(|f| !f.records.is_empty())
    }
}

/// The answer to a fetch, its records within `room` bytes (about: a record's framing is
/// counted as 64 bytes).
pub async fn answer(shard: &Rc<Shard>, request: &FetchRequest, room: usize, who: &Who) -> FetchResponse {
    let names: Vec<String> = request
        .topics
        .iter()
        .map(|t| t.topic.0.as_str().to_owned())
        .collect();
    let mut budget = room;
    let mut parts = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let allowed = who.allow(&[Need::Consume(&names[t])]);
        for p in &topic.partitions {
            // Room left for records: a partition past the budget reads its marks only.
            let max_bytes = usize::try_from(p.partition_max_bytes.max(0))
                .unwrap_or(0)
                .min(budget)
                .min(u32::MAX as usize) as u32;
            let outcome = match &allowed {
                Ok(()) => first_read(shard, &names[t], p.partition, p.fetch_offset, max_bytes, 0).await,
                Err(error) => Err(error.clone()),
            };
            if let Ok(fetched) = &outcome {
                budget = budget.saturating_sub(fetched.records.iter().map(|(_, r)| r.value.len() + 64).sum());
            }
            parts.push(Part {
                topic: t,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes,
                outcome,
            });
        }
    }
    if request.max_wait_ms > 0 && !parts.iter().any(Part::has_records) {
        wait_for_records(shard, &names, &mut parts, request.max_wait_ms as u32).await;
    }
    let mut response = FetchResponse::default();
    response.responses = names
        .iter()
        .map(|name| {
            let mut topic = FetchableTopicResponse::default();
            topic.topic = kafka_protocol::protocol::StrBytes::from_string(name.clone()).into();
            topic
        })
        .collect();
    for part in parts {
        let data = partition_data(part.partition, part.fetch_offset, part.outcome);
        response.responses[part.topic].partitions.push(data);
    }
    response
}

/// A partition's first read, its offset checked against Kafka's rules.
async fn first_read(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    fetch_offset: i64,
    max_bytes: u32,
    wait_ms: u32,
) -> Result<Fetched, ProtocolError> {
    let (Ok(partition), Ok(offset)) = (u32::try_from(partition), u64::try_from(fetch_offset)) else {
        return Err(ProtocolError::new(
            crate::protocol::ErrorCode::UnknownPartition,
            format!("partition {partition} at offset {fetch_offset}"),
        ));
    };
    read(
        shard,
        topic,
        partition,
        FetchFrom::Offset(offset),
        max_bytes,
        wait_ms,
    )
    .await
}

/// A partition's read that waits for records.
type Wait<'a> = Pin<Box<dyn Future<Output = Result<Fetched, ProtocolError>> + 'a>>;

/// Waits (at most `wait_ms`) on every partition that read nothing, and keeps what the
/// first to answer brought; the others stay as they were (nothing past their offset).
async fn wait_for_records(shard: &Rc<Shard>, names: &[String], parts: &mut [Part], wait_ms: u32) {
    let mut waits: Vec<(usize, Wait<'_>)> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let caught_up = part
            .outcome
            .as_ref()
            .is_ok_and(|f| part.fetch_offset >= 0 && part.fetch_offset as u64 == f.next_offset);
        if caught_up && part.max_bytes > 0 {
            let read = first_read(
                shard,
                &names[part.topic],
                part.partition,
                part.fetch_offset,
                part.max_bytes,
                wait_ms,
            );
            waits.push((i, Box::pin(read)));
        }
    }
    if waits.is_empty() {
        return;
    }
    let (i, outcome) = std::future::poll_fn(|cx| {
        for (i, wait) in waits.iter_mut() {
            if let Poll::Ready(outcome) = wait.as_mut().poll(cx) {
                return Poll::Ready((*i, outcome));
            }
        }
        Poll::Pending
    })
    .await;
    parts[i].outcome = outcome;
}

/// One partition's part of a fetch response.
fn partition_data(
    partition: i32,
    fetch_offset: i64,
    outcome: Result<Fetched, ProtocolError>,
) -> PartitionData {
    let mut data = PartitionData::default();
    data.partition_index = partition;
    data.high_watermark = -1;
    data.last_stable_offset = -1;
    data.log_start_offset = -1;
    data.preferred_read_replica = BrokerId(-1);
    data.aborted_transactions = Some(Vec::new());
    match outcome {
        Err(error) => {
            tracing::debug!(partition, "Kafka fetch refused: {}", error.message);
            data.error_code = errors::code(&error);
        }
        Ok(fetched) => {
            data.high_watermark = fetched.next_offset as i64;
            data.last_stable_offset = fetched.next_offset as i64;
            data.log_start_offset = fetched.start_offset as i64;
            if fetch_offset < fetched.start_offset as i64 || fetch_offset > fetched.next_offset as i64 {
                data.error_code = errors::OFFSET_OUT_OF_RANGE;
                return data;
            }
            match records::to_kafka(&fetched.records) {
                Ok(bytes) => data.records = Some(bytes.into()),
                Err(error) => {
                    tracing::warn!(partition, "Kafka fetch: records not encoded: {error}");
                    data.error_code = errors::UNKNOWN_SERVER_ERROR;
                }
            }
        }
    }
    data
}

/// The answer to ListOffsets: a partition's start (-2), its end (-1), or the first
/// record at or after a time (offset and time -1 when none is).
pub async fn list_offsets(shard: &Rc<Shard>, request: &ListOffsetsRequest, who: &Who) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let mut answer = ListOffsetsTopicResponse::default();
        answer.name = topic.name.clone();
        for p in &topic.partitions {
            let mut part = ListOffsetsPartitionResponse::default();
            part.partition_index = p.partition_index;
            part.timestamp = -1;
            part.offset = -1;
            part.leader_epoch = -1;
            let Ok(partition) = u32::try_from(p.partition_index) else {
                part.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                answer.partitions.push(part);
                continue;
            };
            let allowed = who.allow(&[Need::Consume(name)]);
            let outcome = match p.timestamp {
                _ if allowed.is_err() => allowed.clone().map(|()| (-1, -1)),
                EARLIEST | LATEST => read(shard, name, partition, FetchFrom::Latest, 0, 0)
                    .await
                    .map(|f| {
                        let offset = if p.timestamp == EARLIEST {
                            f.start_offset
                        } else {
                            f.next_offset
                        };
                        (offset as i64, -1)
                    }),
                t if t >= 0 => read(shard, name, partition, FetchFrom::Time(t), 1, 0)
                    .await
                    .map(|f| match f.records.first() {
                        Some((offset, r)) => (*offset as i64, r.timestamp_ms.unwrap_or(-1)),
                        None => (-1, -1),
                    }),
                other => Err(ProtocolError::new(
                    crate::protocol::ErrorCode::Unsupported,
                    format!("ListOffsets by timestamp {other} (flowd's door takes -2, -1 and times)"),
                )),
            };
            match outcome {
                Ok((offset, timestamp)) => {
                    part.offset = offset;
                    part.timestamp = timestamp;
                }
                Err(error) => {
                    tracing::debug!(
                        topic = name,
                        partition,
                        "Kafka ListOffsets refused: {}",
                        error.message
                    );
                    part.error_code = errors::code(&error);
                }
            }
            answer.partitions.push(part);
        }
        response.topics.push(answer);
    }
    response
}
