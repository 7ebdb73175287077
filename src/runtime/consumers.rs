//! A shard's consumers at work: the cursors of the partitions it owns, their journal,
//! and the requests run where the data is: claim, ack, reclaim, ack-and-commit,
//! admin, and the reads outside consumers (range, length). A sweeper reclaims claims
//! whose `reclaim_timeout` passed and keeps the journal compact.
//!
//! Every change is journaled before it is answered. An ack (and every admin change)
//! is answered only once its journal record is durable in the configured mode; a claim
//! is journaled but not waited for (losing it in a crash only re-delivers records).
//! An ack-and-commit (and a dead letter) is one transaction: the cursor and the records
//! to produce are one atomic journal batch, the commit point; the records are then
//! appended to their partitions, each part marked with the transaction id, and a
//! restart appends the parts a crash kept from landing (`journal_recovery`).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::consumer::cursor::{Cursor, Options, Outcome, Range, Reclaimed, State, Why};
use crate::consumer::error::ConsumerError;
use crate::consumer::journal::{Entry, PartRef, TXN_HEADER, write_snapshot};
use crate::protocol::consumer::{AdminAction, Bound, RangeSpec, begin_claimed, finish_claimed};
use crate::protocol::message::RecordsWriter;
use crate::protocol::wire::{RESERVED_HEADER_PREFIX, encode_record};
use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::bounds::{Bounds, RECORD_HINT, TooLarge, dead_reason, record_frame_bytes};
use crate::runtime::failure::{DEAD_FROM_HEADER, DEAD_REASON_HEADER};
use crate::runtime::journal_recovery::{Cursors, ShardJournal};
use crate::runtime::mesh::{Ack, Batch, Payload};
use crate::runtime::placement::{owner, partition_of_bytes};
use crate::runtime::provenance::END_HEADER;
use crate::runtime::service::{FETCH_RECORDS_MAX, copy_records};
use crate::runtime::shard::{Backoff, LocalPartition, Shard, is_client_error};
use crate::storage::faults;
use crate::storage::layout::now_ms;
use crate::storage::{AppendReceipt, PartitionLog, Record};

/// About the bytes one cursor takes in a snapshot (a JSON `set` entry).
const CURSOR_ENTRY_BYTES: u64 = 256;
/// How often the sweeper looks for claims past their `reclaim_timeout`.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// The consumer state of one shard.
pub struct Consumers {
    pub generation: u64,
    journal: RefCell<PartitionLog>,
    cursors: RefCell<Cursors>,
    since_snapshot: Cell<u64>,
    /// Transactions journaled but not yet known applied: no snapshot while any is.
    unapplied_txns: Cell<usize>,
    /// A snapshot written whose older segments go once it is durable.
    compaction: Cell<Option<AppendReceipt>>,
    /// About how many bytes the last snapshot took.
    snapshot_bytes: Cell<u64>,
    /// `(topic, consumer)` pairs this shard's connections made sure exist on every shard.
    pub ensured: RefCell<HashSet<(usize, String)>>,
}

impl Consumers {
    pub fn new(journal: ShardJournal) -> Consumers {
        Consumers {
            generation: journal.generation,
            journal: RefCell::new(journal.log),
            cursors: RefCell::new(journal.cursors),
            since_snapshot: Cell::new(0),
            unapplied_txns: Cell::new(0),
            compaction: Cell::new(None),
            snapshot_bytes: Cell::new(0),
            ensured: RefCell::new(HashSet::new()),
        }
    }

    pub fn journal(&self) -> &RefCell<PartitionLog> {
        &self.journal
    }

    /// The cursor of `group` on a partition, if it exists.
    fn get(&self, topic: usize, partition: u32, group: &str) -> Option<Cursor> {
        self.cursors
            .borrow()
            .get(&(topic, partition))
            .and_then(|groups| groups.get(group))
            .cloned()
    }

    fn put(&self, topic: usize, partition: u32, group: &str, cursor: Cursor) {
        self.cursors
            .borrow_mut()
            .entry((topic, partition))
            .or_default()
            .insert(group.to_owned(), cursor);
    }

