//! The command line: clap definitions, and dispatch to one file per subcommand.
//!
//! The command line is a contract (DESIGN.md section 1): exit 0 ok, 1 runtime failure
//! (including corrupt data found), 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cert;
mod check;
mod consumer;
mod drain;
mod inspect;
mod run;
mod send;
mod state;
mod status;
mod tail;
mod token;

#[derive(Debug, Parser)]
#[command(
    name = "flowd",
    version,
    about = "A single-binary stream and job processing engine"
)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (FLOWD_LOG overrides).
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: String,
    /// The token the client commands (send, tail, status, state, drain) prove who they
    /// are with, on a server with credentials; FLOWD_TOKEN otherwise (kept out of the
    /// shell's history and `ps`).
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// The client commands speak TLS to the server (a server with tls_cert); `flowd
    /// bench` without --to runs its engine with TLS (a CA made for the run).
    #[arg(long, global = true)]
    tls: bool,
    /// The CA that signed the server's certificate (implies --tls); without it, this
    /// machine's CA bundle.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A client certificate (and --client-key) proving who this client is, to a server
    /// with tls_client_ca (implies --tls).
    #[arg(long, global = true, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (mode 0600).
    #[arg(long, global = true, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: `run`'s many flags cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a dataflow on every core until its input ends, or until SIGINT/SIGTERM.
    Run {
        /// The dataflow file.
        dataflow: PathBuf,
        /// Where topics and progress live (overrides engine.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How many cores to run on: a number, or "all" (overrides engine.cores).
        #[arg(long, value_parser = run::parse_cores)]
        cores: Option<crate::config::Cores>,
        /// Keep all data in memory (tmpfs), durability none; nothing survives the run.
        #[arg(long)]
        memory: bool,
        /// Serve the binary protocol on ADDR (overrides ingest.tcp).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Serve HTTP/JSON, the status page and /metrics on ADDR (overrides ingest.http).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Serve the Kafka protocol on ADDR (overrides ingest.kafka): Kafka producers
        /// and consumers (kcat, librdkafka, kafka-python) on the same partitions.
        #[arg(long, value_name = "ADDR")]
        kafka: Option<std::net::SocketAddr>,
        /// Let the listeners and the peer port bind addresses other machines reach,
        /// without TLS or credentials (sets ingest.insecure); said in the log and status.
        #[arg(long)]
        insecure: bool,
        /// The credentials file (`flowd token add`): every request then needs a token
        /// with the permission it asks for (overrides ingest.credentials).
        #[arg(long, value_name = "FILE")]
        credentials: Option<PathBuf>,
        /// The doors speak TLS 1.3 with this PEM certificate chain (and --tls-key);
        /// overrides ingest.tls_cert. SIGHUP reads both files again.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Client certificates signed by this CA prove who a client is (the common name
        /// is the credential's name); overrides ingest.tls_client_ca.
        #[arg(long, value_name = "FILE")]
        tls_client_ca: Option<PathBuf>,
        /// Join a cluster: listen for peers on ADDR (the address the others reach this
        /// peer at, its identity; gossip, forwarded records and fetches). A HOST:PORT
        /// name is looked up once at start (retried for a minute while it does not
        /// resolve yet): on Kubernetes, the pod's own Service name.
        #[arg(long, value_name = "ADDR")]
        peer_listen: Option<String>,
        /// Bind the peer listener here instead of --peer-listen (which stays the
        /// address the others reach): "0.0.0.0:7946" behind a Service's address.
        #[arg(long, value_name = "ADDR", requires = "peer_listen")]
        peer_bind: Option<std::net::SocketAddr>,
        /// Peers to join through (their --peer-listen addresses or HOST:PORT names);
        /// any one reachable is enough. Only this peer itself: it founds the cluster
        /// (on a data directory that holds none). This peer first of several: it founds
        /// it once every other seed answers that it is a member of no cluster (every pod
        /// of a StatefulSet can list the same seeds). Needs --peer-listen.
        #[arg(
            long,
            value_name = "ADDR,ADDR",
            value_delimiter = ',',
            requires = "peer_listen"
        )]
        seeds: Vec<String>,
        /// Only peers with the same cluster id join each other.
        #[arg(long, value_name = "ID", default_value = crate::cluster::DEFAULT_CLUSTER_ID, requires = "peer_listen")]
        cluster_id: String,
        /// How long a peer may stay down before its replicas are copied to live peers
        /// and its vote in the metadata group goes to one ("5m", "90s").
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration, requires = "peer_listen")]
        replace_after: std::time::Duration,
        /// How long a replicated partition may be led by another replica than its
        /// preferred one (the first placement chose, as after that peer restarted)
        /// before the lead goes back to it, which must hold every acked record ("5m").
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration, requires = "peer_listen")]
        rebalance_after: std::time::Duration,
        /// Bytes per second a leader sends to new replicas while they copy a log, over
        /// all its partitions ("20MiB"); copies that acks wait for are never slowed.
        #[arg(long, value_name = "BYTES", default_value = "20MiB", value_parser = parse_rate, requires = "peer_listen")]
        copy_rate: u64,
        /// Mutual TLS on the peer port: this peer's certificate (flowd cert issue NAME
        /// --cluster ID --host IP), with --peer-tls-key and --peer-tls-ca; overrides
        /// [cluster] tls_cert. Only peers with a certificate of that CA get in.
        #[arg(long, value_name = "FILE", requires_all = ["peer_listen", "peer_tls_key", "peer_tls_ca"])]
        peer_tls_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
        peer_tls_key: Option<PathBuf>,
        /// The cluster's CA, which signed every peer's certificate.
        #[arg(long, value_name = "FILE", requires = "peer_tls_cert")]
        peer_tls_ca: Option<PathBuf>,
    },
    /// Make a CA and the certificates it signs, for TLS on the doors and between peers.
    Cert {
        #[command(subcommand)]
        action: cert::CertAction,
    },
    /// Named consumers of a running engine: list, reset, skip, disable, resume, delete.
    Consumer {
        #[command(subcommand)]
        action: consumer::ConsumerAction,
    },
    /// Manage the credentials file: tokens and what each may do.
    Token {
        #[command(subcommand)]
        action: token::TokenAction,
    },
    /// Send one record per input line to TOPIC; print PARTITION:OFFSET per record once
    /// durable (with --reply: send each line as a job and print its answer).
    Send {
        /// Where `flowd run` listens (the binary protocol).
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        to: String,
        /// The topic (with --reply: the job, by name or by its topic).
        topic: String,
        /// The key of every record; otherwise a `KEY<TAB>VALUE` line sets it.
        #[arg(long)]
        key: Option<String>,
        /// Send each line as a request/reply job and print its answer.
        #[arg(long)]
        reply: bool,
        /// The input file; `-` or nothing reads standard input.
        input: Option<PathBuf>,
    },
    /// Print a topic's records; without --follow, up to the end and exit.
    Tail {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        topic: String,
        /// Read as the named consumer: claim, print, ack; created (at --offset) if new,
        /// and resumed where it left off otherwise.
        #[arg(long)]
        group: Option<String>,
        /// earliest, latest or an offset (default: earliest; latest with --follow).
        #[arg(long, value_parser = parse_offset)]
        offset: Option<crate::protocol::FetchFrom>,
        /// Keep printing records as they arrive.
        #[arg(long)]
        follow: bool,
        /// One JSON object per record: topic, partition, offset, timestamp, key, value.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the named consumers (or all) have acked everything; exit 1 on timeout.
    Drain {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        /// Only this consumer (on every topic it reads).
        #[arg(long)]
        group: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Read the state a `state` stage holds for a key (as GET /state/STAGE/KEY does).
    State {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        /// The state stage.
        stage: String,
        /// The key.
        key: String,
    },
    /// Show a running engine: cores, topics, partitions, offsets, consumers and lag, rates.
    /// In a cluster: every peer, every partition's leader and replicas, the cluster's rates,
    /// as the peer reached gathers them from the others.
    Status {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        #[arg(long)]
        json: bool,
        /// Only the peer reached: the partitions it leads or holds a copy of, as it sees
        /// them, and its own rates.
        #[arg(long)]
        local: bool,
    },
    /// Load generator and report: throughput and latency percentiles.
    Bench {
        #[command(subcommand)]
        scenario: bench::Scenario,
    },
    /// Validate a dataflow file: every error as FILE:LINE:COL with a hint; exit 2 if any.
    Check {
        /// The dataflow file.
        dataflow: PathBuf,
    },
    /// Offline check of a data directory: topics, partitions, segments, a full CRC check.
    /// Exits 1 when anything is corrupt.
    Inspect {
        /// The data directory (engine.data_dir).
        data_dir: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Errors of the command-line layer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
    #[error("cannot read {}: {source}", path.display())]
    Input { path: PathBuf, source: std::io::Error },
    /// Bad usage found after parsing (an unknown topic or job): exit 2.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

const DEFAULT_TCP: &str = crate::config::DEFAULT_TCP;

/// `--token` (or FLOWD_TOKEN), for every client command's connection.
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// `--tls`, `--ca`, `--client-cert`, `--client-key`, read once.
static TLS: std::sync::OnceLock<Option<crate::tls::ClientTls>> = std::sync::OnceLock::new();

/// A client connection to `addr`, in TLS with `--tls`, proven with `--token` when one
/// was given.
pub fn connect(addr: &str) -> Result<crate::client::Client, crate::client::ClientError> {
    let (options, token) = client_settings();
    let mut client = crate::client::Client::connect_with(addr, options)?;
    if let Some(token) = token {
        client.auth(&token)?;
    }
    Ok(client)
}

/// The client options and token the global flags give.
pub(crate) fn client_settings() -> (crate::client::ClientOptions, Option<String>) {
    let options = crate::client::ClientOptions {
        tls: TLS.get().cloned().flatten(),
        ..Default::default()
    };
    (options, TOKEN.get().cloned().flatten())
}

fn parse_rate(text: &str) -> Result<u64, String> {
    let bytes = text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("\"{text}\" is not a size such as \"100MiB\": {e}"))?
        .as_u64();
    if bytes < 64 << 10 {
        return Err(format!(
            "{text} a second would copy a log for days; give at least 64KiB"
        ));
    }
    Ok(bytes)
}

fn parse_offset(text: &str) -> Result<crate::protocol::FetchFrom, String> {
    crate::server::api::parse_from(text)
        .ok_or_else(|| format!("\"{text}\" is not earliest, latest or an offset"))
}

impl Cli {
    pub fn log_level(&self) -> &str {
        &self.log_level
    }

    /// Runs the parsed command and returns the process exit code.
    pub fn run(self) -> Result<ExitCode, CliError> {
        let token = self
            .token
            .or_else(|| std::env::var("FLOWD_TOKEN").ok().filter(|t| !t.is_empty()));
        let _ = TOKEN.set(token);
        let tls = if self.tls || self.ca.is_some() || self.client_cert.is_some() {
            let files = crate::tls::client::ClientFiles {
                ca: self.ca,
                cert: self.client_cert,
                key: self.client_key,
                server_name: None,
            };
            Some(crate::tls::ClientTls::load(&files)?)
        } else {
            None
        };
        let _ = TLS.set(tls);
        match self.command {
            Command::Cert { action } => cert::run(action),
            Command::Token { action } => token::run(action),
            Command::Consumer { action } => consumer::run(action),
            Command::Inspect { data_dir, json } => inspect::run(&data_dir, json),
            Command::Check { dataflow } => check::run(&dataflow),
            Command::Send {
                to,
                topic,
                key,
                reply,
                input,
            } => send::run(send::SendArgs {
                to,
                topic,
                key,
                reply,
                input,
            }),
            Command::Tail {
                from,
                topic,
                group,
                offset,
                follow,
                json,
            } => tail::run(tail::TailArgs {
                from,
                topic,
                group,
                offset,
                follow,
                json,
            }),
            Command::Status { from, json, local } => status::run(&from, json, local),
            Command::State { from, stage, key } => state::run(&from, &stage, &key),
            Command::Drain { from, group, timeout } => {
                drain::run(&from, group.as_deref(), std::time::Duration::from_secs(timeout))
            }
            Command::Bench { scenario } => bench::run(scenario),
            Command::Run {
                dataflow,
                data_dir,
                cores,
                memory,
                listen,
                http,
                kafka,
                insecure,
                credentials,
                tls_cert,
                tls_key,
                tls_client_ca,
                peer_listen,
                peer_bind,
                seeds,
                cluster_id,
                replace_after,
                rebalance_after,
                copy_rate,
                peer_tls_cert,
                peer_tls_key,
                peer_tls_ca,
            } => run::run(run::RunArgs {
                file: dataflow,
                data_dir,
                cores,
                memory,
                listen,
                http,
                kafka,
                insecure,
                credentials,
                tls_cert,
                tls_key,
                tls_client_ca,
                cluster: peer_listen
                    .map(|listen| run::peer_addresses(&listen, peer_bind, &seeds))
                    .transpose()?
                    .map(|peers| crate::cluster::ClusterOptions {
                        listen: peers.listen,
                        bind: peers.bind,
                        seeds: peers.seeds,
                        names: peers.names,
                        cluster_id,
                        replace_after,
                        rebalance_after,
                        copy_rate,
                        // Known once the listeners are bound (`run`).
                        client: None,
                        kafka: None,
                        tls: match (peer_tls_cert, peer_tls_key, peer_tls_ca) {
                            (Some(cert), Some(key), Some(ca)) => {
                                Some(crate::tls::peer::PeerFiles { cert, key, ca })
                            }
                            // Else from [cluster] (`run`); clap wants all three or none.
                            _ => None,
                        },
                    }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// clap's own checks of the definitions, which a release build skips, and the
    /// flags a global one could shadow: `send --key` is the record's key, the client
    /// certificate's key is `--client-key`.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        let cli = super::Cli::try_parse_from(["flowd", "send", "events", "--key", "k"]).unwrap();
        assert!(
            matches!(&cli.command, super::Command::Send { key: Some(k), .. } if k == "k"),
            "{cli:?}"
        );
        let cli = super::Cli::try_parse_from([
            "flowd",
            "tail",
            "events",
            "--client-cert",
            "c.pem",
            "--client-key",
            "c.key",
        ])
        .unwrap();
        assert_eq!(cli.client_key.as_deref(), Some(std::path::Path::new("c.key")));
    }
}
