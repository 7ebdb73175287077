//! Cursors that follow their partition. In a cluster, a replicated topic's named
//! consumers are served where its partitions are led, and the lead moves. Every change
//! of a cursor of partition `p` of topic `T` (a claim, an ack, a reclaim, an admin
//! change) is also written to partition `p` of the internal topic `__flowd.cursors.T`,
//! replicated like any topic; a peer taking the lead of `T`/`p` reads it back before it
//! serves a consumer request for that partition. So a new leader goes on from the
//! cursors and claims the old one left: no acked record comes back, none is skipped.
//!
//! - A record of a cursor topic is one consumer journal [`Entry`] (JSON): `set`,
//!   `drop`, a snapshot's `snapshot_begin`, `set`s and `snapshot_end`, and `lead`. Its
//!   `flowd-src` header names its writer, `cursors:T:p` (the same on every peer); its
//!   `flowd-cursor-order` header says `EPOCH.N`, the lead's epoch and the change's
//!   number in it. Read back, each consumer takes its change of the greatest order: a
//!   change sent again may land after a later one.
//! - Taking the lead in epoch E: write `lead E` and wait until it is acked, read the
//!   partition back past it, then write a snapshot. Every batch says the lead's epoch,
//!   so the cursor partition's leader takes no batch of an earlier lead after `lead E`
//!   (`stale.rs`); a change refused so (its writer lost the lead while alive) is
//!   answered with an error, and the client asks again, reaching the new leader.
//! - An ack, a reclaim and admin changes are answered once their cursor record is acked
//!   (held by a quorum); a claim is not waited for (lost, it only delivers its records
//!   again).
//! - A snapshot every so many bytes of changes keeps what retention leaves of a cursor
//!   partition (its `max_bytes`, [`cursor_topics`]) enough to rebuild every cursor. A
//!   read-back that finds neither a whole snapshot nor the partition's first record
//!   says so loudly: cursors were lost.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::DataflowSpec;
use crate::config::spec::{TopicSpec, cursor_topic_name};
use crate::consumer::cursor::Cursor;
use crate::consumer::journal::{self, Entry, SNAPSHOT_BATCH_BYTES};
use crate::protocol::FetchFrom;
use crate::protocol::wire::encode_record;
use crate::runtime::error::EngineError;
use crate::runtime::mesh::{Ack, Batch, ClientAck, Payload};
use crate::runtime::provenance::{self, Point, SOURCE_HEADER};
use crate::runtime::service::{self, FETCH_BYTES_MAX, FETCH_RECORDS_MAX, FetchOrder};
use crate::runtime::shard::Shard;
use crate::runtime::takeover::{Lead, lead};
use crate::storage::batch_bytes_max_for;
use crate::storage::layout::now_ms;
use crate::storage::retention::RetentionPolicy;

/// The header giving a cursor record's order: `EPOCH.N`.
pub const ORDER_HEADER: &str = "flowd-cursor-order";

/// A cursor topic's segments.
const SEGMENT_BYTES: u64 = 64 << 10;

/// About the bytes one cursor takes in a cursor partition, framing and headers included.
const CURSOR_RECORD_BYTES: u64 = 512;

/// How long a request waits for its partition's cursors to be read back (another
/// request reads them, or the cursor partition's leader is being elected).
const READ_BACK_WAIT: Duration = Duration::from_secs(20);

/// The longest pause between two tries of a read or a write an unavailable leader
/// refused.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// The cursor topics a cluster keeps: one per replicated topic, as many partitions,
/// as many replicas. Each keeps enough bytes to hold two snapshots of its topic's
/// `max_consumers` cursors and the changes between them (see the module doc).
pub fn cursor_topics(spec: &DataflowSpec) -> Vec<TopicSpec> {
    spec.topics
        .iter()
        .filter(|t| !t.is_internal() && t.replicas != Some(1))
        .map(|t| {
            let snapshot = t.max_consumers as u64 * CURSOR_RECORD_BYTES;
            TopicSpec {
                name: cursor_topic_name(&t.name),
                partitions: t.partitions,
                segment_bytes: SEGMENT_BYTES,
                retention: RetentionPolicy {
                    max_age_ms: None,
                    max_bytes: Some(4 * SEGMENT_BYTES + 4 * snapshot),
                },
                max_lag: t.max_lag,
                max_consumers: 0,
                replicas: t.replicas,
            }
        })
        .collect()
}

