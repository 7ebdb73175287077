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
//!
//! Codemap: this file (the shard's consumer state, its journal writes and the request
//! dispatch) → `claims` (claim, reclaim, new cursors) → `transactions` (ack-and-commit
//! and dead letters: one journal batch, then the parts) → `admin` (list, disable,
//! resume, destroy) → `range` (range and length reads) → `sweeper` (timed-out claims,
//! journal compaction) → `follow` (in a cluster: cursors written to a replicated
//! cursor topic too, and read back by the partition's next leader).

mod admin;
mod claims;
mod follow;
mod range;
mod sweeper;
mod transactions;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use crate::consumer::cursor::{Cursor, Options, Position, Range, Reclaimed, State, Why};
use crate::consumer::error::ConsumerError;
use crate::consumer::journal::{Entry, write_snapshot};
use crate::protocol::consumer::CursorInfo;
use crate::protocol::consumer::{AdminAction, RangeSpec};
use crate::runtime::error::EngineError;
use crate::runtime::journal_recovery::{Cursors, ShardJournal};
use crate::runtime::placement::owner;
use crate::runtime::shard::{Backoff, LocalPartition, Shard, is_client_error};
use crate::storage::layout::now_ms;
use crate::storage::{AppendReceipt, PartitionLog, Record};

/// About the bytes one cursor takes in a snapshot (a JSON `set` entry).
const CURSOR_ENTRY_BYTES: u64 = 256;

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
    /// In a cluster: which partitions' cursors this shard holds as their lead left them.
    follow: follow::Follow,
    /// Told when a cursor or the journal changed: the sweeper sleeps on it (and on the
    /// next claim's expiry) instead of looking on a timer.
    changed: event_listener::Event,
}

