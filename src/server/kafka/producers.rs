//! Idempotent producers: InitProducerId hands out producer ids, and each partition takes
//! a producer's batches in the order of their sequence numbers, each once, so that a
//! batch sent again (after a lost answer, a dropped connection, a restart of flowd) is
//! answered with the offsets it got the first time instead of being written twice.
//!
//! Per (partition, producer) the door keeps `Seqs`: the epoch, the sequence number due
//! next, the last `DONE_KEPT` batches written (their first and last sequence numbers and
//! base offset), and the one batch on its way to the partition. A producer's batches to
//! one partition go one at a time: the next waits until the one before is durable or
//! refused, so a refused batch never leaves a later one written past a gap.
//!
//! **Across restarts** the sequences come back from the log itself: the last record of
//! every idempotent batch carries `flowd-kp = "<producer> <epoch> <first> <last>"`. The
//! first batch of a producer the door does not know is checked against the partition's
//! last `SCAN_RECORDS` records; found there, the producer goes on where it was (a batch
//! found whole is a duplicate). A producer not found there may start only at sequence 0;
//! one further on is answered UNKNOWN_PRODUCER_ID, as Kafka answers a producer whose
//! state expired, and the log says so.
//!
//! Producer ids are unique across runs: the first of a run is its start time in
//! milliseconds times 1024 (ids are handed out far slower than 1024 a millisecond of
//! uptime).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;

use super::errors;
use super::records::Idempotent;
use crate::protocol::FetchFrom;
use crate::runtime::shard::Shard;

/// The engine header on the last record of an idempotent producer's batch.
pub const PRODUCER_HEADER: &str = "flowd-kp";
/// Batches of a producer remembered per partition (Kafka's producers keep at most 5 in
/// flight, so a batch sent again is among them).
const DONE_KEPT: usize = 5;
/// How far back a partition's log is read for a producer the door does not know.
pub const SCAN_RECORDS: u64 = 1_000_000;
/// (partition, producer) pairs kept; past it the longest unused one with nothing on its
/// way is forgotten (and read back from the log if it comes again).
pub const PRODUCERS_MAX: usize = 100_000;

/// What to do with a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write it; report `landed` or `failed` once its partition answered.
    Append,
    /// Written before, at this base offset: answer so again.
    Duplicate(i64),
    /// Another batch of the producer is on its way to the partition: ask again after it.
    Wait,
    Refuse(i16, String),
}

/// One producer's sequences in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seqs {
    epoch: i16,
    next: i32,
    /// `(first, last, base offset)` of the last batches written.
    done: VecDeque<(i32, i32, i64)>,
    sending: Option<(i32, i32)>,
}

/// The sequence number after `seq` (Kafka's wrap after `i32::MAX`).
fn after(seq: i32) -> i32 {
    seq.wrapping_add(1) & i32::MAX
}

impl Seqs {
    fn new(epoch: i16) -> Seqs {
        Seqs {
            epoch,
            next: 0,
            done: VecDeque::new(),
            sending: None,
        }
    }

    /// The sequences the log shows: the batches found (`(epoch, first, last, base)`, in
    /// log order).
    pub fn from_log(found: &[(i16, i32, i32, i64)]) -> Option<Seqs> {
        let &(epoch, _, last, _) = found.last()?;
        let done: VecDeque<(i32, i32, i64)> = found
            .iter()
            .filter(|b| b.0 == epoch)
            .map(|&(_, first, last, base)| (first, last, base))
            .collect();
        let skip = done.len().saturating_sub(DONE_KEPT);
        Some(Seqs {
            epoch,
            next: after(last),
            done: done.into_iter().skip(skip).collect(),
            sending: None,
        })
    }

    pub fn decide(&mut self, batch: &Idempotent) -> Decision {
        if batch.epoch < self.epoch {
            return Decision::Refuse(
                errors::INVALID_PRODUCER_EPOCH,
                format!(
                    "epoch {} of producer {} is fenced by epoch {}",
                    batch.epoch, batch.producer_id, self.epoch
                ),
            );
        }
        if self.sending.is_some() {
            return Decision::Wait;
        }
        if batch.epoch > self.epoch {
            if batch.first != 0 {
                return out_of_order(batch, 0);
            }
            *self = Seqs::new(batch.epoch);
        }
        if let Some(&(_, _, base)) = self
            .done
            .iter()
            .find(|(first, last, _)| (*first, *last) == (batch.first, batch.last))
        {
            return Decision::Duplicate(base);
        }
        if batch.first != self.next {
            return out_of_order(batch, self.next);
        }
        self.sending = Some((batch.first, batch.last));
        Decision::Append
    }

    /// The batch sent is written, from `base`.
    pub fn landed(&mut self, batch: &Idempotent, base: i64) {
        if self.sending == Some((batch.first, batch.last)) {
            self.sending = None;
            self.next = after(batch.last);
            self.done.push_back((batch.first, batch.last, base));
            if self.done.len() > DONE_KEPT {
                self.done.pop_front();
            }
        }
    }

