//! The engine operations both front doors (TCP frames and HTTP) offer: produce, fetch,
//! jobs, metadata and status. Each checks its input, routes work to the shard that owns
//! the partition, and waits for the outcome the protocol promises (a durable ack, an
//! answer, a timeout).

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::OpSpec;
use crate::protocol::message::Metadata;
use crate::protocol::routing::partition_of_bytes;
use crate::protocol::status::{PeerStatus, Quantiles, Status, TopicStatus};
use crate::protocol::wire::RESERVED_HEADER_PREFIX;
use crate::protocol::{ErrorCode, FetchFrom, ProduceGroup, ProtocolError, Run, WireRecord};
use crate::runtime::bounds::{BATCH_HINT, Bounds, ENGINE_HEADERS_RESERVE, TooLarge, record_frame_bytes};
use crate::runtime::cluster::peers::{Fetch, Peers};
use crate::runtime::error::EngineError;
use crate::runtime::mesh::{Ack, Batch, ClientAck, Payload};
use crate::runtime::placement::owner;
use crate::runtime::reply::{ReplyAddress, job_batch};
use crate::runtime::service::{self, Answer, FetchOrder, ShardRequest, ShardStatus};
use crate::runtime::shard::Shard;
use crate::storage::layout::now_ms;

/// One partition's records of a produce request, becoming one atomic batch.
pub struct Part {
    pub topic: usize,
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub count: usize,
    /// The frame bytes its records take in the log, at most.
    pub frame_bytes: u64,
}

/// Where each record of a group went: `(part index, index in the part, count)`.
pub type Layout = Vec<Vec<(usize, usize, u32)>>;

/// A produce request whose batches are on their way; `wait` resolves when all are durable.
pub struct PendingProduce {
    acks: flume::Receiver<ClientAck>,
    parts: Vec<(usize, u32)>,
    layout: Layout,
    started: Instant,
}

/// A produce request's records, sorted into one part per partition.
pub struct Split {
    pub parts: Vec<Part>,
    pub layout: Layout,
    records_in: u64,
    bytes_in: u64,
}

