//! The `file` source: the lines of a file (optionally followed as it grows), or of every
//! file of a directory in name order, written into a topic exactly once.
//!
//! A line's input position is its byte offset, so progress is a byte offset and a
//! replay after a crash starts at a line boundary. Line endings (`\n` or `\r\n`) are
//! stripped; each line's timestamp is the time it was read.
//!
//! In a cluster a source runs on one peer: the one leading partition 0 of its (replicated)
//! topic, so it moves when that lead does. Taking the lead it reads back, through each
//! output partition's leader, the furthest provenance point of each of its producers
//! (what it wrote while other peers led), resumes from its own stored progress (or the
//! start) and skips what those points cover. Its batches carry the lead's epoch, so an
//! output's leader takes none of an earlier lead's once this one's came; until then (one
//! of its batches acked there) each output carries its own point, so an earlier lead's
//! batch still in flight when this one began is written once (`already.rs`). Every peer
//! that may lead must see the same input (the same file, or directory, at the same path).
//!
//! With `per_peer = true` every peer of a cluster reads its own input (its own file at
//! the path), as a producer of its own (`source:NAME@<storage id>`): it does what a
//! lead's source does once, when it starts, for a lead of its own whose epoch is the
//! second its run began, so that a batch of an earlier run still in flight is fenced off
//! the same way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::SourceKind;
use crate::jq::{JqProgram, to_f64};
use crate::ops::Output;
use crate::runtime::bounds::Bounds;
use crate::runtime::commit::Committer;
use crate::runtime::emitter::Emitter;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::progress::{self, Progress};
use crate::runtime::provenance::{Point, source_producer};
use crate::runtime::shard::Shard;
use crate::runtime::takeover::{self, Lead};
use crate::storage::layout::now_ms;

/// Bytes read from the file per round.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// How often a followed file or directory is checked for more.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub struct SourceTask {
    pub source: usize,
    pub progress: Progress,
    /// Per output partition: the provenance found there, by producer.
    pub scanned: Vec<HashMap<String, Point>>,
}

struct Reading {
    emitter: Emitter,
    /// Gives each line's timestamp from its JSON, if the source says how.
    timestamp: Option<JqProgram>,
    committer: Committer,
    scanned: Vec<HashMap<String, Point>>,
    /// Longer lines are cut into pieces of this size: each piece fits one record with
    /// the engine's headers (`bounds`).
    line_bytes_max: usize,
    /// In a cluster: the epoch of the lead this peer reads for (`lead_of`); reading
    /// stops once that lead is gone.
    lead: Option<u32>,
    source: usize,
    /// A source read on every peer of a cluster: this peer's storage id.
    peer: Option<u64>,
}