    /// Appends entries (and, for a transaction, its part bodies) as one atomic batch.
    fn write(
        &self,
        shard: &Shard,
        entries: &[Entry],
        bodies: &[&[u8]],
    ) -> Result<AppendReceipt, ProtocolError> {
        let values: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
        let now = now_ms();
        let mut records: Vec<Record<'_>> = values.iter().map(|v| Record::new(now, v)).collect();
        records.extend(bodies.iter().map(|b| Record::new(now, b)));
        let bytes: usize = values
            .iter()
            .map(Vec::len)
            .chain(bodies.iter().map(|b| b.len()))
            .sum();
        let appended = self.journal.borrow_mut().append(&records);
        match appended {
            Ok(receipt) => {
                self.since_snapshot.set(self.since_snapshot.get() + bytes as u64);
                Ok(receipt)
            }
            // Too big for the journal: nothing was written, the request is refused.
            Err(error) if is_client_error(&error) => Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("the consumer journal cannot take it: {error}; send fewer records with one ack"),
            )),
            Err(error) => {
                let message = format!("the consumer journal cannot be written: {error}");
                shard.shared.control.fail(error.into());
                Err(ProtocolError::new(ErrorCode::Unavailable, message))
            }
        }
    }

    fn write_set(
        &self,
        shard: &Shard,
        topic: usize,
        partition: u32,
        group: &str,
        cursor: &Cursor,
    ) -> Result<AppendReceipt, ProtocolError> {
        let entry = Entry::Set {
            topic: shard.shared.spec.topics[topic].name.clone(),
            partition,
            group: group.to_owned(),
            cursor: cursor.clone(),
        };
        self.write(shard, &[entry], &[])
    }

    /// Retention moved the start of `partition` to `start`: every consumer that had not
    /// acked up to it (and holds no claim) goes on there, its `skipped` count raised, the
    /// change journaled and logged. A consumer holding a claim is moved by its next claim.
    pub fn skip_deleted(&self, shard: &Shard, topic: usize, partition: u32, start: u64) {
        let behind: Vec<(String, Cursor)> = self
            .cursors
            .borrow()
            .get(&(topic, partition))
            .into_iter()
            .flatten()
            .filter(|(_, c)| c.committed < start && c.claim.is_none())
            .map(|(g, c)| (g.clone(), c.clone()))
            .collect();
        for (group, mut cursor) in behind {
            let from = cursor.committed;
            cursor.skipped += start - from;
            cursor.committed = start;
            report_skipped(shard, topic, partition, &group, from, start);
            // A failed journal write stops the engine and says why; nothing more to do.
            if self.write_set(shard, topic, partition, &group, &cursor).is_ok() {
                self.put(topic, partition, &group, cursor);
            }
        }
    }

    /// Waits until the journal is durable past `receipt`.
    async fn durable(&self, receipt: AppendReceipt) -> Result<(), ProtocolError> {
        let mut idle = Backoff::default();
        loop {
            {
                let journal = self.journal.borrow();
                if let Err(error) = journal.health() {
                    return Err(ProtocolError::new(
                        ErrorCode::Unavailable,
                        format!("the consumer journal cannot be synced: {error}"),
                    ));
                }
                if journal.durable_offset() >= receipt.next_offset {
                    return Ok(());
                }
            }
            idle.sleep().await;
        }
    }

    /// Writes every cursor as a snapshot once enough was written since the last one
    /// and every transaction is applied (a snapshot carries no pending transaction). The
    /// journal before it is deleted only once the whole snapshot is durable
    /// (`compact`), so a crash at any point keeps either the old entries or the new
    /// snapshot whole.
    fn maybe_snapshot(&self, shard: &Shard) -> Result<(), ProtocolError> {
        // A snapshot every quarter segment of entries keeps the journal to a few
        // segments; and never more often than every twice its own size, so that many
        // consumers do not turn the journal into snapshots.
        let segment_bytes = self.journal.borrow().options().segment_bytes;
        let due = (segment_bytes / 4).max(2 * self.snapshot_bytes.get());
        if self.since_snapshot.get() < due || self.unapplied_txns.get() > 0 || self.compaction.get().is_some()
        {
            return Ok(());
        }
        let topics = &shard.shared.spec.topics;
        let cursors = self.cursors.borrow();
        let entries = cursors.iter().flat_map(|((topic, partition), groups)| {
            groups.iter().map(move |(group, cursor)| Entry::Set {
                topic: topics[*topic].name.clone(),
                partition: *partition,
                group: group.clone(),
                cursor: cursor.clone(),
            })
        });
        let mut journal = self.journal.borrow_mut();
        let before = journal.next_offset();
        let written = write_snapshot(&mut journal, entries, now_ms());
        drop(journal);
        match written {
            Ok(receipt) => {
                self.since_snapshot.set(0);
                // Counted in records, about the size of a cursor each.
                self.snapshot_bytes
                    .set((receipt.next_offset - before) * CURSOR_ENTRY_BYTES);
                self.compaction.set(Some(receipt));
                Ok(())
            }
            Err(error) => {
                let message = format!("the consumer journal's snapshot cannot be written: {error}");
                shard.shared.control.fail(error.into());
                Err(ProtocolError::new(ErrorCode::Unavailable, message))
            }
        }
    }

    /// Deletes the journal segments older than the last snapshot once that snapshot is
    /// durable.
    fn compact(&self) {
        let Some(snapshot) = self.compaction.get() else {
            return;
        };
        if self.journal.borrow().durable_offset() < snapshot.next_offset {
            return;
        }
        self.compaction.set(None);
        if let Err(error) = self.journal.borrow_mut().delete_below(snapshot.first_offset) {
            tracing::warn!(%error, "old consumer journal segments could not be deleted; the next snapshot tries again");
        }
    }
}

