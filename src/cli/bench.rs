//! `flowd bench ingest|consume|reqreply [...] [--json]`: drive an engine (in-process by default,
//! `--to ADDR` for a running one) and report throughput and latency (DESIGN.md 8).

use std::process::ExitCode;

use crate::bench::{self, IngestOptions, Report, Target};
use crate::cli::CliError;
use crate::storage::Durability;

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Produce records to durable ack over loopback TCP.
    Ingest {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Bytes per record value.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Records per produce request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value = "group", value_parser = parse_durability)]
        durability: Durability,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Requests in flight per connection (default: 1 with --batch 1, else 32).
        #[arg(long)]
        inflight: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Fill a topic, then claim and ack every record as a new consumer over one connection.
    Consume {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Records per claim.
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        #[arg(long, default_value = "group", value_parser = parse_durability)]
        durability: Durability,
        #[command(flatten)]
        common: Common,
    },
    /// Request/reply jobs to an echo stage, one in flight per connection.
    Reqreply {
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value = "none", value_parser = parse_durability)]
        durability: Durability,
        #[command(flatten)]
        common: Common,
    },
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

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "every" => Ok(Durability::Every),
        "group" => Ok(Durability::Group),
        "none" => Ok(Durability::None),
        _ => Err(format!("\"{text}\" is not every, group or none")),
    }
}

fn target(common: &Common, durability: Durability) -> Result<Target, bench::BenchError> {
    match &common.to {
        Some(addr) => Ok(Target::remote(addr.clone(), common.topic.clone())),
        None => Target::start(durability),
    }
}

pub fn run(scenario: Scenario) -> Result<ExitCode, CliError> {
    let (report, json) = match scenario {
        Scenario::Ingest {
            records,
            size,
            batch,
            durability,
            connections,
            inflight,
            common,
        } => {
            let target = target(&common, durability)?;
            let inflight = inflight.unwrap_or(if batch <= 1 { 1 } else { 32 });
            let options = IngestOptions {
                records,
                size,
                batch,
                connections: connections.max(1),
                inflight,
            };
            let (seconds, h) = bench::ingest(&target, &options)?;
            let sent = options
                .records
                .div_ceil(options.connections as u64)
                .div_ceil(batch.max(1) as u64)
                * batch.max(1) as u64
                * options.connections as u64;
            let config = serde_json::json!({
                "size": size, "batch": batch, "durability": format!("{durability:?}").to_lowercase(),
                "connections": options.connections, "inflight": inflight, "to": common.to,
                "latency": "per request, sent to durable ack",
            });
            (
                bench::report("ingest", sent, sent * size as u64, seconds, &h, config),
                common.json,
            )
        }
        Scenario::Consume {
            records,
            size,
            batch,
            durability,
            common,
        } => {
            let target = target(&common, durability)?;
            let (seconds, h, consumed) = bench::consume(&target, records, size, batch.max(1))?;
            let config = serde_json::json!({
                "size": size, "batch": batch, "durability": format!("{durability:?}").to_lowercase(),
                "connections": 1, "to": common.to,
                "latency": "per batch, claim sent to its ack back (acks durable)",
            });
            (
                bench::report("consume", consumed, consumed * size as u64, seconds, &h, config),
                common.json,
            )
        }
        Scenario::Reqreply {
            requests,
            concurrency,
            size,
            durability,
            common,
        } => {
            let target = target(&common, durability)?;
            let concurrency = concurrency.max(1);
            let (seconds, h) = bench::reqreply(&target, requests, concurrency, size)?;
            let done = requests.div_ceil(concurrency as u64) * concurrency as u64;
            let config = serde_json::json!({
                "size": size, "concurrency": concurrency,
                "durability": format!("{durability:?}").to_lowercase(), "to": common.to,
                "latency": "per job, sent to answer",
            });
            (
                bench::report("reqreply", done, done * size as u64, seconds, &h, config),
                common.json,
            )
        }
    };
    print(&report, json)?;
    Ok(ExitCode::SUCCESS)
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