/// Checks the records against the dataflow and the engine's rules and sorts them into
/// one part per partition, keeping where each record went.
pub fn split(shard: &Shard, groups: &[ProduceGroup<'_>]) -> Result<Split, ProtocolError> {
    let spec = &shard.shared.spec;
    let mut parts: Vec<Part> = Vec::new();
    let mut layout: Layout = Vec::with_capacity(groups.len());
    let mut bytes_in = 0;
    let mut records_in = 0;
    for group in groups {
        let topic = spec
            .topic_index(group.topic)
            .ok_or_else(|| ProtocolError::from(EngineError::UnknownTopic(group.topic.to_owned())))?;
        let partitions = spec.topics[topic].partitions;
        let bounds = Bounds::of(&spec.topics[topic]);
        if let Some(p) = group.partition {
            EngineError::check_partition(group.topic, partitions, p)?;
        }
        // Keyless records of a group stay together in one partition, one atomic batch.
        let spread = shard.next_spread(partitions);
        let mut runs: Vec<(usize, usize, u32)> = Vec::new();
        for (n, record) in group.records.iter().enumerate() {
            check_headers(record)?;
            let frame_bytes = check_size(group.topic, &bounds, n, record)?;
            let partition = match (group.partition, record.key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_of_bytes(key, partitions),
                (None, None) => spread,
            };
            let index = match parts
                .iter()
                .position(|p| p.topic == topic && p.partition == partition)
            {
                Some(i) => i,
                None => {
                    parts.push(Part {
                        topic,
                        partition,
                        bytes: Vec::new(),
                        count: 0,
                        frame_bytes: 0,
                    });
                    parts.len() - 1
                }
            };
            let part = &mut parts[index];
            part.frame_bytes += frame_bytes;
            // A part is one atomic batch, which must fit one segment (with room for a
            // transaction's mark on its last record).
            if part.frame_bytes + ENGINE_HEADERS_RESERVE > bounds.batch_bytes_max {
                return Err(too_large(TooLarge {
                    what: format!("the records for partition {partition}"),
                    bytes: part.frame_bytes + ENGINE_HEADERS_RESERVE,
                    max: bounds.batch_bytes_max,
                    topic: group.topic.to_owned(),
                    hint: BATCH_HINT,
                }));
            }
            part.bytes.extend_from_slice(record.raw);
            match runs.last_mut() {
                Some((i, start, count)) if *i == index && *start + *count as usize == part.count => {
                    *count += 1
                }
                _ => runs.push((index, part.count, 1)),
            }
            part.count += 1;
            bytes_in += (record.value.len() + record.key.map_or(0, <[u8]>::len)) as u64;
            records_in += 1;
        }
        layout.push(runs);
    }
    Ok(Split {
        parts,
        layout,
        records_in,
        bytes_in,
    })
}

/// The frame bytes `record` (number `n` of its group) takes, or an error when it is over
/// what a client may send to the topic: room stays for the headers the engine adds, so
/// that the record passes any stage unchanged in size (`bounds`).
fn check_size(topic: &str, bounds: &Bounds, n: usize, record: &WireRecord<'_>) -> Result<u64, ProtocolError> {
    let headers = record.headers.iter().map(|&(name, value)| (name, value));
    let bytes = record_frame_bytes(record.key, record.value, headers);
    if bytes > bounds.ingest_record_bytes_max() {
        return Err(too_large(TooLarge {
            what: format!("record {n} of the request"),
            bytes,
            max: bounds.ingest_record_bytes_max(),
            topic: topic.to_owned(),
            hint: INGEST_HINT,
        }));
    }
    Ok(bytes)
}

/// The hint for a client's record over the ingest bound.
const INGEST_HINT: &str = "; a client's record takes at most 1 MiB less 4 KiB kept for the engine's headers \
     (less in segments under 1 MiB + 8 KiB): split it, or raise the topic's segment_bytes";

pub fn too_large(error: TooLarge) -> ProtocolError {
    ProtocolError::new(ErrorCode::TooLarge, error.to_string())
}

/// Per group, its runs of offsets, given where each part's records begin.
pub fn runs(layout: &Layout, partitions: &[u32], firsts: &[u64]) -> Vec<Vec<Run>> {
    layout
        .iter()
        .map(|runs| {
            runs.iter()
                .map(|&(part, start, count)| Run {
                    partition: partitions[part],
                    first_offset: firsts[part] + start as u64,
                    count,
                })
                .collect()
        })
        .collect()
}

/// Checks the records against the dataflow and the engine's rules, then sends them to
/// their partitions' shards (waiting while those are full).
pub async fn produce(
    shard: &Rc<Shard>,
    groups: &[ProduceGroup<'_>],
) -> Result<PendingProduce, ProtocolError> {
    let started = Instant::now();
    let Split {
        parts,
        layout,
        records_in,
        bytes_in,
    } = split(shard, groups)?;
    let (tx, rx) = flume::bounded(parts.len());
    let shared = &shard.shared;
    let part_ids: Vec<(usize, u32)> = parts.iter().map(|p| (p.topic, p.partition)).collect();
    let stamp_ms = now_ms();
    for (number, part) in parts.into_iter().enumerate() {
        let batch = Batch::new(
            part.partition,
            Payload::Wire {
                bytes: part.bytes,
                count: part.count,
                stamp_ms,
            },
            Ack::Client(tx.clone(), number),
        );
        shared
            .mesh
            .sender(part.topic, part.partition)
            .send_async(batch)
            .await
            .map_err(|_| ProtocolError::from(EngineError::Stopping))?;
    }
    shared.metrics.produce_requests.add(1);
    shared.metrics.records_in.add(records_in);
    shared.metrics.bytes_in.add(bytes_in);
    Ok(PendingProduce {
        acks: rx,
        parts: part_ids,
        layout,
        started,
    })
}

fn check_headers(record: &WireRecord<'_>) -> Result<(), ProtocolError> {
    match record
        .headers
        .iter()
        .find(|(name, _)| name.starts_with(RESERVED_HEADER_PREFIX))
    {
        Some((name, _)) => Err(ProtocolError::new(
            ErrorCode::Invalid,
            format!(
                "header \"{name}\" is reserved for the engine (names starting \"{RESERVED_HEADER_PREFIX}\"); rename it"
            ),
        )),
        None => Ok(()),
    }
}

impl PendingProduce {
    /// Waits for every batch to be durable; the offsets come back per group, in runs.
    pub async fn wait(self, shard: &Shard) -> Result<Vec<Vec<Run>>, ProtocolError> {
        let mut firsts = vec![0; self.parts.len()];
        for _ in 0..self.parts.len() {
            let (part, first, _) = self
                .acks
                .recv_async()
                .await
                .map_err(|_| ProtocolError::from(EngineError::Stopping))??;
            firsts[part] = first;
        }
        let partitions: Vec<u32> = self.parts.iter().map(|p| p.1).collect();
        let runs = runs(&self.layout, &partitions, &firsts);
        shard
            .shared
            .metrics
            .produce_latency
            .record(shard.index, self.started.elapsed());
        Ok(runs)
    }
}

/// An error unless this peer owns `partition` of `topic`: the requests not forwarded
/// to the owner yet (consumers, jobs, state reads) are served by the owner alone.
pub fn check_local(peers: &Peers, name: &str, topic: usize, partition: u32) -> Result<(), ProtocolError> {
    match peers.owner(topic, partition) {
        None if peers.ownership.serving(topic, partition) => Ok(()),
        None => Err(ProtocolError::from(EngineError::TakingOver {
            topic: name.to_owned(),
            partition,
        })),
        Some(owner) => Err(ProtocolError::new(
            ErrorCode::Unsupported,
            format!(
                "partition {partition} of \"{name}\" is owned by the peer at {owner} (peer address); \
                 consumer requests, jobs and state reads are not forwarded between peers yet: send them to the client listener of that peer"
            ),
        )),
    }
}

/// A whole FETCHED (or ERROR) frame for `order`, served by the owner shard.
pub async fn fetch(shard: &Rc<Shard>, topic: &str, order: FetchOrder) -> Vec<u8> {
    let spec = &shard.shared.spec;
    let request_id = order.request_id;
    let Some(t) = spec.topic_index(topic) else {
        return service::error_frame(
            request_id,
            &ProtocolError::from(EngineError::UnknownTopic(topic.to_owned())),
        );
    };
    let partitions = spec.topics[t].partitions;
    if order.partition >= partitions {
        let error = ProtocolError::new(
            ErrorCode::UnknownPartition,
            format!(
                "topic \"{topic}\" has partitions 0 to {}, not {}",
                partitions - 1,
                order.partition
            ),
        );
        return service::error_frame(request_id, &error);
    }
    shard.shared.metrics.fetch_requests.add(1);
    let order = FetchOrder { topic: t, ..order };
    if let Some(peers) = &shard.shared.peers
        && let Some(peer) = peers.owner(t, order.partition)
    {
        let (tx, rx) = flume::bounded(1);
        let fetch = Fetch {
            topic: topic.to_string(),
            order,
            reply: tx,
        };
        if peers.fetcher(peer).send_async(fetch).await.is_err() {
            return service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping));
        }
        return rx.recv_async().await.unwrap_or_else(|_| {
            service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping))
        });
    }
    if let Some(peers) = &shard.shared.peers
        && !peers.ownership.serving(t, order.partition)
    {
        return service::error_frame(
            request_id,
            &ProtocolError::from(EngineError::TakingOver {
                topic: topic.to_owned(),
                partition: order.partition,
            }),
        );
    }
    let to = owner(order.partition, shard.shared.shards);
    if to == shard.index {
        return service::fetch_local(shard, &order).await;
    }
    let (tx, rx) = flume::bounded(1);
    let request = ShardRequest::Fetch { order, reply: tx };
    if shard.shared.services[to].send_async(request).await.is_err() {
        return service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping));
    }
    rx.recv_async()
        .await
        .unwrap_or_else(|_| service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping)))
}

