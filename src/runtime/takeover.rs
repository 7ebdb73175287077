//! Where a stage goes on when this peer takes the lead of its input partition (a
//! replicated one, in a cluster). A stage runs only where its input is led; what it
//! did while other peers led it is in replicated partitions: its outputs, and a state
//! stage's changelog, read back through their leaders.
//!
//! - It resumes from its own last stored progress (of a run on this peer before, or
//!   nothing): every input below it had all its outputs written, and the ends of its
//!   outputs it recorded are where its later outputs can begin.
//! - Per output partition, the furthest provenance point of its producer id (the same
//!   on every peer) from that end on: the replay drops the outputs it covers.
//! - A state stage's states: the last change of every key of its input partition, its
//!   changelog read whole.
//! - Those reads see what a quorum holds. An output leader elected lately may hold
//!   more of the stage's outputs (acked by no quorum yet, kept all the same), and the
//!   inputs an earlier leader may have read are exactly those below where this peer's
//!   epoch began (a leader's stage reads what a quorum holds, which the next leader
//!   holds). So the outputs of those inputs go out each with its own point, and their
//!   partitions' leaders write only what they do not hold (`already.rs`): nothing is
//!   written twice, and a state rebuilt short of such changes makes them again, equal.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::config::{Guarantee, OpSpec, StageSpec};
use crate::protocol::FetchFrom;
use crate::protocol::OwnedWireRecord;
use crate::protocol::message::Response;
use crate::runtime::commit::Committer;
use crate::runtime::emitter::Emitter;
use crate::runtime::error::EngineError;
use crate::runtime::error::Result;
use crate::runtime::progress::Progress;
use crate::runtime::provenance::{self, Point, SOURCE_HEADER};
use crate::runtime::service::{self, FETCH_BYTES_MAX, FETCH_RECORDS_MAX, FetchOrder};
use crate::runtime::shard::Shard;

/// The longest pause between two tries of a read an unavailable leader refused.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The pause before trying again a read through a leader refused `failures` times in a
/// row: 20 ms, doubling, at most `RETRY_PAUSE_MAX`.
pub(crate) fn retry_pause(failures: u32) -> Duration {
    Duration::from_millis(10 << failures.min(7)).min(RETRY_PAUSE_MAX)
}

/// Whether this peer runs a stage on an input partition now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// Not a replicated partition in a cluster: always, from the progress found at start.
    Always,
    /// Another peer leads it (or none yet): nothing is read here.
    Not,
    /// This peer leads it in `epoch`, which began with its log ending at `start`.
    Epoch { epoch: u32, start: u64 },
}

pub fn lead(shard: &Shard, topic: usize, partition: u32) -> Lead {
    match &shard.shared.peers {
        Some(peers) if peers.replication.is_replicated(topic) => {
            let state = peers.replication.state(topic, partition);
            match state.leads() {
                Some(epoch) => Lead::Epoch {
                    epoch,
                    start: state.epoch_start(),
                },
                None => Lead::Not,
            }
        }
        _ => Lead::Always,
    }
}

/// Whether a stage's replay writes each output once: a deterministic operator under
/// `exactly_once`. A clock-driven one is replayed at least once, nothing skipped.
pub fn is_exact(stage: &StageSpec) -> bool {
    stage.op.is_deterministic() && stage.guarantee == Guarantee::ExactlyOnce
}

/// What a stage taking its input's lead starts from.
pub struct Resumed {
    /// Per output partition, the outputs this covers are there.
    pub skip: Vec<Point>,
    /// Per output partition, how far the reads went: outputs sent again may lie past
    /// it. `None` for a stage replayed at least once.
    pub read_to: Option<Vec<u64>>,
    /// A state stage's states of its input partition's keys.
    pub states: HashMap<Vec<u8>, Vec<u8>>,
}

impl Resumed {
    /// Sets `emitter` to go on from here, for this peer's lead in `epoch`, begun at
    /// `start`.
    pub fn resume(&mut self, emitter: &mut Emitter, epoch: u32, start: u64) {
        emitter.set_lead(epoch);
        emitter.set_skip(std::mem::take(&mut self.skip));
        if let Some(read_to) = self.read_to.take() {
            emitter.set_replayed(start, read_to);
        }
    }
}

/// A stage taking the lead of `partition` of `topic`: what it sent before goes out and
/// is settled (its committer stores what was acked, within its bounded wait, up to a
/// batch refused as an earlier lead's), then what it wrote is read back from the
/// progress stored. `None` if the engine stops first.
pub async fn take_over(
    shard: &Rc<Shard>,
    stage: usize,
    topic: usize,
    partition: u32,
    emitter: &mut Emitter,
    committer: &mut Committer,
) -> Result<Option<(Progress, Resumed)>> {
    if emitter.flush().await.is_err() {
        return Ok(None);
    }
    committer.settle(emitter.partitions()).await?;
    committer.lead_again();
    let stored = committer.stored().clone();
    Ok(read_back(shard, stage, topic, partition, &stored)
        .await
        .map(|resumed| (stored, resumed)))
}

