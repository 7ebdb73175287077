//! The metadata group's durable state, in `DATA_DIR/cluster/raft/`: its log (entries,
//! vote, commit point) and its snapshot; the state machine itself is in memory, rebuilt
//! on start from the snapshot and the committed entries after it.
//!
//! ```text
//! log       = record*                              appended; fdatasync before any
//!                                                  write is reported done
//! record    = len:u32 crc:u32 body                 little endian; len counts body,
//!                                                  crc = CRC32C(body)
//! body      = JSON of an Op: {"Vote":..} | {"Committed":..} | {"Append":[entries]}
//!             | {"Truncate":index} (entries from index on are gone)
//!             | {"Purge":log_id} (entries up to it are gone)
//!             | {"Group":id} (the group this member belongs to: its founder's
//!               storage id; written once, before founding or before the first
//!               message of a group is taken; a log from before 2026-12-05 has none)
//! snapshot  = len:u32 crc:u32 JSON{meta, metadata}   written to snapshot.tmp, synced,
//!                                                  renamed, directory synced
//! ```
//!
//! On open the log is replayed in order. A record cut short or failing its CRC at the
//! very end is a write a crash interrupted (it was never reported done) and is cut; one
//! followed by more data is corruption and refuses to open, saying what to do. The log
//! is rewritten whole (to `log.tmp`, synced, renamed) once it holds many records more
//! than the state it describes.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftLogId, RaftLogReader, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::cluster::consensus::types::{
    Entry, LogId, Metadata, Outcome, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};
use crate::storage::io;

/// Records written since the last rewrite before the log is rewritten whole.
const REWRITE_AFTER: u64 = 4096;

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Vote(Vote),
    Committed(Option<LogId>),
    Append(Vec<Entry>),
    Truncate(u64),
    Purge(LogId),
    Group(u64),
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    metadata: Metadata,
}

/// The metadata as applied here, readable from any thread; `version` moves at each
/// change so that readers can cache what they derive from it.
#[derive(Default)]
pub struct MetadataCell {
    current: RwLock<Arc<Metadata>>,
    version: AtomicU64,
}

impl MetadataCell {
    pub fn get(&self) -> Arc<Metadata> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn set(&self, metadata: Metadata) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(metadata);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    len: u64,
    records: u64,
}

struct Inner {
    log: LogFile,
    /// The group this member belongs to (`Op::Group`; 0: none), shared with `Store`,
    /// whose readers take it without the lock.
    group: Arc<AtomicU64>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    // The state machine.
    applied: Option<LogId>,
    membership: StoredMembership,
    metadata: Metadata,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    snapshots_built: u64,
}

/// The log store and the state machine of the group share one `Store`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    cell: Arc<MetadataCell>,
    /// `Inner::group`, read by every message sent without waiting for a write of the
    /// log in progress.
    group: Arc<AtomicU64>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// A write of the group's state that failed, as openraft takes it.
fn failed(e: std::io::Error) -> StorageError {
    StorageError::from(StorageIOError::write(&e))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits `bytes` into record bodies; returns them and where the sound part ends.
fn records(bytes: &[u8]) -> Result<(Vec<&[u8]>, usize), String> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let sound = (|| {
            let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
            let crc = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?);
            let body = bytes.get(at + 8..at + 8 + len)?;
            (crc32c::crc32c(body) == crc).then_some(body)
        })();
        match sound {
            Some(body) => {
                out.push(body);
                at += 8 + body.len();
            }
            None => {
                // A torn last write leaves nothing after it: a crash cuts the end only.
                let claimed = bytes
                    .get(at..at + 4)
                    .map_or(0, |l| u32::from_le_bytes(l.try_into().expect("4")) as usize);
                let after = (at + 8 + claimed).min(bytes.len());
                if claimed < bytes.len() && bytes[after..].iter().any(|&b| b != 0) {
                    return Err(format!(
                        "a damaged record at byte {at} with {} bytes after it",
                        bytes.len() - after
                    ));
                }
                break;
            }
        }
    }
    Ok((out, at))
}

