//! Kafka's group coordinator: FindCoordinator, JoinGroup, SyncGroup, Heartbeat and
//! LeaveGroup over the groups of this process (`group.rs`, one state machine each), and
//! OffsetCommit and OffsetFetch over flowd's named consumers.
//!
//! **Membership** lives in memory, as in Kafka, where a new coordinator starts every
//! group empty too: after a restart the members' next request is answered
//! UNKNOWN_MEMBER_ID and they join again. Every shard's door shares one map of groups
//! (at most `GROUPS_MAX`); a request that must wait (a join, a follower's sync) waits
//! on its own channel and, when the group's next deadline passes first, looks at the
//! group again, so no timer runs for a group nobody asks about.
//!
//! **Committed offsets** are the committed offsets of flowd's named consumers: a Kafka
//! group `G` committing offset `O` of `T`/`P` sets the cursor of consumer `G` on `T`/`P`
//! (made with the default options if new) to `O`, journaled and durable before the
//! answer, like an ack (`PartitionOp::Seek`). So a group's place survives restarts,
//! `flowd tail --group G` and the status page see it with its lag, and the reverse. A
//! commit from a member of an older generation, or while the group is in a round, is
//! refused (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS), so a consumer that lost its
//! partitions cannot move them back. Kafka's per-offset metadata string is not kept
//! (read back empty).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{BrokerId, GroupId};
use kafka_protocol::protocol::StrBytes;

use super::brokers::Brokers;
use super::errors;
use super::group::{Due, Group, JoinAsk, Joined, Synced};
use super::sasl::Who;
use crate::auth::Need;
use crate::protocol::consumer::{AdminAction, AdminRequest, ConsumerRef, CursorInfo, Position};
use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::shard::Shard;
use crate::server::{api, consumer_api};

/// Groups the coordinator holds at once; a new one past it is COORDINATOR_NOT_AVAILABLE
/// (a group with no member and no request waiting is forgotten).
pub const GROUPS_MAX: usize = 4096;
/// The session timeouts a member may ask for (Kafka's broker defaults are 6 s to 30 min;
/// flowd allows from 1 s, for tests and quick takeovers).
const SESSION_MIN: Duration = Duration::from_secs(1);
const SESSION_MAX: Duration = Duration::from_secs(30 * 60);

/// What a waiting join or sync is answered.
#[derive(Debug)]
enum Answered {
    Join(Joined),
    Sync(Synced),
}

type Waiter = flume::Sender<Answered>;

/// Every group of this process's Kafka door.
#[derive(Debug, Default)]
pub struct Groups {
    groups: Mutex<HashMap<String, Group<Waiter>>>,
    incarnations: AtomicU64,
}