pub async fn run(shard: Rc<Shard>, task: SourceTask) -> Result<()> {
    let spec = &shard.shared.spec;
    let source = &spec.sources[task.source];
    let partitions = spec.topics[source.to].partitions;
    let emitter = Emitter::new(
        String::new(),
        source.to,
        spec,
        &source.route,
        None,
        &shard.shared.mesh,
    )
    .map_err(|e| RuntimeError::Operator {
        stage: source.name.clone(),
        reason: e.0,
    })?;
    let path = progress::path(&shard.shared.data_dir, &source.name, "source");
    let done = task.progress.done;
    let committer = Committer::new(
        path,
        task.progress,
        shard.shared.durable(),
        spec.engine.commit_interval,
    );
    let timestamp = match &source.timestamp {
        Some(code) => Some(JqProgram::compile(code).map_err(|reason| RuntimeError::Operator {
            stage: source.name.clone(),
            reason,
        })?),
        None => None,
    };
    let mut reading = Reading {
        emitter,
        timestamp,
        committer,
        scanned: task.scanned,
        line_bytes_max: Bounds::of(&spec.topics[source.to]).ingest_value_bytes_max(),
        lead: None,
        source: task.source,
        peer: per_peer(&shard, task.source),
    };
    if lead_of(&shard, task.source) == Lead::Always {
        if !done {
            read_input(&shard, &mut reading, task.source).await?;
        }
        return reading.committer.settle(partitions).await;
    }
    // In a cluster: read where partition 0 of the topic is led, from what was written.
    while !shard.shared.control.is_stopping() {
        let epoch = match lead_of(&shard, task.source) {
            Lead::Epoch { epoch, .. } if reading.lead != Some(epoch) => epoch,
            _ => {
                glommio::timer::sleep(FOLLOW_POLL).await;
                continue;
            }
        };
        if reading.emitter.flush().await.is_err() {
            break;
        }
        reading.committer.settle(partitions).await?;
        reading.committer.lead_again();
        let stored = reading.committer.stored().clone();
        let Some((scanned, read_to)) = read_back(&shard, task.source, reading.peer, &stored).await else {
            break;
        };
        reading.scanned = scanned;
        reading.emitter.set_lead(epoch);
        reading.emitter.set_replayed_until_acked(read_to);
        reading.lead = Some(epoch);
        tracing::info!(
            "source {} reads on from byte {}{} {}; lines already written are skipped",
            source.name,
            stored.next,
            stored
                .file
                .as_deref()
                .map(|f| format!(" of {f}"))
                .unwrap_or_default(),
            match reading.peer {
                Some(_) => "on this peer, as every peer does (per_peer)".to_owned(),
                None => format!(
                    "as this peer leads partition 0 of \"{}\" in epoch {epoch}",
                    spec.topics[source.to].name
                ),
            }
        );
        if !stored.done {
            read_input(&shard, &mut reading, task.source).await?;
        }
    }
    reading.committer.settle(partitions).await
}

/// Whether this peer reads source `source` now, and for which lead: where partition 0
/// of its topic is led in a cluster; on every peer, for a lead of its own run, with
/// `per_peer`; always on one machine.
fn lead_of(shard: &Shard, source: usize) -> Lead {
    let spec = &shard.shared.spec.sources[source];
    match &shard.shared.peers {
        Some(peers) if spec.per_peer => Lead::Epoch {
            epoch: (peers.cluster.me.bump / 1_000_000_000) as u32,
            start: 0,
        },
        _ => takeover::lead(shard, spec.to, 0),
    }
}

/// This peer's storage id if source `source` is read on every peer of a cluster.
fn per_peer(shard: &Shard, source: usize) -> Option<u64> {
    let peers = shard.shared.peers.as_ref()?;
    shard.shared.spec.sources[source]
        .per_peer
        .then_some(peers.cluster.me.storage)
}

async fn read_input(shard: &Shard, reading: &mut Reading, source: usize) -> Result<()> {
    let source = &shard.shared.spec.sources[source];
    match &source.kind {
        SourceKind::File { path, follow } => read_file(shard, reading, &source.name, path, *follow).await,
        SourceKind::Directory { path } => read_directory(shard, reading, &source.name, path).await,
    }
}

/// What source `source` wrote while other peers led, read through each output
/// partition's leader from where its stored progress says its outputs ended: per output
/// partition, the furthest point of each of its producers (one per file of a directory),
/// and how far each read went. `None` if the engine stops first.
async fn read_back(
    shard: &Rc<Shard>,
    source: usize,
    peer: Option<u64>,
    stored: &Progress,
) -> Option<(Vec<HashMap<String, Point>>, Vec<u64>)> {
    let spec = &shard.shared.spec;
    let source = &spec.sources[source];
    let own = source_producer(&source.name, peer, None);
    let of_a_file = format!("{own}:");
    let partitions = spec.topics[source.to].partitions;
    let mut scanned = Vec::with_capacity(partitions as usize);
    let mut read_to = Vec::with_capacity(partitions as usize);
    for q in 0..partitions {
        let from = stored.output_ends.get(&q).copied().unwrap_or(0);
        let mut found: HashMap<String, Point> = HashMap::new();
        let reached = takeover::read_partition(shard, source.to, q, from, &own, |record| {
            if let Some((point, by)) = takeover::stamp(record)
                && (by == own || by.starts_with(&of_a_file))
            {
                let slot = found.entry(by.to_owned()).or_default();
                *slot = (*slot).max(point);
            }
        })
        .await?;
        scanned.push(found);
        read_to.push(reached);
    }
    Some((scanned, read_to))
}

