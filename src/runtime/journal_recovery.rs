//! Consumer state at start: read the newest complete journal generation, finish the
//! transactions a crash interrupted, and write the state afresh into a new generation
//! with one journal per shard of this run.
//!
//! A generation (`DATA_DIR/consumers/gen-<N>`) is written by one run: each partition's
//! cursors by the one shard that owns it, so the journals of a generation never disagree.
//! A new generation counts only once its `complete` file exists (written after every
//! journal in it is synced); the older ones are deleted after that. A crash at any step
//! leaves the previous complete generation in charge. Starting anew each run also
//! compacts the journals and lets the shard count change between runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::DataflowSpec;
use crate::consumer::cursor::Cursor;
use crate::consumer::journal::{self, Entry, Replayed};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::mesh::{Payload, with_payload};
use crate::runtime::placement;
use crate::storage::format::SEGMENT_HEADER_BYTES;
use crate::storage::{LogOptions, PartitionLog, io, layout};

const COMPLETE: &str = "complete";

/// The largest record a journal of a dataflow takes: a transaction's part holds at most
/// one frame's records (`max_frame_bytes`), and the entries around it are small.
pub fn journal_record_max(spec: &DataflowSpec) -> u64 {
    let frame = u64::from(spec.ingest.clone().unwrap_or_default().max_frame_bytes);
    // Two must fit one segment of at most 2 GiB.
    (frame + (64 << 10)).min(crate::storage::log::SEGMENT_BYTES_MAX / 2 - 2 * SEGMENT_HEADER_BYTES)
}

/// A journal's options: segments that hold its biggest transaction twice over (a batch
/// never spans segments), rounded to whole pages; its snapshots come every half segment
/// (`Consumers`), so compaction keeps it to a few segments.
pub fn journal_options(spec: &DataflowSpec) -> LogOptions {
    let record_max = journal_record_max(spec);
    let segment_bytes = (2 * record_max + 2 * SEGMENT_HEADER_BYTES)
        .next_multiple_of(4096)
        .max(256 << 10);
    LogOptions {
        segment_bytes,
        durability: spec.engine.durability,
        max_record_bytes: record_max,
        unsynced_bytes_max: LogOptions::default().unsynced_bytes_max.max(record_max),
        ..LogOptions::default()
    }
}

/// Cursors of one shard, by (topic index, partition), then consumer name.
pub type Cursors = HashMap<(usize, u32), BTreeMap<String, Cursor>>;

/// What one shard starts with.
pub struct ShardJournal {
    pub generation: u64,
    pub log: PartitionLog,
    pub cursors: Cursors,
}

fn generations(root: &Path) -> Result<Vec<(u64, PathBuf, bool)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(root).map_err(RuntimeError::io("list", root))?;
    for entry in entries {
        let entry = entry.map_err(RuntimeError::io("list", root))?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gen-"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let path = entry.path();
        let complete = path.join(COMPLETE).exists();
        found.push((n, path, complete));
    }
    found.sort();
    Ok(found)
}

