//! A sink in a cluster (`run_clustered`). The topic's partitions are led on several peers: the
//! sink runs on the peer leading partition 0 of its (replicated) topic and moves with
//! that lead, or on every peer with `per_peer = true`, and reads every partition through
//! its leader (what a quorum holds). Its progress is the peer's own, and so is the file:
//! a peer taking the sink on goes on from what its own progress says its file holds, once
//! the file's first `file_len` bytes are checked against the stored CRC. A file that does
//! not match (another peer wrote it since, on a path they share, or it was changed) is
//! renamed aside, never cut, and written again from the topic's start; a file path is
//! held with an exclusive `flock` while written, so two peers sharing it never write at
//! once. So the file on the peer writing it holds every record once.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::{
    CHUNK_RECORDS_MAX, Line, Output, SINK_CHANNEL_CHUNKS_MAX, SinkChunk, Writer, WriterTask, create_parent,
    cut, format_line, open_file, prefix_crc,
};
use crate::config::SinkKind;
use crate::protocol::FetchFrom;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::progress::Progress;
use crate::runtime::provenance::ended_by;
use crate::runtime::service::{self, FETCH_BYTES_MAX, FetchOrder};
use crate::runtime::shard::Shard;
use crate::runtime::takeover::{self, Lead};

/// How often a peer that does not run a sink looks again, and how often the one that
/// does checks that it still leads.
const LEAD_POLL: Duration = Duration::from_millis(100);
/// The longest pause of a reader that found nothing new in a partition another peer leads.
const REMOTE_POLL_MAX: Duration = Duration::from_millis(100);
/// How long a read of a partition this peer leads waits for an append.
const LOCAL_WAIT_MS: u32 = 500;

/// A sink in a cluster: written where partition 0 of its topic is led (moving with that
/// lead), or on every peer (`per_peer`), every partition read through its leader.
pub async fn run_clustered(shard: Rc<Shard>, task: WriterTask) -> Result<()> {
    let mut progress = task.progress;
    while !shard.shared.control.is_stopping() {
        match runs_here(&shard, task.sink) {
            Some(lead) if !progress.done => {
                progress = serve(&shard, task.sink, &task.expected_ends, progress, lead).await?;
            }
            _ => glommio::timer::sleep(LEAD_POLL).await,
        }
    }
    Ok(())
}

/// Whether this peer writes sink `sink` now: the epoch of its topic's partition 0 lead
/// it writes for (0 for a sink on every peer), or `None`.
fn runs_here(shard: &Shard, sink: usize) -> Option<u32> {
    let sink = &shard.shared.spec.sinks[sink];
    if sink.per_peer {
        return Some(0);
    }
    match takeover::lead(shard, sink.from, 0) {
        Lead::Epoch { epoch, .. } => Some(epoch),
        // One copy: refused in a cluster by the plan unless per peer.
        Lead::Always => Some(0),
        Lead::Not => None,
    }
}

/// Writes sink `sink` on this peer while it runs here for `lead`: from what this
/// peer's file holds, every partition read through its leader. The progress stored
/// last.
async fn serve(
    shard: &Rc<Shard>,
    sink: usize,
    expected_ends: &HashSet<String>,
    mut progress: Progress,
    lead: u32,
) -> Result<Progress> {
    let spec = &shard.shared.spec;
    let sink_spec = &spec.sinks[sink];
    let Some((output, crc)) = open_clustered(shard, sink, &mut progress, lead).await? else {
        return Ok(progress);
    };
    tracing::info!(
        "sink {} writes on this peer{}, from {} bytes written",
        sink_spec.name,
        match sink_spec.per_peer {
            true => String::new(),
            false => format!(
                " as it leads partition 0 of \"{}\" in epoch {lead}",
                spec.topics[sink_spec.from].name
            ),
        },
        progress.file_len
    );
    let mut writer = Writer::new(shard, sink, output, progress, crc, expected_ends.clone());
    let stop = Rc::new(Cell::new(false));
    let (chunks, receiver) = flume::bounded(SINK_CHANNEL_CHUNKS_MAX);
    for partition in 0..writer.partitions {
        let start = writer.progress.partitions.get(&partition).copied().unwrap_or(0);
        let reading = Reading {
            sink,
            partition,
            stop: Rc::clone(&stop),
            chunks: chunks.clone(),
        };
        shard
            .tasks
            .spawn(read_partition(Rc::clone(shard), reading, start));
    }
    drop(chunks);
    while !shard.shared.control.is_stopping() && !writer.progress.done && runs_here(shard, sink) == Some(lead)
    {
        let next = futures_lite::future::or(async { Some(receiver.recv_async().await) }, async {
            glommio::timer::sleep(LEAD_POLL).await;
            None
        })
        .await;
        match next {
            // Every reader ended: the engine stops.
            Some(Err(_)) => break,
            Some(Ok(chunk)) => {
                let open = writer.apply(shard, chunk)?;
                if !open {
                    // Standard output was closed: the engine stops, nothing to commit to.
                    stop.set(true);
                    return Ok(writer.progress);
                }
            }
            None => {}
        }
        writer.commit_if_due()?;
    }
    stop.set(true);
    if writer.dirty {
        writer.commit()?;
    }
    // Dropping the file lets go of its lock.
    Ok(writer.progress)
}

