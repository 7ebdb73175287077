//! The consumer requests and the reads outside consumers, as both front doors offer
//! them: check the request against the dataflow, send it to the shard that owns the
//! partition (or to every shard), and put the answers together.

use std::rc::Rc;

use crate::consumer::cursor::{OnMax, Options};
use crate::consumer::error::ConsumerError;
use crate::protocol::consumer::CursorInfo;
use crate::protocol::consumer::{
    AdminRequest, ClaimRequest, ConsumerRef, RangeRequest, encode_nothing_claimed,
};
use crate::protocol::{ErrorCode, ProduceGroup, ProtocolError, Run};
use crate::runtime::consumers::{self, OpReply, OpResult, PartitionOp, TxnPart};
use crate::runtime::error::EngineError;
use crate::runtime::journal_recovery::journal_record_max;
use crate::runtime::placement::owner;
use crate::runtime::service::ShardRequest;
use crate::runtime::shard::Shard;
use crate::server::api::{check_local, runs, split};
use crate::storage::layout::now_ms;

/// Longest consumer name, in bytes.
pub const GROUP_NAME_MAX: usize = 200;

/// Runs `op` on shard `to`: here, or through its service channel.
pub async fn on_shard(shard: &Rc<Shard>, to: usize, op: PartitionOp) -> OpResult {
    if to == shard.index {
        return consumers::run(shard, op).await;
    }
    let (tx, rx) = flume::bounded(1);
    shard.shared.services[to]
        .send_async(ShardRequest::Partition { op, reply: tx })
        .await
        .map_err(|_| ProtocolError::from(EngineError::Stopping))?;
    rx.recv_async()
        .await
        .map_err(|_| ProtocolError::from(EngineError::Stopping))?
}

async fn on_owner(shard: &Rc<Shard>, partition: u32, op: PartitionOp) -> OpResult {
    if let (Some(peers), Some(topic)) = (&shard.shared.peers, op.topic()) {
        check_local(peers, &shard.shared.spec.topics[topic].name, topic, partition)?;
    }
    on_shard(shard, owner(partition, shard.shared.shards), op).await
}

fn unexpected() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        "a shard answered with the wrong kind of reply (a bug)",
    )
}

fn check_group(group: &str) -> Result<(), ProtocolError> {
    if group.is_empty() || group.len() > GROUP_NAME_MAX {
        return Err(
            ConsumerError::Invalid(format!("a consumer name must have 1 to {GROUP_NAME_MAX} bytes")).into(),
        );
    }
    Ok(())
}

/// The topic's index, after checking the topic and partition exist.
fn topic_of(shard: &Shard, topic: &str, partition: Option<u32>) -> Result<usize, ProtocolError> {
    let spec = &shard.shared.spec;
    let t = spec
        .topic_index(topic)
        .ok_or_else(|| ProtocolError::from(EngineError::UnknownTopic(topic.to_owned())))?;
    if let Some(p) = partition {
        EngineError::check_partition(topic, spec.topics[t].partitions, p)?;
    }
    Ok(t)
}

fn check_options(shard: &Shard, options: &Options) -> Result<(), ProtocolError> {
    if let OnMax::DeadLetter(topic) = &options.on_max
        && shard.shared.spec.topic_index(topic).is_none()
    {
        return Err(ProtocolError::new(
            ErrorCode::UnknownTopic,
            format!("the dead-letter topic \"{topic}\" is not in the dataflow; add it as a [[topic]]"),
        ));
    }
    Ok(())
}