/// The longest timeout a request may give its job, over either door.
pub const JOB_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// Takes a job: writes it to its topic with this shard's reply address, then waits for
/// the reply stage's answer, or the timeout.
pub async fn job(
    shard: &Rc<Shard>,
    name: &str,
    timeout: Option<Duration>,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<Answer, ProtocolError> {
    let started = Instant::now();
    let shared = &shard.shared;
    let spec = shared.spec.job(name).ok_or_else(|| {
        let known = shared.spec.jobs.iter().map(|j| j.name.as_str());
        unknown_name(ErrorCode::UnknownJob, "job", name, known)
    })?;
    if let Some((name, _)) = headers
        .iter()
        .find(|(n, _)| n.starts_with(RESERVED_HEADER_PREFIX))
    {
        return Err(ProtocolError::new(
            ErrorCode::Invalid,
            format!("header \"{name}\" is reserved for the engine"),
        ));
    }
    let timeout = timeout.unwrap_or(spec.timeout);
    let topic_spec = &shared.spec.topics[spec.topic];
    let bounds = Bounds::of(topic_spec);
    let bytes = record_frame_bytes(key, value, headers.iter().copied());
    if bytes > bounds.ingest_record_bytes_max() {
        return Err(too_large(TooLarge {
            what: format!("job \"{name}\"'s record"),
            bytes,
            max: bounds.ingest_record_bytes_max(),
            topic: topic_spec.name.clone(),
            hint: INGEST_HINT,
        }));
    }
    let partitions = topic_spec.partitions;
    let partition = match key {
        Some(key) => partition_of_bytes(key, partitions),
        None => shard.next_spread(partitions),
    };
    if let Some(peers) = &shared.peers {
        check_local(peers, &shared.spec.topics[spec.topic].name, spec.topic, partition)?;
    }
    let id = shard.next_job_id();
    let address = ReplyAddress {
        epoch: shared.epoch,
        shard: shard.index as u32,
        job: id,
    };
    let (answer_tx, answer_rx) = flume::bounded(1);
    shard.jobs.borrow_mut().insert(id, answer_tx);
    // Whatever happens next, the waiter must not outlive this call.
    let _guard = JobGuard { shard, id };
    let (ack_tx, ack_rx) = flume::bounded(1);
    let batch = job_batch(partition, key, value, headers, &address, Ack::Client(ack_tx, 0));
    shared.metrics.jobs.add(1);
    shared
        .mesh
        .sender(spec.topic, partition)
        .send_async(batch)
        .await
        .map_err(|_| ProtocolError::from(EngineError::Stopping))?;
    let outcome = within(timeout, async {
        ack_rx
            .recv_async()
            .await
            .map_err(|_| ProtocolError::from(EngineError::Stopping))??;
        answer_rx
            .recv_async()
            .await
            .map_err(|_| ProtocolError::from(EngineError::Stopping))?
            .map_err(|reason| {
                ProtocolError::new(ErrorCode::JobFailed, format!("job \"{name}\" failed: {reason}"))
            })
    })
    .await;
    match outcome {
        Some(Ok(answer)) => {
            shared.metrics.job_answers.add(1);
            shared.metrics.job_latency.record(shard.index, started.elapsed());
            Ok(answer)
        }
        Some(Err(error)) => Err(error),
        None => {
            shared.metrics.job_timeouts.add(1);
            Err(ProtocolError::new(
                ErrorCode::Timeout,
                format!(
                    "job \"{name}\" got no answer within {}",
                    humantime::format_duration(timeout)
                ),
            ))
        }
    }
}

/// The state a `state` stage holds for `key`, from the shard that owns the key's input
/// partition; `Ok(None)` when the key has none yet.
pub async fn state(
    shard: &Rc<Shard>,
    stage_name: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, ProtocolError> {
    let spec = &shard.shared.spec;
    let is_state = |s: &&crate::config::StageSpec| matches!(s.op, OpSpec::State { .. });
    let Some(stage) = spec
        .stages
        .iter()
        .position(|s| s.name == stage_name && is_state(&s))
    else {
        let known = spec.stages.iter().filter(is_state).map(|s| s.name.as_str());
        return Err(unknown_name(
            ErrorCode::UnknownState,
            "state stage",
            stage_name,
            known,
        ));
    };
    let input = spec.stages[stage].from[0];
    let partition = partition_of_bytes(key, spec.topics[input].partitions);
    if let Some(peers) = &shard.shared.peers {
        check_local(peers, &spec.topics[input].name, input, partition)?;
    }
    let (tx, rx) = flume::bounded(1);
    let request = ShardRequest::State {
        stage,
        partition,
        key: key.to_vec(),
        reply: tx,
    };
    let to = owner(partition, shard.shared.shards);
    shard.shared.services[to]
        .send_async(request)
        .await
        .map_err(|_| ProtocolError::from(EngineError::Stopping))?;
    match rx
        .recv_async()
        .await
        .map_err(|_| ProtocolError::from(EngineError::Stopping))?
    {
        Some(state) => Ok(state),
        // The stage task is not there: it finished (bounded input) or has not started.
        None => Err(ProtocolError::new(
            ErrorCode::Unavailable,
            format!("the state stage \"{stage_name}\" is not running on that key's partition"),
        )),
    }
}

/// "no KIND "NAME" here; this dataflow has: ...": what a request for an unknown name gets.
fn unknown_name<'a>(
    code: ErrorCode,
    kind: &str,
    name: &str,
    known: impl Iterator<Item = &'a str>,
) -> ProtocolError {
    let known: Vec<&str> = known.collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    ProtocolError::new(
        code,
        format!("no {kind} \"{name}\" here; this dataflow has: {known}"),
    )
}

/// `f`'s output, or `None` if it takes longer than `limit` (then `f` is dropped).
pub async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

struct JobGuard<'a> {
    shard: &'a Shard,
    id: u64,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.shard.jobs.borrow_mut().remove(&self.id);
    }
}