impl Groups {
    /// Runs `f` on group `id` (made first if `make` and there is room; `None` if it is
    /// not there), forgets it if it is left idle, and hands out the answers due.
    fn with<R>(
        &self,
        id: &str,
        make: bool,
        f: impl FnOnce(&mut Group<Waiter>, Instant) -> (R, Vec<Due<Waiter>>),
    ) -> Option<R> {
        let (result, due) = {
            let mut groups = self
                .groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !groups.contains_key(id) {
                if !make || groups.len() >= GROUPS_MAX {
                    return None;
                }
                let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed);
                groups.insert(id.to_owned(), Group::new(incarnation));
            }
            let group = groups.get_mut(id)?;
            let outcome = f(group, Instant::now());
            if group.is_idle() {
                groups.remove(id);
            }
            outcome
        };
        for due in due {
            // A waiter that went (its connection closed) needs no answer.
            let _ = match due {
                Due::Join(waiter, joined) => waiter.try_send(Answered::Join(joined)),
                Due::Sync(waiter, synced) => waiter.try_send(Answered::Sync(synced)),
            };
        }
        Some(result)
    }

    /// Waits for a join's or sync's answer, looking at the group again whenever its next
    /// deadline passes; `None` once `limit` passed (or the group forgot the request).
    async fn wait(&self, id: &str, answer: flume::Receiver<Answered>, limit: Duration) -> Option<Answered> {
        let give_up = Instant::now() + limit;
        loop {
            let now = Instant::now();
            if now >= give_up {
                return None;
            }
            let next = self
                .with(id, false, |g, _| (g.next_deadline(), Vec::new()))
                .flatten()
                .map_or(give_up, |d| d.min(give_up));
            let wait = next.saturating_duration_since(now).max(Duration::from_millis(1));
            match api::within(wait, answer.recv_async()).await {
                Some(Ok(answered)) => return Some(answered),
                Some(Err(_)) => return None,
                None => {
                    self.with(id, false, |g, now| ((), g.tick(now)));
                }
            }
        }
    }
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// FindCoordinator: each group's coordinator among `brokers` (transactions are not
/// served).
pub fn find_coordinator(
    request: &FindCoordinatorRequest,
    version: i16,
    brokers: &Brokers,
) -> FindCoordinatorResponse {
    let (code, message) = match request.key_type {
        0 => (errors::NONE, None),
        _ => (
            errors::COORDINATOR_NOT_AVAILABLE,
            Some(text(
                "flowd's Kafka door coordinates consumer groups only: transactions are not served",
            )),
        ),
    };
    let mut response = FindCoordinatorResponse::default();
    let keys: Vec<StrBytes> = if version >= 4 {
        request.coordinator_keys.clone()
    } else {
        vec![request.key.clone()]
    };
    for key in keys {
        let mut c = Coordinator::default();
        let broker = brokers.coordinator(key.as_str());
        c.key = key;
        c.node_id = BrokerId(broker.node);
        c.host = text(&broker.kafka.ip().to_string());
        c.port = i32::from(broker.kafka.port());
        c.error_code = code;
        c.error_message = message.clone();
        response.coordinators.push(c);
    }
    // Up to version 3 the one key's answer is the response itself.
    if version < 4
        && let Some(first) = response.coordinators.pop()
    {
        response.error_code = first.error_code;
        response.error_message = first.error_message.filter(|_| version >= 1);
        response.node_id = first.node_id;
        response.host = first.host;
        response.port = first.port;
    }
    response
}

/// Why a request about `group` is refused, if it is: a name no consumer may have (the
/// named consumers' own rule), a client without `group:G`, or a group another peer
/// coordinates.
fn refusal(who: &Who, group: &str) -> Option<i16> {
    if consumer_api::check_group(group).is_err() {
        return Some(errors::INVALID_GROUP_ID);
    }
    if !who.brokers().coordinates(group) {
        return Some(errors::NOT_COORDINATOR);
    }
    who.allow(&[Need::Group(group)])
        .err()
        .map(|_| errors::GROUP_AUTHORIZATION_FAILED)
}

/// JoinGroup: answered once the round it starts (or joins) ends.
pub async fn join(groups: &Groups, request: JoinGroupRequest, version: i16, who: &Who) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.generation_id = -1;
    response.member_id = request.member_id.clone();
    let group = request.group_id.0.as_str().to_owned();
    let session = Duration::from_millis(u64::try_from(request.session_timeout_ms).unwrap_or(0));
    let rebalance = match version {
        0 => session,
        _ => Duration::from_millis(u64::try_from(request.rebalance_timeout_ms).unwrap_or(0)),
    };
    if let Some(code) = refusal(who, &group) {
        response.error_code = code;
        return response;
    }
    if !(SESSION_MIN..=SESSION_MAX).contains(&session) || rebalance > SESSION_MAX {
        response.error_code = errors::INVALID_SESSION_TIMEOUT;
        return response;
    }
    let ask = JoinAsk {
        member_id: request.member_id.as_str().to_owned(),
        id_required: version >= 4,
        protocol_type: request.protocol_type.as_str().to_owned(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_owned(), p.metadata.clone()))
            .collect(),
        session_timeout: session,
        rebalance_timeout: rebalance,
    };
    let (tx, rx) = flume::bounded(1);
    if groups
        .with(&group, true, |g, now| ((), g.join(ask, tx, now)))
        .is_none()
    {
        response.error_code = errors::COORDINATOR_NOT_AVAILABLE;
        return response;
    }
    let joined = match groups.wait(&group, rx, rebalance + Duration::from_secs(1)).await {
        Some(Answered::Join(joined)) => joined,
        _ => Joined::Refused(errors::REBALANCE_IN_PROGRESS),
    };
    match joined {
        Joined::Refused(code) => response.error_code = code,
        Joined::TakeId(id) => {
            response.error_code = errors::MEMBER_ID_REQUIRED;
            response.member_id = text(&id);
        }
        Joined::In {
            generation,
            protocol_type,
            protocol,
            leader,
            member_id,
            members,
        } => {
            response.generation_id = generation;
            response.protocol_type = Some(text(&protocol_type));
            response.protocol_name = Some(text(&protocol));
            response.leader = text(&leader);
            response.member_id = text(&member_id);
            response.members = members
                .into_iter()
                .map(|(id, metadata)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = text(&id);
                    m.metadata = metadata;
                    m
                })
                .collect();
        }
    }
    response
}