/// Reads back what stage `stage` reading `partition` of `topic` wrote, resuming from
/// `stored`: its furthest points in its output topic, and a state stage's states (the
/// last value of every key the partition routes to, in its changelog). `None` if the
/// engine stops first. A read an unavailable leader refuses is tried again (an election
/// may be under way), said in the log now and then.
async fn read_back(
    shard: &Rc<Shard>,
    stage: usize,
    topic: usize,
    partition: u32,
    stored: &Progress,
) -> Option<Resumed> {
    let spec = &shard.shared.spec;
    let stage_spec = &spec.stages[stage];
    let producer = &provenance::stage_producer(&stage_spec.name, &spec.topics[topic].name, partition);
    let to = stage_spec.to.expect("a stage that writes");
    let keys_of =
        matches!(stage_spec.op, OpSpec::State { .. }).then_some((partition, spec.topics[topic].partitions));
    let exact = is_exact(stage_spec);
    let partitions = spec.topics[to].partitions;
    let mut resumed = Resumed {
        skip: vec![Point::default(); partitions as usize],
        read_to: None,
        states: HashMap::new(),
    };
    if !exact && keys_of.is_none() {
        return Some(resumed);
    }
    let mut read_to = Vec::with_capacity(partitions as usize);
    for q in 0..partitions {
        let from = match keys_of {
            Some(_) => 0,
            None => stored.output_ends.get(&q).copied().unwrap_or(0),
        };
        let mut furthest = Point::whole(stored.next);
        let position = read_partition(shard, to, q, from, producer, |record| {
            if let Some((point, by)) = stamp(record)
                && by == producer
            {
                furthest = furthest.max(point);
            }
            if let (Some((partition, of)), Some(key)) = (keys_of, &record.key)
                && !record
                    .headers
                    .iter()
                    .any(|(name, _)| name == provenance::END_HEADER)
                && crate::protocol::routing::partition_of_bytes(key, of) == partition
            {
                resumed.states.insert(key.clone(), record.value.clone());
            }
        })
        .await?;
        if exact {
            resumed.skip[q as usize] = furthest;
        }
        read_to.push(position);
    }
    resumed.read_to = exact.then_some(read_to);
    Some(resumed)
}

/// The provenance stamp of `record`, if it carries one: its point and producer.
pub(crate) fn stamp(record: &OwnedWireRecord) -> Option<(Point, &str)> {
    record
        .headers
        .iter()
        .find(|(name, _)| name == SOURCE_HEADER)
        .and_then(|(_, value)| provenance::decode(value))
}

/// Reads partition `q` of `topic` through whichever peer leads it, from offset `from`
/// to its end as a quorum holds it, handing each record to `visit`. A read an
/// unavailable leader refuses is tried again (an election may be under way), said in
/// the log now and then on behalf of `who`. The offset the read reached, or `None` if
/// the engine stops first.
pub(crate) async fn read_partition(
    shard: &Rc<Shard>,
    topic: usize,
    q: u32,
    from: u64,
    who: &str,
    mut visit: impl FnMut(&OwnedWireRecord),
) -> Option<u64> {
    let (mut position, mut failures) = (from, 0u32);
    loop {
        if shard.shared.control.is_stopping() {
            return None;
        }
        let order = FetchOrder {
            topic,
            partition: q,
            from: FetchFrom::Offset(position),
            max_records: FETCH_RECORDS_MAX,
            max_bytes: FETCH_BYTES_MAX,
            wait_ms: 0,
            request_id: 0,
            batches: false,
        };
        let fetched = match service::fetch(shard, order).await.and_then(decode) {
            Ok(fetched) => fetched,
            Err(error) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(
                        "{who} takes over and cannot read partition {q} of \"{}\" yet ({failures} tries): {error}",
                        shard.shared.spec.topics[topic].name
                    );
                }
                glommio::timer::sleep(retry_pause(failures)).await;
                continue;
            }
        };
        position = position.max(fetched.start_offset);
        for (offset, record) in &fetched.records {
            position = offset + 1;
            visit(record);
        }
        if fetched.records.is_empty() || position >= fetched.next_offset {
            return Some(position);
        }
    }
}

pub(crate) fn decode(frame: Vec<u8>) -> Result<crate::protocol::message::Fetched, EngineError> {
    let raw = crate::protocol::frame::parse_frame(&frame, usize::MAX)
        .ok()
        .flatten()
        .ok_or_else(|| EngineError::Internal("a fetch answered with no whole frame".into()))?;
    match Response::decode(&raw.header, raw.body) {
        Ok(Response::Fetched(fetched)) => Ok(fetched),
        Ok(Response::Error { message, .. }) => Err(EngineError::Unavailable(message)),
        Ok(_) => Err(EngineError::Internal(
            "a fetch answered with another frame".into(),
        )),
        Err(error) => Err(EngineError::Internal(format!(
            "a fetch's answer does not decode: {}",
            error.message
        ))),
    }
}