pub fn metadata(shard: &Shard, max_frame_bytes: u32) -> Metadata {
    let spec = &shard.shared.spec;
    Metadata {
        max_frame_bytes,
        topics: spec
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions))
            .collect(),
        jobs: spec
            .jobs
            .iter()
            .map(|j| (j.name.clone(), spec.topics[j.topic].name.clone()))
            .collect(),
    }
}

/// Asks every shard for its partitions and puts the answers together.
pub async fn status(shard: &Rc<Shard>, started: Instant, listeners: &[String], rate: f64) -> Status {
    let shared = &shard.shared;
    let mut shards: Vec<ShardStatus> = Vec::new();
    for (i, service) in shared.services.iter().enumerate() {
        if i == shard.index {
            shards.push(service::status(shard));
            continue;
        }
        let (tx, rx) = flume::bounded(1);
        if service
            .send_async(ShardRequest::Status { reply: tx })
            .await
            .is_ok()
            && let Some(Ok(s)) = within(Duration::from_secs(5), rx.recv_async()).await
        {
            shards.push(s);
        }
    }
    let spec = &shared.spec;
    let mut topics: Vec<TopicStatus> = spec
        .topics
        .iter()
        .map(|t| TopicStatus {
            name: t.name.clone(),
            partitions: Vec::new(),
        })
        .collect();
    let jobs_waiting = shards.iter().map(|s| s.jobs_waiting).sum();
    for p in shards.into_iter().flat_map(|s| s.partitions) {
        if let Some(t) = spec.topic_index(&p.topic) {
            // In a cluster: the partitions this peer owns (its copies of others' are stale).
            if shared
                .peers
                .as_ref()
                .is_some_and(|peers| peers.owner(t, p.partition).is_some())
            {
                continue;
            }
            topics[t].partitions.push(p);
        }
    }
    for t in &mut topics {
        t.partitions.sort_by_key(|p| p.partition);
    }
    let h = shared.metrics.produce_latency.merged();
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: started.elapsed().as_secs_f64(),
        cores: shared.shards,
        durability: format!("{:?}", spec.engine.durability).to_lowercase(),
        listeners: listeners.to_vec(),
        topics,
        jobs: spec.jobs.iter().map(|j| j.name.clone()).collect(),
        records_in: shared.metrics.records_in.get(),
        records_in_per_sec: rate,
        bytes_in: shared.metrics.bytes_in.get(),
        connections_open: shared
            .metrics
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed),
        jobs_waiting,
        produce_latency_us: Quantiles {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        },
        peers: shared.peers.as_deref().map(peer_statuses).unwrap_or_default(),
    }
}