/// SyncGroup: the leader's brings the assignments; the others wait for them.
pub async fn sync(groups: &Groups, request: SyncGroupRequest, who: &Who) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default();
    let group = request.group_id.0.as_str().to_owned();
    if let Some(code) = refusal(who, &group) {
        response.error_code = code;
        return response;
    }
    let member = request.member_id.as_str().to_owned();
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.as_str().to_owned(), a.assignment))
        .collect();
    let (tx, rx) = flume::bounded(1);
    let generation = request.generation_id;
    if groups
        .with(&group, false, |g, now| {
            ((), g.sync(&member, generation, assignments, tx, now))
        })
        .is_none()
    {
        response.error_code = errors::UNKNOWN_MEMBER_ID;
        return response;
    }
    match groups.wait(&group, rx, SESSION_MAX).await {
        Some(Answered::Sync(Synced::Assigned {
            protocol_type,
            protocol,
            assignment,
        })) => {
            response.protocol_type = Some(text(&protocol_type));
            response.protocol_name = Some(text(&protocol));
            response.assignment = assignment;
        }
        Some(Answered::Sync(Synced::Refused(code))) => response.error_code = code,
        _ => response.error_code = errors::REBALANCE_IN_PROGRESS,
    }
    response
}

pub fn heartbeat(groups: &Groups, request: &HeartbeatRequest, who: &Who) -> HeartbeatResponse {
    let mut response = HeartbeatResponse::default();
    let group = request.group_id.0.as_str();
    response.error_code = match refusal(who, group) {
        Some(code) => code,
        None => groups
            .with(group, false, |g, now| {
                g.heartbeat(request.member_id.as_str(), request.generation_id, now)
            })
            .unwrap_or(errors::UNKNOWN_MEMBER_ID),
    };
    response
}

pub fn leave(groups: &Groups, request: &LeaveGroupRequest, version: i16, who: &Who) -> LeaveGroupResponse {
    let mut response = LeaveGroupResponse::default();
    let group = request.group_id.0.as_str();
    if let Some(code) = refusal(who, group) {
        response.error_code = code;
        return response;
    }
    let members: Vec<StrBytes> = if version >= 3 {
        request.members.iter().map(|m| m.member_id.clone()).collect()
    } else {
        vec![request.member_id.clone()]
    };
    for member in members {
        let code = groups
            .with(group, false, |g, now| g.leave(member.as_str(), now))
            .unwrap_or(errors::UNKNOWN_MEMBER_ID);
        if version >= 3 {
            let mut m = MemberResponse::default();
            m.member_id = member;
            m.error_code = code;
            response.members.push(m);
        } else {
            response.error_code = code;
        }
    }
    response
}

/// The Kafka error code for a refused commit of one partition.
fn commit_code(error: &ProtocolError) -> i16 {
    match error.code {
        // An offset past the partition's end.
        ErrorCode::Invalid => errors::OFFSET_OUT_OF_RANGE,
        _ => errors::code(error),
    }
}

