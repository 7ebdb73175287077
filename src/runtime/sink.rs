//! Sinks: `stdout` and `file`. On each shard a forwarder reads the sink topic's local
//! partitions and sends formatted lines to the sink's writer task, which owns the output.
//!
//! The file sink is exactly-once: its progress stores, with each partition's next
//! offset, the length of the file holding exactly those records, and a restart cuts the
//! file back to that length before resuming. The stdout sink is at-least-once: lines
//! printed after its last commit are printed again after a crash.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::protocol::json::record_json;

use crate::config::{SinkFormat, SinkKind};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::progress::{self, Progress};
use crate::runtime::provenance::end_marker;
use crate::runtime::reader::PartitionReader;
use crate::runtime::shard::{Backoff, Shard};
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
        reader.pause(read).await;
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
    match format {
        SinkFormat::Value => out.extend_from_slice(view.value()),
        SinkFormat::KeyValue => {
            out.extend_from_slice(view.key().unwrap_or_default());
            out.push(b'\t');
            out.extend_from_slice(view.value());
        }
        SinkFormat::Json => {
            let object = record_json(
                topic,
                partition,
                view.offset(),
                view.timestamp_ms(),
                view.key(),
                view.value(),
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

pub async fn write(shard: Rc<Shard>, task: WriterTask, receiver: flume::Receiver<SinkChunk>) -> Result<()> {
    let shared = &shard.shared;
    let spec = &shared.spec;
    let sink = &spec.sinks[task.sink];
    let partitions = spec.topics[sink.from].partitions;
    let path = progress::path(&shared.data_dir, &sink.name, "sink");
    let mut progress = task.progress;
    let mut output = open(&sink.kind, progress.file_len)?;
    let mut ends: BTreeMap<u32, HashSet<String>> = BTreeMap::new();
    for (producer, partition) in &progress.ends_seen {
        ends.entry(*partition as u32)
            .or_default()
            .insert(producer.clone());
    }
    let all_ended = |ends: &BTreeMap<u32, HashSet<String>>| {
        !task.expected_ends.is_empty()
            && (0..partitions).all(|p| {
                ends.get(&p)
                    .is_some_and(|seen| task.expected_ends.is_subset(seen))
            })
    };
    let mut last_commit = std::time::Instant::now();
    let mut idle = Backoff::default();
    let mut dirty = false;
    while !progress.done {
        let stopping = shared.control.is_stopping();
        match receiver.try_recv() {
            Ok(chunk) => {
                idle.reset();
                match write_chunk(&mut output, &chunk.bytes) {
                    Err(RuntimeError::OutputClosed) => {
                        shared.control.stop();
                        return Ok(());
                    }
                    other => other?,
                }
                shared
                    .control
                    .records_out
                    .fetch_add(chunk.records, Ordering::Relaxed);
                progress.partitions.insert(chunk.partition, chunk.next);
                for producer in chunk.ends {
                    ends.entry(chunk.partition).or_default().insert(producer);
                }
                dirty = true;
                if all_ended(&ends) {
                    progress.done = true;
                }
            }
            Err(flume::TryRecvError::Empty) if stopping => break,
            Err(flume::TryRecvError::Empty) => idle.sleep().await,
            Err(flume::TryRecvError::Disconnected) => break,
        }
        if dirty && (progress.done || last_commit.elapsed() >= spec.engine.commit_interval) {
            commit(&mut output, &mut progress, &ends, &path, shared.durable())?;
            last_commit = std::time::Instant::now();
            dirty = false;
        }
    }
    if dirty {
        commit(&mut output, &mut progress, &ends, &path, shared.durable())?;
    }
    if progress.done {
        shared.control.finished.fetch_add(1, Ordering::AcqRel);
    }
    Ok(())
}

fn open(kind: &SinkKind, file_len: u64) -> Result<Output> {
    match kind {
        SinkKind::Stdout => Ok(Output::Stdout),
        SinkKind::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(RuntimeError::io("create the sink directory", dir))?;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(RuntimeError::io("open sink file", path))?;
            // Cut what was written after the last commit: it is written again.
            file.set_len(file_len)
                .map_err(RuntimeError::io("truncate sink file", path))?;
            file.seek(SeekFrom::Start(file_len))
                .map_err(RuntimeError::io("seek in sink file", path))?;
            Ok(Output::File {
                file,
                path: path.clone(),
            })
        }
    }
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

fn commit(
    output: &mut Output,
    progress: &mut Progress,
    ends: &BTreeMap<u32, HashSet<String>>,
    path: &std::path::Path,
    durable: bool,
) -> Result<()> {
    match output {
        Output::Stdout => std::io::stdout().lock().flush().map_err(RuntimeError::Stdout)?,
        Output::File { file, path } => {
            if durable {
                file.sync_data()
                    .map_err(RuntimeError::io("sync sink file", path.as_path()))?;
            }
            progress.file_len = file
                .stream_position()
                .map_err(RuntimeError::io("query sink file", path.as_path()))?;
        }
    }
    progress.ends_seen = ends
        .iter()
        .flat_map(|(partition, producers)| producers.iter().map(move |p| (p.clone(), u64::from(*partition))))
        .collect();
    progress.ends_seen.sort();
    progress::store(path, progress, durable)
}