/// A CLAIMED frame: from the partition asked, or from the first partition (in turn)
/// that has records for the consumer.
pub async fn claim(
    shard: &Rc<Shard>,
    r: &ClaimRequest<'_>,
    request_id: u64,
) -> Result<Vec<u8>, ProtocolError> {
    check_group(r.group)?;
    let topic = topic_of(shard, r.topic, r.partition)?;
    if let Some(options) = &r.create {
        check_options(shard, options)?;
        let key = (topic, r.group.to_owned());
        if !shard.consumers.ensured.borrow().contains(&key) {
            // Create it on every partition at once: `$>` means "from now" everywhere.
            for to in 0..shard.shared.shards {
                let op = PartitionOp::Ensure {
                    topic,
                    group: r.group.to_owned(),
                    options: options.clone(),
                };
                on_shard(shard, to, op).await?;
            }
            shard.consumers.ensured.borrow_mut().insert(key);
        }
    }
    let op = |partition| PartitionOp::Claim {
        topic,
        partition,
        group: r.group.to_owned(),
        count: r.count,
        max_bytes: r.max_bytes,
        create: r.create.clone(),
        request_id,
    };
    if let Some(p) = r.partition {
        return match on_owner(shard, p, op(p)).await? {
            OpReply::Frame { frame, .. } => Ok(frame),
            _ => Err(unexpected()),
        };
    }
    let partitions = shard.shared.spec.topics[topic].partitions;
    let start = shard.next_spread(partitions);
    let mut refusal = None;
    let mut usable = false;
    for k in 0..partitions {
        let p = (start + k) % partitions;
        match on_owner(shard, p, op(p)).await {
            Ok(OpReply::Frame { frame, records }) if records > 0 => return Ok(frame),
            Ok(_) => usable = true,
            Err(error)
                if matches!(
                    error.code(),
                    ErrorCode::ConsumerDisabled | ErrorCode::UnknownConsumer
                ) =>
            {
                refusal = Some(error)
            }
            Err(error) => return Err(error.into()),
        }
    }
    match (usable, refusal) {
        (false, Some(error)) => Err(error.into()),
        _ => {
            let mut out = Vec::new();
            encode_nothing_claimed(&mut out, request_id, 0);
            Ok(out)
        }
    }
}

fn one_partition(r: &ConsumerRef<'_>) -> Result<(), ProtocolError> {
    if r.partition == crate::protocol::records::ANY_PARTITION {
        return Err(ProtocolError::new(
            ErrorCode::Invalid,
            "name the partition the claim came from (CLAIMED says which)",
        ));
    }
    Ok(())
}

/// Acks a partition's claim; the acked range once durable.
pub async fn ack(shard: &Rc<Shard>, r: &ConsumerRef<'_>) -> Result<(u64, u64), ProtocolError> {
    check_group(r.group)?;
    one_partition(r)?;
    let topic = topic_of(shard, r.topic, Some(r.partition))?;
    let op = PartitionOp::Ack {
        topic,
        partition: r.partition,
        group: r.group.to_owned(),
    };
    match on_owner(shard, r.partition, op).await? {
        OpReply::Acked(range) => {
            shard.shared.metrics.acks.add(1);
            Ok((range.from, range.to))
        }
        _ => Err(unexpected()),
    }
}

/// What a reclaim did: `(from, to, reclaims, outcome code)`.
pub async fn reclaim(shard: &Rc<Shard>, r: &ConsumerRef<'_>) -> Result<(u64, u64, u32, u8), ProtocolError> {
    check_group(r.group)?;
    one_partition(r)?;
    let topic = topic_of(shard, r.topic, Some(r.partition))?;
    let op = PartitionOp::Reclaim {
        topic,
        partition: r.partition,
        group: r.group.to_owned(),
    };
    match on_owner(shard, r.partition, op).await? {
        OpReply::Reclaimed(r) => Ok((r.range.from, r.range.to, r.reclaims, r.outcome.code())),
        _ => Err(unexpected()),
    }
}

