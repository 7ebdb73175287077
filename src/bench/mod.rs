//! `flowd bench`: load through the real client protocol against an engine started in
//! this process on a fresh temporary data dir (or a running one, `--to`), with
//! hdrhistogram latencies. Scenarios here: `ingest` (produce to durable ack) and
//! `reqreply` (a job to its answer).

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{Client, ClientError, offsets, server_error};
use crate::config;
use crate::protocol::OwnedWireRecord;
use crate::protocol::message::encode_produce;
use crate::runtime::{self, Engine, RuntimeError};
use crate::storage::Durability;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot set up the benchmark: {0}")]
    Setup(String),
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

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// An engine started for one benchmark, stopped when dropped.
pub struct Target {
    pub addr: String,
    pub topic: String,
    engine: Option<(Engine, tempfile::TempDir)>,
}

impl Target {
    /// A fresh engine on a temporary data dir with a `bench` topic (one partition per
    /// core) and an `echo` job answered straight from its topic.
    pub fn start(durability: Durability) -> Result<Target, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("flowd-bench-")
            .tempdir()
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mode = match durability {
            Durability::Every => "every",
            Durability::Group => "group",
            Durability::None => "none",
        };
        let text = format!(
            r#"
[engine]
data_dir = "{dir}"
durability = "{mode}"
[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
[[topic]]
name = "bench"
partitions = {cores}
[[topic]]
name = "bench-jobs"
partitions = {cores}
[[job]]
name = "echo"
topic = "bench-jobs"
[[stage]]
name = "echo"
from = "bench-jobs"
op = "reply"
"#,
            dir = dir.path().join("data").display()
        );
        let path = dir.path().join("bench.toml");
        let spec = config::parse(&path, &text).map_err(|e| BenchError::Setup(e.to_string()))?;
        let engine = runtime::start(spec)?;
        let addr = engine.bound.tcp.expect("bench engine listens").to_string();
        Ok(Target {
            addr,
            topic: "bench".into(),
            engine: Some((engine, dir)),
        })
    }

    pub fn remote(addr: String, topic: String) -> Target {
        Target {
            addr,
            topic,
            engine: None,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((engine, _dir)) = self.engine.take() {
            engine.stop();
            let _ = engine.wait(&AtomicBool::new(true));
        }
    }
}

pub struct IngestOptions {
    pub records: u64,
    pub size: usize,
    pub batch: usize,
    pub connections: usize,
    /// Requests in flight per connection.
    pub inflight: usize,
}

/// Produces `records` records of `size` bytes in batches over `connections`
/// connections; latency is request sent to durable ack, per batch.
pub fn ingest(target: &Target, o: &IngestOptions) -> Result<(f64, Histogram<u64>), BenchError> {
    let mut client = Client::connect(&target.addr)?;
    let metadata = client.metadata()?;
    if !metadata.topics.iter().any(|(n, _)| *n == target.topic) {
        return Err(BenchError::Setup(format!(
            "the engine at {} has no topic \"{}\"; add it to its dataflow or pass --topic",
            target.addr, target.topic
        )));
    }
    let batch = o.batch.max(1);
    let mut frame = Vec::new();
    let records: Vec<OwnedWireRecord> = (0..batch)
        .map(|i| OwnedWireRecord::value(vec![b'a' + (i % 26) as u8; o.size]))
        .collect();
    encode_produce(&mut frame, 0, &target.topic, None, &records);
    if frame.len() > metadata.max_frame_bytes as usize {
        return Err(BenchError::Setup(format!(
            "a batch of {batch} records of {} bytes makes a {} byte frame, over the engine's limit of {}",
            o.size,
            frame.len(),
            metadata.max_frame_bytes
        )));
    }
    let per_connection = o.records.div_ceil(o.connections as u64).div_ceil(batch as u64);
    // Warm-up: a tenth of the run, at most 100k records, not measured.
    let warmup = (per_connection / 10).min((100_000 / batch as u64).max(1));
    run_batches(&target.addr, &frame, warmup, o.inflight)?;
    let started = Instant::now();
    let threads: Vec<_> = (0..o.connections)
        .map(|_| {
            let (addr, frame, inflight) = (target.addr.clone(), frame.clone(), o.inflight);
            std::thread::spawn(move || run_batches(&addr, &frame, per_connection, inflight))
        })
        .collect();
    let mut all = histogram();
    for t in threads {
        let h = t
            .join()
            .map_err(|_| BenchError::Setup("a load thread panicked".into()))??;
        all.add(&h).expect("same bounds");
    }
    Ok((started.elapsed().as_secs_f64(), all))
}

fn run_batches(
    addr: &str,
    frame: &[u8],
    batches: u64,
    inflight: usize,
) -> Result<Histogram<u64>, BenchError> {
    let mut client = Client::connect(addr)?;
    let mut h = histogram();
    let mut frame = frame.to_vec();
    let mut sent: std::collections::VecDeque<(u64, Instant)> = std::collections::VecDeque::new();
    let mut next = 0;
    let mut done = 0;
    while done < batches {
        while next < batches && sent.len() < inflight.max(1) {
            frame[8..16].copy_from_slice(&next.to_le_bytes());
            client.send_raw(&frame)?;
            sent.push_back((next, Instant::now()));
            next += 1;
        }
        let (id, response) = client.recv()?;
        let at = sent
            .iter()
            .position(|(i, _)| *i == id)
            .ok_or_else(|| BenchError::Setup(format!("an ack for unknown request {id}")))?;
        let (_, t0) = sent.remove(at).expect("present");
        offsets(server_error(response)?)?;
        h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        done += 1;
    }
    Ok(h)
}

/// Sends `requests` jobs to `echo`, one in flight per connection; latency per job.
pub fn reqreply(
    target: &Target,
    requests: u64,
    concurrency: usize,
    size: usize,
) -> Result<(f64, Histogram<u64>), BenchError> {
    let per = requests.div_ceil(concurrency as u64);
    let value = vec![b'x'; size];
    {
        let mut client = Client::connect(&target.addr)?;
        for _ in 0..per.min(1000) {
            client.job("echo", None, &value, Some(Duration::from_secs(10)))?;
        }
    }
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, value) = (target.addr.clone(), value.clone());
            std::thread::spawn(move || -> Result<Histogram<u64>, BenchError> {
                let mut client = Client::connect(&addr)?;
                let mut h = histogram();
                for _ in 0..per {
                    let t0 = Instant::now();
                    let answer = client.job("echo", None, &value, Some(Duration::from_secs(10)))?;
                    if answer.value != value {
                        return Err(BenchError::Setup("the echo job answered something else".into()));
                    }
                    h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                }
                Ok(h)
            })
        })
        .collect();
    let mut all = histogram();
    for t in threads {
        let h = t
            .join()
            .map_err(|_| BenchError::Setup("a load thread panicked".into()))??;
        all.add(&h).expect("same bounds");
    }
    Ok((started.elapsed().as_secs_f64(), all))
}