impl Store {
    /// Opens (creating if needed) the group's state in `dir`.
    pub fn open(dir: &Path) -> Result<Store, String> {
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", dir.display());
        io::create_dir_all(dir).map_err(|e| fail("cannot create", e))?;
        let snapshot_path = dir.join("snapshot");
        let mut snapshot = None;
        if let Ok(bytes) = std::fs::read(&snapshot_path) {
            let (bodies, _) = records(&bytes).map_err(|e| format!("{}: {e}", snapshot_path.display()))?;
            let body = bodies
                .first()
                .ok_or_else(|| format!("{} is empty or damaged", snapshot_path.display()))?;
            let file: SnapshotFile = serde_json::from_slice(body)
                .map_err(|e| format!("{} does not decode: {e}", snapshot_path.display()))?;
            snapshot = Some(file);
        }
        let path = dir.join("log");
        let bytes = std::fs::read(&path).unwrap_or_default();
        let (bodies, sound) = records(&bytes).map_err(|e| {
            format!(
                "the consensus log {} is damaged ({e}); this peer cannot vouch for the cluster's metadata: \
                 move {} away and start it again, it rejoins as a new member",
                path.display(),
                dir.display()
            )
        })?;
        let mut vote: Option<Vote> = None;
        let mut committed: Option<LogId> = None;
        let mut purged: Option<LogId> = None;
        let mut group: Option<u64> = None;
        let mut entries: BTreeMap<u64, Entry> = BTreeMap::new();
        for body in &bodies {
            let op: Op = serde_json::from_slice(body)
                .map_err(|e| format!("a record of {} does not decode: {e}", path.display()))?;
            match op {
                Op::Vote(v) => vote = Some(v),
                Op::Committed(c) => committed = c,
                Op::Append(list) => {
                    for entry in list {
                        entries.insert(entry.log_id.index, entry);
                    }
                }
                Op::Truncate(index) => {
                    entries.split_off(&index);
                }
                Op::Purge(log_id) => {
                    purged = Some(log_id);
                    entries = entries.split_off(&(log_id.index + 1));
                }
                Op::Group(id) => group = Some(id),
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| fail("cannot open the consensus log in", e))?;
        if sound as u64 != bytes.len() as u64 {
            tracing::warn!(
                "the consensus log {} ended in a write a crash cut short ({} bytes); cut",
                path.display(),
                bytes.len() - sound
            );
            io::set_len(&file, &path, sound as u64).map_err(|e| fail("cannot cut", e))?;
            io::sync_data(&file, &path).map_err(|e| fail("cannot sync", e))?;
        }
        let (applied, membership, metadata, snapshot) = match snapshot {
            Some(file) => {
                let data = serde_json::to_vec(&file.metadata).expect("metadata serializes");
                (
                    file.meta.last_log_id,
                    file.meta.last_membership.clone(),
                    file.metadata,
                    Some((file.meta, data)),
                )
            }
            None => (None, StoredMembership::default(), Metadata::default(), None),
        };
        let group = Arc::new(AtomicU64::new(group.unwrap_or(0)));
        let cell = Arc::new(MetadataCell::default());
        cell.set(metadata.clone());
        Ok(Store {
            inner: Arc::new(Mutex::new(Inner {
                log: LogFile {
                    dir: dir.to_path_buf(),
                    path,
                    file,
                    len: sound as u64,
                    records: bodies.len() as u64,
                },
                group: Arc::clone(&group),
                vote,
                committed,
                purged,
                entries,
                applied,
                membership,
                metadata,
                snapshot,
                snapshots_built: 0,
            })),
            cell,
            group,
        })
    }

    /// The metadata as applied on this peer.
    pub fn metadata(&self) -> Arc<MetadataCell> {
        Arc::clone(&self.cell)
    }

    /// The group this member belongs to, if it knows.
    pub fn group(&self) -> Option<u64> {
        Some(self.group.load(Ordering::Acquire)).filter(|g| *g != 0)
    }

    /// Makes this member one of group `id` unless it belongs to one already (written
    /// and synced before it returns); returns the group it belongs to now.
    pub fn join_group(&self, id: u64) -> std::io::Result<u64> {
        let mut inner = self.lock();
        if let Some(group) = self.group() {
            return Ok(group);
        }
        inner.write(&Op::Group(id))?;
        self.group.store(id, Ordering::Release);
        Ok(id)
    }

    /// The voters of the last membership applied here: committed, unlike openraft's
    /// metrics, which show a change proposed and not yet agreed.
    pub fn applied_voters(&self) -> Vec<u64> {
        self.lock().membership.membership().voter_ids().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Appends `op` to the log and syncs it.
    fn write(&mut self, op: &Op) -> std::io::Result<()> {
        let body = serde_json::to_vec(op).expect("a consensus op serializes");
        let bytes = frame(&body);
        let log = &mut self.log;
        io::write_at(&log.file, &log.path, log.len, &bytes).map_err(|e| io_error("write", &log.path, e))?;
        io::sync_data(&log.file, &log.path).map_err(|e| io_error("sync", &log.path, e))?;
        log.len += bytes.len() as u64;
        log.records += 1;
        if log.records > REWRITE_AFTER + self.entries.len() as u64 {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Writes the log anew with only what it describes now, and swaps it in.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        let mut ops = Vec::new();
        match self.group.load(Ordering::Acquire) {
            0 => {}
            group => ops.push(Op::Group(group)),
        }
        if let Some(vote) = self.vote {
            ops.push(Op::Vote(vote));
        }
        ops.push(Op::Committed(self.committed));
        if let Some(purged) = self.purged {
            ops.push(Op::Purge(purged));
        }
        ops.push(Op::Append(self.entries.values().cloned().collect()));
        for op in &ops {
            bytes.extend_from_slice(&frame(&serde_json::to_vec(op).expect("serializes")));
        }
        io::replace(&self.log.path, &bytes, true).map_err(|e| io_error("rewrite", &self.log.path, e))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.log.path)
            .map_err(|e| io_error("open", &self.log.path, e))?;
        self.log.file = file;
        self.log.len = bytes.len() as u64;
        self.log.records = ops.len() as u64;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for Store {
    type LogReader = Store;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.write(&Op::Vote(*vote)).map_err(failed)?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.committed != committed {
            inner.write(&Op::Committed(committed)).map_err(failed)?;
            inner.committed = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut inner = self.lock();
        let written = inner.write(&Op::Append(entries.clone()));
        match written {
            Ok(()) => {
                for entry in entries {
                    inner.entries.insert(entry.log_id.index, entry);
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let told = std::io::Error::new(error.kind(), error.to_string());
                callback.log_io_completed(Err(told));
                Err(failed(error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.write(&Op::Truncate(log_id.index)).map_err(failed)?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.write(&Op::Purge(log_id)).map_err(failed)?;
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Store {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut inner = self.lock();
        inner.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                inner.applied.map_or(0, |l| l.index),
                inner.snapshots_built
            ),
        };
        let data = serde_json::to_vec(&inner.metadata).expect("metadata serializes");
        save_snapshot(&inner.log.dir, &meta, &inner.metadata).map_err(failed)?;
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn save_snapshot(dir: &Path, meta: &SnapshotMeta, metadata: &Metadata) -> std::io::Result<()> {
    let body = serde_json::to_vec(&SnapshotFile {
        meta: meta.clone(),
        metadata: metadata.clone(),
    })
    .expect("a snapshot serializes");
    let path = dir.join("snapshot");
    io::replace(&path, &frame(&body), true).map_err(|e| io_error("write", &path, e))
}

impl RaftStateMachine<TypeConfig> for Store {
    type SnapshotBuilder = Store;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut outcomes = Vec::new();
        let mut changed = false;
        for entry in entries {
            inner.applied = Some(*entry.get_log_id());
            outcomes.push(match &entry.payload {
                EntryPayload::Blank => Outcome::None,
                EntryPayload::Normal(command) => {
                    let outcome = inner.metadata.apply(command);
                    changed |= outcome == Outcome::Applied;
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Outcome::None
                }
            });
        }
        if changed {
            self.cell.set(inner.metadata.clone());
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let metadata: Metadata = serde_json::from_slice(&data)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
        let mut inner = self.lock();
        save_snapshot(&inner.log.dir, meta, &metadata).map_err(failed)?;
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.metadata = metadata.clone();
        inner.snapshot = Some((meta.clone(), data));
        drop(inner);
        self.cell.set(metadata);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.lock().snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_record_is_cut_and_damage_before_more_data_refuses() {
        let mut bytes = frame(b"{\"Truncate\":3}");
        bytes.extend_from_slice(&frame(b"{\"Truncate\":4}"));
        let whole = bytes.len();
        // Torn: the last record cut short.
        let (bodies, sound) = records(&bytes[..whole - 3]).unwrap();
        assert_eq!((bodies.len(), sound), (1, whole / 2));
        // The first record damaged with a sound one after it: corruption, refused.
        let mut damaged = bytes.clone();
        damaged[10] ^= 1;
        assert!(records(&damaged).is_err());
        // A torn last record followed by zeros (preallocated space) is torn too.
        let mut zeros = bytes[..whole - 3].to_vec();
        zeros.extend_from_slice(&[0; 16]);
        assert_eq!(records(&zeros).unwrap().0.len(), 1);
    }

    #[test]
    fn the_group_a_member_joined_is_kept_once_and_survives_reopening_and_rewriting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.group(), None);
        assert_eq!(store.join_group(7).unwrap(), 7);
        // A second group is not taken: the first one stays.
        assert_eq!(store.join_group(9).unwrap(), 7);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.group(), Some(7));
        // The log rewritten whole keeps it.
        store.lock().rewrite().unwrap();
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().group(), Some(7));
    }
}