    /// The batch sent was refused: the producer sends it again (or gives up).
    pub fn failed(&mut self, batch: &Idempotent) {
        if self.sending == Some((batch.first, batch.last)) {
            self.sending = None;
        }
    }
}

fn out_of_order(batch: &Idempotent, due: i32) -> Decision {
    Decision::Refuse(
        errors::OUT_OF_ORDER_SEQUENCE_NUMBER,
        format!(
            "producer {} sent sequence {} where {due} was due",
            batch.producer_id, batch.first
        ),
    )
}

/// A (topic, partition, producer).
pub type Key = (usize, u32, i64);

struct Entry {
    seqs: Seqs,
    /// The partition's term here (`Ownership::term`) when the sequences were read from
    /// the log: once it moved, another peer may have led the partition meanwhile.
    term: u64,
    used: Instant,
    /// Batches waiting for the one on its way.
    waiting: Vec<flume::Sender<()>>,
}

/// Every idempotent producer of this process's Kafka door.
#[derive(Debug)]
pub struct Producers {
    next_id: AtomicI64,
    table: Mutex<HashMap<Key, Entry>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.seqs.fmt(f)
    }
}

impl Default for Producers {
    fn default() -> Producers {
        let start_ms = crate::storage::layout::now_ms().max(0);
        Producers {
            next_id: AtomicI64::new(start_ms.saturating_mul(1024)),
            table: Mutex::new(HashMap::new()),
        }
    }
}

/// What `Producers::decide` says.
pub enum Next {
    /// The producer is not known here: read the log (`scan`) and `learn`.
    Unknown,
    Decided(Decision),
    /// Wait for this, then decide again.
    Wait(flume::Receiver<()>),
}

impl Producers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What to do with `batch` while its partition is in `term` here.
    pub fn decide(&self, key: Key, batch: &Idempotent, term: u64) -> Next {
        let mut table = self.lock();
        let Some(entry) = table.get_mut(&key) else {
            return Next::Unknown;
        };
        // Led elsewhere since: what the other leader wrote is read back from the log
        // (after the batch on its way here, if one is).
        if entry.term != term && entry.seqs.sending.is_none() {
            table.remove(&key);
            return Next::Unknown;
        }
        entry.used = Instant::now();
        match entry.seqs.decide(batch) {
            Decision::Wait => {
                let (tx, rx) = flume::bounded(1);
                entry.waiting.push(tx);
                Next::Wait(rx)
            }
            decision => Next::Decided(decision),
        }
    }

    /// What the log showed of a producer (`None`: nothing): kept, unless another batch
    /// taught the door meanwhile. A producer the log does not show may start at 0 only.
    pub fn learn(
        &self,
        key: Key,
        batch: &Idempotent,
        found: Option<Seqs>,
        term: u64,
    ) -> Result<(), Decision> {
        let mut table = self.lock();
        if table.contains_key(&key) {
            return Ok(());
        }
        let seqs = match found {
            Some(seqs) => seqs,
            None if batch.first == 0 => Seqs::new(batch.epoch),
            None => {
                return Err(Decision::Refuse(
                    errors::UNKNOWN_PRODUCER_ID,
                    format!(
                        "producer {} sent sequence {} to a partition whose last {SCAN_RECORDS} records hold none of \
                         its batches; it must start again",
                        batch.producer_id, batch.first
                    ),
                ));
            }
        };
        if table.len() >= PRODUCERS_MAX {
            let oldest = table
                .iter()
                .filter(|(_, e)| e.seqs.sending.is_none())
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        table.insert(
            key,
            Entry {
                seqs,
                term,
                used: Instant::now(),
                waiting: Vec::new(),
            },
        );
        Ok(())
    }

    /// The batch on its way landed at `base` (`Some`) or was refused (`None`).
    pub fn settled(&self, key: Key, batch: &Idempotent, base: Option<i64>) {
        let mut table = self.lock();
        if let Some(entry) = table.get_mut(&key) {
            match base {
                Some(base) => entry.seqs.landed(batch, base),
                None => entry.seqs.failed(batch),
            }
            for waiter in entry.waiting.drain(..) {
                let _ = waiter.try_send(());
            }
        }
    }

    /// InitProducerId: a new producer id at epoch 0, or (a producer naming its id and
    /// epoch, KIP-360) the same id at the next epoch. Transactions are not served.
    pub fn init(&self, request: &InitProducerIdRequest) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        if request.transactional_id.is_some() {
            response.error_code = errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
            return response;
        }
        match (request.producer_id.0, request.producer_epoch) {
            (id, epoch) if id >= 0 && (0..i16::MAX).contains(&epoch) => {
                response.producer_id = ProducerId(id);
                response.producer_epoch = epoch + 1;
            }
            _ => {
                response.producer_id = ProducerId(self.next_id.fetch_add(1, Ordering::Relaxed));
                response.producer_epoch = 0;
            }
        }
        response
    }
}