/// One partition's reader of a sink in a cluster.
struct Reading {
    sink: usize,
    partition: u32,
    /// Set when the sink stops here: the reader ends.
    stop: Rc<Cell<bool>>,
    chunks: flume::Sender<SinkChunk>,
}

/// Reads a partition through its leader from `position` on, as formatted chunks, until
/// the sink stops here. A read the leader refuses is tried again (an election may be
/// under way); records retention deleted before they were read are counted and logged.
async fn read_partition(shard: Rc<Shard>, reading: Reading, mut position: u64) {
    let shared = &shard.shared;
    let sink = &shared.spec.sinks[reading.sink];
    let topic = &shared.spec.topics[sink.from].name;
    let partition = reading.partition;
    let (mut failures, mut pause) = (0u32, Duration::ZERO);
    while !reading.stop.get() && !shared.control.is_stopping() {
        let local = shared
            .peers
            .as_ref()
            .is_none_or(|peers| peers.owner(sink.from, partition).is_none());
        let order = FetchOrder {
            topic: sink.from,
            partition,
            from: FetchFrom::Offset(position),
            max_records: CHUNK_RECORDS_MAX as u32,
            max_bytes: FETCH_BYTES_MAX,
            wait_ms: if local { LOCAL_WAIT_MS } else { 0 },
            request_id: 0,
            batches: false,
        };
        let fetched = match service::fetch(&shard, order).await.and_then(takeover::decode) {
            Ok(fetched) => {
                failures = 0;
                fetched
            }
            Err(error) => {
                failures += 1;
                // Taking over, its partitions may still be moving for a moment: said once
                // that lasts.
                if failures >= 8 && failures.is_power_of_two() {
                    tracing::warn!(
                        "sink {} cannot read partition {partition} of \"{topic}\" yet ({failures} tries): {error}",
                        sink.name
                    );
                }
                glommio::timer::sleep(takeover::retry_pause(failures)).await;
                continue;
            }
        };
        if fetched.start_offset > position {
            let skipped = fetched.start_offset - position;
            shared.metrics.records_skipped.add(skipped);
            tracing::warn!(
                topic = %topic,
                partition,
                skipped,
                "retention deleted records {position}..{} before sink {} wrote them; it goes on at {}",
                fetched.start_offset,
                sink.name,
                fetched.start_offset
            );
            position = fetched.start_offset;
        }
        if fetched.records.is_empty() {
            if !local {
                pause = (pause * 2).clamp(Duration::from_millis(1), REMOTE_POLL_MAX);
                glommio::timer::sleep(pause).await;
            }
            continue;
        }
        pause = Duration::ZERO;
        let mut chunk = SinkChunk {
            partition,
            bytes: Vec::new(),
            records: 0,
            next: position,
            ends: Vec::new(),
        };
        for (offset, record) in &fetched.records {
            position = offset + 1;
            let headers = record.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
            match ended_by(headers) {
                Some(producer) => chunk.ends.push(producer.to_owned()),
                None => {
                    let line = Line {
                        offset: *offset,
                        timestamp_ms: record.timestamp_ms.unwrap_or_default(),
                        key: record.key.as_deref(),
                        value: &record.value,
                    };
                    format_line(sink.format, topic, partition, &line, &mut chunk.bytes);
                    chunk.records += 1;
                }
            }
        }
        chunk.next = position;
        if reading.chunks.send_async(chunk).await.is_err() {
            break;
        }
    }
}

