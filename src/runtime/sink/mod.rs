//! Sinks: `stdout` and `file`. On each shard a forwarder reads the sink topic's local
//! partitions and sends formatted lines to the sink's writer task, which owns the output.
//!
//! The file sink is exactly-once: its progress stores, with each partition's next
//! offset, the length of the file holding exactly those records (and their CRC32C), and
//! a restart cuts the file back to that length before resuming. The stdout sink is
//! at-least-once: lines printed after its last commit are printed again after a crash.
//!
//! In a cluster a sink runs where partition 0 of its topic is led, or on every peer
//! (`clustered.rs`).

mod clustered;

pub use clustered::run_clustered;

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::protocol::json::record_json;

use crate::config::{SinkFormat, SinkKind};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::progress::{self, Progress};
use crate::runtime::provenance::end_marker;
use crate::runtime::reader::PartitionReader;
use crate::runtime::shard::Shard;
use crate::storage::RecordView;

/// Records a forwarder formats per chunk.
const CHUNK_RECORDS_MAX: usize = 1024;
/// Chunks a sink channel holds before forwarders wait.
pub const SINK_CHANNEL_CHUNKS_MAX: usize = 16;

/// Formatted lines from one partition of the sink's topic.
#[derive(Debug)]
pub struct SinkChunk {
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub records: u64,
    /// The partition offset after the last record in `bytes`.
    pub next: u64,
    /// End markers met, by producer.
    pub ends: Vec<String>,
}

pub struct ForwarderTask {
    pub sink: usize,
    pub partition: u32,
    pub start: u64,
}

