//! The engine a benchmark drives: one started in this process on a fresh temporary data
//! dir (the built-in bench dataflow, or the user's `--dataflow`), or a running one
//! (`--to ADDR`).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::bench::BenchError;
use crate::client::{Client, ClientError, ClientOptions};
use crate::config::{self, ExecProtocol};
use crate::runtime::Engine;
use crate::storage::Durability;

/// The built-in dataflow: `bench` for ingest and consume, the job `echo` for reqreply,
/// and `bench` -> `key` (key_by value, re-sharded by key) -> `bench-keyed` -> `dedupe`
/// -> `bench-out` for the pipeline scenario. {dir}, {mode} and {cores} are filled in.
const BENCH_DATAFLOW: &str = r#"
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
name = "bench-keyed"
partitions = {cores}
[[topic]]
name = "bench-out"
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
[[stage]]
name = "key"
from = "bench"
op = { key_by = "value" }
to = "bench-keyed"
route = { shard_by = "key" }
[[stage]]
name = "dedupe"
from = "bench-keyed"
op = { dedupe = { by = "key", capacity = 100000 } }
to = "bench-out"
"#;

/// Where a benchmark's clients connect, and how.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: String,
    /// TLS, when the engine speaks it.
    pub options: ClientOptions,
    /// AUTH with this token first, on an engine with credentials.
    pub token: Option<String>,
}

impl Endpoint {
    pub fn connect(&self) -> Result<Client, ClientError> {
        let mut client = Client::connect_with(&self.addr, self.options.clone())?;
        if let Some(token) = &self.token {
            client.auth(token)?;
        }
        Ok(client)
    }
}

/// An engine for one benchmark, stopped when dropped.
pub struct Target {
    pub at: Endpoint,
    pub topic: String,
    engine: Option<(Engine, tempfile::TempDir)>,
}

/// Where the stages of a `Target` start from: the built-in dataflow with pipeline
/// stages, with an exec stage, or without (their work would share the cores with the
/// scenario measured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stages {
    None,
    Pipeline,
    /// `bench` -> an exec stage -> `bench-out`.
    Exec(ExecStage),
}

/// The exec stage of `flowd bench exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStage {
    pub command: Vec<String>,
    pub protocol: ExecProtocol,
    pub workers: Option<usize>,
    pub concurrency: Option<usize>,
    /// The workers' working directory: where `flowd bench` runs, so that a worker
    /// named by a relative path is found.
    pub dir: std::path::PathBuf,
}

impl ExecStage {
    /// The `[[stage]]` block, its values written as TOML.
    fn toml(&self) -> String {
        let command = toml::Value::Array(
            self.command
                .iter()
                .map(|c| toml::Value::String(c.clone()))
                .collect(),
        );
        let dir = toml::Value::String(self.dir.display().to_string());
        let mut options = format!(
            "command = {command}, dir = {dir}, protocol = \"{}\"",
            self.protocol.name()
        );
        if let Some(w) = self.workers {
            options.push_str(&format!(", workers = {w}"));
        }
        if let Some(c) = self.concurrency {
            options.push_str(&format!(", concurrency = {c}"));
        }
        format!(
            "[[stage]]\nname = \"exec\"\nfrom = \"bench\"\nop = {{ exec = {{ {options} }} }}\nto = \"bench-out\"\n"
        )
    }
}

impl Target {
    /// A fresh engine on a temporary data dir running the built-in dataflow, or
    /// `dataflow` (its data dir replaced, its TCP front door on a free loopback port).
    pub fn start(
        durability: Durability,
        stages: Stages,
        dataflow: Option<&Path>,
    ) -> Result<Target, BenchError> {
        Target::start_with(durability, stages, dataflow, false)
    }

