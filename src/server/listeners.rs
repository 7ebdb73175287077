//! Listening sockets, bound on the main thread before any shard starts: one per shard
//! and protocol, all on one address with SO_REUSEPORT, so that the kernel spreads
//! connections over the shards and a port given as 0 resolves once for all of them.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

use socket2::{Domain, Socket, Type};

use crate::config::IngestSpec;
use crate::runtime::error::RuntimeError;

/// Connections the kernel queues per socket before the shard accepts them.
const BACKLOG: i32 = 1024;

/// One shard's listening sockets (raw fds, handed to its executor).
#[derive(Debug, Default)]
pub struct ShardSockets {
    pub tcp: Option<RawFd>,
    pub http: Option<RawFd>,
    pub kafka: Option<RawFd>,
    /// `tcp ADDR`, `http ADDR` and `kafka ADDR`, as printed once listening.
    pub names: Vec<String>,
    /// The listeners other machines reach without TLS or credentials (`insecure`), for
    /// the status.
    pub exposed: Vec<String>,
    /// Who may make which request, shared by every shard.
    pub gate: Option<std::sync::Arc<crate::server::gate::Gate>>,
    /// The connection counts every shard shares.
    pub admission: Option<std::sync::Arc<crate::server::admission::Admission>>,
    /// The doors' TLS, shared by every shard (and reloaded on SIGHUP).
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// What the Kafka door's shards share: its consumer groups and idempotent producers.
    pub kafka_shared: Option<std::sync::Arc<crate::server::kafka::Shared>>,
    /// The console's metric history, shared by every shard (with an HTTP door).
    pub history: Option<std::sync::Arc<crate::server::history::History>>,
}

/// The addresses actually bound (ports resolved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bound {
    pub tcp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub kafka: Option<SocketAddr>,
}

pub fn bind(ingest: &IngestSpec, shards: usize) -> Result<(Bound, Vec<ShardSockets>), RuntimeError> {
    if ingest.tls_client_ca.is_some() && ingest.tls_cert.is_none() {
        return Err(RuntimeError::Tls(
            "client certificates are checked only on doors that speak TLS: give tls_cert and tls_key too"
                .into(),
        ));
    }
    // A door that speaks TLS and asks for credentials may face other machines.
    let secured = ingest.tls_cert.is_some() && ingest.credentials.is_some();
    for (what, addr) in [
        ("tcp", ingest.tcp),
        ("http", ingest.http),
        ("kafka", ingest.kafka),
    ] {
        if let Some(addr) = addr.filter(|_| !secured) {
            exposed(&format!("ingest.{what}"), addr, ingest.insecure)?;
        }
    }
    let gate = crate::server::gate::Gate::new(ingest.credentials.as_deref())
        .map_err(|e| RuntimeError::Credentials(e.to_string()))?;
    let gate = std::sync::Arc::new(gate);
    let tls = match (&ingest.tls_cert, &ingest.tls_key) {
        (Some(cert), Some(key)) => {
            let files = crate::tls::server::ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: ingest.tls_client_ca.clone(),
                required: false,
            };
            let tls = crate::tls::ServerTls::load(files).map_err(|e| RuntimeError::Tls(e.to_string()))?;
            Some(std::sync::Arc::new(tls))
        }
        _ => None,
    };
    let mut sockets: Vec<ShardSockets> = (0..shards).map(|_| ShardSockets::default()).collect();
    let mut bound = Bound::default();
    if let Some(addr) = ingest.tcp {
        let (resolved, fds) = bind_all(addr, shards, "tcp")?;
        bound.tcp = Some(resolved);
        for (s, fd) in sockets.iter_mut().zip(fds) {
            s.tcp = Some(fd);
        }
    }
    if let Some(addr) = ingest.http {
        let (resolved, fds) = bind_all(addr, shards, "http")?;
        bound.http = Some(resolved);
        let history = std::sync::Arc::new(crate::server::history::History::default());
        for (s, fd) in sockets.iter_mut().zip(fds) {
            s.http = Some(fd);
            s.history = Some(std::sync::Arc::clone(&history));
        }
    }
    if let Some(addr) = ingest.kafka {
        let (resolved, fds) = bind_all(addr, shards, "kafka")?;
        bound.kafka = Some(resolved);
        let shared = std::sync::Arc::new(crate::server::kafka::Shared::default());
        for (s, fd) in sockets.iter_mut().zip(fds) {
            s.kafka = Some(fd);
            s.kafka_shared = Some(std::sync::Arc::clone(&shared));
        }
    }
    let mut names = Vec::new();
    let tls_said = if tls.is_some() { " (TLS)" } else { "" };
    if let Some(a) = bound.tcp {
        names.push(format!("tcp {a}{tls_said}"));
    }
    if let Some(a) = bound.http {
        names.push(format!("http {a}{tls_said}"));
    }
    if let Some(a) = bound.kafka {
        names.push(format!("kafka {a}{tls_said}"));
    }
    let admission =
        crate::server::admission::Admission::new(ingest.max_connections, ingest.max_connections_per_address);
    let exposed: Vec<String> = [("tcp", bound.tcp), ("http", bound.http), ("kafka", bound.kafka)]
        .into_iter()
        .filter(|_| !secured)
        .filter_map(|(what, addr)| {
            addr.filter(|a| !a.ip().is_loopback())
                .map(|a| format!("{what} {a}"))
        })
        .collect();
    for s in &mut sockets {
        s.names = names.clone();
        s.exposed = exposed.clone();
        s.gate = Some(std::sync::Arc::clone(&gate));
        s.admission = Some(std::sync::Arc::clone(&admission));
        s.tls = tls.clone();
    }
    Ok((bound, sockets))
}

/// Whether `addr` may be bound: a loopback address always; any other (the unspecified
/// `0.0.0.0` too) only when the operator said `insecure`, since nothing on the door asks
/// who connects yet. Returns whether other machines reach it.
pub fn exposed(what: &str, addr: SocketAddr, insecure: bool) -> Result<bool, RuntimeError> {
    if addr.ip().is_loopback() {
        return Ok(false);
    }
    if !insecure {
        return Err(RuntimeError::Exposed {
            what: what.to_owned(),
            addr,
        });
    }
    tracing::warn!(
        "{what} {addr} is reachable from other machines without TLS or credentials (insecure = true): \
         anyone who reaches it may produce, read, ack and delete"
    );
    Ok(true)
}

fn bind_all(addr: SocketAddr, shards: usize, what: &str) -> Result<(SocketAddr, Vec<RawFd>), RuntimeError> {
    let fail = |e: std::io::Error| RuntimeError::Listen {
        what: what.to_owned(),
        addr,
        source: e,
    };
    // SO_REUSEPORT would let a second flowd (same user) share the port silently and
    // take half its connections. A plain bind first fails if anyone holds the port.
    if addr.port() != 0 {
        drop(crate::net::bind_waiting(addr, || std::net::TcpListener::bind(addr)).map_err(fail)?);
    }
    let mut resolved = addr;
    let mut fds = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = Socket::new(Domain::for_address(resolved), Type::STREAM, None).map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        socket.set_reuse_port(true).map_err(fail)?;
        socket.bind(&resolved.into()).map_err(fail)?;
        socket.listen(BACKLOG).map_err(fail)?;
        if let Some(local) = socket.local_addr().map_err(fail)?.as_socket() {
            resolved = local;
        }
        fds.push(socket.into_raw_fd());
    }
    Ok((resolved, fds))
}
