//! The consumer requests and the reads outside consumers, as both front doors offer
//! them: check the request against the dataflow, send it to the shard that owns the
//! partition (or to every shard), and put the answers together. In a cluster, a
//! partition another peer leads is asked of that peer (relayed to its client listener,
//! `relay.rs`) when the caller hands `relays`: a claim of any partition and a whole
//! topic's length go round every partition wherever it is led, and over HTTP, where
//! no frame is relayed whole, every request about one partition does too.

use std::rc::Rc;

use crate::consumer::cursor::{OnMax, Options, Position};
use crate::consumer::error::ConsumerError;
use crate::protocol::Request;
use crate::protocol::consumer::CursorInfo;
use crate::protocol::consumer::{
    AdminRequest, ClaimRequest, ConsumerRef, RangeRequest, encode_nothing_claimed,
};
use crate::protocol::message::Response;
use crate::protocol::{ErrorCode, ProduceGroup, ProtocolError, Run};
use crate::runtime::consumers::{self, OpReply, OpResult, PartitionOp, TxnPart};
use crate::runtime::error::EngineError;
use crate::runtime::journal_recovery::journal_record_max;
use crate::runtime::placement::owner;
use crate::runtime::service::ShardRequest;
use crate::runtime::shard::Shard;
use crate::server::api::{check_local, runs, split};
use crate::server::relay::{self, Relays};
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

/// `request`, about one partition, answered by the peer that leads it when that is
/// another peer and `relays` is given (`None` otherwise: this peer serves it). The
/// answer frame (its id `id`) and what it says; an error answer is an error.
async fn from_leader(
    shard: &Rc<Shard>,
    relays: Option<&Relays>,
    request: &Request<'_>,
    id: u64,
) -> Option<Result<(Vec<u8>, Response), ProtocolError>> {
    let route = relay::route(shard, request, 0)?;
    let relays = relays?;
    let mut frame = Vec::new();
    request.encode(id, &mut frame);
    let answer = relays.relay(route, frame, id).await;
    let decoded = crate::protocol::parse_frame(&answer, answer.len()).and_then(|parsed| {
        let parsed = parsed
            .ok_or_else(|| ProtocolError::new(ErrorCode::Internal, "a relayed answer cut short (a bug)"))?;
        Response::decode(&parsed.header, parsed.body)
    });
    Some(match decoded {
        Ok(Response::Error { code, message, .. }) => Err(ProtocolError::new(code, message)),
        Ok(response) => Ok((answer, response)),
        Err(error) => Err(error),
    })
}

fn unexpected() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        "a shard answered with the wrong kind of reply (a bug)",
    )
}