pub fn report(
    scenario: &str,
    records: u64,
    bytes: u64,
    seconds: f64,
    h: &Histogram<u64>,
    config: serde_json::Value,
) -> Report {
    Report {
        scenario: scenario.into(),
        records,
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: bytes as f64 / seconds / 1e6,
        latency_us: Latencies::of(h),
        config,
    }
}

/// Fills the target's topic with `records` records, then claims and acks them all in
/// batches of `batch` over one connection, as a new consumer: per partition one claim in
/// flight, and each ack sent with the next claim. Latency: claim sent to its ack back.
pub fn consume(
    target: &Target,
    records: u64,
    size: usize,
    batch: u32,
) -> Result<(f64, Histogram<u64>, u64), BenchError> {
    use crate::consumer::Options;
    use crate::protocol::consumer::{ClaimRequest, ConsumerRef};
    use crate::protocol::{Request, message::Response};

    let fill = IngestOptions {
        records,
        size,
        batch: 1000,
        connections: 1,
        inflight: 32,
    };
    ingest(target, &fill)?;
    let mut client = Client::connect(&target.addr)?;
    let partitions = client
        .metadata()?
        .topics
        .iter()
        .find(|(n, _)| *n == target.topic)
        .map(|(_, p)| *p)
        .ok_or_else(|| BenchError::Setup(format!("no topic \"{}\"", target.topic)))?;
    let group = format!(
        "bench-{}-{}",
        std::process::id(),
        crate::storage::layout::now_ms()
    );
    let claim = |client: &mut Client, p: u32| {
        client.send(&Request::Claim(ClaimRequest {
            topic: &target.topic,
            group: &group,
            partition: Some(p),
            count: batch,
            max_bytes: 1 << 20,
            create: Some(Options::default()),
        }))
    };
    let mut h = histogram();
    // Per request id: (partition, claim sent at).
    let mut claims: std::collections::HashMap<u64, (u32, Instant)> = std::collections::HashMap::new();
    let mut acks: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let started = Instant::now();
    for p in 0..partitions {
        let id = claim(&mut client, p)?;
        claims.insert(id, (p, Instant::now()));
    }
    client.flush()?;
    let mut consumed = 0u64;
    let mut empty = vec![false; partitions as usize];
    while !(claims.is_empty() && acks.is_empty()) {
        let (id, response) = client.recv()?;
        match server_error(response)? {
            Response::Claimed(c) => {
                let (p, t0) = claims
                    .remove(&id)
                    .ok_or_else(|| BenchError::Setup(format!("unknown claim {id}")))?;
                if c.partition.is_none() {
                    empty[p as usize] = true;
                    continue;
                }
                consumed += c.records.len() as u64;
                let ack = client.send(&Request::Ack(ConsumerRef {
                    topic: &target.topic,
                    group: &group,
                    partition: p,
                }))?;
                acks.insert(ack, t0);
                if consumed < records {
                    let id = claim(&mut client, p)?;
                    claims.insert(id, (p, Instant::now()));
                }
                client.flush()?;
            }
            Response::Acked { .. } => {
                let t0 = acks
                    .remove(&id)
                    .ok_or_else(|| BenchError::Setup(format!("unknown ack {id}")))?;
                h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
            }
            other => return Err(BenchError::Setup(format!("an unexpected answer: {other:?}"))),
        }
    }
    Ok((started.elapsed().as_secs_f64(), h, consumed))
}