/// A change journaled, and in a cluster its cursor record on its way.
pub(super) struct Written {
    receipt: AppendReceipt,
    mirrored: Option<follow::Mirrored>,
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
            follow: follow::Follow::default(),
            changed: event_listener::Event::new(),
        }
    }

    /// Wakes the sweeper: a claim may expire sooner, a snapshot may be due.
    fn touched(&self) {
        self.changed.notify(usize::MAX);
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
        self.touched();
    }

    /// Appends entries (and, for a transaction, its part bodies) as one atomic batch.
    fn write(
        &self,
        shard: &Shard,
        entries: &[Entry],
        bodies: &[&[u8]],
    ) -> Result<AppendReceipt, EngineError> {
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
                self.touched();
                Ok(receipt)
            }
            // Too big for the journal: nothing was written, the request is refused.
            Err(error) if is_client_error(&error) => Err(EngineError::TooLarge(format!(
                "the consumer journal cannot take it: {error}; send fewer records with one ack"
            ))),
            Err(error) => {
                let message = format!("the consumer journal cannot be written: {error}");
                shard.shared.control.fail(error.into());
                Err(EngineError::Unavailable(message))
            }
        }
    }

    fn journal_set(
        &self,
        shard: &Shard,
        topic: usize,
        partition: u32,
        group: &str,
        cursor: &Cursor,
    ) -> Result<AppendReceipt, EngineError> {
        self.write(shard, &[set_entry(shard, topic, partition, group, cursor)], &[])
    }

    /// Journals `entry`, a change of a cursor of `topic`/`partition`, and in a cluster
    /// sends it to the partition's cursor topic (`follow`).
    async fn change(
        &self,
        shard: &Shard,
        topic: usize,
        partition: u32,
        entry: Entry,
    ) -> Result<Written, EngineError> {
        let receipt = self.write(shard, std::slice::from_ref(&entry), &[])?;
        let mirrored = follow::mirror(shard, topic, partition, &[entry]).await;
        Ok(Written { receipt, mirrored })
    }

    /// Journals the cursor of `group` on `topic`/`partition` (and in a cluster sends it
    /// to its cursor topic).
    async fn write_set(
        &self,
        shard: &Shard,
        topic: usize,
        partition: u32,
        group: &str,
        cursor: &Cursor,
    ) -> Result<Written, EngineError> {
        let entry = set_entry(shard, topic, partition, group, cursor);
        self.change(shard, topic, partition, entry).await
    }

    /// Puts the cursors read back for `topic`/`partition` in place of what this shard
    /// held of them, and journals them.
    fn replace(&self, shard: &Shard, topic: usize, partition: u32, cursors: BTreeMap<String, Cursor>) {
        let old: Vec<String> = self
            .cursors
            .borrow()
            .get(&(topic, partition))
            .map(|groups| {
                groups
                    .keys()
                    .filter(|g| !cursors.contains_key(*g))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let name = &shard.shared.spec.topics[topic].name;
        let mut entries: Vec<Entry> = old
            .into_iter()
            .map(|group| Entry::Drop {
                topic: name.clone(),
                partition,
                group,
            })
            .collect();
        entries.extend(
            cursors
                .iter()
                .map(|(group, cursor)| set_entry(shard, topic, partition, group, cursor)),
        );
        // A failed journal write stops the engine and says why; nothing more to do.
        for chunk in entries.chunks(256) {
            if self.write(shard, chunk, &[]).is_err() {
                return;
            }
        }
        self.cursors.borrow_mut().insert((topic, partition), cursors);
        self.touched();
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
            if self.journal_set(shard, topic, partition, &group, &cursor).is_ok() {
                self.put(topic, partition, &group, cursor);
            }
        }
    }

    /// Waits until the journal is durable past `written`, and in a cluster its cursor
    /// record is acked.
    async fn durable(&self, written: Written) -> Result<(), EngineError> {
        self.journal_durable(written.receipt).await?;
        match written.mirrored {
            Some(mirrored) => mirrored.settled().await,
            None => Ok(()),
        }
    }

    /// Waits until every change of `written` is durable and acked.
    async fn all_durable(&self, written: Vec<Written>) -> Result<(), EngineError> {
        for written in written {
            self.durable(written).await?;
        }
        Ok(())
    }

    /// Waits until the journal is durable past `receipt`.
    async fn journal_durable(&self, receipt: AppendReceipt) -> Result<(), EngineError> {
        let mut idle = Backoff::default();
        loop {
            {
                let journal = self.journal.borrow();
                if let Err(error) = journal.health() {
                    return Err(EngineError::Unavailable(format!(
                        "the consumer journal cannot be synced: {error}"
                    )));
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
    fn maybe_snapshot(&self, shard: &Shard) -> Result<(), EngineError> {
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
                Err(EngineError::Unavailable(message))
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

/// The journal entry that sets the cursor of `group` on `topic`/`partition`.
fn set_entry(shard: &Shard, topic: usize, partition: u32, group: &str, cursor: &Cursor) -> Entry {
    Entry::Set {
        topic: shard.shared.spec.topics[topic].name.clone(),
        partition,
        group: group.to_owned(),
        cursor: cursor.clone(),
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
    /// Set the committed offset of `group` (made if it does not exist) to `to`: a
    /// Kafka group's commit, or a reset (earliest, latest, a time, a skip).
    Seek {
        topic: usize,
        partition: u32,
        group: String,
        to: Position,
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
            | PartitionOp::Seek { topic, .. }
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
    /// A seek or reset done: the committed offset it landed on.
    Sought(u64),
    Admin {
        cursors: Vec<CursorInfo>,
        changed: usize,
        refused: Vec<ConsumerError>,
    },
    Length(u64),
}

pub type OpResult = Result<OpReply, EngineError>;

/// A cursor as clients see it in a partition holding `start..next_offset`.
fn info(
    topic: &str,
    partition: u32,
    group: &str,
    cursor: &Cursor,
    start: u64,
    next_offset: u64,
) -> CursorInfo {
    CursorInfo {
        topic: topic.to_owned(),
        partition,
        group: group.to_owned(),
        committed: cursor.committed,
        claimed: cursor.claim.map(|c| c.range),
        claimed_at_ms: cursor.claim.map(|c| c.at_ms),
        reclaims: cursor.reclaims,
        state: cursor.state.name().into(),
        disabled_reason: match &cursor.state {
            State::Active => None,
            State::Disabled(reason) => Some(reason.clone()),
        },
        lag: cursor.lag(start, next_offset),
        next_offset,
        skipped: cursor.skipped,
        options: cursor.options.clone(),
    }
}

impl Consumers {
    /// The named consumers of one partition and their cursors, for the status.
    pub fn of_partition(&self, topic: usize, partition: u32) -> Vec<(String, Cursor)> {
        self.cursors
            .borrow()
            .get(&(topic, partition))
            .map(|groups| groups.iter().map(|(g, c)| (g.clone(), c.clone())).collect())
            .unwrap_or_default()
    }
}

fn unknown(shard: &Shard, topic: usize, group: &str) -> EngineError {
    ConsumerError::Unknown {
        topic: shard.shared.spec.topics[topic].name.clone(),
        group: group.to_owned(),
    }
    .into()
}

fn local(shard: &Shard, topic: usize, partition: u32) -> Result<&Rc<LocalPartition>, EngineError> {
    shard.partitions.get(&(topic, partition)).ok_or_else(|| {
        EngineError::Internal("a partition request reached a shard that does not own the partition".into())
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
            follow::ready(shard, topic, partition).await?;
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
            follow::ready(shard, topic, partition).await?;
            let mut cursor = consumers
                .get(topic, partition, &group)
                .ok_or_else(|| unknown(shard, topic, &group))?;
            let range = cursor.ack()?;
            consumers.put(topic, partition, &group, cursor.clone());
            let written = consumers
                .write_set(shard, topic, partition, &group, &cursor)
                .await?;
            consumers.durable(written).await?;
            Ok(OpReply::Acked(range))
        }
        PartitionOp::Reclaim {
            topic,
            partition,
            group,
        } => {
            follow::ready(shard, topic, partition).await?;
            reclaim(shard, topic, partition, &group, Why::Asked)
                .await
                .map(OpReply::Reclaimed)
        }
        PartitionOp::AckCommit {
            topic,
            partition,
            group,
            id,
            parts,
        } => {
            follow::ready(shard, topic, partition).await?;
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
        PartitionOp::Seek {
            topic,
            partition,
            group,
            to,
        } => {
            follow::ready(shard, topic, partition).await?;
            let mut cursor = match consumers.get(topic, partition, &group) {
                Some(cursor) => cursor,
                None => new_cursor(shard, topic, partition, &Options::default())?,
            };
            let before = cursor.committed;
            let offset = {
                let local = local(shard, topic, partition)?;
                let log = local.log.borrow();
                let at_time = match to {
                    Position::Time(t) => log.offset_at_time(t)?,
                    _ => None,
                };
                // Read committed: a reset lands among durable records only.
                cursor.reset(to, log.start_offset(), log.committed_offset(), |_| at_time)?
            };
            consumers.put(topic, partition, &group, cursor.clone());
            let written = consumers
                .write_set(shard, topic, partition, &group, &cursor)
                .await?;
            consumers.durable(written).await?;
            if !matches!(to, Position::Offset(_)) {
                // A person's reset (a Kafka commit is the group's own work): the audit line.
                tracing::info!(
                    topic = %shard.shared.spec.topics[topic].name,
                    partition,
                    consumer = %group,
                    "consumer reset to {to}: committed offset {before} -> {offset}"
                );
            }
            Ok(OpReply::Sought(offset))
        }
        PartitionOp::Ensure {
            topic,
            group,
            options,
        } => {
            let mut written = Vec::new();
            for p in (0..shard.shared.spec.topics[topic].partitions)
                .filter(|p| owner(*p, shard.shared.shards) == shard.index)
            {
                // In a cluster, each partition's leader makes its consumers.
                if follow::led_elsewhere(shard, topic, p) {
                    continue;
                }
                follow::ready(shard, topic, p).await?;
                if consumers.get(topic, p, &group).is_some() {
                    continue;
                }
                let cursor = new_cursor(shard, topic, p, &options)?;
                consumers.put(topic, p, &group, cursor.clone());
                written.push(consumers.write_set(shard, topic, p, &group, &cursor).await?);
            }
            consumers.all_durable(written).await?;
            Ok(OpReply::Done)
        }
        PartitionOp::Admin { topic, group, action } => admin(shard, topic, group.as_deref(), action).await,
        PartitionOp::Range {
            topic,
            spec,
            request_id,
        } => {
            let local = local(shard, topic, spec.partition)?;
            if let Some(error) = shard.unconfirmed(topic, spec.partition) {
                return Err(error);
            }
            let log = local.log.borrow();
            let (frame, records) = read_range(&log, &spec, request_id)?;
            Ok(OpReply::Frame { frame, records })
        }
        PartitionOp::Length { topic, partition } => {
            let local = local(shard, topic, partition)?;
            if let Some(error) = shard.unconfirmed(topic, partition) {
                return Err(error);
            }
            let log = local.log.borrow();
            Ok(OpReply::Length(
                log.committed_offset().saturating_sub(log.start_offset()),
            ))
        }
    };
    consumers.maybe_snapshot(shard)?;
    outcome
}

/// A transaction id unique across runs and shards.
pub fn txn_id(shard: &Shard) -> String {
    let n = shard.next_job_id();
    format!("{:x}.{}.{n}", shard.shared.epoch, shard.index)
}

use admin::admin;
use claims::{claim, new_cursor, reclaim};
pub use follow::cursor_topics;
use range::read_range;
pub use sweeper::run_sweeper;
pub use transactions::TxnPart;
use transactions::commit;