/// A consumer name's rule: 1 to `GROUP_NAME_MAX` bytes.
pub fn check_group(group: &str) -> Result<(), ProtocolError> {
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
    let t = crate::server::api::client_topic(spec, topic)?;
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
    relays: Option<&Relays>,
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
    // The claim of one partition, here or where it is led: its CLAIMED frame and
    // whether it holds records.
    let op = &op;
    let claim_of = |p: u32| async move {
        let one = ClaimRequest {
            partition: Some(p),
            create: r.create.clone(),
            ..*r
        };
        match from_leader(shard, relays, &Request::Claim(one), request_id).await {
            Some(Ok((frame, Response::Claimed(claimed)))) => Ok((frame, !claimed.records.is_empty())),
            Some(Ok(_)) => Err(unexpected()),
            Some(Err(error)) => Err(error),
            None => match on_owner(shard, p, op(p)).await? {
                OpReply::Frame { frame, records } => Ok((frame, records > 0)),
                _ => Err(unexpected()),
            },
        }
    };
    if let Some(p) = r.partition {
        return claim_of(p).await.map(|(frame, _)| frame);
    }
    let partitions = shard.shared.spec.topics[topic].partitions;
    let start = shard.next_spread(partitions);
    let mut refusal = None;
    let mut unavailable = None;
    let mut usable = false;
    for k in 0..partitions {
        let p = (start + k) % partitions;
        match claim_of(p).await {
            Ok((frame, true)) => return Ok(frame),
            Ok(_) => usable = true,
            Err(error)
                if matches!(
                    error.code,
                    ErrorCode::ConsumerDisabled | ErrorCode::UnknownConsumer
                ) =>
            {
                refusal = Some(error)
            }
            // One partition's leader out of reach (moving, down), or its log damaged,
            // holds back no other partition's records; said if no partition could be
            // asked.
            Err(error) if matches!(error.code, ErrorCode::Unavailable | ErrorCode::Damaged) => {
                unavailable = Some(error)
            }
            Err(error) => return Err(error),
        }
    }
    match (usable, refusal.or(unavailable)) {
        (false, Some(error)) => Err(error),
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
pub async fn ack(
    shard: &Rc<Shard>,
    relays: Option<&Relays>,
    r: &ConsumerRef<'_>,
) -> Result<(u64, u64), ProtocolError> {
    check_group(r.group)?;
    one_partition(r)?;
    let topic = topic_of(shard, r.topic, Some(r.partition))?;
    match from_leader(shard, relays, &Request::Ack(r.clone()), 0).await {
        Some(Ok((_, Response::Acked { from, to, .. }))) => return Ok((from, to)),
        Some(Ok(_)) => return Err(unexpected()),
        Some(Err(error)) => return Err(error),
        None => {}
    }
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

/// Sets the committed offset of consumer `r.group` on one partition to `to` (the
/// consumer made with the default options if it is new): a Kafka group's commit, or a
/// reset; answered once journaled and durable, by the partition's leader, with the
/// committed offset it landed on.
pub async fn seek(
    shard: &Rc<Shard>,
    relays: Option<&Relays>,
    r: &ConsumerRef<'_>,
    to: Position,
) -> Result<u64, ProtocolError> {
    check_group(r.group)?;
    one_partition(r)?;
    let topic = topic_of(shard, r.topic, Some(r.partition))?;
    match from_leader(shard, relays, &Request::Seek(r.clone(), to), 0).await {
        Some(Ok((_, Response::Sought { offset, .. }))) => return Ok(offset),
        Some(Ok(_)) => return Err(unexpected()),
        Some(Err(error)) => return Err(error),
        None => {}
    }
    let op = PartitionOp::Seek {
        topic,
        partition: r.partition,
        group: r.group.to_owned(),
        to,
    };
    match on_owner(shard, r.partition, op).await? {
        OpReply::Sought(offset) => Ok(offset),
        _ => Err(unexpected()),
    }
}

/// What a reclaim did: `(from, to, reclaims, outcome code)`.
pub async fn reclaim(
    shard: &Rc<Shard>,
    relays: Option<&Relays>,
    r: &ConsumerRef<'_>,
) -> Result<(u64, u64, u32, u8), ProtocolError> {
    check_group(r.group)?;
    one_partition(r)?;
    let topic = topic_of(shard, r.topic, Some(r.partition))?;
    match from_leader(shard, relays, &Request::Reclaim(r.clone()), 0).await {
        Some(Ok((_, Response::Reclaimed(r)))) => return Ok((r.from, r.to, r.reclaims, r.outcome)),
        Some(Ok(_)) => return Err(unexpected()),
        Some(Err(error)) => return Err(error),
        None => {}
    }
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
/// offsets of the records produced (as a produce reports them). `engine`: the engine
/// headers the records may carry (the null mark of a dead letter's replay), none for
/// a client.
pub async fn ack_commit(
    shard: &Rc<Shard>,
    relays: Option<&Relays>,
    r: &ConsumerRef<'_>,
    groups: &[ProduceGroup<'_>],
    engine: &[&str],
) -> Result<((u64, u64), Vec<Vec<Run>>), ProtocolError> {
    check_group(r.group)?;
    one_partition(r)?;
    let topic = topic_of(shard, r.topic, Some(r.partition))?;
    let request = Request::AckCommit(r.clone(), groups.to_vec());
    match from_leader(shard, relays, &request, 0).await {
        Some(Ok((_, Response::Committed { from, to, runs, .. }))) => return Ok(((from, to), runs)),
        Some(Ok(_)) => return Err(unexpected()),
        Some(Err(error)) => return Err(error),
        None => {}
    }
    let split = split(shard, groups, engine)?;
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
/// In a cluster a cursor is the one on its partition's leader: this peer's copies of
/// the others are left out, and (with `relays`) the request goes on to every peer
/// leading a partition it is about, whose cursors join the answer. A leader that does
/// not answer fails the request, saying so, rather than leaving its cursors out.
pub async fn admin(
    shard: &Rc<Shard>,
    relays: Option<&Relays>,
    r: &AdminRequest<'_>,
) -> Result<Vec<CursorInfo>, ProtocolError> {
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
    if let Some(peers) = &shard.shared.peers {
        let spec = &shard.shared.spec;
        all.retain(|c| {
            spec.topic_index(&c.topic)
                .is_some_and(|t| peers.ownership.serving(t, c.partition))
        });
        let topics: Vec<usize> = match topic {
            Some(t) => vec![t],
            None => (0..spec.topics.len()).collect(),
        };
        let mut leaders: Vec<std::net::SocketAddr> = topics
            .iter()
            .flat_map(|&t| (0..spec.topics[t].partitions).filter_map(move |p| peers.owner(t, p)))
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        for peer in leaders.into_iter().filter(|_| relays.is_some()) {
            let relays = relays.expect("filtered on it");
            let Some(to) = peers.client_of(peer) else {
                return Err(ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the peer {peer} leads partitions this request is about and has no client listener to ask"
                    ),
                ));
            };
            let route = relay::Route {
                peer,
                to,
                wait: std::time::Duration::ZERO,
            };
            let mut frame = Vec::new();
            Request::ConsumerAdmin(r.clone()).encode(0, &mut frame);
            let answer = relays.relay(route, frame, 0).await;
            let parsed = crate::protocol::parse_frame(&answer, answer.len())?.ok_or_else(|| {
                ProtocolError::new(ErrorCode::Internal, "a relayed answer cut short (a bug)")
            })?;
            match Response::decode(&parsed.header, parsed.body)? {
                Response::Consumers(json) => {
                    let cursors: Vec<CursorInfo> = serde_json::from_slice(&json).map_err(|e| {
                        ProtocolError::new(
                            ErrorCode::Internal,
                            format!("the peer {peer} answered cursors that do not parse: {e}"),
                        )
                    })?;
                    changed += cursors.len();
                    all.extend(cursors);
                }
                // It knows none of them (they live on the partitions this peer leads).
                Response::Error {
                    code: ErrorCode::UnknownConsumer,
                    ..
                } => {}
                Response::Error { code, message, .. } => {
                    return Err(ProtocolError::new(
                        code,
                        format!("the peer {peer}, leading partitions this request is about: {message}"),
                    ));
                }
                other => {
                    return Err(ProtocolError::new(
                        ErrorCode::Internal,
                        format!("the peer {peer} answered a consumer request with {other:?}"),
                    ));
                }
            }
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
    relays: Option<&Relays>,
    r: &RangeRequest<'_>,
    request_id: u64,
) -> Result<Vec<u8>, ProtocolError> {
    let topic = topic_of(shard, r.topic, Some(r.spec.partition))?;
    match from_leader(shard, relays, &Request::Range(r.clone()), request_id).await {
        Some(Ok((frame, _))) => return Ok(frame),
        Some(Err(error)) => return Err(error),
        None => {}
    }
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
pub async fn length(
    shard: &Rc<Shard>,
    relays: Option<&Relays>,
    topic: &str,
    partition: Option<u32>,
) -> Result<u64, ProtocolError> {
    let t = topic_of(shard, topic, partition)?;
    let partitions: Vec<u32> = match partition {
        Some(p) => vec![p],
        None => (0..shard.shared.spec.topics[t].partitions).collect(),
    };
    let mut total = 0;
    for p in partitions {
        let one = Request::Length {
            topic,
            partition: Some(p),
        };
        match from_leader(shard, relays, &one, 0).await {
            Some(Ok((_, Response::Length(n)))) => {
                total += n;
                continue;
            }
            Some(Ok(_)) => return Err(unexpected()),
            Some(Err(error)) => return Err(error),
            None => {}
        }
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
