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

use crate::protocol::FetchFrom;
use crate::protocol::message::Response;
use crate::runtime::error::EngineError;
use crate::runtime::progress::Progress;
use crate::runtime::provenance::{self, Point, SOURCE_HEADER};
use crate::runtime::service::{self, FETCH_BYTES_MAX, FETCH_RECORDS_MAX, FetchOrder};
use crate::runtime::shard::Shard;

/// The longest pause between two tries of a read an unavailable leader refused.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

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

/// What a stage taking its input's lead starts from.
pub struct Resumed {
    /// Per output partition, the outputs this covers are there.
    pub skip: Vec<Point>,
    /// Per output partition, how far the reads went: outputs sent again may lie past it.
    pub read_to: Vec<u64>,
    /// A state stage's states of its input partition's keys.
    pub states: HashMap<Vec<u8>, Vec<u8>>,
}

/// Reads back what `producer` wrote into topic `to`, resuming from `stored`; with
/// `keys_of = Some((partition, partitions))` (a state stage), also the last value of
/// every key its input partition routes to in `to`, its changelog. `None` if the engine
/// stops first. A read an unavailable leader refuses is tried again (an election may be
/// under way), said in the log now and then.
pub async fn read_back(
    shard: &Rc<Shard>,
    producer: &str,
    to: usize,
    stored: &Progress,
    keys_of: Option<(u32, u32)>,
) -> Option<Resumed> {
    let partitions = shard.shared.spec.topics[to].partitions;
    let mut resumed = Resumed {
        skip: Vec::with_capacity(partitions as usize),
        read_to: Vec::with_capacity(partitions as usize),
        states: HashMap::new(),
    };
    for q in 0..partitions {
        let from = match keys_of {
            Some(_) => 0,
            None => stored.output_ends.get(&q).copied().unwrap_or(0),
        };
        let mut furthest = Point::whole(stored.next);
        let (mut position, mut failures) = (from, 0u32);
        loop {
            if shard.shared.control.is_stopping() {
                return None;
            }
            let order = FetchOrder {
                topic: to,
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
                            "{producer} takes over and cannot read partition {q} of \"{}\" yet ({failures} tries): {error}",
                            shard.shared.spec.topics[to].name
                        );
                    }
                    let pause = Duration::from_millis(10 << failures.min(7)).min(RETRY_PAUSE_MAX);
                    glommio::timer::sleep(pause).await;
                    continue;
                }
            };
            position = position.max(fetched.start_offset);
            for (offset, record) in &fetched.records {
                position = offset + 1;
                for (name, value) in &record.headers {
                    if name == SOURCE_HEADER
                        && let Some((point, by)) = provenance::decode(value)
                        && by == producer
                    {
                        furthest = furthest.max(point);
                    }
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
            }
            if fetched.records.is_empty() || position >= fetched.next_offset {
                break;
            }
        }
        resumed.skip.push(furthest);
        resumed.read_to.push(position);
    }
    Some(resumed)
}

fn decode(frame: Vec<u8>) -> Result<crate::protocol::message::Fetched, EngineError> {
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
