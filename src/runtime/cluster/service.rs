//! Serves the data connections of other peers: batches they route to partitions this
//! peer owns (PRODUCE, acked once durable; REDIRECT while the partition is not served
//! here), fetches they forward (FETCH, answered with the whole frame a client would
//! get), and the hand-over of partitions (CLAIM: fence and say the end; COPY: records
//! from an offset), and jobs' answers for callers connected here (ANSWER). Engine
//! headers are allowed here: only a peer of the same cluster gets this far (the HELLO
//! named it).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::cluster::data;
use crate::cluster::frame::{self, Body, Kind};
use crate::cluster::handover::{self, Phase};
use crate::cluster::replication as wire;
use crate::cluster::stream::PeerStream;
use crate::cluster::transport::DataPlane;
use crate::protocol::wire::Cursor;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::cluster::replica::ReplicaRequest;
use crate::runtime::error::EngineError;
use crate::runtime::mesh::{Ack, Batch, ClientAck, Payload};
use crate::runtime::placement::owner;
use crate::runtime::service::{Answer, FetchOrder, ShardRequest};
use crate::runtime::shard::Shared;

/// Frames queued for one peer connection's writer.
const OUT_FRAMES: usize = 256;

pub struct PeerService {
    pub shared: Arc<Shared>,
}

impl DataPlane for PeerService {
    fn serve(&self, from: SocketAddr, stream: PeerStream) {
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let (out_tx, out_rx) = flume::bounded::<Vec<u8>>(OUT_FRAMES);
        let wrote = std::thread::Builder::new()
            .name("flowd-peer-out".into())
            .spawn(move || {
                for bytes in out_rx.iter() {
                    if writer.write_all(&bytes).is_err() {
                        let _ = writer.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            });
        // Acks come back from the shards in any order; each names its request.
        let (ack_tx, ack_rx) =
            flume::bounded::<(u64, ClientAck)>(crate::runtime::cluster::peers::LINK_IN_FLIGHT * 4);
        let acks_out = out_tx.clone();
        let shared = Arc::clone(&self.shared);
        let acked = std::thread::Builder::new()
            .name("flowd-peer-ack".into())
            .spawn(move || {
                let answered = || {
                    if let Some(peers) = &shared.peers {
                        peers.answering.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    }
                };
                for (request, ack) in ack_rx.iter() {
                    let out = match ack {
                        Ok((_, first, next)) => {
                            frame::framed(Kind::Acked, request, &data::encode_acked(first, next))
                        }
                        Err(EngineError::StaleLead { latest }) => {
                            frame::framed(Kind::Stale, request, &data::encode_stale(latest))
                        }
                        Err(error) => error_frame(request, &error.into()),
                    };
                    let sent = acks_out.send(out);
                    answered();
                    if sent.is_err() {
                        return;
                    }
                }
            });
        if wrote.is_err() || acked.is_err() {
            return;
        }
        let mut reader = stream;
        let _ = reader.set_read_timeout(None);
        loop {
            let frame = match frame::read(&mut reader) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!("peer {from}: {error}");
                    return;
                }
            };
            let request = frame.request;
            // The answer to send now, if any (a queued PRODUCE is answered by its ack).
            let answer: Result<Option<(Kind, Vec<u8>)>, ProtocolError> = match frame.kind {
                Kind::Produce | Kind::ProduceAgain | Kind::ProduceLed => {
                    crate::storage::faults::stall_point("peer-produce");
                    if frame.kind == Kind::ProduceLed {
                        crate::storage::faults::stall_point("peer-produce-led");
                    }
                    self.produce(&frame.body, frame.kind, request, &ack_tx)
                        .map(|produced| match produced {
                            Produced::Queued => None,
                            Produced::Moving(message) => {
                                Some((Kind::Redirect, Body::default().str16(&message).0))
                            }
                        })
                }
                Kind::Claim => self
                    .claim(from, &frame.body)
                    .map(|answers| Some((Kind::Claimed, handover::encode_claimed(&answers)))),
                Kind::Copy => self.copy(&frame.body).map(|(first, count, records)| {
                    Some((Kind::Copied, handover::encode_copied(first, count, &records)))
                }),
                Kind::Fetch => self
                    .fetch(&frame.body, request)
                    .map(|bytes| Some((Kind::Frame, bytes))),
                // Answered by the owner shard, on `out_tx`, once it has batches or its
                // wait ran out.
                Kind::ReplicaFetch => self
                    .replica_fetch(from, &frame.body, request, &out_tx)
                    .map(|()| None),
                Kind::FenceEpoch => self
                    .fence_epoch(&frame.body)
                    .map(|fenced| Some((Kind::Fenced, wire::encode_fenced(fenced)))),
                // Not answered: the caller's shard takes it, or nobody waits for it.
                Kind::Answer => self.answer(&frame.body).map(|()| None),
                other => Err(ProtocolError::new(
                    ErrorCode::UnknownKind,
                    format!("a {other:?} frame on a data connection"),
                )),
            };
            let out = match answer {
                Ok(None) => continue,
                Ok(Some((kind, body))) => frame::framed(kind, request, &body),
                Err(error) => error_frame(request, &error),
            };
            if out_tx.send(out).is_err() {
                return;
            }
        }
    }
}

