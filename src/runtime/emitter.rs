//! The write side of a producer: routes outputs to partitions, drops the ones a replay
//! already wrote, batches per partition, and sends batches to their owner shards.

use std::sync::Arc;

use crate::config::{Part, Route, Selector};
use crate::ops::jq::JqProgram;
use crate::ops::key_by::select;
use crate::ops::{OpError, Output};
use crate::runtime::error::Result;
use crate::runtime::mesh::{Ack, Batch, Generation, Mesh, OwnedRecord, Payload};
use crate::runtime::placement::{partition_of_bytes, spread_partition};
use crate::runtime::provenance::{self, END_HEADER, SOURCE_HEADER};
use crate::runtime::reply::REPLY_HEADER;

/// Records buffered for one partition before a flush is due.
pub const BATCH_RECORDS_MAX: usize = 4096;
/// Bytes buffered for one partition before a flush is due.
pub const BATCH_BYTES_MAX: usize = 1 << 20;

enum Router {
    Spread,
    Broadcast,
    Part(Part),
    Jq(JqProgram),
}

pub struct Emitter {
    producer: String,
    partitions: u32,
    topic: usize,
    mesh: Mesh,
    router: Router,
    /// Per partition: outputs of inputs below this are already there (replay).
    skip: Vec<u64>,
    buffers: Vec<Vec<OwnedRecord>>,
    buffered_bytes: Vec<usize>,
    /// Per partition: one past the input offset that produced the last buffered record.
    buffered_end: Vec<u64>,
    generation: Arc<Generation>,
    /// The reply address of the job the current input belongs to, copied onto every
    /// output so that a `reply` stage downstream can answer it.
    reply: Option<Vec<u8>>,
    /// Headers copied onto every output from here on (a dead letter's reason and origin).
    headers: Vec<(&'static str, Vec<u8>)>,
    /// Records this producer wrote (not counting replayed ones it dropped).
    pub records_out: u64,
}

impl Emitter {
    pub fn new(
        producer: String,
        topic: usize,
        partitions: u32,
        route: &Route,
        mesh: &Mesh,
    ) -> Result<Emitter, OpError> {
        let router = match route {
            Route::Spread => Router::Spread,
            Route::Broadcast => Router::Broadcast,
            Route::ShardBy(Selector::Part(part)) => Router::Part(*part),
            Route::ShardBy(Selector::Jq(code)) => Router::Jq(JqProgram::compile(code).map_err(OpError)?),
        };
        let n = partitions as usize;
        Ok(Emitter {
            producer,
            partitions,
            topic,
            mesh: mesh.clone(),
            router,
            skip: vec![0; n],
            buffers: (0..n).map(|_| Vec::new()).collect(),
            buffered_bytes: vec![0; n],
            buffered_end: vec![0; n],
            generation: Generation::new(partitions),
            reply: None,
            headers: Vec::new(),
            records_out: 0,
        })
    }

    /// Outputs of inputs below `skip[partition]` are dropped: a replay already wrote them.
    pub fn set_skip(&mut self, skip: Vec<u64>) {
        assert_eq!(
            skip.len(),
            self.partitions as usize,
            "one skip point per partition"
        );
        self.skip = skip;
    }

    /// Sets the reply address of the input whose outputs come next (`None`: not a job).
    pub fn set_reply(&mut self, reply: Option<&[u8]>) {
        match (reply, &mut self.reply) {
            (None, slot) => *slot = None,
            (Some(new), Some(old)) if old.as_slice() == new => {}
            (Some(new), slot) => *slot = Some(new.to_vec()),
        }
    }

