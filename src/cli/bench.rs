//! `flowd bench ingest|consume|pipeline|exec|reqreply [...] [--json]`: drive an engine (in-process by default,
//! `--to ADDR` for a running one) and report throughput and latency (DESIGN.md 8).

use std::process::ExitCode;

use std::path::PathBuf;

use crate::bench::{
    self, ExecStage, IngestOptions, PipelineOptions, Report, ReqreplyOptions, Stages, Target,
};
use crate::cli::CliError;
use crate::config::ExecProtocol;
use crate::storage::Durability;

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Produce records to durable ack over loopback TCP.
    Ingest {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Requests in flight per connection, at most (default: 1 with --batch 1, else 32).
        #[arg(long)]
        inflight: Option<usize>,
        /// A fixed rate in records per second over all connections (open loop; latency
        /// from when each request was due). Default: as fast as acks come back.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// How records travel: `batch` (one batch as the log stores it, appended as it
        /// came) or `records` (the PRODUCE request, re-encoded by the server).
        #[arg(long, value_enum, default_value = "batch")]
        produce: bench::ProduceKind,
        /// Closed loop: spin up to this many microseconds for each ack before sleeping
        /// in read, so a round trip does not pay the client's wake-up (costs a core;
        /// best with the client and the engine on CPUs of their own). Closed loop only:
        /// ignored with --rate. Default: 0.
        #[arg(long, default_value_t = 0, value_name = "MICROS")]
        spin_us: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Fill a topic, then claim and ack every record as a new consumer over one connection.
    Consume {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        common: Common,
    },
    /// Fill a topic, then read all of it back as stored batches (FETCH_BATCHES): no
    /// consumer, no acks; one connection per partition, one fetch in flight on each.
    Fetch {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        common: Common,
    },
    /// Produce into a dataflow's input topic and read its output topic: end-to-end
    /// throughput and latency through the stages.
    Pipeline {
        // Its values are JSON objects padded to `--size` bytes.
        #[command(flatten)]
        load: Load,
        /// Run this dataflow instead of the built-in one (bench -> key_by -> dedupe ->
        /// bench-out); its data dir is replaced by a temporary one.
        #[arg(long, value_name = "FILE", conflicts_with = "to")]
        dataflow: Option<PathBuf>,
        /// The topic the last stage writes.
        #[arg(long, default_value = "bench-out")]
        output: String,
        /// Outputs to wait for (default: one per input record).
        #[arg(long)]
        expect: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Produce into `bench`, through an exec stage of worker processes, and read
    /// `bench-out`: end-to-end throughput and latency through the workers.
    Exec {
        #[command(flatten)]
        load: Load,
        /// The worker protocol: batched (binary frames) or json (JSON lines).
        #[arg(long, default_value = "batched", value_parser = parse_protocol)]
        protocol: ExecProtocol,
        /// The worker's command line, split on spaces (default: `flowd bench echo-worker`,
        /// which answers each record with itself).
        #[arg(long, value_name = "COMMAND")]
        worker: Option<String>,
        /// Worker processes (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Records in flight per worker (default: the exec operator's).
        #[arg(long)]
        concurrency: Option<usize>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The worker `flowd bench exec` runs by default: answers every record with itself.
    #[command(name = "echo-worker")]
    EchoWorker {
        #[arg(long, default_value = "batched", value_parser = parse_protocol)]
        protocol: ExecProtocol,
    },
    /// Request/reply jobs to an echo job: one in flight per connection, or at a fixed rate.
    Reqreply {
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        /// Connections.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// A fixed rate in jobs per second over all connections (open loop; latency from
        /// when each job was due).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// The job to call; it must answer with its input unless --any-answer.
        #[arg(long, default_value = "echo")]
        job: String,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// The request each job carries (default: --size bytes of `x`).
        #[arg(long)]
        body: Option<String>,
        /// Accept any answer (not an error), for a job that is not an echo.
        #[arg(long)]
        any_answer: bool,
        /// Run this dataflow instead of the built-in one (its data dir is replaced by a
        /// temporary one; its TCP front door moves to a free loopback port).
        #[arg(long, value_name = "FILE", conflicts_with = "to")]
        dataflow: Option<PathBuf>,
        #[arg(long, default_value = "none")]
        durability: Durability,
        #[command(flatten)]
        common: Common,
    },
}

/// The load of ingest, consume and pipeline.
#[derive(Debug, clap::Args)]
pub struct Load {
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Records per request: per produce, or per claim for consume.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value = "group")]
    durability: Durability,
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// A running engine to drive instead of an in-process one.
    #[arg(long, value_name = "ADDR")]
    to: Option<String>,
    /// The topic to produce to on `--to` (default "bench").
    #[arg(long, default_value = "bench")]
    topic: String,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn target(common: &Common, durability: Durability, stages: Stages) -> Result<Target, bench::BenchError> {
    match &common.to {
        Some(addr) => Ok(Target::remote(remote(addr), common.topic.clone())),
        None => {
            // --tls: the in-process engine speaks TLS, with a CA made for the run.
            let tls = crate::cli::client_settings().0.tls.is_some();
            let mut target = Target::start_with(durability, stages, None, tls)?;
            target.topic = common.topic.clone();
            Ok(target)
        }
    }
}

/// A running engine at `addr`, reached as the global --tls, --ca and --token say.
fn remote(addr: &str) -> bench::Endpoint {
    let (options, token) = crate::cli::client_settings();
    bench::Endpoint {
        addr: addr.to_owned(),
        options,
        token,
    }
}

fn parse_protocol(text: &str) -> Result<ExecProtocol, String> {
    ExecProtocol::from_name(text)
        .ok_or_else(|| format!("\"{text}\" is not a worker protocol: use batched or json"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "\"{text}\" is not a rate: give a positive number per second, like 50000 or 50000/s"
        )),
    }
}