/// What this shard knows of its partitions' cursor topics.
#[derive(Default)]
pub struct Follow {
    /// Per partition, the lead epoch whose cursors this shard holds (read back).
    loaded: RefCell<HashMap<(usize, u32), u32>>,
    /// Partitions whose cursors are being read back now.
    loading: RefCell<HashSet<(usize, u32)>>,
    /// Per partition, the number of its next change in the loaded epoch.
    next: RefCell<HashMap<(usize, u32), u64>>,
    /// Per partition, bytes written since its last snapshot, and that snapshot's size.
    since: RefCell<HashMap<(usize, u32), (u64, u64)>>,
    /// Per topic, its cursor topic (found once: asked at every consumer request).
    cursor_topics: std::cell::OnceCell<Vec<Option<usize>>>,
}

/// The cursor topic of `topic`, if its cursors follow its partitions.
fn cursor_topic(shard: &Shard, topic: usize) -> Option<usize> {
    let spec = &shard.shared.spec;
    shard
        .consumers
        .follow
        .cursor_topics
        .get_or_init(|| (0..spec.topics.len()).map(|t| spec.cursor_topic(t)).collect())[topic]
}

/// A cursor record on its way to its partition's leader, or never sent because this
/// peer no longer leads the partition (`rx` is `None`).
pub struct Mirrored {
    rx: Option<flume::Receiver<ClientAck>>,
    topic: String,
    partition: u32,
}

impl Mirrored {
    /// Waits until the record is acked; an error if it was refused or not written
    /// (this peer lost the partition's lead), so the change must not be answered as made.
    pub async fn settled(self) -> Result<(), EngineError> {
        let rx = self.rx.ok_or_else(|| lost_lead(&self.topic, self.partition))?;
        let (_, first, next) = rx.recv_async().await.map_err(|_| EngineError::Stopping)??;
        if next == first {
            return Err(lost_lead(&self.topic, self.partition));
        }
        Ok(())
    }
}

fn lost_lead(topic: &str, partition: u32) -> EngineError {
    EngineError::Unavailable(format!(
        "this peer no longer leads partition {partition} of \"{topic}\": the change was not made; ask again \
         (any peer sends it to the new leader)"
    ))
}

fn producer(shard: &Shard, topic: usize, partition: u32) -> String {
    format!("cursors:{}:{partition}", shard.shared.spec.topics[topic].name)
}

/// The lead epoch of `topic`/`partition` whose cursors this shard holds and writes,
/// if this peer leads it now and has read them back.
fn leading(shard: &Shard, topic: usize, partition: u32) -> Option<u32> {
    let Lead::Epoch { epoch, .. } = lead(shard, topic, partition) else {
        return None;
    };
    let loaded = shard
        .consumers
        .follow
        .loaded
        .borrow()
        .get(&(topic, partition))
        .copied();
    (loaded == Some(epoch)).then_some(epoch)
}

/// Whether the cursors of `topic`/`partition` follow it through a cursor topic, and
/// this peer does not lead it now: its consumers are served by another peer, and what
/// this shard holds of them may be old.
pub fn led_elsewhere(shard: &Shard, topic: usize, partition: u32) -> bool {
    cursor_topic(shard, topic).is_some() && lead(shard, topic, partition) == Lead::Not
}

/// Whether this shard serves the consumers of `topic`/`partition` now: always where
/// their cursors do not follow the partition, else while this peer leads it and holds
/// their cursors as read back.
pub fn serves(shard: &Shard, topic: usize, partition: u32) -> bool {
    cursor_topic(shard, topic).is_none() || leading(shard, topic, partition).is_some()
}