impl Reading {
    /// Whether reading goes on: the engine runs, and in a cluster this peer still holds
    /// the lead it reads for.
    fn goes_on(&self, shard: &Shard) -> bool {
        !shard.shared.control.is_stopping()
            && self.lead.is_none_or(
                |epoch| matches!(lead_of(shard, self.source), Lead::Epoch { epoch: now, .. } if now == epoch),
            )
    }

    /// Points the emitter at `producer`, skipping what a previous run already wrote.
    fn start(&mut self, producer: String, floor: u64) {
        let skip = self
            .scanned
            .iter()
            .map(|found| {
                found
                    .get(&producer)
                    .copied()
                    .unwrap_or_default()
                    .max(Point::whole(floor))
            })
            .collect();
        self.emitter.set_producer(producer, skip);
    }

    fn candidate(&self, next: u64, file: Option<String>, done: bool) -> Progress {
        Progress {
            resume: next,
            next,
            file,
            done,
            ..Progress::default()
        }
    }
}

async fn read_file(
    shard: &Shard,
    reading: &mut Reading,
    name: &str,
    path: &Path,
    follow: bool,
) -> Result<()> {
    let start = reading.committer.stored().next;
    reading.start(source_producer(name, reading.peer, None), start);
    let end = read_lines(shard, reading, path, start, None, follow).await?;
    if let Some(end) = end {
        reading.emitter.emit_end(end, now_ms());
        if reading.emitter.flush().await.is_ok() {
            let candidate = reading.candidate(end, None, true);
            reading
                .committer
                .last_snapshot(&mut reading.emitter, None, candidate);
        }
    }
    Ok(())
}

async fn read_directory(shard: &Shard, reading: &mut Reading, name: &str, dir: &Path) -> Result<()> {
    let mut current = reading.committer.stored().file.clone();
    let mut start = reading.committer.stored().next;
    while reading.goes_on(shard) {
        let files = list_files(dir)?;
        let Some(file) = current.clone().or_else(|| files.first().cloned()) else {
            glommio::timer::sleep(FOLLOW_POLL).await;
            continue;
        };
        current = Some(file.clone());
        reading.start(source_producer(name, reading.peer, Some(&file)), start);
        // Followed until a newer file appears, then read to its end and left.
        let read = read_lines(shard, reading, &dir.join(&file), start, Some(&file), true).await?;
        if read.is_some() {
            // A newer file exists: move to it.
            if let Some(newer) = list_files(dir)?.into_iter().find(|f| *f > file) {
                current = Some(newer.clone());
                start = 0;
                let candidate = reading.candidate(0, Some(newer), false);
                // Refused, the next commit due (the file's first lines) covers it.
                let _ = reading.committer.snapshot(&mut reading.emitter, candidate);
            }
        }
    }
    Ok(())
}

fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(RuntimeError::io("list source directory", dir))? {
        let entry = entry.map_err(RuntimeError::io("list source directory", dir))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let name = entry.file_name().into_string().ok();
        if let (true, Some(name)) = (is_file, name)
            && !name.starts_with('.')
        {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads lines from `start` on. Returns the end position once the file is done: at its
/// end when not following, or, when following a directory's file, once a newer file
/// exists and this one is read to its end. Returns `None` when stopped.
async fn read_lines(
    shard: &Shard,
    reading: &mut Reading,
    path: &Path,
    start: u64,
    dir_file: Option<&str>,
    follow: bool,
) -> Result<Option<u64>> {
    let control = &shard.shared.control;
    let partitions = reading.emitter.partitions();
    let mut file = File::open(path).map_err(RuntimeError::io("open source file", path))?;
    file.seek(SeekFrom::Start(start))
        .map_err(RuntimeError::io("seek in source file", path))?;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut line = Vec::new();
    let mut line_start = start;
    let mut position = start;
    let parent_dir = path.parent().map(PathBuf::from);
    while reading.goes_on(shard) {
        let n = file
            .read(&mut chunk)
            .map_err(RuntimeError::io("read source file", path))?;
        if n == 0 {
            let newer_exists = match (dir_file, &parent_dir) {
                (Some(current), Some(dir)) => list_files(dir)?.iter().any(|f| f.as_str() > current),
                _ => false,
            };
            if follow && !newer_exists {
                if reading.emitter.flush().await.is_err() {
                    return Ok(None);
                }
                commit_if_due(reading, line_start, dir_file)?;
                reading.committer.complete(partitions)?;
                glommio::timer::sleep(FOLLOW_POLL).await;
                continue;
            }
            if !line.is_empty() {
                emit_line(reading, line_start, &line, control);
                line.clear();
            }
            if reading.emitter.flush().await.is_err() {
                return Ok(None);
            }
            return Ok(Some(position));
        }
        for &byte in &chunk[..n] {
            position += 1;
            if byte == b'\n' || line.len() >= reading.line_bytes_max {
                emit_line(reading, line_start, &line, control);
                line.clear();
                line_start = if byte == b'\n' { position } else { position - 1 };
                if byte != b'\n' {
                    line.push(byte);
                }
            } else {
                line.push(byte);
            }
        }
        if reading.emitter.flush().await.is_err() {
            return Ok(None);
        }
        commit_if_due(reading, line_start, dir_file)?;
        reading.committer.complete(partitions)?;
        // Tests kill the engine here, provably in the middle of a file.
        crate::storage::faults::crash_point("source-chunk");
    }
    if reading.emitter.flush().await.is_ok() {
        let candidate = reading.candidate(line_start, dir_file.map(str::to_owned), false);
        reading
            .committer
            .last_snapshot(&mut reading.emitter, None, candidate);
    }
    Ok(None)
}

fn commit_if_due(reading: &mut Reading, next: u64, dir_file: Option<&str>) -> Result<()> {
    if reading.committer.is_due() {
        let candidate = reading.candidate(next, dir_file.map(str::to_owned), false);
        // Refused (too many wait for their batches), it is due again after the interval
        // and the reader, still reading or following, comes back here.
        let _ = reading.committer.snapshot(&mut reading.emitter, candidate);
    }
    Ok(())
}

fn emit_line(reading: &mut Reading, start: u64, line: &[u8], control: &crate::runtime::shard::Control) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let timestamp_ms = match &reading.timestamp {
        None => now_ms(),
        Some(program) => match line_timestamp(program, line) {
            Ok(ms) => ms,
            Err(reason) => {
                eprintln!("flowd: source line at byte {start} has no usable timestamp ({reason}); dropped");
                control.records_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let output = Output {
        timestamp_ms,
        key: None,
        value: line.to_vec(),
    };
    // Routing a line fails only for a jq selector (lines are cut to fit a record); such
    // a line is dropped, reported and counted.
    if let Err(error) = reading.emitter.emit(start, 0, output) {
        eprintln!("flowd: source line at byte {start} dropped: {error}");
        control.records_failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    control.records_in.fetch_add(1, Ordering::Relaxed);
}

/// A line's timestamp from its JSON: a number of milliseconds since the epoch.
fn line_timestamp(program: &JqProgram, line: &[u8]) -> Result<i64, String> {
    let mut found = None;
    program.run(line, |v| {
        if found.is_none() {
            found = Some(to_f64(v));
        }
    })?;
    match found {
        Some(Some(ms)) if ms.is_finite() => Ok(ms as i64),
        _ => Err("the timestamp expression did not give a number of milliseconds".into()),
    }
}