/// Says that consumer `group` skips `from..to` of a partition because retention deleted
/// those records before it acked them.
fn report_skipped(shard: &Shard, topic: usize, partition: u32, group: &str, from: u64, to: u64) {
    shard.shared.metrics.records_skipped.add(to - from);
    tracing::warn!(
        topic = %shard.shared.spec.topics[topic].name,
        partition,
        %group,
        skipped = to - from,
        "retention deleted records {from}..{to} before consumer \"{group}\" acked them; it goes on at {to}"
    );
}

fn stopping() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unavailable,
        "the engine is stopping; retry against the restarted engine",
    )
}

/// Records produced with an ack, for one partition, in wire encoding; the last carries
/// the transaction's `flowd-txn` header.
#[derive(Debug)]
pub struct TxnPart {
    pub topic: usize,
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub count: usize,
    pub stamp_ms: i64,
}

/// What a partition's owner is asked to do.
#[derive(Debug)]
pub enum PartitionOp {
    Claim {
        topic: usize,
        partition: u32,
        group: String,
        count: u32,
        max_bytes: u32,
        create: Option<Options>,
        request_id: u64,
    },
    Ack {
        topic: usize,
        partition: u32,
        group: String,
    },
    Reclaim {
        topic: usize,
        partition: u32,
        group: String,
    },
    AckCommit {
        topic: usize,
        partition: u32,
        group: String,
        id: String,
        parts: Vec<TxnPart>,
    },
    /// Create `group` with `options` on this shard's partitions of `topic` that lack it.
    Ensure {
        topic: usize,
        group: String,
        options: Options,
    },
    Admin {
        topic: Option<usize>,
        group: Option<String>,
        action: AdminAction,
    },
    Range {
        topic: usize,
        spec: RangeSpec,
        request_id: u64,
    },
    Length {
        topic: usize,
        partition: u32,
    },
}

impl PartitionOp {
    /// The topic the op is about, if one.
    pub fn topic(&self) -> Option<usize> {
        match self {
            PartitionOp::Claim { topic, .. }
            | PartitionOp::Ack { topic, .. }
            | PartitionOp::Reclaim { topic, .. }
            | PartitionOp::AckCommit { topic, .. }
            | PartitionOp::Ensure { topic, .. }
            | PartitionOp::Range { topic, .. }
            | PartitionOp::Length { topic, .. } => Some(*topic),
            PartitionOp::Admin { topic, .. } => *topic,
        }
    }
}

#[derive(Debug)]
pub enum OpReply {
    /// A CLAIMED or FETCHED frame, and how many records it holds.
    Frame {
        frame: Vec<u8>,
        records: u32,
    },
    Acked(Range),
    Reclaimed(Reclaimed),
    /// The range acked and, per part, the offsets its records got.
    Committed(Range, Vec<(u64, u64)>),
    Done,
    Admin {
        cursors: Vec<CursorInfo>,
        changed: usize,
        refused: Vec<ConsumerError>,
    },
    Length(u64),
}

pub type OpResult = Result<OpReply, ProtocolError>;

/// One cursor as inspected: `flowd` admin answers, `GET /consumers`, `flowd drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorInfo {
    pub topic: String,
    pub partition: u32,
    pub group: String,
    /// Everything below is acked.
    pub committed: u64,
    pub claimed: Option<Range>,
    pub claimed_at_ms: Option<i64>,
    pub reclaims: u32,
    /// `active` or `disabled`.
    pub state: String,
    pub disabled_reason: Option<String>,
    /// Records not yet acked: `next_offset - committed`.
    pub lag: u64,
    pub next_offset: u64,
    /// Records retention deleted before they were acked.
    pub skipped: u64,
    pub options: Options,
}