/// Makes sure this shard holds the cursors of `topic`/`partition` as its lead left
/// them, before a consumer request for it is served: read back once per epoch this peer
/// leads it. An error if another peer leads it, or they cannot be read back in time.
pub async fn ready(shard: &Rc<Shard>, topic: usize, partition: u32) -> Result<(), EngineError> {
    if cursor_topic(shard, topic).is_none() {
        return Ok(());
    }
    let follow = &shard.consumers.follow;
    let key = (topic, partition);
    let deadline = Instant::now() + READ_BACK_WAIT;
    let name = &shard.shared.spec.topics[topic].name;
    loop {
        let epoch = match lead(shard, topic, partition) {
            Lead::Always => return Ok(()),
            Lead::Not => {
                return Err(EngineError::Unavailable(format!(
                    "this peer does not lead partition {partition} of \"{name}\" now; ask again (any peer sends \
                     consumer requests to the partition's leader)"
                )));
            }
            Lead::Epoch { epoch, .. } => epoch,
        };
        if follow.loaded.borrow().get(&key) == Some(&epoch) {
            return Ok(());
        }
        if Instant::now() >= deadline || shard.shared.control.is_stopping() {
            return Err(EngineError::Unavailable(format!(
                "the consumers of partition {partition} of \"{name}\" are not read back yet (this peer took its \
                 lead); ask again"
            )));
        }
        if follow.loading.borrow().contains(&key) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            continue;
        }
        follow.loading.borrow_mut().insert(key);
        let read = read_back(shard, topic, partition, epoch, deadline).await;
        follow.loading.borrow_mut().remove(&key);
        let cursors = read?;
        // The lead may have moved on while it was read: the next turn sees.
        if !matches!(lead(shard, topic, partition), Lead::Epoch { epoch: now, .. } if now == epoch) {
            continue;
        }
        let count = cursors.len();
        shard.consumers.replace(shard, topic, partition, cursors);
        follow.loaded.borrow_mut().insert(key, epoch);
        follow.next.borrow_mut().insert(key, 1);
        follow.since.borrow_mut().insert(key, (0, 0));
        tracing::info!(
            topic = %name,
            partition,
            epoch,
            consumers = count,
            "took the lead of the partition: its consumers' cursors are read back"
        );
        // A snapshot now: the next read-back starts from it, and retention can go on.
        snapshot(shard, topic, partition, epoch).await;
        return Ok(());
    }
}

/// Writes `entries` of `topic`/`partition` to its cursor partition, numbered as its
/// next change; `None` when its cursors do not follow it (one machine, a topic of one
/// copy). A change made after this peer lost the lead (since its request was
/// checked) is not sent, and settles as an error.
pub async fn mirror(shard: &Shard, topic: usize, partition: u32, entries: &[Entry]) -> Option<Mirrored> {
    cursor_topic(shard, topic)?;
    let Some(epoch) = leading(shard, topic, partition) else {
        return Some(Mirrored {
            rx: None,
            topic: shard.shared.spec.topics[topic].name.clone(),
            partition,
        });
    };
    let key = (topic, partition);
    let n = next_number(shard, key);
    let (mirrored, bytes) = send(shard, topic, partition, epoch, n, entries).await?;
    let due = {
        let mut since = shard.consumers.follow.since.borrow_mut();
        let (written, last) = since.entry(key).or_insert((0, 0));
        *written += bytes;
        *written >= SEGMENT_BYTES.max(2 * *last)
    };
    if due {
        snapshot(shard, topic, partition, epoch).await;
    }
    Some(mirrored)
}

/// The number of the next change of partition `key` in its loaded epoch.
fn next_number(shard: &Shard, key: (usize, u32)) -> u64 {
    let mut next = shard.consumers.follow.next.borrow_mut();
    let n = next.entry(key).or_insert(1);
    *n += 1;
    *n - 1
}

/// Sends one batch of `entries` in order `epoch.n`; `None` if the engine stops.
async fn send(
    shard: &Shard,
    topic: usize,
    partition: u32,
    epoch: u32,
    n: u64,
    entries: &[Entry],
) -> Option<(Mirrored, u64)> {
    let cursors = cursor_topic(shard, topic)?;
    let source = provenance::encode(&producer(shard, topic, partition), Point::whole(n));
    let order = format!("{epoch}.{n}");
    let headers: [(&str, &[u8]); 2] = [(SOURCE_HEADER, &source), (ORDER_HEADER, order.as_bytes())];
    let mut bytes = Vec::new();
    for entry in entries {
        encode_record(&mut bytes, None, None, &entry.encode(), &headers);
    }
    let size = bytes.len() as u64;
    let (tx, rx) = flume::bounded(1);
    let mut batch = Batch::new(
        partition,
        Payload::Wire {
            bytes,
            count: entries.len(),
            stamp_ms: now_ms(),
        },
        Ack::Client(tx, 0),
    );
    batch.lead = Some(epoch);
    shard.shared.mesh.send(cursors, batch).await.ok()?;
    let mirrored = Mirrored {
        rx: Some(rx),
        topic: shard.shared.spec.topics[topic].name.clone(),
        partition,
    };
    Some((mirrored, size))
}