/// Acks a claim and produces records as one transaction: the acked range, and the
/// offsets of the records produced (as a produce reports them).
pub async fn ack_commit(
    shard: &Rc<Shard>,
    r: &ConsumerRef<'_>,
    groups: &[ProduceGroup<'_>],
) -> Result<((u64, u64), Vec<Vec<Run>>), ProtocolError> {
    check_group(r.group)?;
    one_partition(r)?;
    let topic = topic_of(shard, r.topic, Some(r.partition))?;
    let split = split(shard, groups)?;
    let stamp_ms = now_ms();
    let mut parts = Vec::with_capacity(split.parts.len());
    let mut partitions = Vec::with_capacity(split.parts.len());
    for part in split.parts {
        let record_max = journal_record_max(&shard.shared.spec);
        if part.bytes.len() as u64 + 4096 > record_max {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "an ack-and-commit may produce at most {} bytes per partition; commit smaller batches",
                    record_max - 4096
                ),
            ));
        }
        partitions.push(part.partition);
        parts.push(TxnPart {
            topic: part.topic,
            partition: part.partition,
            bytes: part.bytes,
            count: part.count,
            stamp_ms,
        });
    }
    let op = PartitionOp::AckCommit {
        topic,
        partition: r.partition,
        group: r.group.to_owned(),
        id: consumers::txn_id(shard),
        parts,
    };
    match on_owner(shard, r.partition, op).await? {
        OpReply::Committed(range, ends) => {
            shard.shared.metrics.acks.add(1);
            let firsts: Vec<u64> = ends.iter().map(|(first, _)| *first).collect();
            Ok(((range.from, range.to), runs(&split.layout, &partitions, &firsts)))
        }
        _ => Err(unexpected()),
    }
}

/// Lists, disables, resumes or destroys consumers on every shard; the cursors touched.
pub async fn admin(shard: &Rc<Shard>, r: &AdminRequest<'_>) -> Result<Vec<CursorInfo>, ProtocolError> {
    use crate::protocol::consumer::AdminAction;
    let topic = match r.topic {
        "" => None,
        name => Some(topic_of(shard, name, None)?),
    };
    let group = (!r.group.is_empty()).then(|| r.group.to_owned());
    if r.action != AdminAction::List && (topic.is_none() || group.is_none()) {
        return Err(
            ConsumerError::Invalid(format!("{} needs a topic and a consumer name", r.action.name())).into(),
        );
    }
    let mut all = Vec::new();
    let mut changed = 0;
    let mut refused = Vec::new();
    for to in 0..shard.shared.shards {
        let op = PartitionOp::Admin {
            topic,
            group: group.clone(),
            action: r.action,
        };
        match on_shard(shard, to, op).await? {
            OpReply::Admin {
                cursors,
                changed: n,
                refused: mut errors,
            } => {
                all.extend(cursors);
                changed += n;
                refused.append(&mut errors);
            }
            _ => return Err(unexpected()),
        }
    }
    if let (Some(t), Some(g)) = (topic, &group) {
        if all.is_empty() {
            return Err(ConsumerError::Unknown {
                topic: shard.shared.spec.topics[t].name.clone(),
                group: g.clone(),
            }
            .into());
        }
        if r.action != AdminAction::List
            && changed == 0
            && let Some(error) = refused.into_iter().next()
        {
            return Err(error.into());
        }
    }
    all.sort_by(|a, b| (&a.topic, &a.group, a.partition).cmp(&(&b.topic, &b.group, b.partition)));
    Ok(all)
}

/// A FETCHED frame with the records of a range.
pub async fn range(
    shard: &Rc<Shard>,
    r: &RangeRequest<'_>,
    request_id: u64,
) -> Result<Vec<u8>, ProtocolError> {
    let topic = topic_of(shard, r.topic, Some(r.spec.partition))?;
    let op = PartitionOp::Range {
        topic,
        spec: r.spec,
        request_id,
    };
    match on_owner(shard, r.spec.partition, op).await? {
        OpReply::Frame { frame, .. } => Ok(frame),
        _ => Err(unexpected()),
    }
}

/// Records held by a partition, or by every partition of the topic.
pub async fn length(shard: &Rc<Shard>, topic: &str, partition: Option<u32>) -> Result<u64, ProtocolError> {
    let t = topic_of(shard, topic, partition)?;
    let partitions: Vec<u32> = match partition {
        Some(p) => vec![p],
        None => (0..shard.shared.spec.topics[t].partitions).collect(),
    };
    let mut total = 0;
    for p in partitions {
        match on_owner(
            shard,
            p,
            PartitionOp::Length {
                topic: t,
                partition: p,
            },
        )
        .await?
        {
            OpReply::Length(n) => total += n,
            _ => return Err(unexpected()),
        }
    }
    Ok(total)
}
