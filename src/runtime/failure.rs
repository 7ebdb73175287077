//! What becomes of an input record a stage cannot write: its operator failed on it, an
//! output of it does not fit its topic, or (`exec`) its workers failed it again and
//! again. The stage's `on_error` decides, here and nowhere else: skip it (counted and
//! logged), copy it to the dead-letter topic with why and whence, or stop the stage on
//! that partition until a restart (disable). Nothing a stage cannot write goes without a
//! trace.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{ErrorPolicy, OnFailure, Route};
use crate::metrics::Metrics;
use crate::ops::{Carry, Output};
use crate::runtime::bounds::dead_reason;
use crate::runtime::emitter::Emitter;
use crate::runtime::error::Result;
use crate::runtime::mesh::owned_header;
use crate::runtime::provenance::dead_letter_producer;
use crate::runtime::shard::Shard;
use crate::runtime::stage::operator_error;

/// The dead-letter headers: why, and where the record came from (`topic/partition/offset`).
pub const DEAD_REASON_HEADER: &str = "flowd-dead-reason";
pub const DEAD_FROM_HEADER: &str = "flowd-dead-from";

/// Failures reported one by one before the reports thin out.
const FAILURES_REPORTED_MAX: u64 = 10;

/// Records skipped: counted, and the first few (then every power of two) reported.
pub struct FailureLog {
    place: String,
    pub count: u64,
}

impl FailureLog {
    pub fn new(stage: &str, topic: &str, partition: u32) -> FailureLog {
        FailureLog {
            place: format!("stage \"{stage}\" on {topic}/{partition}"),
            count: 0,
        }
    }

    /// Counts a skipped record; reports it when it is among the first few or its count
    /// is a power of two (then says so: `true`).
    pub fn record(&mut self, offset: u64, reason: &str) -> bool {
        self.count += 1;
        let reported = self.count <= FAILURES_REPORTED_MAX || self.count.is_power_of_two();
        if reported {
            eprintln!(
                "flowd: {} skipped record {offset} ({} so far): {reason}",
                self.place, self.count
            );
        }
        reported
    }
}

/// The input record a stage could not write.
pub struct FailedInput<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    /// All of its headers; its dead letter carries the client's and the null mark.
    pub headers: Vec<(&'a str, &'a [u8])>,
}

/// What `Failures::fail` did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Skipped,
    DeadLettered,
    /// The stage stops on this partition at the record: nothing from it on is written.
    Disabled,
}

/// One stage's failures on one input partition, and its dead-letter output.
pub struct Failures {
    policy: ErrorPolicy,
    stage: String,
    /// `topic/partition` of the input.
    place: String,
    log: FailureLog,
    /// The dead-letter topic's writer, when the policy dead-letters.
    pub dead: Option<Emitter>,
    /// The input offset the stage stopped at, once disabled.
    pub disabled_at: Option<u64>,
    metrics: Arc<Metrics>,
}

impl Failures {
    /// The failures of `stage` reading `partition` of `topic`; `producer` is the stage's
    /// producer id there (its dead letters get one of their own).
    pub fn open(
        shard: &Shard,
        stage: usize,
        producer: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Failures> {
        let spec = &shard.shared.spec;
        let stage_spec = &spec.stages[stage];
        let dead = match stage_spec.dead_letter_topic() {
            Some(topic) => Some(
                Emitter::new(
                    dead_letter_producer(producer),
                    topic,
                    spec,
                    &Route::Spread,
                    None,
                    &shard.shared.mesh,
                )
                .map_err(|e| operator_error(&stage_spec.name, e))?,
            ),
            None => None,
        };
        Ok(Failures {
            policy: stage_spec.on_error,
            stage: stage_spec.name.clone(),
            place: format!("{topic}/{partition}"),
            log: FailureLog::new(&stage_spec.name, topic, partition),
            dead,
            disabled_at: None,
            metrics: Arc::clone(&shard.shared.metrics),
        })
    }

    pub fn policy(&self) -> ErrorPolicy {
        self.policy
    }

    /// Records skipped so far.
    pub fn skipped(&self) -> u64 {
        self.log.count
    }

    /// Counts and logs an output skipped without an input to blame (one a window or the
    /// end of input made, say).
    pub fn skip(&mut self, offset: u64, why: &str) {
        self.metrics.stage_records_failed.add(1);
        self.log.record(offset, why);
    }

    /// Applies the stage's `on_error` to `input`, which it cannot write because `why`.
    pub fn fail(&mut self, input: &FailedInput<'_>, why: &str) -> Verdict {
        match self.policy.then {
            OnFailure::Continue => {
                self.skip(input.offset, why);
                Verdict::Skipped
            }
            OnFailure::DeadLetter(_) => match self.dead_letter(input, why) {
                Ok(()) => Verdict::DeadLettered,
                Err(cannot) => self.disable(
                    input.offset,
                    &format!("{why}; and it cannot be dead-lettered: {cannot}"),
                ),
            },
            OnFailure::Disable => self.disable(input.offset, why),
        }
    }

    fn dead_letter(&mut self, input: &FailedInput<'_>, why: &str) -> std::result::Result<(), String> {
        let dead = self
            .dead
            .as_mut()
            .expect("a dead-lettering stage has a dead-letter writer");
        dead.set_reply(None);
        let carried = Carry::HeadersAndNull
            .select(input.headers.iter().copied())
            .map(owned_header);
        dead.set_headers(
            [
                (DEAD_REASON_HEADER.into(), dead_reason(why).into_bytes()),
                (
                    DEAD_FROM_HEADER.into(),
                    format!("{}/{}", self.place, input.offset).into_bytes(),
                ),
            ]
            .into_iter()
            .chain(carried)
            .collect(),
        );
        let output = Output {
            timestamp_ms: input.timestamp_ms,
            key: input.key.map(<[u8]>::to_vec),
            value: input.value.to_vec(),
        };
        let emitted = dead.emit(input.offset, 0, output);
        dead.set_headers(Vec::new());
        emitted.map_err(|e| e.to_string())?;
        self.metrics.dead_letters.add(1);
        tracing::warn!(
            "stage \"{}\" on {} dead-letters record {}: {why}",
            self.stage,
            self.place,
            input.offset
        );
        Ok(())
    }

    fn disable(&mut self, offset: u64, why: &str) -> Verdict {
        if self.disabled_at.is_none() {
            self.metrics.stages_disabled.add(1);
            tracing::error!(
                "stage \"{}\" on {} is disabled at record {offset}: {why}; nothing after it is written \
                 until flowd restarts (fix the cause, or set on_error.then to \"continue\" or \"dead_letter\")",
                self.stage,
                self.place
            );
        }
        self.disabled_at = Some(offset);
        Verdict::Disabled
    }

    /// Adds the records skipped to the run's failed count; call once, at the end.
    pub fn report(&self, records_failed: &std::sync::atomic::AtomicU64) {
        records_failed.fetch_add(self.log.count, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skip_is_counted_and_the_reports_thin_out_to_powers_of_two() {
        let mut log = FailureLog::new("s", "in", 0);
        let reported: Vec<u64> = (0..1000)
            .filter(|&n| log.record(n, "bad"))
            .map(|n| n + 1)
            .collect();
        assert_eq!(log.count, 1000);
        assert_eq!(
            reported,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 128, 256, 512]
        );
    }
}