/// Opens sink `sink`'s output on this peer for its lead `lead`, the file locked and
/// checked against `progress`: one that does not hold exactly what `progress` says is
/// renamed aside and `progress` starts over. `None` if the lead or the engine ends
/// while another process holds the file.
async fn open_clustered(
    shard: &Shard,
    sink: usize,
    progress: &mut Progress,
    lead: u32,
) -> Result<Option<(Output, u32)>> {
    let sink_spec = &shard.shared.spec.sinks[sink];
    let SinkKind::File(path) = &sink_spec.kind else {
        return Ok(Some((Output::Stdout, 0)));
    };
    create_parent(path)?;
    let mut said = false;
    loop {
        if shard.shared.control.is_stopping() || runs_here(shard, sink) != Some(lead) {
            return Ok(None);
        }
        let Some(file) = lock(path)? else {
            if !said {
                tracing::warn!(
                    "sink {}: another process holds {} (an earlier writer of the sink, on a path peers \
                     share?); this peer writes once it lets go",
                    sink_spec.name,
                    path.display()
                );
                said = true;
            }
            glommio::timer::sleep(LEAD_POLL).await;
            continue;
        };
        let len = file
            .metadata()
            .map_err(RuntimeError::io("query sink file", path))?
            .len();
        let holds = match progress.file_crc {
            _ if progress.file_len == 0 => len == 0,
            Some(crc) => progress.file_len <= len && prefix_crc(&file, progress.file_len, path)? == crc,
            None => false,
        };
        if !holds {
            let aside = set_aside(path)?;
            tracing::warn!(
                "sink {}: {} does not hold what this peer's progress says it wrote ({} bytes; another \
                 peer wrote it since, on a path they share, or it was changed): renamed to {} and \
                 written again from the start of \"{}\"",
                sink_spec.name,
                path.display(),
                progress.file_len,
                aside.display(),
                shard.shared.spec.topics[sink_spec.from].name
            );
            *progress = Progress::default();
            continue;
        }
        let mut file = file;
        cut(&mut file, progress.file_len, path)?;
        let crc = progress.file_crc.unwrap_or(0);
        return Ok(Some((
            Output::File {
                file,
                path: path.clone(),
            },
            crc,
        )));
    }
}

/// The file at `path`, opened (made if missing) and locked with an exclusive `flock`,
/// still the one the path names; `None` while another process holds it.
fn lock(path: &Path) -> Result<Option<File>> {
    let file = open_file(path)?;
    // SAFETY: flock on a descriptor this function owns; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(RuntimeError::io("lock sink file", path)(error));
    }
    // Renamed aside between the open and the lock: the path names another file now.
    let held = file
        .metadata()
        .map_err(RuntimeError::io("query sink file", path))?;
    match std::fs::metadata(path) {
        Ok(named) if named.dev() == held.dev() && named.ino() == held.ino() => Ok(Some(file)),
        _ => Ok(None),
    }
}

/// Renames the file at `path` to `<path>.set-aside-<ms>` (made durable) and says where.
fn set_aside(path: &Path) -> Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".set-aside-{}", crate::storage::layout::now_ms()));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside).map_err(RuntimeError::io("rename sink file aside", path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(RuntimeError::io("sync the sink directory", dir))?;
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_path_is_held_by_one_opener_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let first = lock(&path).unwrap().expect("a free path locks");
        assert!(lock(&path).unwrap().is_none(), "held by the first");
        drop(first);
        let again = lock(&path).unwrap().expect("let go with the file");
        // Renamed aside: a new file takes the path, and it is free.
        let aside = set_aside(&path).unwrap();
        assert!(aside.to_string_lossy().contains("out.txt.set-aside-"));
        assert!(lock(&path).unwrap().is_some());
        drop(again);
    }
}