    /// Sets headers copied onto the outputs that come next (empty: none).
    pub fn set_headers(&mut self, headers: Vec<(&'static str, Vec<u8>)>) {
        self.headers = headers;
    }

    /// Switches to another producer id (a directory source moving to its next file).
    pub fn set_producer(&mut self, producer: String, skip: Vec<u64>) {
        assert!(
            self.buffers.iter().all(Vec::is_empty),
            "flush before switching producers"
        );
        self.producer = producer;
        self.set_skip(skip);
    }

    /// Routes one output of the input at `produced_by`; `index` counts the outputs of
    /// that input so far. A routing error (a jq selector failing) drops the record.
    pub fn emit(&mut self, produced_by: u64, index: usize, output: Output) -> Result<(), OpError> {
        match &self.router {
            Router::Broadcast => {
                for q in 0..self.partitions {
                    self.push(q, produced_by, &output);
                }
                return Ok(());
            }
            Router::Spread => {
                let q = spread_partition(produced_by, index, self.partitions);
                self.push_owned(q, produced_by, output);
            }
            Router::Part(part) => {
                let bytes = match part {
                    Part::Key => output.key.as_deref().unwrap_or_default(),
                    Part::Value => &output.value,
                };
                let q = partition_of_bytes(bytes, self.partitions);
                self.push_owned(q, produced_by, output);
            }
            Router::Jq(program) => {
                let q = partition_of_bytes(&select(program, &output.value)?, self.partitions);
                self.push_owned(q, produced_by, output);
            }
        }
        Ok(())
    }

    /// Writes an end-of-input marker into every partition.
    pub fn emit_end(&mut self, produced_by: u64, timestamp_ms: i64) {
        for q in 0..self.partitions {
            if produced_by < self.skip[q as usize] {
                continue;
            }
            let marker = OwnedRecord {
                timestamp_ms,
                key: None,
                value: Vec::new(),
                headers: vec![(END_HEADER, self.producer.as_bytes().to_vec())],
            };
            self.buffer(q, produced_by, marker);
        }
    }

    fn push(&mut self, q: u32, produced_by: u64, output: &Output) {
        if produced_by >= self.skip[q as usize] {
            let record = to_record(output.clone(), self.reply.as_deref(), &self.headers);
            self.buffer(q, produced_by, record);
        }
    }

    fn push_owned(&mut self, q: u32, produced_by: u64, output: Output) {
        if produced_by >= self.skip[q as usize] {
            let record = to_record(output, self.reply.as_deref(), &self.headers);
            self.buffer(q, produced_by, record);
        }
    }

    fn buffer(&mut self, q: u32, produced_by: u64, record: OwnedRecord) {
        let q = q as usize;
        self.buffered_bytes[q] += record.byte_len();
        self.buffered_end[q] = produced_by + 1;
        self.buffers[q].push(record);
    }

    /// Whether a flush is due; checked between inputs, never inside one, so that a batch
    /// always holds every output of each input in it.
    pub fn is_full(&self) -> bool {
        self.buffers
            .iter()
            .zip(&self.buffered_bytes)
            .any(|(b, &bytes)| b.len() >= BATCH_RECORDS_MAX || bytes >= BATCH_BYTES_MAX)
    }

    /// Sends every buffered batch to its owner shard, waiting while a channel is full.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        for q in 0..self.partitions as usize {
            if self.buffers[q].is_empty() {
                continue;
            }
            let mut records = std::mem::take(&mut self.buffers[q]);
            self.buffered_bytes[q] = 0;
            let stamp = provenance::encode(&self.producer, self.buffered_end[q]);
            records
                .last_mut()
                .expect("not empty")
                .headers
                .push((SOURCE_HEADER, stamp));
            self.records_out += records.len() as u64;
            self.generation.sent();
            let batch = Batch::new(
                q as u32,
                Payload::Owned(records),
                Ack::Generation(Arc::clone(&self.generation)),
            );
            self.mesh
                .sender(self.topic, q as u32)
                .send_async(batch)
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Starts a new generation and returns the old one, whose batches the caller waits
    /// on before storing progress that covers them.
    pub fn rotate(&mut self) -> Arc<Generation> {
        std::mem::replace(&mut self.generation, Generation::new(self.partitions))
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }
}

/// The destination shard stopped: the engine is shutting down.
#[derive(Debug, Clone, Copy)]
pub struct Closed;

fn to_record(output: Output, reply: Option<&[u8]>, extra: &[(&'static str, Vec<u8>)]) -> OwnedRecord {
    let mut headers: Vec<(&'static str, Vec<u8>)> = reply
        .map(|r| vec![(REPLY_HEADER, r.to_vec())])
        .unwrap_or_default();
    headers.extend(extra.iter().cloned());
    OwnedRecord {
        timestamp_ms: output.timestamp_ms,
        key: output.key,
        value: output.value,
        headers,
    }
}