/// What became of a forwarded batch.
enum Produced {
    /// In the owner shard's inbox; its ACKED comes when it is durable.
    Queued,
    /// Not served here (it moves): the sender routes it again.
    Moving(String),
}

impl PeerService {
    /// The topic's index, if the partition exists.
    fn partition(&self, name: &str, partition: u32) -> Result<usize, ProtocolError> {
        let spec = &self.shared.spec;
        let topic = spec
            .topic_index(name)
            .ok_or_else(|| ProtocolError::from(EngineError::UnknownTopic(name.to_owned())))?;
        EngineError::check_partition(name, spec.topics[topic].partitions, partition)?;
        Ok(topic)
    }

    /// Why this peer does not serve the partition now, if it does not: views differ for
    /// a moment after a change, and a partition taken over is served once copied in.
    fn not_served(&self, name: &str, topic: usize, partition: u32) -> Option<ProtocolError> {
        let peers = self.shared.peers.as_ref()?;
        if peers.ownership.serving(topic, partition) {
            return None;
        }
        Some(match peers.owner(topic, partition) {
            Some(owner) => ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "partition {partition} of \"{name}\" belongs to peer {owner} in this peer's view; retry"
                ),
            ),
            None => ProtocolError::from(EngineError::TakingOver {
                topic: name.to_owned(),
                partition,
            }),
        })
    }

    /// A replicated partition of this peer, by name.
    fn replicated(
        &self,
        name: &str,
        partition: u32,
    ) -> Result<(usize, &Arc<crate::runtime::cluster::peers::Peers>), ProtocolError> {
        let topic = self.partition(name, partition)?;
        let peers = self
            .shared
            .peers
            .as_ref()
            .expect("a peer service runs in a cluster");
        if !peers.replication.is_replicated(topic) {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!(
                    "topic \"{name}\" is not replicated here (replicas = 1): the peers' dataflows differ"
                ),
            ));
        }
        Ok((topic, peers))
    }

    fn replica_fetch(
        &self,
        from: SocketAddr,
        body: &[u8],
        request: u64,
        out: &flume::Sender<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        let fetch = wire::decode_fetch(body).map_err(malformed)?;
        let (topic, _) = self.replicated(&fetch.topic, fetch.partition)?;
        let partition = fetch.partition;
        let order = ShardRequest::Replica(ReplicaRequest::Fetch {
            topic,
            partition,
            from,
            request,
            fetch,
            reply: out.clone(),
        });
        self.shared.services[owner(partition, self.shared.shards)]
            .send(order)
            .map_err(|_| ProtocolError::from(EngineError::Stopping))
    }

    /// Hands a job's answer to the shard holding its caller, if the caller is of this
    /// run (a job taken before a restart has nobody waiting for it).
    fn answer(&self, body: &[u8]) -> Result<(), ProtocolError> {
        let answer = data::decode_answer(body).map_err(malformed)?;
        if answer.epoch != self.shared.epoch || answer.shard as usize >= self.shared.shards {
            return Ok(());
        }
        let outcome = match answer.outcome {
            Ok((key, value)) => Ok(Answer {
                key: key.map(<[u8]>::to_vec),
                value: value.to_vec(),
            }),
            Err(why) => Err(why.to_owned()),
        };
        self.shared.services[answer.shard as usize]
            .send(ShardRequest::Answer {
                job: answer.job,
                answer: outcome,
            })
            .map_err(|_| ProtocolError::from(EngineError::Stopping))
    }

    fn fence_epoch(&self, body: &[u8]) -> Result<wire::Fenced, ProtocolError> {
        let (name, partition, epoch) = wire::decode_fence(body).map_err(malformed)?;
        let (topic, _) = self.replicated(&name, partition)?;
        crate::runtime::cluster::replica::fence(&self.shared, topic, partition, epoch)
            .map_err(|m| ProtocolError::from(EngineError::Unavailable(m)))
    }

    /// A PRODUCE, a PRODUCE_AGAIN (a batch that may be written already) or a
    /// PRODUCE_LED (a stage's batch for its input's lead in an epoch).
    fn produce(
        &self,
        body: &[u8],
        kind: Kind,
        request: u64,
        acks: &flume::Sender<(u64, ClientAck)>,
    ) -> Result<Produced, ProtocolError> {
        let (lead, uncertain, produce) = match kind {
            Kind::ProduceAgain => {
                let (from, produce) = data::decode_produce_again(body).map_err(malformed)?;
                (None, Some(from), produce)
            }
            Kind::ProduceLed => {
                let (lead, again, produce) = data::decode_produce_led(body).map_err(malformed)?;
                (Some(lead), again, produce)
            }
            _ => (None, None, data::decode_produce(body).map_err(malformed)?),
        };
        let data::Produce {
            topic: name,
            partition,
            count,
            stamp_ms,
            records: bytes,
        } = produce;
        let count = count as usize;
        let topic = self.partition(name, partition)?;
        if let Some(why) = self.not_served(name, topic, partition) {
            return Ok(Produced::Moving(why.message));
        }
        // Validate every record now: the shard decodes them again trusting this.
        let mut cursor = Cursor::new(bytes);
        for _ in 0..count {
            cursor.record()?;
        }
        if cursor.remaining() != 0 {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                "bytes after the batch's last record",
            ));
        }
        let stamp_ms = if stamp_ms == 0 {
            crate::storage::layout::now_ms()
        } else {
            stamp_ms
        };
        let mut batch = Batch::new(
            partition,
            Payload::Wire {
                bytes: bytes.to_vec(),
                count,
                stamp_ms,
            },
            Ack::Peer(acks.clone(), request),
        );
        batch.uncertain = uncertain;
        batch.lead = lead;
        let to = owner(partition, self.shared.shards);
        if let Some(peers) = &self.shared.peers {
            peers.answering.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        if self.shared.mesh.inboxes[topic][to].send(batch).is_err() {
            // The batch (and its ack) went with the error: nobody answers it now.
            if let Some(peers) = &self.shared.peers {
                peers.answering.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
            return Err(ProtocolError::from(EngineError::Stopping));
        }
        Ok(Produced::Queued)
    }

    /// Fences (or notes as handed over) each partition whose owner is `from` in this
    /// peer's view too; `None` for the others (the claimer asks again).
    fn claim(&self, from: SocketAddr, body: &[u8]) -> Result<Vec<Option<u64>>, ProtocolError> {
        let Some(peers) = &self.shared.peers else {
            return Err(ProtocolError::new(
                ErrorCode::Unsupported,
                "not a peer of a cluster",
            ));
        };
        let claim = handover::decode_claim(body).map_err(malformed)?;
        // A claimer that does not ask a peer this one sees alive would take the
        // partitions over from the copies it knows of, missing one held there (its view
        // is behind: it joined, and has heard of some peers only): not agreed, it asks
        // again once it knows them.
        let view = peers.cluster.view.get();
        let unasked = view
            .reachable_others()
            .map(|id| id.addr)
            .find(|addr| *addr != from && !claim.asked.contains(addr));
        if let Some(unasked) = unasked {
            tracing::debug!(
                "peer {from} claims partitions without asking peer {unasked}, which this peer sees alive: none fenced until it does"
            );
        }
        let mut answers = Vec::with_capacity(claim.entries.len());
        for entry in claim.entries {
            let topic = self.partition(&entry.topic, entry.partition)?;
            if (entry.phase == Phase::Fence && unasked.is_some())
                || peers.owner(topic, entry.partition) != Some(from)
            {
                answers.push(None);
                continue;
            }
            let end = match entry.phase {
                Phase::Fence => self.ask(entry.partition, |reply| ShardRequest::Fence {
                    topic,
                    partition: entry.partition,
                    reply,
                })?,
                Phase::Done => {
                    peers.ownership.handed(topic, entry.partition, entry.end);
                    entry.end
                }
            };
            answers.push(Some(end));
        }
        Ok(answers)
    }

    /// Records of a partition this peer holds, for the peer taking it over.
    fn copy(&self, body: &[u8]) -> Result<crate::runtime::service::Copied, ProtocolError> {
        let order = handover::decode_copy(body).map_err(malformed)?;
        let topic = self.partition(&order.topic, order.partition)?;
        if self
            .shared
            .peers
            .as_ref()
            .is_some_and(|p| p.ownership.serving(topic, order.partition))
        {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "partition {} of \"{}\" is served by this peer; claim it first",
                    order.partition, order.topic
                ),
            ));
        }
        self.ask(order.partition, |reply| ShardRequest::Copy {
            topic,
            partition: order.partition,
            from: order.from,
            reply,
        })?
        .map_err(ProtocolError::from)
    }

    fn fetch(&self, body: &[u8], request: u64) -> Result<Vec<u8>, ProtocolError> {
        let fetch = data::decode_fetch(body).map_err(malformed)?;
        let (name, partition) = (fetch.topic, fetch.partition);
        let topic = self.partition(name, partition)?;
        if let Some(error) = self.not_served(name, topic, partition) {
            return Err(error);
        }
        let order = FetchOrder {
            topic,
            partition,
            from: fetch.from,
            max_records: fetch.max_records,
            max_bytes: fetch.max_bytes,
            wait_ms: fetch.wait_ms,
            request_id: request,
            // The peer wire asks for records: a client's FETCH_BATCHES served through
            // another peer gets a FETCHED, which clients take for it.
            batches: false,
        };
        self.ask(partition, |reply| ShardRequest::Fetch { order, reply })?
            .map_err(ProtocolError::from)
    }

    /// Sends the request `make` builds to the shard owning `partition` on this peer and
    /// waits for its answer (this is a peer connection's own thread).
    fn ask<T>(
        &self,
        partition: u32,
        make: impl FnOnce(flume::Sender<T>) -> ShardRequest,
    ) -> Result<T, ProtocolError> {
        let (tx, rx) = flume::bounded(1);
        self.shared.services[owner(partition, self.shared.shards)]
            .send(make(tx))
            .map_err(|_| ProtocolError::from(EngineError::Stopping))?;
        rx.recv().map_err(|_| ProtocolError::from(EngineError::Stopping))
    }
}

fn error_frame(request: u64, error: &ProtocolError) -> Vec<u8> {
    frame::error(request, error.code as u16, &error.message)
}

/// A peer frame whose fields do not read.
fn malformed(error: crate::cluster::ClusterError) -> ProtocolError {
    ProtocolError::new(ErrorCode::Malformed, error.to_string())
}
