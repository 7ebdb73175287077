//! Produce: each partition's record batches become one atomic flowd batch, answered
//! with its first offset once durable.
//!
//! `acks` maps onto flowd's one ack: a batch is acked when it is durable as its topic
//! says (and, in a cluster, replicated as its replica set says), so 1 and -1 (all) wait
//! for that same ack. With 0 the client wants no answer: none is sent, but the door
//! still waits for the ack before it reads the next request, so a client that never
//! reads cannot make the engine hold unbounded records for it.
//!
//! An idempotent producer's batch is checked against its sequences first
//! (`producers.rs`): written once, in order, and a batch sent again is answered with the
//! offset it got the first time.

use std::rc::Rc;

use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::protocol::StrBytes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::errors;
use super::producers::{self, Decision, Key, Next, Seqs};
use super::records::{self, Idempotent, Refused, refused};
use super::sasl::Who;
use crate::auth::Need;
use crate::protocol::{ProduceGroup, ProtocolError};
use crate::runtime::error::EngineError;
use crate::runtime::shard::Shard;
use crate::server::api;

/// A produce request whose batches went to their partitions (in the order of the
/// connection's requests), waiting for their acks.
pub struct Sent {
    acks: i16,
    pending: Vec<(String, i32, Result<Landing, Refused>)>,
    shared: Arc<Shared>,
}

/// One partition's batch on its way, or (an idempotent producer's batch sent again)
/// already written from this offset.
enum Landing {
    Sent(api::PendingProduce, Option<(Key, Idempotent)>),
    Written(i64),
}

/// Sends each partition's batches of `request` to its owner, in order: the connection
/// awaits this before it reads its next request, so a partition's appends keep the order
/// the client sent them in, while their acks are waited for meanwhile (`Sent::answer`).
pub async fn send_all(
    shard: &Rc<Shard>,
    shared: &Arc<Shared>,
    request: ProduceRequest,
    who: &Who,
    wait: Duration,
    limit: usize,
) -> Sent {
    let acks = request.acks;
    let mut pending = Vec::new();
    for topic in request.topic_data {
        let name = topic.name.0.as_str().to_owned();
        let allowed = who.allow(&[Need::Produce(&name)]);
        for partition in topic.partition_data {
            let index = partition.index;
            let outcome = if let Err(error) = &allowed {
                Err(Refused::from(error.clone()))
            } else if !matches!(acks, -1..=1) {
                Err(refused(
                    errors::INVALID_REQUIRED_ACKS,
                    format!("acks={acks} (use 0, 1 or -1)"),
                ))
            } else {
                send(shard, shared, &name, index, partition.records, wait, limit).await
            };
            pending.push((name.clone(), index, outcome));
        }
    }
    Sent {
        acks,
        pending,
        shared: Arc::clone(shared),
    }
}

impl Sent {
    /// The answer (`None` for acks 0), once every partition's batch is durable or refused.
    pub async fn answer(self, shard: &Shard) -> Option<ProduceResponse> {
        let Sent {
            acks,
            pending,
            shared,
        } = self;
        let mut response = ProduceResponse::default();
        for (name, index, outcome) in pending {
            let mut answer = PartitionProduceResponse::default();
            answer.index = index;
            answer.base_offset = -1;
            answer.log_append_time_ms = -1;
            answer.log_start_offset = -1;
            let acked = match outcome {
                Ok(Landing::Sent(pending, idempotent)) => {
                    let acked = pending.wait(shard).await.map_err(Refused::from).map(|runs| {
                        runs.first()
                            .and_then(|g| g.first())
                            .map_or(-1, |run| run.first_offset as i64)
                    });
                    if let Some((key, batch)) = idempotent {
                        if acked.is_ok() {
                            crate::storage::faults::crash_point("kafka-idempotent-durable");
                        }
                        shared
                            .producers
                            .settled(key, &batch, acked.as_ref().ok().copied());
                    }
                    acked
                }
                Ok(Landing::Written(base)) => Ok(base),
                Err(refused) => Err(refused),
            };
            match acked {
                Ok(base) => answer.base_offset = base,
                Err(refused) => {
                    tracing::debug!(topic = %name, partition = index, "Kafka produce refused: {}", refused.message);
                    answer.error_code = refused.code;
                    answer.error_message = Some(StrBytes::from_string(refused.message));
                }
            }
            match response.responses.iter_mut().find(|t| t.name.0.as_str() == name) {
                Some(topic) => topic.partition_responses.push(answer),
                None => {
                    let mut topic = TopicProduceResponse::default();
                    topic.name = StrBytes::from_string(name).into();
                    topic.partition_responses.push(answer);
                    response.responses.push(topic);
                }
            }
        }
        (acks != 0).then_some(response)
    }
}