/// OffsetCommit: each partition's offset set on consumer `group`'s cursor, durably.
pub async fn offset_commit(
    shard: &Rc<Shard>,
    groups: &Groups,
    request: OffsetCommitRequest,
    who: &Who,
) -> OffsetCommitResponse {
    let group = request.group_id.0.as_str().to_owned();
    let member = request.member_id.as_str();
    let generation = request.generation_id_or_member_epoch;
    let group_code = refusal(who, &group).or_else(|| {
        let code = groups
            .with(&group, false, |g, _| {
                (g.may_commit(member, generation), Vec::new())
            })
            .unwrap_or(if generation < 0 && member.is_empty() {
                errors::NONE
            } else {
                errors::UNKNOWN_MEMBER_ID
            });
        (code != errors::NONE).then_some(code)
    });
    let mut response = OffsetCommitResponse::default();
    for topic in request.topics {
        let name = topic.name.0.as_str().to_owned();
        let topic_code = group_code.or(who
            .allow(&[Need::Consume(&name)])
            .err()
            .map(|_| errors::TOPIC_AUTHORIZATION_FAILED));
        let mut answer = OffsetCommitResponseTopic::default();
        answer.name = topic.name.clone();
        for partition in topic.partitions {
            let code = match (
                topic_code,
                u32::try_from(partition.partition_index),
                u64::try_from(partition.committed_offset),
            ) {
                (Some(code), _, _) => code,
                (None, Err(_), _) => errors::UNKNOWN_TOPIC_OR_PARTITION,
                (None, _, Err(_)) => errors::OFFSET_OUT_OF_RANGE,
                (None, Ok(p), Ok(offset)) => {
                    let r = ConsumerRef {
                        topic: &name,
                        group: &group,
                        partition: p,
                    };
                    match consumer_api::seek(shard, Some(&who.relays), &r, Position::Offset(offset)).await {
                        Ok(_) => errors::NONE,
                        Err(error) => {
                            tracing::debug!(%group, topic = %name, partition = p, "Kafka commit refused: {}", error.message);
                            commit_code(&error)
                        }
                    }
                }
            };
            let mut p = OffsetCommitResponsePartition::default();
            p.partition_index = partition.partition_index;
            p.error_code = code;
            answer.partitions.push(p);
        }
        response.topics.push(answer);
    }
    response
}

/// Every cursor of consumer `group`, on every topic (none if it has none).
async fn cursors_of(shard: &Rc<Shard>, group: &str, who: &Who) -> Result<Vec<CursorInfo>, i16> {
    let list = AdminRequest {
        action: AdminAction::List,
        topic: "",
        group,
    };
    match consumer_api::admin(shard, Some(&who.relays), &list).await {
        Ok(cursors) => Ok(cursors),
        Err(error) if error.code == ErrorCode::UnknownConsumer => Ok(Vec::new()),
        Err(error) => Err(errors::code(&error)),
    }
}

/// Per topic, `(partition, committed offset or -1, error code)`.
type Offsets = Vec<(String, Vec<(i32, i64, i16)>)>;

/// One group's committed offsets: the partitions asked (`None`: every one it has
/// committed), each with its offset or -1.
async fn fetch_group(
    shard: &Rc<Shard>,
    group: &str,
    asked: Option<Vec<(String, Vec<i32>)>>,
    who: &Who,
) -> Result<Offsets, i16> {
    if let Some(code) = refusal(who, group) {
        return Err(code);
    }
    let cursors = cursors_of(shard, group, who).await?;
    let asked = asked.unwrap_or_else(|| {
        let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
        for c in cursors
            .iter()
            .filter(|c| who.allow(&[Need::Consume(&c.topic)]).is_ok())
        {
            let p = i32::try_from(c.partition).unwrap_or(i32::MAX);
            match topics.iter_mut().find(|(t, _)| *t == c.topic) {
                Some((_, ps)) => ps.push(p),
                None => topics.push((c.topic.clone(), vec![p])),
            }
        }
        topics
    });
    let spec = &shard.shared.spec;
    Ok(asked
        .into_iter()
        .map(|(topic, partitions)| {
            let topic_code = match spec.topic_index(&topic) {
                None => Some(errors::UNKNOWN_TOPIC_OR_PARTITION),
                Some(_) => who
                    .allow(&[Need::Consume(&topic)])
                    .err()
                    .map(|_| errors::TOPIC_AUTHORIZATION_FAILED),
            };
            let answers = partitions
                .into_iter()
                .map(|p| {
                    let committed = cursors
                        .iter()
                        .find(|c| c.topic == topic && i64::from(c.partition) == i64::from(p))
                        .map_or(-1, |c| i64::try_from(c.committed).unwrap_or(i64::MAX));
                    match topic_code {
                        Some(code) => (p, -1, code),
                        None => (p, committed, errors::NONE),
                    }
                })
                .collect();
            (topic, answers)
        })
        .collect())
}