fn info(topic: &str, partition: u32, group: &str, cursor: &Cursor, next_offset: u64) -> CursorInfo {
    CursorInfo {
        topic: topic.to_owned(),
        partition,
        group: group.to_owned(),
        committed: cursor.committed,
        claimed: cursor.claim.map(|c| c.range),
        claimed_at_ms: cursor.claim.map(|c| c.at_ms),
        reclaims: cursor.reclaims,
        state: match cursor.state {
            State::Active => "active".into(),
            State::Disabled(_) => "disabled".into(),
        },
        disabled_reason: match &cursor.state {
            State::Active => None,
            State::Disabled(reason) => Some(reason.clone()),
        },
        lag: next_offset.saturating_sub(cursor.committed),
        next_offset,
        skipped: cursor.skipped,
        options: cursor.options.clone(),
    }
}

fn unknown(shard: &Shard, topic: usize, group: &str) -> ProtocolError {
    ConsumerError::Unknown {
        topic: shard.shared.spec.topics[topic].name.clone(),
        group: group.to_owned(),
    }
    .into()
}

fn local(shard: &Shard, topic: usize, partition: u32) -> Result<&Rc<LocalPartition>, ProtocolError> {
    shard.partitions.get(&(topic, partition)).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Internal,
            "a partition request reached a shard that does not own the partition",
        )
    })
}

/// Runs `op` on this shard, which owns the partitions it names.
pub async fn run(shard: &Rc<Shard>, op: PartitionOp) -> OpResult {
    let consumers = &shard.consumers;
    let outcome = match op {
        PartitionOp::Claim {
            topic,
            partition,
            group,
            count,
            max_bytes,
            create,
            request_id,
        } => {
            claim(
                shard, topic, partition, &group, count, max_bytes, create, request_id,
            )
            .await
        }
        PartitionOp::Ack {
            topic,
            partition,
            group,
        } => {
            let mut cursor = consumers
                .get(topic, partition, &group)
                .ok_or_else(|| unknown(shard, topic, &group))?;
            let range = cursor.ack()?;
            let receipt = consumers.write_set(shard, topic, partition, &group, &cursor)?;
            consumers.put(topic, partition, &group, cursor);
            consumers.durable(receipt).await?;
            Ok(OpReply::Acked(range))
        }
        PartitionOp::Reclaim {
            topic,
            partition,
            group,
        } => reclaim(shard, topic, partition, &group, Why::Asked)
            .await
            .map(OpReply::Reclaimed),
        PartitionOp::AckCommit {
            topic,
            partition,
            group,
            id,
            parts,
        } => {
            let mut cursor = consumers
                .get(topic, partition, &group)
                .ok_or_else(|| unknown(shard, topic, &group))?;
            if let State::Disabled(reason) = &cursor.state {
                return Err(ConsumerError::Disabled(reason.clone()).into());
            }
            let range = cursor.ack()?;
            let ends = commit(shard, topic, partition, &group, cursor, id, parts).await?;
            Ok(OpReply::Committed(range, ends))
        }
        PartitionOp::Ensure {
            topic,
            group,
            options,
        } => {
            let mut last = None;
            for p in (0..shard.shared.spec.topics[topic].partitions)
                .filter(|p| owner(*p, shard.shared.shards) == shard.index)
            {
                if consumers.get(topic, p, &group).is_some() {
                    continue;
                }
                let cursor = new_cursor(shard, topic, p, &options)?;
                last = Some(consumers.write_set(shard, topic, p, &group, &cursor)?);
                consumers.put(topic, p, &group, cursor);
            }
            if let Some(receipt) = last {
                consumers.durable(receipt).await?;
            }
            Ok(OpReply::Done)
        }
        PartitionOp::Admin { topic, group, action } => admin(shard, topic, group.as_deref(), action).await,
        PartitionOp::Range {
            topic,
            spec,
            request_id,
        } => {
            let local = local(shard, topic, spec.partition)?;
            let log = local.log.borrow();
            let (frame, records) = read_range(&log, &spec, request_id);
            Ok(OpReply::Frame { frame, records })
        }
        PartitionOp::Length { topic, partition } => {
            let local = local(shard, topic, partition)?;
            let log = local.log.borrow();
            Ok(OpReply::Length(
                log.durable_offset().saturating_sub(log.start_offset()),
            ))
        }
    };
    consumers.maybe_snapshot(shard)?;
    outcome
}