/// The batches of `producer` among the last `SCAN_RECORDS` records of a partition:
/// `(epoch, first, last, base offset)` in log order.
pub async fn scan(
    shard: &Rc<Shard>,
    topic: &str,
    partition: u32,
    producer: i64,
) -> Result<Vec<(i16, i32, i32, i64)>, crate::protocol::ProtocolError> {
    let marks = super::fetch::read(shard, topic, partition, FetchFrom::Latest, 0, 0).await?;
    let mut from = marks
        .next_offset
        .saturating_sub(SCAN_RECORDS)
        .max(marks.start_offset);
    let mut found = Vec::new();
    // Each read moves on by at least one record, so this ends at the partition's end.
    while from < marks.next_offset {
        let fetched =
            super::fetch::read(shard, topic, partition, FetchFrom::Offset(from), 1 << 20, 0).await?;
        let Some(&(last, _)) = fetched.records.last() else {
            break;
        };
        for (offset, record) in &fetched.records {
            let Some((_, value)) = record.headers.iter().find(|(name, _)| name == PRODUCER_HEADER) else {
                continue;
            };
            if let Some((id, epoch, first, last)) = parse_mark(value)
                && id == producer
            {
                let count = i64::from(last.wrapping_sub(first) & i32::MAX) + 1;
                let base = i64::try_from(*offset).unwrap_or(i64::MAX) - (count - 1);
                found.push((epoch, first, last, base));
            }
        }
        from = last + 1;
    }
    Ok(found)
}

/// The mark's value for `batch`.
pub fn mark(batch: &Idempotent) -> String {
    format!(
        "{} {} {} {}",
        batch.producer_id, batch.epoch, batch.first, batch.last
    )
}

fn parse_mark(value: &[u8]) -> Option<(i64, i16, i32, i32)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(' ');
    let parsed = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, first: i32, last: i32) -> Idempotent {
        Idempotent {
            producer_id: 9,
            epoch,
            first,
            last,
        }
    }

    #[test]
    fn batches_go_in_sequence_once_each_and_one_at_a_time() {
        let mut s = Seqs::new(0);
        let b0 = batch(0, 0, 9);
        assert_eq!(s.decide(&b0), Decision::Append);
        assert_eq!(
            s.decide(&batch(0, 10, 19)),
            Decision::Wait,
            "one on its way at a time"
        );
        assert_eq!(s.decide(&b0), Decision::Wait);
        s.landed(&b0, 100);
        assert_eq!(
            s.decide(&b0),
            Decision::Duplicate(100),
            "sent again: answered again"
        );
        assert!(matches!(
            s.decide(&batch(0, 20, 29)),
            Decision::Refuse(errors::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        let b1 = batch(0, 10, 19);
        assert_eq!(s.decide(&b1), Decision::Append);
        s.failed(&b1);
        assert_eq!(s.decide(&b1), Decision::Append, "a refused batch may come again");
        s.landed(&b1, 110);
        // A new epoch starts at 0; the old one is fenced.
        assert!(matches!(
            s.decide(&batch(1, 5, 6)),
            Decision::Refuse(errors::OUT_OF_ORDER_SEQUENCE_NUMBER, _)
        ));
        assert_eq!(s.decide(&batch(1, 0, 0)), Decision::Append);
        s.landed(&batch(1, 0, 0), 120);
        assert!(matches!(
            s.decide(&batch(0, 20, 29)),
            Decision::Refuse(errors::INVALID_PRODUCER_EPOCH, _)
        ));
    }

    #[test]
    fn the_log_gives_back_the_last_batches_of_the_last_epoch() {
        let found: Vec<(i16, i32, i32, i64)> = (0..8)
            .map(|i| (2, i * 10, i * 10 + 9, 1000 + i64::from(i) * 10))
            .collect();
        let mut s = Seqs::from_log(&found).unwrap();
        assert_eq!(s.decide(&batch(2, 70, 79)), Decision::Duplicate(1070));
        assert_eq!(s.decide(&batch(2, 30, 39)), Decision::Duplicate(1030));
        assert!(
            matches!(s.decide(&batch(2, 20, 29)), Decision::Refuse(..)),
            "older than the five kept"
        );
        assert_eq!(s.decide(&batch(2, 80, 80)), Decision::Append);
        assert_eq!(Seqs::from_log(&[]), None);
        assert_eq!(parse_mark(mark(&batch(3, 1, 2)).as_bytes()), Some((9, 3, 1, 2)));
        assert_eq!(parse_mark(b"9 3 1"), None);
        assert_eq!(after(i32::MAX), 0);
    }
}