fn peer_statuses(peers: &Peers) -> Vec<PeerStatus> {
    let view = peers.cluster.view.get();
    let counts = peers.partition_counts();
    let me = PeerStatus {
        addr: view.me.addr.to_string(),
        state: "alive".into(),
        me: true,
        cores: view.me.cores,
        last_seen_ms: None,
        partitions: counts.get(&view.me.addr).copied().unwrap_or(0),
    };
    std::iter::once(me)
        .chain(view.others.iter().map(|m| {
            PeerStatus {
                addr: m.id.addr.to_string(),
                state: format!("{:?}", m.state).to_lowercase(),
                me: false,
                cores: m.id.cores,
                last_seen_ms: peers
                    .cluster
                    .view
                    .last_heard(m.id.addr)
                    .map(|at| at.elapsed().as_millis() as u64),
                partitions: counts.get(&m.id.addr).copied().unwrap_or(0),
            }
        }))
        .collect()
}

/// Converts a fetch position given as text: `earliest`, `latest` or an offset.
pub fn parse_from(text: &str) -> Option<FetchFrom> {
    match text {
        "earliest" => Some(FetchFrom::Earliest),
        "latest" => Some(FetchFrom::Latest),
        n => n.parse().ok().map(FetchFrom::Offset),
    }
}