    /// As `start`; with `tls`, the engine's TCP door speaks TLS with a certificate of a
    /// CA made for this run, which the clients trust.
    pub fn start_with(
        durability: Durability,
        stages: Stages,
        dataflow: Option<&Path>,
        tls: bool,
    ) -> Result<Target, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("flowd-bench-")
            .tempdir()
            .map_err(|e| BenchError::Setup(format!("cannot make a temporary data dir: {e}")))?;
        let data = dir.path().join("data");
        let mut spec = match dataflow {
            Some(path) => config::load(path).map_err(|e| BenchError::Setup(e.to_string()))?,
            None => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let mut text = BENCH_DATAFLOW
                    .replace("{dir}", &data.display().to_string())
                    .replace("{mode}", &durability.to_string())
                    .replace("{cores}", &cores.to_string());
                if stages != Stages::Pipeline {
                    text.truncate(
                        text.find("[[stage]]\nname = \"key\"")
                            .expect("the pipeline stages"),
                    );
                }
                if let Stages::Exec(exec) = &stages {
                    text.push_str(&exec.toml());
                }
                let path = dir.path().join("bench.toml");
                config::parse(&path, &text).map_err(|e| BenchError::Setup(e.to_string()))?
            }
        };
        spec.engine.data_dir = data;
        spec.engine.durability = durability;
        let ingest = spec.ingest.get_or_insert_with(Default::default);
        ingest.tcp = Some(([127, 0, 0, 1], 0).into());
        // The bench speaks the binary protocol only; a user's dataflow must not need its
        // HTTP port free.
        ingest.http = None;
        let mut options = ClientOptions::default();
        if tls {
            let (ca, server) = certificates(dir.path())?;
            ingest.tls_cert = Some(server.0);
            ingest.tls_key = Some(server.1);
            let files = crate::tls::client::ClientFiles {
                ca: Some(ca),
                ..Default::default()
            };
            options.tls =
                Some(crate::tls::ClientTls::load(&files).map_err(|e| BenchError::Setup(e.to_string()))?);
        }
        let (engine, bound) = crate::server::start(spec, None)?;
        let addr = bound.tcp.expect("a bench engine listens").to_string();
        Ok(Target {
            at: Endpoint {
                addr,
                options,
                token: None,
            },
            topic: "bench".into(),
            engine: Some((engine, dir)),
        })
    }

    pub fn remote(at: Endpoint, topic: String) -> Target {
        Target {
            at,
            topic,
            engine: None,
        }
    }

    /// The partitions of `topic`, or a clear error when the engine has no such topic.
    pub fn partitions(&self, topic: &str) -> Result<u32, BenchError> {
        let metadata = self.at.connect()?.metadata()?;
        metadata
            .topics
            .iter()
            .find(|(name, _)| name == topic)
            .map(|(_, partitions)| *partitions)
            .ok_or_else(|| {
                BenchError::Setup(format!(
                    "the engine at {} has no topic \"{topic}\"; add it to its dataflow or pass --topic",
                    self.at.addr
                ))
            })
    }
}

/// A CA and a server certificate for 127.0.0.1 in `dir`: `(ca.pem, (server.pem,
/// server.key))`.
fn certificates(
    dir: &Path,
) -> Result<(std::path::PathBuf, (std::path::PathBuf, std::path::PathBuf)), BenchError> {
    let failed = |e: String| BenchError::Setup(format!("cannot make the bench's TLS certificates: {e}"));
    let (ca, _) = crate::tls::make::authority("flowd bench CA", 2).map_err(|e| failed(e.to_string()))?;
    let server = crate::tls::make::issue(
        &ca.cert_pem,
        &ca.key_pem,
        "bench",
        &["127.0.0.1".to_owned()],
        None,
        2,
    )
    .map_err(|e| failed(e.to_string()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        crate::tls::make::write_new(&path, text, 0o600)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
        Ok::<_, BenchError>(path)
    };
    let ca_path = write("ca.pem", &ca.cert_pem)?;
    let cert = write("server.pem", &server.cert_pem)?;
    let key = write("server.key", &server.key_pem)?;
    Ok((ca_path, (cert, key)))
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((engine, _dir)) = self.engine.take() {
            engine.stop();
            let _ = engine.wait(&AtomicBool::new(true));
        }
    }
}