fn journal_error(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Journal {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads the consumers, applies what crashed transactions left undone to `logs`
/// (indexed by topic, then partition), and opens a fresh journal per shard.
pub fn recover(
    spec: &DataflowSpec,
    logs: &mut [Vec<PartitionLog>],
    shards: usize,
) -> Result<Vec<ShardJournal>> {
    let data_dir = &spec.engine.data_dir;
    let root = data_dir.join("consumers");
    io::create_dir_all(&root).map_err(RuntimeError::io("create", &root))?;
    let options = journal_options(spec);
    let all = generations(&root)?;
    let latest = all.iter().rfind(|(_, _, complete)| *complete);
    let mut state = Replayed::default();
    if let Some((_, dir, _)) = latest {
        let entries = std::fs::read_dir(dir).map_err(RuntimeError::io("list", dir))?;
        for entry in entries {
            let path = entry.map_err(RuntimeError::io("list", dir))?.path();
            if !path.is_dir() {
                continue;
            }
            let log = PartitionLog::open(&path, options.clone())?;
            let mut one = Replayed::default();
            journal::replay(&log, &mut one).map_err(|reason| journal_error(&path, reason))?;
            log.close()?;
            state.cursors.extend(one.cursors);
            state.pending.extend(one.pending);
        }
    }
    finish_transactions(spec, logs, &state)?;
    for ((topic, partition, group), cursor) in state.cursors.iter_mut() {
        let Some(log) = spec
            .topic_index(topic)
            .and_then(|t| logs[t].get(*partition as usize))
        else {
            continue;
        };
        let end = log.next_offset();
        if let Some(was) = cursor.clamp_to(end) {
            tracing::warn!(
                %topic,
                partition,
                %group,
                "consumer was at offset {was}, past the partition's recovered end {end} (records lost in a \
                 power cut or a crash in `none` mode): it goes on at {end}, so no record written from now on is skipped"
            );
        }
    }

    let generation = latest.map_or(1, |(n, _, _)| n + 1);
    let dir = root.join(format!("gen-{generation}"));
    if dir.exists() {
        io::remove_dir_all(&dir).map_err(RuntimeError::io("remove", &dir))?;
    }
    let mut per_shard: Vec<ShardJournal> = Vec::with_capacity(shards);
    let mut snapshots: Vec<Vec<Entry>> = vec![Vec::new(); shards];
    let mut cursors: Vec<Cursors> = vec![Cursors::new(); shards];
    for ((topic, partition, group), cursor) in state.cursors {
        let Some(t) = spec.topic_index(&topic) else {
            tracing::warn!(%topic, %group, "consumer dropped: its topic is no longer in the dataflow");
            continue;
        };
        if partition >= spec.topics[t].partitions {
            tracing::warn!(%topic, partition, %group, "consumer cursor dropped: the topic has fewer partitions now");
            continue;
        }
        let shard = placement::owner(partition, shards);
        snapshots[shard].push(Entry::Set {
            topic,
            partition,
            group: group.clone(),
            cursor: cursor.clone(),
        });
        cursors[shard]
            .entry((t, partition))
            .or_default()
            .insert(group, cursor);
    }
    for (shard, (snapshot, cursors)) in snapshots.into_iter().zip(cursors).enumerate() {
        let mut log = PartitionLog::open(&dir.join(format!("shard-{shard}")), options.clone())?;
        // In as many batches as it takes: its size must never keep flowd from starting.
        journal::write_snapshot(&mut log, snapshot, layout::now_ms())?;
        log.sync()?;
        per_shard.push(ShardJournal {
            generation,
            log,
            cursors,
        });
    }
    let marker = dir.join(COMPLETE);
    let file = io::create_truncate(&marker).map_err(RuntimeError::io("create", &marker))?;
    io::sync_data(&file, &marker).map_err(RuntimeError::io("sync", &marker))?;
    layout::sync_dir(&dir)?;
    layout::sync_dir(&root)?;
    for (n, path, _) in all {
        if n != generation {
            io::remove_dir_all(&path).map_err(RuntimeError::io("remove", &path))?;
        }
    }
    Ok(per_shard)
}

/// Appends each part of each pending transaction that its output partition lacks.
fn finish_transactions(spec: &DataflowSpec, logs: &mut [Vec<PartitionLog>], state: &Replayed) -> Result<()> {
    for txn in state.pending.values() {
        for (part, bytes) in &txn.parts {
            let Some(t) = spec.topic_index(&part.topic) else {
                tracing::warn!(txn = %txn.id, topic = %part.topic, "transaction output dropped: the topic is no longer in the dataflow");
                continue;
            };
            let Some(log) = logs[t].get_mut(part.partition as usize) else {
                tracing::warn!(txn = %txn.id, topic = %part.topic, partition = part.partition, "transaction output dropped: no such partition now");
                continue;
            };
            if journal::holds_txn(log, part.from, part.mark.as_deref().unwrap_or(&txn.id)) {
                continue;
            }
            let payload = Payload::Wire {
                bytes: bytes.clone(),
                count: part.count,
                stamp_ms: part.stamp_ms,
            };
            match with_payload(&payload, |records| log.append(records)) {
                Some(Ok(_)) => {
                    log.sync()?;
                    tracing::info!(txn = %txn.id, topic = %part.topic, partition = part.partition, "finished a transaction a crash interrupted");
                }
                Some(Err(error)) => {
                    tracing::error!(txn = %txn.id, topic = %part.topic, %error, "transaction output cannot be written; dropped");
                }
                None => {
                    tracing::error!(txn = %txn.id, "transaction output no longer decodes (a bug); dropped")
                }
            }
        }
    }
    Ok(())
}