pub async fn forward(shard: Rc<Shard>, task: ForwarderTask) -> Result<()> {
    let shared = &shard.shared;
    let sink = &shared.spec.sinks[task.sink];
    let topic = &shared.spec.topics[sink.from].name;
    let mut reader = PartitionReader::new(
        Rc::clone(shard.partition(sink.from, task.partition)),
        reader_name(&sink.name),
        task.start,
    );
    let mut position = task.start;
    let sender = shared.sinks[task.sink].clone();
    while !shared.control.is_stopping() {
        let mut chunk = SinkChunk {
            partition: task.partition,
            bytes: Vec::new(),
            records: 0,
            next: position,
            ends: Vec::new(),
        };
        let mut read = 0;
        position = reader.start(&shard, position);
        {
            let log = reader.log();
            for view in reader.readable(&log, position).take(CHUNK_RECORDS_MAX) {
                read += 1;
                position = view.offset() + 1;
                match end_marker(&view) {
                    Some(producer) => chunk.ends.push(producer.to_owned()),
                    None => {
                        format_record(sink.format, topic, task.partition, &view, &mut chunk.bytes);
                        chunk.records += 1;
                    }
                }
            }
        }
        reader.pause(&shard, read, None).await;
        if read == 0 {
            continue;
        }
        chunk.next = position;
        reader.publish(position);
        if sender.send_async(chunk).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// The name a sink reads its topic's partitions under (status, lag).
pub fn reader_name(sink: &str) -> String {
    format!("{sink} (sink)")
}

/// One line per record, as the sink's format says.
pub fn format_record(
    format: SinkFormat,
    topic: &str,
    partition: u32,
    view: &RecordView<'_>,
    out: &mut Vec<u8>,
) {
    let line = Line {
        offset: view.offset(),
        timestamp_ms: view.timestamp_ms(),
        key: view.key(),
        value: view.value(),
    };
    format_line(format, topic, partition, &line, out);
}

/// What of a record a sink's line shows.
struct Line<'a> {
    offset: u64,
    timestamp_ms: i64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
}

fn format_line(format: SinkFormat, topic: &str, partition: u32, line: &Line<'_>, out: &mut Vec<u8>) {
    match format {
        SinkFormat::Value => out.extend_from_slice(line.value),
        SinkFormat::KeyValue => {
            out.extend_from_slice(line.key.unwrap_or_default());
            out.push(b'\t');
            out.extend_from_slice(line.value);
        }
        SinkFormat::Json => {
            let object = record_json(
                topic,
                partition,
                line.offset,
                line.timestamp_ms,
                line.key,
                line.value,
            );
            serde_json::to_writer(&mut *out, &object).expect("writing JSON to a Vec cannot fail");
        }
    }
    out.push(b'\n');
}

pub struct WriterTask {
    pub sink: usize,
    pub progress: Progress,
    /// Producers whose end markers, in every partition, end the sink's input.
    pub expected_ends: HashSet<String>,
}

enum Output {
    Stdout,
    File { file: File, path: PathBuf },
}

/// A sink's output and what it holds: chunks written, committed now and then.
struct Writer {
    output: Output,
    progress: Progress,
    /// Where `progress` is stored.
    path: PathBuf,
    ends: BTreeMap<u32, HashSet<String>>,
    expected_ends: HashSet<String>,
    partitions: u32,
    durable: bool,
    commit_interval: Duration,
    last_commit: Instant,
    dirty: bool,
    /// CRC32C of the file's bytes so far (file sinks).
    crc: u32,
}

impl Writer {
    fn new(
        shard: &Shard,
        sink: usize,
        output: Output,
        progress: Progress,
        crc: u32,
        expected_ends: HashSet<String>,
    ) -> Writer {
        let shared = &shard.shared;
        let sink = &shared.spec.sinks[sink];
        let mut ends: BTreeMap<u32, HashSet<String>> = BTreeMap::new();
        for (producer, partition) in &progress.ends_seen {
            ends.entry(*partition as u32)
                .or_default()
                .insert(producer.clone());
        }
        Writer {
            output,
            progress,
            path: progress::path(&shared.data_dir, &sink.name, "sink"),
            ends,
            expected_ends,
            partitions: shared.spec.topics[sink.from].partitions,
            durable: shared.durable(),
            commit_interval: shared.spec.engine.commit_interval,
            last_commit: Instant::now(),
            dirty: false,
            crc,
        }
    }

    /// Whether every expected producer's end marker came in every partition.
    fn all_ended(&self) -> bool {
        !self.expected_ends.is_empty()
            && (0..self.partitions).all(|p| {
                self.ends
                    .get(&p)
                    .is_some_and(|seen| self.expected_ends.is_subset(seen))
            })
    }

    /// Writes `chunk` out. `false`: standard output was closed, and the engine stops.
    fn apply(&mut self, shard: &Shard, chunk: SinkChunk) -> Result<bool> {
        match write_chunk(&mut self.output, &chunk.bytes) {
            Err(RuntimeError::OutputClosed) => {
                shard.shared.control.stop();
                return Ok(false);
            }
            other => other?,
        }
        if matches!(self.output, Output::File { .. }) {
            self.crc = crc32c::crc32c_append(self.crc, &chunk.bytes);
        }
        shard
            .shared
            .control
            .records_out
            .fetch_add(chunk.records, Ordering::Relaxed);
        self.progress.partitions.insert(chunk.partition, chunk.next);
        for producer in chunk.ends {
            self.ends.entry(chunk.partition).or_default().insert(producer);
        }
        self.dirty = true;
        if self.all_ended() {
            self.progress.done = true;
        }
        Ok(true)
    }

    fn commit_if_due(&mut self) -> Result<()> {
        if self
            .commit_due()
            .is_some_and(|due| self.progress.done || Instant::now() >= due)
        {
            self.commit()?;
        }
        Ok(())
    }

    /// When what was written is next to be committed; none while nothing is.
    fn commit_due(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_commit + self.commit_interval)
    }

    /// Makes what was written durable (with `durable`), then stores the progress that
    /// says so.
    fn commit(&mut self) -> Result<()> {
        match &mut self.output {
            Output::Stdout => std::io::stdout().lock().flush().map_err(RuntimeError::Stdout)?,
            Output::File { file, path } => {
                if self.durable {
                    file.sync_data()
                        .map_err(RuntimeError::io("sync sink file", path.as_path()))?;
                }
                self.progress.file_len = file
                    .stream_position()
                    .map_err(RuntimeError::io("query sink file", path.as_path()))?;
                self.progress.file_crc = Some(self.crc);
            }
        }
        self.progress.ends_seen = self
            .ends
            .iter()
            .flat_map(|(partition, producers)| {
                producers.iter().map(move |p| (p.clone(), u64::from(*partition)))
            })
            .collect();
        self.progress.ends_seen.sort();
        progress::store(&self.path, &self.progress, self.durable)?;
        self.last_commit = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

pub async fn write(shard: Rc<Shard>, task: WriterTask, receiver: flume::Receiver<SinkChunk>) -> Result<()> {
    let sink = &shard.shared.spec.sinks[task.sink];
    let (output, crc) = open(&sink.kind, &task.progress)?;
    let mut writer = Writer::new(&shard, task.sink, output, task.progress, crc, task.expected_ends);
    let control = &shard.shared.control;
    while !writer.progress.done {
        let stopping = control.is_stopping();
        let chunk = match receiver.try_recv() {
            Ok(chunk) => Some(chunk),
            Err(flume::TryRecvError::Empty) if stopping => break,
            // Nothing waiting: sleep until a chunk comes, the stop, or the commit of
            // what was written is due (no timer while nothing is to commit).
            Err(flume::TryRecvError::Empty) => {
                let due = writer.commit_due();
                let woke = futures_lite::future::or(async { Some(receiver.recv_async().await) }, async {
                    control.until_stopping_or(due).await;
                    None
                });
                match woke.await {
                    Some(Ok(chunk)) => Some(chunk),
                    Some(Err(flume::RecvError::Disconnected)) => break,
                    None => None,
                }
            }
            Err(flume::TryRecvError::Disconnected) => break,
        };
        if let Some(chunk) = chunk
            && !writer.apply(&shard, chunk)?
        {
            return Ok(());
        }
        writer.commit_if_due()?;
    }
    if writer.dirty {
        writer.commit()?;
    }
    if writer.progress.done {
        shard.shared.control.finish_one();
    }
    Ok(())
}

/// Opens the output at the length the progress says, and the CRC of what it holds.
fn open(kind: &SinkKind, progress: &Progress) -> Result<(Output, u32)> {
    match kind {
        SinkKind::Stdout => Ok((Output::Stdout, 0)),
        SinkKind::File(path) => {
            create_parent(path)?;
            let mut file = open_file(path)?;
            // Cut what was written after the last commit: it is written again.
            cut(&mut file, progress.file_len, path)?;
            // A progress stored before the CRC was kept: reckon it once.
            let crc = match progress.file_crc {
                Some(crc) => crc,
                None => prefix_crc(&file, progress.file_len, path)?,
            };
            Ok((
                Output::File {
                    file,
                    path: path.clone(),
                },
                crc,
            ))
        }
    }
}

/// The sink file at `path`, made if missing, never truncated on open.
fn open_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(RuntimeError::io("open sink file", path))
}

/// Cuts `file` to `len` bytes and writes on from there.
fn cut(file: &mut File, len: u64, path: &Path) -> Result<()> {
    file.set_len(len)
        .map_err(RuntimeError::io("truncate sink file", path))?;
    file.seek(SeekFrom::Start(len))
        .map_err(RuntimeError::io("seek in sink file", path))?;
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(RuntimeError::io("create the sink directory", dir))?;
    }
    Ok(())
}