pub fn run(scenario: Scenario) -> Result<ExitCode, CliError> {
    let (report, json) = match scenario {
        Scenario::EchoWorker { protocol } => {
            bench::echo_worker::run(protocol)?;
            return Ok(ExitCode::SUCCESS);
        }
        Scenario::Exec {
            load,
            protocol,
            worker,
            workers,
            concurrency,
            json,
        } => {
            let command = match &worker {
                Some(line) => line.split_whitespace().map(str::to_owned).collect(),
                None => {
                    let me = std::env::current_exe()?.display().to_string();
                    vec![
                        me,
                        "bench".into(),
                        "echo-worker".into(),
                        "--protocol".into(),
                        protocol.name().into(),
                    ]
                }
            };
            if command.is_empty() {
                return Err(CliError::Usage("--worker needs a command".into()));
            }
            let stage = ExecStage {
                command: command.clone(),
                protocol,
                workers,
                concurrency,
                dir: std::env::current_dir()?,
            };
            let target = Target::start(load.durability, Stages::Exec(stage), None)?;
            let options = PipelineOptions {
                records: load.records,
                size: load.size,
                batch: load.batch.max(1),
                output: "bench-out".into(),
                expect: None,
            };
            let measured = bench::pipeline(&target, &options, true)?;
            let config = serde_json::json!({
                "size": load.size, "batch": options.batch, "durability": load.durability.to_string(),
                "worker": command, "protocol": protocol.name(),
                "workers": workers, "concurrency": concurrency,
                "records": "outputs read from bench-out",
                "latency": "per record, produce sent to the worker's answer readable in bench-out (end to end)",
            });
            (bench::report("exec", &measured, load.size, config), json)
        }
        Scenario::Ingest {
            load,
            connections,
            inflight,
            rate,
            produce,
            spin_us,
            common,
        } => {
            let target = target(&common, load.durability, Stages::None)?;
            let options = IngestOptions {
                records: load.records,
                size: load.size,
                batch: load.batch.max(1),
                connections: connections.max(1),
                inflight: inflight.unwrap_or(if load.batch <= 1 { 1 } else { 32 }).max(1),
                rate,
                produce,
                spin: (spin_us > 0 && rate.is_none()).then(|| std::time::Duration::from_micros(spin_us)),
            };
            let measured = bench::ingest(&target, &options, true)?;
            let config = serde_json::json!({
                "size": load.size, "batch": options.batch, "durability": common.to.is_none().then(|| load.durability.to_string()),
                "connections": options.connections, "inflight": options.inflight, "rate": rate,
                "produce": produce, "to": common.to, "topic": target.topic, "spin_us": options.spin.map_or(0, |d| d.as_micros() as u64),
                "latency": latency_basis("per request, sent to durable ack", rate),
            });
            (bench::report("ingest", &measured, load.size, config), common.json)
        }
        Scenario::Fetch { load, common } => {
            let target = target(&common, load.durability, Stages::None)?;
            let batch = u32::try_from(load.batch).unwrap_or(u32::MAX).max(1);
            let measured = bench::fetch(&target, load.records, load.size, batch, true)?;
            let config = serde_json::json!({
                "size": load.size, "batch": batch, "durability": common.to.is_none().then(|| load.durability.to_string()),
                "connections": "one per partition", "inflight": 1, "to": common.to, "topic": target.topic,
                "records": "every record the topic holds, warm-up fill included",
                "latency": "per fetch, sent to its answer read and checked",
            });
            (bench::report("fetch", &measured, load.size, config), common.json)
        }
        Scenario::Consume { load, common } => {
            let target = target(&common, load.durability, Stages::None)?;
            let batch = u32::try_from(load.batch).unwrap_or(u32::MAX).max(1);
            let measured = bench::consume(&target, load.records, load.size, batch, true)?;
            let config = serde_json::json!({
                "size": load.size, "batch": batch, "durability": common.to.is_none().then(|| load.durability.to_string()),
                "connections": 1, "to": common.to, "topic": target.topic,
                "latency": "per batch, claim sent to its ack back (acks durable)",
            });
            (
                bench::report("consume", &measured, load.size, config),
                common.json,
            )
        }
        Scenario::Pipeline {
            load,
            dataflow,
            output,
            expect,
            common,
        } => {
            let target = match &common.to {
                Some(addr) => Target::remote(remote(addr), common.topic.clone()),
                None => {
                    let mut t = Target::start(load.durability, Stages::Pipeline, dataflow.as_deref())?;
                    t.topic = common.topic.clone();
                    t
                }
            };
            let options = PipelineOptions {
                records: load.records,
                size: load.size,
                batch: load.batch.max(1),
                output: output.clone(),
                expect,
            };
            let measured = bench::pipeline(&target, &options, true)?;
            let config = serde_json::json!({
                "size": load.size, "batch": options.batch, "durability": common.to.is_none().then(|| load.durability.to_string()),
                "dataflow": dataflow.as_ref().map(|d| d.display().to_string()),
                "input": target.topic, "output": output, "expect": expect, "to": common.to,
                "records": "outputs read from the output topic",
                "latency": "per record, produce sent to the output readable (end to end)",
                "exactly_once_checked": expect.is_none(),
            });
            (
                bench::report("pipeline", &measured, load.size, config),
                common.json,
            )
        }
        Scenario::Reqreply {
            requests,
            concurrency,
            rate,
            size,
            durability,
            job,
            body,
            any_answer,
            dataflow,
            common,
        } => {
            let target = match (&common.to, &dataflow) {
                (None, Some(file)) => Target::start(durability, Stages::None, Some(file))?,
                _ => target(&common, durability, Stages::None)?,
            };
            let size = body.as_ref().map_or(size, String::len);
            let options = ReqreplyOptions {
                requests,
                size,
                concurrency: concurrency.max(1),
                rate,
                job: job.clone(),
                body: body.clone().map(String::into_bytes),
                any_answer,
            };
            let measured = bench::reqreply(&target, &options, true)?;
            let config = serde_json::json!({
                "size": size, "concurrency": options.concurrency, "rate": rate, "job": job,
                "body": body, "any_answer": any_answer,
                "dataflow": dataflow.as_ref().map(|d| d.display().to_string()),
                "durability": common.to.is_none().then(|| durability.to_string()), "to": common.to,
                "latency": latency_basis("per job, sent to answer", rate),
            });
            (bench::report("reqreply", &measured, size, config), common.json)
        }
    };
    print(&report, json)?;
    Ok(ExitCode::SUCCESS)
}

/// How latency was measured: from the send, or at a fixed rate from when each request
/// was due (coordinated-omission corrected).
fn latency_basis(closed: &str, rate: Option<f64>) -> String {
    match rate {
        None => closed.to_owned(),
        Some(_) => format!(
            "{closed}; at a fixed rate, from when each request was due (coordinated omission corrected)"
        ),
    }
}

fn print(r: &Report, json: bool) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "{}: {} records in {:.2}s: {:.0} records/s, {:.1} MB/s; latency us p50 {} p99 {} p99.9 {} max {}\nconfig: {}",
            r.scenario,
            r.records,
            r.seconds,
            r.records_per_sec,
            r.mb_per_sec,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.latency_us.max,
            r.config
        );
    }
    Ok(())
}