/// The answer's topics from `(topic, [(partition, offset, error)])`, in either layout
/// (the types differ by version, their fields do not).
macro_rules! answer_topics {
    ($found:expr, $topic:ty, $partition:ty) => {
        $found
            .into_iter()
            .map(|(name, partitions)| {
                let mut t = <$topic>::default();
                t.name = text(&name).into();
                t.partitions = partitions
                    .into_iter()
                    .map(|(p, offset, code)| {
                        let mut r = <$partition>::default();
                        r.partition_index = p;
                        r.committed_offset = offset;
                        r.committed_leader_epoch = -1;
                        r.metadata = Some(text(""));
                        r.error_code = code;
                        r
                    })
                    .collect();
                t
            })
            .collect()
    };
}

/// What OffsetFetch asks of one group's topics (`None`: every one).
fn asked_topics<T>(
    topics: Option<Vec<T>>,
    name: impl Fn(T) -> (String, Vec<i32>),
) -> Option<Vec<(String, Vec<i32>)>> {
    topics.map(|topics| topics.into_iter().map(name).collect())
}

/// OffsetFetch: the offsets committed by one group (up to v7) or several (v8).
pub async fn offset_fetch(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
    who: &Who,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for asked in request.groups {
            let group = asked.group_id.0.as_str().to_owned();
            let topics = asked_topics(asked.topics, |t| {
                (t.name.0.as_str().to_owned(), t.partition_indexes)
            });
            let mut answer = OffsetFetchResponseGroup::default();
            answer.group_id = GroupId(text(&group));
            match fetch_group(shard, &group, topics, who).await {
                Ok(found) => {
                    answer.topics =
                        answer_topics!(found, OffsetFetchResponseTopics, OffsetFetchResponsePartitions)
                }
                Err(code) => answer.error_code = code,
            }
            response.groups.push(answer);
        }
        return response;
    }
    let group = request.group_id.0.as_str().to_owned();
    let topics = asked_topics(request.topics, |t| {
        (t.name.0.as_str().to_owned(), t.partition_indexes)
    });
    let partitions_asked = topics.clone();
    match fetch_group(shard, &group, topics, who).await {
        Ok(found) => {
            response.topics = answer_topics!(found, OffsetFetchResponseTopic, OffsetFetchResponsePartition)
        }
        // Versions before 2 have no error of the whole answer: each partition says it.
        Err(code) if version < 2 => {
            let refused: Offsets = partitions_asked
                .unwrap_or_default()
                .into_iter()
                .map(|(name, partitions)| (name, partitions.into_iter().map(|p| (p, -1, code)).collect()))
                .collect();
            response.topics = answer_topics!(refused, OffsetFetchResponseTopic, OffsetFetchResponsePartition);
        }
        Err(code) => response.error_code = code,
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn find_coordinator_names_this_door_in_every_version_served() {
        let me = Brokers::of(None, "127.0.0.1:9092".parse().unwrap());
        for version in 0..=4 {
            let mut request = FindCoordinatorRequest::default();
            request.key = text("g1");
            request.coordinator_keys = vec![text("g1"), text("g2")];
            let answer = find_coordinator(&request, version, &me);
            let mut buf = bytes::BytesMut::new();
            answer.encode(&mut buf, version).unwrap();
            if version < 4 {
                assert_eq!((answer.port, answer.error_code), (9092, errors::NONE));
            } else {
                assert_eq!(answer.coordinators.len(), 2);
            }
            request.key_type = 1;
            let answer = find_coordinator(&request, version, &me);
            answer.encode(&mut buf, version).unwrap();
            let code = answer
                .coordinators
                .first()
                .map_or(answer.error_code, |c| c.error_code);
            assert_eq!(
                code,
                errors::COORDINATOR_NOT_AVAILABLE,
                "transactions are not served"
            );
        }
    }
}