/// CRC32C of the first `len` bytes of `file` (fewer if it is shorter), read in pieces.
fn prefix_crc(file: &File, len: u64, path: &Path) -> Result<u32> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut crc, mut at) = (0u32, 0u64);
    while at < len {
        let want = (len - at).min(buffer.len() as u64) as usize;
        let n = file
            .read_at(&mut buffer[..want], at)
            .map_err(RuntimeError::io("read sink file", path))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        at += n as u64;
    }
    Ok(crc)
}

fn write_chunk(output: &mut Output, bytes: &[u8]) -> Result<()> {
    match output {
        Output::Stdout => match std::io::stdout().lock().write_all(bytes) {
            // The reader went away (`| head`): like any Unix filter, stop writing.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(RuntimeError::OutputClosed),
            other => other.map_err(RuntimeError::Stdout),
        },
        Output::File { file, path } => file
            .write_all(bytes)
            .map_err(RuntimeError::io("write sink file", path.as_path())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_crc_covers_exactly_the_bytes_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        for len in [0, 1, 1 << 20, (1 << 20) + 7, bytes.len() as u64] {
            assert_eq!(
                prefix_crc(&file, len, &path).unwrap(),
                crc32c::crc32c(&bytes[..len as usize])
            );
        }
        let split = crc32c::crc32c_append(crc32c::crc32c(&bytes[..10]), &bytes[10..20]);
        assert_eq!(
            split,
            crc32c::crc32c(&bytes[..20]),
            "appended CRCs equal the whole's"
        );
    }
}