/// The engine's part of a Kafka batch: `mark` on its last record, and the null-value
/// header the door puts on tombstones (`records::NULL_VALUE_HEADER`). A marked batch
/// (an idempotent producer's) is written on this peer or not at all: its sequences were
/// checked here as the partition's leader, and the leader after a move checks its own.
fn engine<'a>(mark: Option<(&'a str, &'a [u8])>) -> api::Engine<'a> {
    api::Engine {
        mark,
        set: &[records::NULL_VALUE_HEADER],
        here_only: mark.is_some(),
    }
}

/// The term here (`Ownership::term`; 0 on one machine) of `partition` (one the topic
/// has), if this peer leads it. An idempotent producer's sequences are checked by the leader's door alone (as
/// Kafka's leader checks them), so a batch sent to another peer is refused with
/// NOT_LEADER_OR_FOLLOWER: the client asks Metadata again and sends it to the leader.
fn leader_term(shard: &Shard, topic: usize, partition: u32) -> Result<u64, Refused> {
    let Some(peers) = shard.shared.peers.as_deref() else {
        return Ok(0);
    };
    match peers.owner(topic, partition) {
        None => Ok(peers.ownership.term(topic, partition)),
        Some(leader) => Err(refused(
            errors::NOT_LEADER_OR_FOLLOWER,
            format!(
                "the peer {leader} leads this partition: an idempotent producer sends to the broker Metadata names"
            ),
        )),
    }
}

/// One partition's batches sent to its owner as one atomic batch (an idempotent
/// producer's once its sequences allow, waiting at most `wait` for the batch before it),
/// if its records come to at most `limit` bytes decompressed (`records::from_kafka`).
async fn send(
    shard: &Rc<Shard>,
    shared: &Shared,
    topic: &str,
    index: i32,
    batches: Option<bytes::Bytes>,
    wait: Duration,
    limit: usize,
) -> Result<Landing, Refused> {
    let Ok(partition) = u32::try_from(index) else {
        return Err(refused(
            errors::UNKNOWN_TOPIC_OR_PARTITION,
            format!("partition {index}"),
        ));
    };
    let Some(batches) = batches else {
        return Err(refused(errors::INVALID_REQUEST, "a partition's records are null"));
    };
    let encoded = records::from_kafka(&batches, limit)?;
    let records = encoded
        .records()
        .map_err(|e| refused(errors::CORRUPT_MESSAGE, e.message))?;
    let group = ProduceGroup {
        topic,
        partition: Some(partition),
        records,
    };
    let Some(batch) = encoded.idempotent else {
        let pending = api::produce(shard, &[group], engine(None)).await?;
        return Ok(Landing::Sent(pending, None));
    };
    let spec = &shard.shared.spec;
    let t = api::client_topic(spec, topic)?;
    EngineError::check_partition(topic, spec.topics[t].partitions, partition).map_err(ProtocolError::from)?;
    let key = (t, partition, batch.producer_id);
    let deadline = Instant::now() + wait;
    // Each turn either decides, learns the producer (once), or waits for the batch
    // before, within `wait` in all.
    loop {
        let term = leader_term(shard, t, partition)?;
        match shared.producers.decide(key, &batch, term) {
            Next::Unknown => {
                let found = producers::scan(shard, topic, partition, batch.producer_id).await?;
                if let Err(Decision::Refuse(code, message)) =
                    shared.producers.learn(key, &batch, Seqs::from_log(&found), term)
                {
                    tracing::warn!(topic, partition, "Kafka produce refused: {message}");
                    return Err(refused(code, message));
                }
            }
            Next::Wait(turn) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if api::within(left, turn.recv_async()).await.is_none() {
                    return Err(refused(
                        errors::REQUEST_TIMED_OUT,
                        "the producer's batch before this one was not answered in time",
                    ));
                }
            }
            Next::Decided(Decision::Append) => {
                let mark = producers::mark(&batch);
                let sent = api::produce(
                    shard,
                    &[group],
                    engine(Some((producers::PRODUCER_HEADER, mark.as_bytes()))),
                )
                .await;
                return match sent {
                    Ok(pending) => Ok(Landing::Sent(pending, Some((key, batch)))),
                    Err(error) => {
                        shared.producers.settled(key, &batch, None);
                        Err(error.into())
                    }
                };
            }
            Next::Decided(Decision::Duplicate(base)) => return Ok(Landing::Written(base)),
            Next::Decided(Decision::Refuse(code, message)) => {
                tracing::warn!(topic, partition, "Kafka produce refused: {message}");
                return Err(refused(code, message));
            }
            Next::Decided(Decision::Wait) => unreachable!("a wait comes as Next::Wait"),
        }
    }
}