/// A new consumer's cursor on `partition`, or an error when the topic already has as
/// many consumers as it may (`max_consumers`): their state is kept in memory and in
/// the journal, so it must stay bounded whatever clients create.
fn new_cursor(
    shard: &Shard,
    topic: usize,
    partition: u32,
    options: &Options,
) -> Result<Cursor, ProtocolError> {
    let topic_spec = &shard.shared.spec.topics[topic];
    let count = shard
        .consumers
        .cursors
        .borrow()
        .get(&(topic, partition))
        .map_or(0, |groups| groups.len());
    if count >= topic_spec.max_consumers {
        return Err(ProtocolError::new(
            ErrorCode::Overloaded,
            format!(
                "topic \"{}\" has its limit of {} consumers; destroy ones no longer used (DELETE /consumers/TOPIC/NAME) \
                 or raise the topic's max_consumers",
                topic_spec.name, topic_spec.max_consumers
            ),
        ));
    }
    let local = local(shard, topic, partition)?;
    let log = local.log.borrow();
    // Read committed: a consumer sees, and starts among, durable records only.
    Ok(Cursor::new(
        options.clone(),
        log.start_offset(),
        log.durable_offset(),
        |t| log.offset_at_time(t),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn claim(
    shard: &Rc<Shard>,
    topic: usize,
    partition: u32,
    group: &str,
    count: u32,
    max_bytes: u32,
    create: Option<Options>,
    request_id: u64,
) -> OpResult {
    let consumers = &shard.consumers;
    let now = now_ms();
    if consumers
        .get(topic, partition, group)
        .is_some_and(|c| c.expired(now))
    {
        reclaim(shard, topic, partition, group, Why::Timeout).await?;
    }
    let (mut cursor, created) = match (consumers.get(topic, partition, group), &create) {
        (Some(cursor), _) => (cursor, false),
        (None, Some(options)) => (new_cursor(shard, topic, partition, options)?, true),
        (None, None) => return Err(unknown(shard, topic, group)),
    };
    let before = cursor.clone();
    let local = local(shard, topic, partition)?;
    let log = local.log.borrow();
    let committed_before = cursor.committed;
    let from = cursor.claimable(log.start_offset())?;
    if cursor.committed > committed_before {
        report_skipped(shard, topic, partition, group, committed_before, cursor.committed);
    }
    let mut out = Vec::new();
    let mut writer = begin_claimed(&mut out, request_id);
    let mut range = None;
    if let Some(from) = from
        && let Some(to) = copy_records(&mut writer, &mut out, log.read_committed(from), count, max_bytes)
    {
        if writer.count() == 0 {
            // Only engine markers: nothing for the client, and nothing to hold back.
            cursor.committed = to;
        } else {
            range = cursor.claim(to, now);
        }
    }
    let taken = writer.count();
    let (from, to) = range.map_or((0, 0), |r| (r.from, r.to));
    finish_claimed(
        writer,
        &mut out,
        range.map(|_| partition),
        from,
        to,
        log.durable_offset(),
    );
    drop(log);
    if created || cursor != before {
        consumers.write_set(shard, topic, partition, group, &cursor)?;
        consumers.put(topic, partition, group, cursor);
    }
    shard.shared.metrics.records_claimed.add(u64::from(taken));
    Ok(OpReply::Frame {
        frame: out,
        records: taken,
    })
}

/// Gives a claim back; past `max_reclaims` disables, skips or dead-letters its records.
async fn reclaim(
    shard: &Rc<Shard>,
    topic: usize,
    partition: u32,
    group: &str,
    why: Why,
) -> Result<Reclaimed, ProtocolError> {
    let consumers = &shard.consumers;
    let mut cursor = consumers
        .get(topic, partition, group)
        .ok_or_else(|| unknown(shard, topic, group))?;
    let mut reclaimed = cursor.reclaim(why)?;
    let name = &shard.shared.spec.topics[topic].name;
    let dead_letters = match &reclaimed.outcome {
        Outcome::DeadLetter { topic: dead, reason } => Some(
            dead_letters(shard, topic, partition, reclaimed.range, dead, reason)
                .map_err(|e| (dead.clone(), reason.clone(), e)),
        ),
        _ => None,
    };
    if let Some(Err((dead, reason, cannot))) = &dead_letters {
        // Records that cannot go to the dead-letter topic stay unacked: the consumer
        // stops, and says why, rather than lose them.
        let why = format!(
            "{reason}; they cannot be dead-lettered to \"{dead}\": {}",
            cannot.message
        );
        tracing::error!(topic = %name, partition, %group, "consumer disabled: {why}");
        cursor.committed = reclaimed.range.from;
        cursor.state = State::Disabled(why);
        reclaimed.outcome = Outcome::Disabled;
    }
    match (&reclaimed.outcome, dead_letters) {
        (Outcome::DeadLetter { topic: dead, reason }, Some(Ok(parts))) => {
            let id = txn_id(shard);
            commit(shard, topic, partition, group, cursor, id, parts).await?;
            tracing::warn!(topic = %name, partition, %group, from = reclaimed.range.from, to = reclaimed.range.to, dead_letter = %dead, "records dead-lettered: {reason}");
        }
        (outcome, _) => {
            let receipt = consumers.write_set(shard, topic, partition, group, &cursor)?;
            consumers.put(topic, partition, group, cursor);
            if *outcome != Outcome::Redeliver {
                tracing::warn!(topic = %name, partition, %group, outcome = outcome.name(), "max_reclaims passed");
            }
            consumers.durable(receipt).await?;
        }
    }
    Ok(reclaimed)
}

/// A transaction id unique across runs and shards.
pub fn txn_id(shard: &Shard) -> String {
    let n = shard.next_job_id();
    format!("{:x}.{}.{n}", shard.shared.epoch, shard.index)
}

fn too_large(error: TooLarge) -> ProtocolError {
    ProtocolError::new(ErrorCode::TooLarge, error.to_string())
}

/// Room kept on the last record of a transaction's part for its `flowd-txn` mark.
const TXN_MARK_BYTES: u64 = 256;

/// The reclaimed records, copied for the dead-letter topic with why and whence, in
/// parts that each fit one batch of it; an error when one of them cannot fit a record of
/// the dead-letter topic at all.
fn dead_letters(
    shard: &Shard,
    topic: usize,
    partition: u32,
    range: Range,
    dead: &str,
    reason: &str,
) -> Result<Vec<TxnPart>, ProtocolError> {
    let spec = &shard.shared.spec;
    let dead_topic = spec.topic_index(dead).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::UnknownTopic,
            format!("the dead-letter topic \"{dead}\" is not in the dataflow"),
        )
    })?;
    let bounds = Bounds::of(&spec.topics[dead_topic]);
    let reason = dead_reason(reason);
    let partitions = spec.topics[dead_topic].partitions;
    let local = local(shard, topic, partition)?;
    let log = local.log.borrow();
    let mut parts: Vec<(TxnPart, u64)> = Vec::new();
    let name = &spec.topics[topic].name;
    for view in log.read_range(range.from, range.to) {
        let original: Vec<(&str, &[u8])> = view.headers().collect();
        if original.iter().any(|(n, _)| *n == END_HEADER) {
            continue;
        }
        let whence = format!("{name}/{partition}/{}", view.offset());
        let mut headers: Vec<(&str, &[u8])> = original
            .into_iter()
            .filter(|(n, _)| !n.starts_with(RESERVED_HEADER_PREFIX))
            .collect();
        headers.push((DEAD_REASON_HEADER, reason.as_bytes()));
        headers.push((DEAD_FROM_HEADER, whence.as_bytes()));
        let frame = record_frame_bytes(view.key(), view.value(), headers.iter().copied());
        if frame + TXN_MARK_BYTES > bounds.record_bytes_max {
            return Err(too_large(TooLarge {
                what: format!("the dead letter of record {}", view.offset()),
                bytes: frame + TXN_MARK_BYTES,
                max: bounds.record_bytes_max,
                topic: dead.to_owned(),
                hint: RECORD_HINT,
            }));
        }
        let to = match view.key() {
            Some(key) => partition_of_bytes(key, partitions),
            None => partition % partitions,
        };
        // The newest part for that partition, unless the record would take it past one
        // batch: then a new part (one transaction may write several to a partition).
        let index = match parts
            .iter()
            .rposition(|(p, _)| p.partition == to)
            .filter(|&i| parts[i].1 + frame + TXN_MARK_BYTES <= bounds.batch_bytes_max)
        {
            Some(i) => i,
            None => {
                parts.push((
                    TxnPart {
                        topic: dead_topic,
                        partition: to,
                        bytes: Vec::new(),
                        count: 0,
                        stamp_ms: now_ms(),
                    },
                    0,
                ));
                parts.len() - 1
            }
        };
        let (part, bytes) = &mut parts[index];
        *bytes += frame;
        encode_record(
            &mut part.bytes,
            Some(view.timestamp_ms()),
            view.key(),
            view.value(),
            &headers,
        );
        part.count += 1;
    }
    Ok(parts.into_iter().map(|(part, _)| part).collect())
}

