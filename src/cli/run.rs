//! `flowd run DATAFLOW.toml`: validate, then run the dataflow on every core until its
//! input ends or SIGINT/SIGTERM; flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::CliError;
use crate::cli::check::report;
use crate::cluster::{Cluster, ClusterOptions};
use crate::config::{self, Cores};
use crate::runtime;
use crate::storage::Durability;

pub struct RunArgs {
    pub file: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub cores: Option<Cores>,
    pub memory: bool,
    pub listen: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub kafka: Option<SocketAddr>,
    /// `--insecure`: addresses other machines reach may be bound.
    pub insecure: bool,
    /// `--credentials FILE`.
    pub credentials: Option<PathBuf>,
    /// `--tls-cert FILE --tls-key FILE`, `--tls-client-ca FILE`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// Join a cluster (`--peer-listen`, `--seeds`, `--cluster-id`).
    pub cluster: Option<ClusterOptions>,
}

pub fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    let mut spec = match config::load(&args.file) {
        Ok(spec) => spec,
        Err(error) => return Ok(report(&error)),
    };
    if let Some(cores) = args.cores {
        spec.engine.cores = cores;
    }
    if let Some(dir) = args.data_dir {
        spec.engine.data_dir = dir;
    }
    // A listener flag opens the front doors of a dataflow that declares none.
    if args.listen.is_some() || args.http.is_some() || args.kafka.is_some() {
        let ingest = spec.ingest.get_or_insert_with(Default::default);
        if args.listen.is_some() {
            ingest.tcp = args.listen;
        }
        if args.http.is_some() {
            ingest.http = args.http;
        }
        if args.kafka.is_some() {
            ingest.kafka = args.kafka;
        }
    }
    if let Some(ingest) = spec.ingest.as_mut() {
        ingest.insecure |= args.insecure;
        if args.credentials.is_some() {
            ingest.credentials = args.credentials.clone();
        }
        if args.tls_cert.is_some() {
            ingest.tls_cert = args.tls_cert.clone();
            ingest.tls_key = args.tls_key.clone();
        }
        if args.tls_client_ca.is_some() {
            ingest.tls_client_ca = args.tls_client_ca.clone();
        }
    }
    let insecure = args.insecure || spec.ingest.as_ref().is_some_and(|i| i.insecure);
    // --memory: the data lives in a fresh directory on tmpfs, gone when flowd exits.
    let _memory_dir = if args.memory {
        let dir = tempfile::Builder::new()
            .prefix("flowd-memory-")
            .tempdir_in(memory_root())
            .map_err(CliError::Output)?;
        spec.engine.data_dir = dir.path().to_path_buf();
        spec.engine.durability = Durability::None;
        Some(dir)
    } else {
        None
    };
    eprintln!(
        "flowd: running {} (data in {}, durability {:?})",
        args.file.display(),
        spec.engine.data_dir.display(),
        spec.engine.durability
    );
    let data_dir = spec.engine.data_dir.clone();
    // Bound before the cluster starts: the others learn where this peer's clients
    // connect from its identity.
    runtime::private_data_dir(&data_dir)?;
    let (doors, bound) = crate::server::listen(&spec)?;
    let cluster = match &args.cluster {
        Some(options) => {
            // The flags' files, else [cluster]'s.
            let tls = options.tls.clone().or_else(|| {
                spec.peer_tls.as_ref().map(|t| crate::tls::peer::PeerFiles {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    ca: t.ca.clone(),
                })
            });
            // Mutual TLS guards the peer port as TLS and credentials guard a door.
            if tls.is_none() {
                let (flag, bound) = match options.bind {
                    Some(bind) => ("--peer-bind", bind),
                    None => ("--peer-listen", options.listen),
                };
                crate::server::listeners::exposed(flag, bound, insecure)?;
            }
            if options.listen.ip().is_unspecified() {
                return Err(CliError::Usage(format!(
                    "--peer-listen {} is not an address other peers can reach; give this machine's address (or 127.0.0.1 for peers on one machine)",
                    options.listen
                )));
            }
            let cores = runtime::core_count(spec.engine.cores)?;
            // A listener on every address is reached at the peer address's.
            let reached = |bound: std::net::SocketAddr| {
                if bound.ip().is_unspecified() {
                    std::net::SocketAddr::new(options.listen.ip(), bound.port())
                } else {
                    bound
                }
            };
            let options = crate::cluster::ClusterOptions {
                client: bound.tcp.map(reached),
                kafka: bound.kafka.map(reached),
                tls,
                ..options.clone()
            };
            let cluster = Cluster::start(&options, cores, &spec.engine.data_dir)
                .map_err(runtime::RuntimeError::from)?;
            println!("listening peers {}", cluster.me.addr);
            Some(std::sync::Arc::new(cluster))
        }
        None => None,
    };
    let summary = runtime::run(spec, cluster, doors, || {
        // A contract: scripts wait for these lines before they connect.
        if let Some(addr) = bound.tcp {
            println!("listening tcp {addr}");
        }
        // Before http: the tests read up to the tcp and http lines.
        if let Some(addr) = bound.kafka {
            println!("listening kafka {addr}");
        }
        if let Some(addr) = bound.http {
            println!("listening http {addr}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    eprintln!(
        "flowd: {} after {:.2}s on {} cores: {} records in, {} records out{}",
        if summary.finished { "finished" } else { "stopped" },
        summary.elapsed.as_secs_f64(),
        summary.shards,
        summary.records_in,
        summary.records_out,
        if summary.records_failed > 0 {
            format!(
                ", {} records skipped by operators (see above)",
                summary.records_failed
            )
        } else {
            String::new()
        }
    );
    if summary.finished && summary.records_in == 0 && summary.records_out == 0 {
        eprintln!(
            "flowd: its input was already processed in an earlier run; remove {} to run it again from the start",
            data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a name in `--peer-listen` or `--seeds` may take to resolve: on Kubernetes a
/// Service's name reaches the cluster's DNS a few seconds after the Service is made.
const RESOLVE_PATIENCE: Duration = Duration::from_secs(60);

/// Where this peer and its seeds are, as `peer_addresses` found them.
pub struct PeerAddresses {
    pub listen: SocketAddr,
    pub bind: Option<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    /// The names among them and where each was found (a peer certificate may name one).
    pub names: crate::tls::peer::PeerNames,
}

/// `--peer-listen`, `--peer-bind` and `--seeds` as addresses: each HOST:PORT looked up
/// (a name is retried until it resolves, for at most `RESOLVE_PATIENCE`).
pub fn peer_addresses(
    listen: &str,
    bind: Option<SocketAddr>,
    seeds: &[String],
) -> Result<PeerAddresses, CliError> {
    let deadline = Instant::now() + RESOLVE_PATIENCE;
    let mut names = crate::tls::peer::PeerNames::default();
    let mut found = |text: &str, addr: SocketAddr| {
        if let Some((host, _)) = text.rsplit_once(':')
            && text.parse::<SocketAddr>().is_err()
        {
            names.add(host, addr.ip());
        }
        addr
    };
    let listen = found(listen, resolve("--peer-listen", listen, deadline)?);
    if bind.is_some() && listen.port() == 0 {
        return Err(CliError::Usage(format!(
            "--peer-listen {listen} with --peer-bind needs the port the others reach this peer at, not 0"
        )));
    }
    let seeds = seeds
        .iter()
        .map(|seed| Ok(found(seed, resolve("--seeds", seed, deadline)?)))
        .collect::<Result<_, CliError>>()?;
    Ok(PeerAddresses {
        listen,
        bind,
        seeds,
        names,
    })
}

/// One HOST:PORT, retried while its name does not resolve, until `deadline`.
fn resolve(flag: &str, text: &str, deadline: Instant) -> Result<SocketAddr, CliError> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    {
        return Err(CliError::Usage(format!(
            "{flag} {text:?} is not HOST:PORT (an address such as 10.0.0.5:7946, or a name such as flowd-0.flowd.default.svc.cluster.local:7946)"
        )));
    }
    let mut said = false;
    loop {
        let why = match text.to_socket_addrs() {
            // IPv4 first: the others dial what this name gives.
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
                    Some(addr) => return Ok(*addr),
                    None => "no address".to_owned(),
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(CliError::Usage(format!(
                "{flag} {text}: the name does not resolve ({why}) after {}s; check the name (on Kubernetes: the pod's Service exists), or give an IP address",
                RESOLVE_PATIENCE.as_secs()
            )));
        }
        if !said {
            eprintln!(
                "flowd: {flag} {text} does not resolve yet ({why}); trying again for up to {}s",
                RESOLVE_PATIENCE.as_secs()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn memory_root() -> &'static Path {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm } else { Path::new("/tmp") }
}

/// `--cores N|all`.
pub fn parse_cores(text: &str) -> Result<Cores, String> {
    if text == "all" {
        return Ok(Cores::All);
    }
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Cores::Count(n)),
        _ => Err(format!(
            "\"{text}\" is not a core count; use a number from 1, or \"all\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_are_addresses_or_names_that_resolve() {
        let now = Instant::now();
        assert_eq!(
            resolve("--seeds", "10.0.0.5:7946", now).unwrap(),
            "10.0.0.5:7946".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(resolve("--seeds", "localhost:7946", now).unwrap().port(), 7946);
        let bad = resolve("--peer-listen", "flowd-0", now).unwrap_err().to_string();
        assert!(bad.contains("is not HOST:PORT"), "{bad}");
        // `.invalid` never resolves (RFC 2606); with the deadline past, no retry.
        let gone = resolve("--seeds", "flowd-0.invalid:7946", now)
            .unwrap_err()
            .to_string();
        assert!(
            gone.contains("does not resolve") && gone.contains("--seeds"),
            "{gone}"
        );
        let zero = peer_addresses("10.0.0.5:0", Some("0.0.0.0:7946".parse().unwrap()), &[]);
        assert!(zero.err().unwrap().to_string().contains("not 0"));
        // Names are kept with where they were found; addresses are not names.
        let named = peer_addresses("LocalHost:7946", None, &["10.0.0.5:7946".into()]).unwrap();
        let mut expected = crate::tls::peer::PeerNames::default();
        expected.add("localhost", named.listen.ip());
        assert_eq!(named.names, expected);
    }
}
