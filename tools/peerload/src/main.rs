//! `peerload`: the workloads of `flowd bench` against Redis Streams and NATS JetStream, one
//! JSON report per run in flowd's shape, for `scripts/bench-peers.sh`.

mod nats;
mod redis_streams;
mod report;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Load Redis Streams or NATS JetStream as `flowd bench` loads flowd")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

/// What every workload takes; the defaults are `flowd bench`'s.
#[derive(Debug, Clone, clap::Args)]
pub struct Shape {
    /// The server, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Records (or requests) in the measured run; a tenth more (at most 100k) warm up first.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Records per request (a pipeline, a publish batch, a read).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// XADD in pipelined batches, `inflight` pipelines at once on one connection.
    RedisIngest(Shape),
    /// Fill a stream, then XREADGROUP COUNT batch and XACK them, the ack sent with the next read.
    RedisConsume(Shape),
    /// A job through a Redis list to a worker and its answer back (LPUSH, BRPOP, LPUSH, BRPOP).
    RedisReqreply(Shape),
    /// JetStream publish with acks, `batch * inflight` acks outstanding at most.
    NatsIngest(Shape),
    /// Fill a stream, then fetch batches from a pull consumer, acking each batch's last (AckAll).
    NatsConsume(Shape),
    /// Core NATS request/reply to a responder on its own connection.
    NatsReqreply(Shape),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.workload {
            Workload::RedisIngest(s) => redis_streams::ingest(&s).await,
            Workload::RedisConsume(s) => redis_streams::consume(&s).await,
            Workload::RedisReqreply(s) => redis_streams::reqreply(&s).await,
            Workload::NatsIngest(s) => nats::ingest(&s).await,
            Workload::NatsConsume(s) => nats::consume(&s).await,
            Workload::NatsReqreply(s) => nats::reqreply(&s).await,
        }
    });
    match result {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