/// Commits `cursor` with `parts` as one transaction, then appends the parts.
async fn commit(
    shard: &Rc<Shard>,
    topic: usize,
    partition: u32,
    group: &str,
    cursor: Cursor,
    id: String,
    mut parts: Vec<TxnPart>,
) -> Result<Vec<(u64, u64)>, ProtocolError> {
    let consumers = &shard.consumers;
    let shared = &shard.shared;
    // Each part's last record carries a mark of its own: a transaction may write more
    // than one part to a partition, and recovery looks for each.
    let marks: Vec<String> = (0..parts.len()).map(|i| format!("{id}#{i}")).collect();
    for (part, mark) in parts.iter_mut().zip(&marks) {
        mark_last(part, mark)?;
    }
    let refs: Vec<PartRef> = parts
        .iter()
        .zip(marks)
        .map(|(p, mark)| PartRef {
            topic: shared.spec.topics[p.topic].name.clone(),
            partition: p.partition,
            count: p.count,
            stamp_ms: p.stamp_ms,
            from: shared.ends[p.topic][p.partition as usize].load(Ordering::Acquire),
            mark: Some(mark),
        })
        .collect();
    let entry = Entry::Txn {
        id: id.clone(),
        topic: shared.spec.topics[topic].name.clone(),
        partition,
        group: group.to_owned(),
        cursor: cursor.clone(),
        parts: refs,
    };
    let bodies: Vec<&[u8]> = parts.iter().map(|p| p.bytes.as_slice()).collect();
    let receipt = consumers.write(shard, &[entry], &bodies)?;
    consumers.put(topic, partition, group, cursor);
    consumers.unapplied_txns.set(consumers.unapplied_txns.get() + 1);
    faults::crash_point("journal-txn-written");
    consumers.durable(receipt).await?;
    faults::crash_point("journal-txn-durable");
    let (tx, rx) = flume::bounded(parts.len().max(1));
    let count = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let batch = Batch::new(
            part.partition,
            Payload::Wire {
                bytes: part.bytes,
                count: part.count,
                stamp_ms: part.stamp_ms,
            },
            Ack::Client(tx.clone(), i),
        );
        shared
            .mesh
            .sender(part.topic, part.partition)
            .send_async(batch)
            .await
            .map_err(|_| stopping())?;
    }
    let mut ends = vec![(0, 0); count];
    for k in 0..count {
        let (i, first, next) = rx.recv_async().await.map_err(|_| stopping())??;
        ends[i] = (first, next);
        if k == 0 && count > 1 {
            faults::crash_point("journal-txn-part");
        }
    }
    faults::crash_point("journal-txn-parts");
    consumers.write(shard, &[Entry::Applied { id }], &[])?;
    // Only now may a snapshot leave it out. A transaction that ends before this (the
    // engine stopping) stays unapplied in the journal, and the next start applies it.
    consumers.unapplied_txns.set(consumers.unapplied_txns.get() - 1);
    Ok(ends)
}

