//! `flowd bench ingest`: produce batches of records to the durable ack.

use std::sync::Arc;

use crate::bench::load::{self, Measured, Plan, Workload};
use crate::bench::progress::Progress;
use crate::bench::target::Endpoint;
use crate::bench::{BenchError, Target, warmup_requests};
use crate::client::{offsets, server_error};
use crate::protocol::OwnedWireRecord;
use crate::protocol::message::{Response, encode_produce, encode_produce_batch};

pub struct IngestOptions {
    pub records: u64,
    pub size: usize,
    pub batch: usize,
    pub connections: usize,
    /// Requests in flight per connection.
    pub inflight: usize,
    /// Records per second over all connections; `None`: as fast as acks come back.
    pub rate: Option<f64>,
    pub produce: ProduceKind,
    /// Closed loop: how long to spin for each ack before sleeping (`load::Plan::spin`).
    pub spin: Option<std::time::Duration>,
}

/// How the records travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProduceKind {
    /// PRODUCE_BATCH: one batch as the log stores it, appended as it came.
    Batch,
    /// PRODUCE: records one by one, re-encoded by the server.
    Records,
}

impl IngestOptions {
    /// Requests per connection: the records spread over the connections, in whole batches.
    pub fn requests(&self) -> u64 {
        self.records
            .div_ceil(self.connections.max(1) as u64)
            .div_ceil(self.batch.max(1) as u64)
    }

    /// The records a run sends: whole batches on every connection.
    pub fn sent(&self) -> u64 {
        self.requests() * self.batch.max(1) as u64 * self.connections.max(1) as u64
    }
}

/// One produce frame of `batch` records, sent again and again with its id patched.
pub struct Produce {
    frame: Vec<u8>,
    batch: u64,
}

impl Produce {
    /// A frame of `batch` records of `size` bytes each to `topic`, checked against the
    /// engine's frame limit.
    pub fn new(
        at: &Endpoint,
        topic: &str,
        batch: usize,
        size: usize,
        kind: ProduceKind,
    ) -> Result<Produce, BenchError> {
        let records: Vec<OwnedWireRecord> = (0..batch.max(1))
            .map(|i| OwnedWireRecord::value(vec![b'a' + (i % 26) as u8; size]))
            .collect();
        Produce::of(at, topic, &records, kind)
    }

    pub fn of(
        at: &Endpoint,
        topic: &str,
        records: &[OwnedWireRecord],
        kind: ProduceKind,
    ) -> Result<Produce, BenchError> {
        let mut frame = Vec::new();
        match kind {
            ProduceKind::Records => encode_produce(&mut frame, 0, topic, None, records),
            ProduceKind::Batch => encode_produce_batch(&mut frame, 0, topic, None, records, 0),
        }
        let limit = at.connect()?.metadata()?.max_frame_bytes as usize;
        if frame.len() > limit {
            return Err(BenchError::Setup(format!(
                "a batch of {} records makes a {} byte frame, over the engine's limit of {limit}; \
                 send smaller batches (--batch) or records (--size)",
                records.len(),
                frame.len(),
            )));
        }
        Ok(Produce {
            frame,
            batch: records.len() as u64,
        })
    }
}

impl Workload for Produce {
    fn encode(&self, id: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.frame);
        out[8..16].copy_from_slice(&id.to_le_bytes());
    }

    fn check(&self, response: Response) -> Result<u64, BenchError> {
        acked(response, self.batch)
    }
}

/// The records a produce of `batch` records was acked with: all of them, or an error.
pub fn acked(response: Response, batch: u64) -> Result<u64, BenchError> {
    let acked = offsets(server_error(response)?)?.len() as u64;
    if acked != batch {
        return Err(BenchError::Run(format!(
            "a produce of {batch} records was acked with {acked} offsets"
        )));
    }
    Ok(acked)
}

/// Fills the target's topic with `records` records of `size` bytes (and the warm-up's),
/// fast and not measured: what the read scenarios start from.
pub fn fill(target: &Target, records: u64, size: usize) -> Result<Measured, BenchError> {
    let options = IngestOptions {
        records,
        size,
        batch: 1000,
        connections: 1,
        inflight: 32,
        rate: None,
        produce: ProduceKind::Batch,
        spin: None,
    };
    ingest(target, &options, false)
}

/// Warms up, then produces `records` records of `size` bytes in batches; latency is
/// per request, sent (or due, at a fixed rate) to durable ack.
pub fn ingest(target: &Target, o: &IngestOptions, progress: bool) -> Result<Measured, BenchError> {
    target.partitions(&target.topic)?;
    let workload: Arc<dyn Workload> = Arc::new(Produce::new(
        &target.at,
        &target.topic,
        o.batch,
        o.size,
        o.produce,
    )?);
    let plan = Plan {
        connections: o.connections.max(1),
        requests: o.requests(),
        inflight: o.inflight.max(1),
        rate: o.rate.map(|r| r / o.batch.max(1) as f64),
        spin: o.spin,
    };
    let warmup = Plan {
        requests: warmup_requests(plan.requests, o.batch),
        rate: None,
        ..plan
    };
    load::drive(&target.at, warmup, workload.clone(), &Progress::hidden())?;
    let bar = if progress {
        Progress::new(o.sent(), "ingest")
    } else {
        Progress::hidden()
    };
    let measured = load::drive(&target.at, plan, workload, &bar);
    bar.finish();
    measured
}
