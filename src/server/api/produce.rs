//! Produce: a request's records, checked and split into one atomic batch per partition,
//! sent to the partitions' owners and answered with their offsets once every batch is
//! durable.

use std::rc::Rc;
use std::time::Instant;

use crate::protocol::routing::partition_of_bytes;
use crate::protocol::wire::RESERVED_HEADER_PREFIX;
use crate::protocol::{ErrorCode, ProduceGroup, ProtocolError, Run, WireRecord};
use crate::runtime::bounds::{BATCH_HINT, Bounds, ENGINE_HEADERS_RESERVE, TooLarge, stored_record_bytes};
use crate::runtime::error::EngineError;
use crate::runtime::mesh::{Ack, Batch, ClientAck, Payload};
use crate::runtime::shard::Shard;
use crate::storage::batch::CheckedBatch;
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
/// `engine`: the engine headers (`flowd-...`) the door itself put on records, let through;
/// any other is refused.
pub fn split(shard: &Shard, groups: &[ProduceGroup<'_>], engine: &[&str]) -> Result<Split, ProtocolError> {
    let spec = &shard.shared.spec;
    let mut parts: Vec<Part> = Vec::new();
    let mut layout: Layout = Vec::with_capacity(groups.len());
    let mut bytes_in = 0;
    let mut records_in = 0;
    for group in groups {
        let topic = client_topic(spec, group.topic)?;
        let partitions = spec.topics[topic].partitions;
        let bounds = Bounds::of(&spec.topics[topic]);
        if let Some(p) = group.partition {
            EngineError::check_partition(group.topic, partitions, p)?;
        }
        // Keyless records of a group stay together in one partition, one atomic batch.
        let spread = shard.next_spread(partitions);
        let mut runs: Vec<(usize, usize, u32)> = Vec::new();
        for (n, record) in group.records.iter().enumerate() {
            check_headers(record, engine)?;
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
    let bytes = stored_record_bytes(record.key, record.value, headers);
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
pub(super) const INGEST_HINT: &str = "; a client's record takes at most 1 MiB less 4 KiB kept for the engine's headers \
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

/// Checks a client's batch (PRODUCE_BATCH) whole, against the storage format and the
/// rules `split` applies to a PRODUCE, then sends it as it came to its partition's shard
/// (waiting while that is full).
pub async fn produce_batch(
    shard: &Rc<Shard>,
    topic_name: &str,
    partition: Option<u32>,
    bytes: &[u8],
) -> Result<PendingProduce, ProtocolError> {
    let started = Instant::now();
    let spec = &shard.shared.spec;
    let topic = client_topic(spec, topic_name)?;
    let partitions = spec.topics[topic].partitions;
    let bounds = Bounds::of(&spec.topics[topic]);
    let mut batch =
        CheckedBatch::check(bytes).map_err(|error| ProtocolError::malformed(error.to_string()))?;
    let (mut stored, mut bytes_in, mut keyed) = (0u64, 0u64, false);
    for (n, view) in batch.records().enumerate() {
        check_header_names(view.headers().map(|(name, _)| name))?;
        let bytes = stored_record_bytes(view.key(), view.value(), view.headers());
        if bytes > bounds.ingest_record_bytes_max() {
            return Err(too_large(TooLarge {
                what: format!("record {n} of the batch"),
                bytes,
                max: bounds.ingest_record_bytes_max(),
                topic: topic_name.to_owned(),
                hint: INGEST_HINT,
            }));
        }
        stored += bytes;
        bytes_in += (view.value().len() + view.key().map_or(0, <[u8]>::len)) as u64;
        keyed |= view.key().is_some();
    }
    if stored + ENGINE_HEADERS_RESERVE > bounds.batch_bytes_max {
        return Err(too_large(TooLarge {
            what: "the batch".to_owned(),
            bytes: stored + ENGINE_HEADERS_RESERVE,
            max: bounds.batch_bytes_max,
            topic: topic_name.to_owned(),
            hint: BATCH_HINT,
        }));
    }
    let partition = match partition {
        Some(p) => {
            EngineError::check_partition(topic_name, partitions, p)?;
            p
        }
        None if keyed => {
            return Err(ProtocolError::new(
                ErrorCode::Invalid,
                format!(
                    "a batch with keys for \"{topic_name}\" must name its partition (the partition of its keys: CRC32C of the key modulo {partitions}, protocol::routing), or go as a PRODUCE"
                ),
            ));
        }
        None => shard.next_spread(partitions),
    };
    batch.stamp_time(now_ms());
    let count = batch.record_count();
    let (tx, rx) = flume::bounded(1);
    let shared = &shard.shared;
    let sent = Batch::new(partition, Payload::Batch(Box::new(batch)), Ack::Client(tx, 0));
    shared.mesh.send(topic, sent).await?;
    shared.metrics.produce_requests.add(1);
    shared.metrics.records_in.add(u64::from(count));
    shared.metrics.bytes_in.add(bytes_in);
    Ok(PendingProduce {
        acks: rx,
        parts: vec![(topic, partition)],
        layout: vec![vec![(0, 0, count)]],
        started,
    })
}

/// What a door adds of the engine's own to the records it sends (clients may send no
/// engine header, `flowd-...`): `mark` goes on each batch's last record, and the names in
/// `set` are engine headers the door itself put on records (let through, not refused).
#[derive(Debug, Default, Clone, Copy)]
pub struct Engine<'a> {
    pub mark: Option<(&'a str, &'a [u8])>,
    pub set: &'a [&'a str],
    /// Written on this peer or not at all (`Batch::here_only`): a partition another
    /// peer owns is refused, never sent on.
    pub here_only: bool,
}

/// Checks the records against the dataflow and the engine's rules, then sends them to
/// their partitions' shards (waiting while those are full), with `engine`'s headers.
pub async fn produce(
    shard: &Rc<Shard>,
    groups: &[ProduceGroup<'_>],
    engine: Engine<'_>,
) -> Result<PendingProduce, ProtocolError> {
    let started = Instant::now();
    let Split {
        mut parts,
        layout,
        records_in,
        bytes_in,
    } = split(shard, groups, engine.set)?;
    if let Some((name, value)) = engine.mark {
        for part in &mut parts {
            crate::protocol::wire::add_header_to_last(&mut part.bytes, part.count, name, value)?;
        }
    }
    let (tx, rx) = flume::bounded(parts.len());
    let shared = &shard.shared;
    let part_ids: Vec<(usize, u32)> = parts.iter().map(|p| (p.topic, p.partition)).collect();
    let stamp_ms = now_ms();
    if engine.here_only
        && let Some((part, owner)) = parts
            .iter()
            .find_map(|p| Some((p, shared.mesh.route_of(p.topic, p.partition)?)))
    {
        return Err(ProtocolError::from(EngineError::Unavailable(format!(
            "partition {} of \"{}\" is now led by the peer {owner}; nothing was written: send it there",
            part.partition, shared.spec.topics[part.topic].name
        ))));
    }
    for (number, part) in parts.into_iter().enumerate() {
        let mut batch = Batch::new(
            part.partition,
            Payload::Wire {
                bytes: part.bytes,
                count: part.count,
                stamp_ms,
            },
            Ack::Client(tx.clone(), number),
        );
        if engine.here_only {
            // To this peer's own shard; should the partition move before it is
            // written there, the shard fails it (`Peers::refuse`).
            batch.here_only = true;
            shared.mesh.send_to(part.topic, batch, None).await?;
        } else {
            shared.mesh.send(part.topic, batch).await?;
        }
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

fn check_headers(record: &WireRecord<'_>, engine: &[&str]) -> Result<(), ProtocolError> {
    check_header_names(
        record
            .headers
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !engine.contains(name)),
    )
}

/// Refuses an engine header (`flowd-...`) among a client's header `names`.
pub fn check_header_names<'a>(mut names: impl Iterator<Item = &'a str>) -> Result<(), ProtocolError> {
    match names.find(|name| name.starts_with(RESERVED_HEADER_PREFIX)) {
        Some(name) => Err(ProtocolError::new(
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

/// The index of topic `name`, which clients may write and consume: an error for a topic
/// not in the dataflow, and for one the engine keeps for itself.
pub fn client_topic(spec: &crate::config::DataflowSpec, name: &str) -> Result<usize, ProtocolError> {
    let topic = spec
        .topic_index(name)
        .ok_or_else(|| ProtocolError::from(EngineError::UnknownTopic(name.to_owned())))?;
    if spec.client_topic(name).is_none() {
        return Err(ProtocolError::from(EngineError::Invalid(format!(
            "\"{name}\" is one of the engine's own topics: clients may read it (fetch, tail) but not write or \
             consume it"
        ))));
    }
    Ok(topic)
}