/// Re-encodes a part's last record with the transaction header added.
fn mark_last(part: &mut TxnPart, id: &str) -> Result<(), ProtocolError> {
    let mut cursor = crate::protocol::wire::Cursor::new(&part.bytes);
    let mut last_start = 0;
    for _ in 0..part.count {
        last_start = part.bytes.len() - cursor.remaining();
        cursor.record()?;
    }
    let last = crate::protocol::wire::Cursor::new(&part.bytes[last_start..]).record()?;
    let mut headers = last.headers.clone();
    headers.push((TXN_HEADER, id.as_bytes()));
    let mut encoded = Vec::with_capacity(last.raw.len() + 64);
    encode_record(&mut encoded, last.timestamp_ms, last.key, last.value, &headers);
    part.bytes.truncate(last_start);
    part.bytes.extend_from_slice(&encoded);
    Ok(())
}

async fn admin(
    shard: &Rc<Shard>,
    topic: Option<usize>,
    group: Option<&str>,
    action: AdminAction,
) -> OpResult {
    let consumers = &shard.consumers;
    let spec = &shard.shared.spec;
    let mut keys: Vec<(usize, u32, String)> = consumers
        .cursors
        .borrow()
        .iter()
        .filter(|((t, _), _)| topic.is_none_or(|topic| topic == *t))
        .flat_map(|((t, p), groups)| {
            groups
                .keys()
                .filter(|g| group.is_none_or(|group| group == g.as_str()))
                .map(move |g| (*t, *p, g.clone()))
        })
        .collect();
    keys.sort();
    let mut cursors = Vec::new();
    let mut changed = 0;
    let mut refused = Vec::new();
    let mut last = None;
    for (t, p, g) in keys {
        let Some(mut cursor) = consumers.get(t, p, &g) else {
            continue;
        };
        let next = local(shard, t, p)?.log.borrow().durable_offset();
        let outcome = match action {
            AdminAction::List => Ok(false),
            AdminAction::Disable => cursor.disable("disabled by request").map(|()| true),
            AdminAction::Resume => cursor.resume().map(|()| true),
            AdminAction::Destroy => {
                let entry = Entry::Drop {
                    topic: spec.topics[t].name.clone(),
                    partition: p,
                    group: g.clone(),
                };
                last = Some(consumers.write(shard, &[entry], &[])?);
                if let Some(groups) = consumers.cursors.borrow_mut().get_mut(&(t, p)) {
                    groups.remove(&g);
                }
                changed += 1;
                cursors.push(info(&spec.topics[t].name, p, &g, &cursor, next));
                continue;
            }
        };
        match outcome {
            Ok(true) => {
                last = Some(consumers.write_set(shard, t, p, &g, &cursor)?);
                consumers.put(t, p, &g, cursor.clone());
                changed += 1;
            }
            Ok(false) => {}
            Err(error) => refused.push(error),
        }
        cursors.push(info(&spec.topics[t].name, p, &g, &cursor, next));
    }
    if action == AdminAction::Destroy
        && let (Some(t), Some(g)) = (topic, group)
    {
        consumers.ensured.borrow_mut().remove(&(t, g.to_owned()));
    }
    if let Some(receipt) = last {
        consumers.durable(receipt).await?;
    }
    Ok(OpReply::Admin {
        cursors,
        changed,
        refused,
    })
}

