//! `flowd bench`: load through the real client protocol against an engine started in
//! this process on a fresh temporary data dir (or a running one, `--to`), with
//! hdrhistogram latencies (DESIGN.md section 8). Scenarios: `ingest` (produce to durable
//! ack), `consume` (claim and ack), `fetch` (read stored batches, no acks), `pipeline` (through a dataflow's stages), `exec`
//! (through worker processes; the pipeline scenario with an exec stage) and `reqreply`
//! (a job to its answer).

pub mod consume;
pub mod echo_worker;
pub mod fetch;
pub mod ingest;
pub mod load;
pub mod pipeline;
pub mod progress;
pub mod reqreply;
pub mod target;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::ClientError;
use crate::runtime::RuntimeError;

pub use consume::consume;
pub use fetch::fetch;
pub use ingest::{IngestOptions, ProduceKind, ingest};
pub use load::Measured;
pub use pipeline::{PipelineOptions, pipeline};
pub use reqreply::{ReqreplyOptions, reqreply};
pub use target::{Endpoint, ExecStage, Stages, Target};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot set up the benchmark: {0}")]
    Setup(String),
    #[error("the benchmark failed: {0}")]
    Run(String),
}

/// What `--json` prints (DESIGN.md section 8).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub records: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_us: Latencies,
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latencies {
    fn of(h: &Histogram<u64>) -> Latencies {
        Latencies {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The warm-up of a run of `requests` requests of `batch` records: a tenth of the
/// run, at most 100k records (at least one request), sent and not measured.
pub fn warmup_requests(requests: u64, batch: usize) -> u64 {
    (requests / 10).clamp(1, (100_000 / batch.max(1) as u64).max(1))
}

/// The report of a measured run of records of `size` bytes.
pub fn report(scenario: &str, m: &Measured, size: usize, config: serde_json::Value) -> Report {
    let seconds = m.seconds.max(1e-9);
    Report {
        scenario: scenario.into(),
        records: m.records,
        seconds: m.seconds,
        records_per_sec: m.records as f64 / seconds,
        mb_per_sec: (m.records * size as u64) as f64 / seconds / 1e6,
        latency_us: Latencies::of(&m.latency),
        config,
    }
}