/// Writes every cursor of `topic`/`partition` as one snapshot, in batches that each fit
/// the cursor topic, not waited for (one lost is made again after as many bytes).
async fn snapshot(shard: &Shard, topic: usize, partition: u32, epoch: u32) {
    let key = (topic, partition);
    let mut entries = vec![Entry::SnapshotBegin];
    if let Some(groups) = shard.consumers.cursors.borrow().get(&key) {
        entries.extend(
            groups
                .iter()
                .map(|(group, cursor)| super::set_entry(shard, topic, partition, group, cursor)),
        );
    }
    entries.push(Entry::SnapshotEnd);
    let n = next_number(shard, key);
    let limit = SNAPSHOT_BATCH_BYTES.min(batch_bytes_max_for(SEGMENT_BYTES) as usize / 2);
    let mut total = 0;
    let mut start = 0;
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        let size = entry.encode().len() + 128;
        if bytes + size > limit && i > start {
            total += send(shard, topic, partition, epoch, n, &entries[start..i])
                .await
                .map_or(0, |(_, b)| b);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    total += send(shard, topic, partition, epoch, n, &entries[start..])
        .await
        .map_or(0, |(_, b)| b);
    shard.consumers.follow.since.borrow_mut().insert(key, (0, total));
}

/// Writes `lead EPOCH` to the cursor partition of `topic`/`partition` and reads it back
/// up to there: the cursors its earlier leads left, each at its change of the greatest
/// order. Tried again while the cursor partition's leader is unavailable, until
/// `deadline`.
async fn read_back(
    shard: &Rc<Shard>,
    topic: usize,
    partition: u32,
    epoch: u32,
    deadline: Instant,
) -> Result<BTreeMap<String, Cursor>, EngineError> {
    let name = shard.shared.spec.topics[topic].name.clone();
    let cursors_topic = cursor_topic(shard, topic).expect("checked by the caller");
    let mut failures = 0u32;
    let retry = |failures: &mut u32, error: EngineError| {
        *failures += 1;
        if Instant::now() >= deadline || shard.shared.control.is_stopping() {
            return Err(EngineError::Unavailable(format!(
                "the consumers of partition {partition} of \"{name}\" cannot be read back yet: {error}; ask again"
            )));
        }
        if failures.is_power_of_two() {
            tracing::warn!(topic = %name, partition, "consumers cannot be read back yet ({failures} tries): {error}");
        }
        Ok(Duration::from_millis(5 << (*failures).min(7)).min(RETRY_PAUSE_MAX))
    };
    let marker = loop {
        let Some((mirrored, _)) = send(shard, topic, partition, epoch, 0, &[Entry::Lead { epoch }]).await
        else {
            return Err(EngineError::Stopping);
        };
        let rx = mirrored.rx.expect("sent");
        match rx.recv_async().await.map_err(|_| EngineError::Stopping)? {
            Ok((_, first, next)) if next > first => break first,
            Ok(_) => return Err(lost_lead(&name, partition)),
            Err(error) => {
                let pause = retry(&mut failures, error)?;
                glommio::timer::sleep(pause).await;
            }
        }
    };
    let mut read = ReadBack::default();
    let (mut position, mut first_seen) = (0u64, None);
    while position <= marker {
        if Instant::now() >= deadline || shard.shared.control.is_stopping() {
            return Err(EngineError::Unavailable(format!(
                "the consumers of partition {partition} of \"{name}\" are not read back yet (read to offset \
                 {position} of its cursor partition, past {marker} wanted); ask again"
            )));
        }
        let order = FetchOrder {
            topic: cursors_topic,
            partition,
            from: FetchFrom::Offset(position),
            max_records: FETCH_RECORDS_MAX,
            max_bytes: FETCH_BYTES_MAX,
            wait_ms: 100,
            request_id: 0,
            batches: false,
        };
        let fetched = match service::fetch(shard, order)
            .await
            .and_then(crate::runtime::takeover::decode)
        {
            Ok(fetched) => fetched,
            Err(error) => {
                let pause = retry(&mut failures, error)?;
                glommio::timer::sleep(pause).await;
                continue;
            }
        };
        first_seen.get_or_insert(fetched.start_offset.max(position));
        position = position.max(fetched.start_offset);
        for (offset, record) in &fetched.records {
            position = offset + 1;
            let Some(order) = record
                .headers
                .iter()
                .find(|(n, _)| n == ORDER_HEADER)
                .and_then(|(_, v)| parse_order(v))
            else {
                tracing::error!(topic = %name, partition, offset, "a cursor record without its order is left out (a bug)");
                continue;
            };
            let entry = journal::parse(&record.value).map_err(|e| {
                EngineError::Internal(format!(
                    "cursor record {offset} of partition {partition} of \"{name}\": {e}"
                ))
            })?;
            read.take(order, entry);
        }
    }
    if first_seen.is_some_and(|start| start > 0) && !read.whole_snapshot {
        tracing::error!(
            topic = %name,
            partition,
            "the cursor partition's retention deleted changes and no whole snapshot is left: consumers whose last \
             change was deleted are lost (they are made anew by their next claim)"
        );
    }
    Ok(read.cursors())
}

/// A cursor partition's records folded in, in the order they are read.
#[derive(Default)]
struct ReadBack {
    /// Per consumer, its change of the greatest order: its cursor, `None` if dropped.
    latest: HashMap<String, ((u32, u64), Option<Cursor>)>,
    in_snapshot: bool,
    /// Whether a snapshot was read from its beginning to its end.
    whole_snapshot: bool,
}

impl ReadBack {
    fn take(&mut self, order: (u32, u64), entry: Entry) {
        let (group, cursor) = match entry {
            Entry::SnapshotBegin => {
                self.in_snapshot = true;
                return;
            }
            Entry::SnapshotEnd => {
                self.whole_snapshot |= self.in_snapshot;
                self.in_snapshot = false;
                return;
            }
            Entry::Set { group, cursor, .. } => (group, Some(cursor)),
            Entry::Drop { group, .. } => (group, None),
            // Markers, and entries only a shard's journal has.
            Entry::Lead { .. } | Entry::Reset | Entry::Txn { .. } | Entry::Applied { .. } => return,
        };
        // A snapshot's entries share one order: a later one of them is as new.
        if self.latest.get(&group).is_none_or(|(was, _)| *was <= order) {
            self.latest.insert(group, (order, cursor));
        }
    }

    fn cursors(self) -> BTreeMap<String, Cursor> {
        self.latest
            .into_iter()
            .filter_map(|(group, (_, cursor))| Some((group, cursor?)))
            .collect()
    }
}

fn parse_order(value: &[u8]) -> Option<(u32, u64)> {
    let (epoch, n) = std::str::from_utf8(value).ok()?.split_once('.')?;
    Some((epoch.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(group: &str, committed: u64) -> Entry {
        let mut cursor = Cursor::new(crate::consumer::cursor::Options::default(), 0, 100, |_| None);
        cursor.committed = committed;
        Entry::Set {
            topic: "t".into(),
            partition: 0,
            group: group.into(),
            cursor,
        }
    }

    fn drop_of(group: &str) -> Entry {
        Entry::Drop {
            topic: "t".into(),
            partition: 0,
            group: group.into(),
        }
    }

    fn committed(read: ReadBack) -> Vec<(String, u64)> {
        read.cursors()
            .into_iter()
            .map(|(g, c)| (g, c.committed))
            .collect()
    }

    #[test]
    fn each_consumer_takes_its_change_of_the_greatest_order_wherever_it_lands() {
        let mut read = ReadBack::default();
        read.take((1, 0), Entry::Lead { epoch: 1 });
        read.take((1, 1), set("a", 5));
        read.take((1, 3), set("a", 9));
        // Sent again after a lost leader, it lands after the later change.
        read.take((1, 2), set("a", 7));
        // A later lead's change wins over any number of the earlier one.
        read.take((2, 1), set("b", 3));
        read.take((1, 900), set("b", 8));
        // Dropped, then made again; dropped for good.
        read.take((2, 2), drop_of("a"));
        read.take((2, 3), set("a", 1));
        read.take((2, 4), set("c", 4));
        read.take((2, 5), drop_of("c"));
        assert_eq!(committed(read), vec![("a".into(), 1), ("b".into(), 3)]);
    }

    #[test]
    fn a_snapshot_counts_whole_only_from_its_beginning_to_its_end() {
        let mut read = ReadBack::default();
        // Read from where retention left the partition: a snapshot's end without its
        // beginning.
        read.take((1, 4), set("a", 2));
        read.take((1, 4), Entry::SnapshotEnd);
        assert!(!read.whole_snapshot);
        read.take((1, 5), Entry::SnapshotBegin);
        read.take((1, 5), set("a", 3));
        read.take((1, 5), set("b", 1));
        assert!(!read.whole_snapshot, "not before its end");
        read.take((1, 5), Entry::SnapshotEnd);
        assert!(read.whole_snapshot);
        assert_eq!(committed(read), vec![("a".into(), 3), ("b".into(), 1)]);
    }

    #[test]
    fn orders_compare_by_epoch_then_number() {
        assert_eq!(parse_order(b"3.17"), Some((3, 17)));
        assert!(parse_order(b"4.0") > parse_order(b"3.900"));
        assert!(parse_order(b"3.10") > parse_order(b"3.9"));
        assert_eq!(parse_order(b"3"), None);
        assert_eq!(parse_order(b"x.1"), None);
    }
}