/// Offsets `lo..hi` of a range read: offsets as given, or times turned into offsets.
fn offsets(log: &PartitionLog, by_time: bool, from: Bound, to: Bound) -> (u64, u64) {
    let (start, next) = (log.start_offset(), log.durable_offset());
    // The first offset at or after a time; past every record: the end.
    let at = |t: i64| log.offset_at_time(t).unwrap_or(next);
    let off = |v: i64| v.max(0) as u64;
    let lo = match (from, by_time) {
        (Bound::Unbounded, _) => start,
        (Bound::Included(v), false) => off(v),
        (Bound::Excluded(v), false) => off(v).saturating_add(1),
        (Bound::Included(t), true) => at(t),
        (Bound::Excluded(t), true) => at(t.saturating_add(1)),
    };
    let hi = match (to, by_time) {
        (Bound::Unbounded, _) => next,
        (Bound::Included(v), false) => off(v).saturating_add(1),
        (Bound::Excluded(v), false) => off(v),
        (Bound::Included(t), true) => at(t.saturating_add(1)),
        (Bound::Excluded(t), true) => at(t),
    };
    (lo.max(start), hi.min(next))
}

/// A FETCHED frame of the records in a range, oldest first, or newest first when
/// `reverse` (then the newest `limit` of them).
fn read_range(log: &PartitionLog, spec: &RangeSpec, request_id: u64) -> (Vec<u8>, u32) {
    let (lo, hi) = offsets(log, spec.by_time, spec.from, spec.to);
    let mut out = Vec::new();
    let mut writer = RecordsWriter::fetched(&mut out, request_id, log.start_offset(), log.durable_offset());
    if lo < hi && !spec.reverse {
        copy_records(
            &mut writer,
            &mut out,
            log.read_range(lo, hi),
            spec.limit,
            spec.max_bytes,
        );
    } else if lo < hi {
        // Offsets are dense: the newest `limit` records start at `hi - limit` (end
        // markers, skipped, may make it fewer).
        let limit = spec.limit.clamp(1, FETCH_RECORDS_MAX);
        let mut views: Vec<_> = log
            .read_range(hi.saturating_sub(limit.into()).max(lo), hi)
            .filter(|v| !v.headers().any(|(n, _)| n == END_HEADER))
            .take(limit as usize)
            .collect();
        views.reverse();
        copy_records(&mut writer, &mut out, views, limit, spec.max_bytes);
    }
    let taken = writer.count();
    writer.finish(&mut out);
    (out, taken)
}

/// Reclaims claims past their `reclaim_timeout` and compacts the journal, until the
/// engine stops.
pub async fn run_sweeper(shard: Rc<Shard>) {
    while !shard.shared.control.is_stopping() {
        glommio::timer::sleep(SWEEP_EVERY).await;
        let now = now_ms();
        let expired: Vec<(usize, u32, String)> = shard
            .consumers
            .cursors
            .borrow()
            .iter()
            .flat_map(|((t, p), groups)| {
                groups
                    .iter()
                    .filter(|(_, c)| c.expired(now))
                    .map(move |(g, _)| (*t, *p, g.clone()))
            })
            .collect();
        for (t, p, g) in expired {
            if let Err(error) = reclaim(&shard, t, p, &g, Why::Timeout).await {
                tracing::warn!(%error, group = %g, "a timed-out claim could not be reclaimed");
            }
        }
        if let Err(error) = shard.consumers.maybe_snapshot(&shard) {
            tracing::warn!(%error, "consumer journal snapshot failed");
        }
        shard.consumers.compact();
    }
}
