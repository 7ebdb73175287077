//! Produce: each partition's record batches become one atomic flowd batch, answered
//! with its first offset once durable.
//!
//! `acks` maps onto flowd's one ack: a batch is acked when it is durable as its topic
//! says (and, in a cluster, replicated as its replica set says), so 1 and -1 (all) wait
//! for that same ack. With 0 the client wants no answer: none is sent, but the door
//! still waits for the ack before it reads the next request, so a client that never
//! reads cannot make the engine hold unbounded records for it.

use std::rc::Rc;

use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use super::records::{self, Refused, refused};
use super::sasl::Who;
use crate::auth::Need;
use crate::protocol::ProduceGroup;
use crate::runtime::shard::Shard;
use crate::server::api;

/// A produce request whose batches went to their partitions (in the order of the
/// connection's requests), waiting for their acks.
pub struct Sent {
    acks: i16,
    pending: Vec<(String, i32, Result<api::PendingProduce, Refused>)>,
}

/// Sends each partition's batches of `request` to its owner, in order: the connection
/// awaits this before it reads its next request, so a partition's appends keep the order
/// the client sent them in, while their acks are waited for meanwhile (`Sent::answer`).
pub async fn send_all(shard: &Rc<Shard>, request: ProduceRequest, who: &Who) -> Sent {
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
                send(shard, &name, index, partition.records).await
            };
            pending.push((name.clone(), index, outcome));
        }
    }
    Sent { acks, pending }
}

impl Sent {
    /// The answer (`None` for acks 0), once every partition's batch is durable or refused.
    pub async fn answer(self, shard: &Shard) -> Option<ProduceResponse> {
        let Sent { acks, pending } = self;
        let mut response = ProduceResponse::default();
        for (name, index, outcome) in pending {
            let mut answer = PartitionProduceResponse::default();
            answer.index = index;
            answer.base_offset = -1;
            answer.log_append_time_ms = -1;
            answer.log_start_offset = -1;
            let acked = match outcome {
                Ok(pending) => pending.wait(shard).await.map_err(Refused::from),
                Err(refused) => Err(refused),
            };
            match acked {
                Ok(runs) => {
                    if let Some(run) = runs.first().and_then(|g| g.first()) {
                        answer.base_offset = run.first_offset as i64;
                    }
                }
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

/// One partition's batches sent to its owner as one atomic batch.
async fn send(
    shard: &Rc<Shard>,
    topic: &str,
    index: i32,
    batches: Option<bytes::Bytes>,
) -> Result<api::PendingProduce, Refused> {
    let Ok(partition) = u32::try_from(index) else {
        return Err(refused(
            errors::UNKNOWN_TOPIC_OR_PARTITION,
            format!("partition {index}"),
        ));
    };
    let Some(batches) = batches else {
        return Err(refused(errors::INVALID_REQUEST, "a partition's records are null"));
    };
    let encoded = records::from_kafka(batches)?;
    let records = encoded
        .records()
        .map_err(|e| refused(errors::CORRUPT_MESSAGE, e.message))?;
    let group = ProduceGroup {
        topic,
        partition: Some(partition),
        records,
    };
    api::produce(shard, &[group]).await.map_err(Refused::from)
}
