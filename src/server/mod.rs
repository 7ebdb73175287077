//! The front doors: the binary protocol over TCP and JSON over HTTP, served on every
//! shard. The kernel spreads connections over the shards (SO_REUSEPORT); a connection
//! stays on the shard that accepted it, and its records travel to the shards owning
//! their partitions over the same channels the dataflow uses.
//!
//! Codemap: `listeners` (sockets bound before the shards start) → `connection` (one TCP
//! client: frames in, responses out, limits) and `http` (hyper) → `api` (what both
//! offer) → the runtime; `relay` sends a request about a partition another peer leads
//! to that peer's client listener. `metrics` and `page` render what `/metrics` and `/`
//! show; `history` keeps the console's charts.

pub mod admission;
pub mod api;
pub mod connection;
pub mod consumer_api;
pub mod door;
pub mod gate;
pub mod health;
pub mod history;
pub mod http;
pub mod kafka;
pub mod listeners;
pub mod outgoing;
pub mod page;
pub mod relay;
pub mod sessions;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::config::DataflowSpec;
use crate::metrics::Metrics;
use crate::runtime::Engine;
use crate::runtime::error::RuntimeError;
use crate::runtime::shard::Shard;
pub use listeners::{Bound, ShardSockets, bind};

/// What every connection on one shard shares.
pub struct Front {
    pub max_frame_bytes: usize,
    pub io_timeout: Duration,
    pub idle_timeout: Duration,
    /// Host names the HTTP door answers to besides IP literals and `localhost`.
    pub http_hosts: Vec<String>,
    /// Who may make which request.
    pub gate: Arc<gate::Gate>,
    /// Connections counted in and out, across every shard.
    pub admission: Arc<admission::Admission>,
    /// This shard's bytes for large unfinished frames and bodies (`admission`).
    pub buffered: Rc<glommio::sync::Semaphore>,
    /// `tcp ADDR` / `http ADDR` lines, for the status page.
    pub listeners: Vec<String>,
    /// Those (and the peer port) other machines reach without TLS or credentials.
    pub exposed: Vec<String>,
    pub started: Instant,
    /// This shard's connections to the peers it relays client requests to.
    pub relays: relay::Relays,
    /// The doors' TLS, when they speak it.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The peer port's mutual TLS, when the peers speak it: relays go in it, both ways.
    pub peer_tls: Option<Arc<crate::tls::peer::PeerTls>>,
    /// What the Kafka door's shards share (groups, producers), when it is open.
    pub kafka_shared: Option<Arc<kafka::Shared>>,
    /// The console's metric history (every shard's the same).
    pub history: Arc<history::History>,
    /// The last `(time, records in, jobs in)` sample, for the rates.
    last_sample: RefCell<(Instant, u64, u64)>,
}

impl Front {
    /// Records and jobs taken per second since the previous sample (at least a second
    /// old, or since start).
    pub fn rates(&self, records_in: u64, jobs_in: u64) -> (f64, f64) {
        let now = Instant::now();
        let mut last = self.last_sample.borrow_mut();
        let elapsed = now.duration_since(last.0).as_secs_f64();
        let per_sec = |now: u64, then: u64| {
            if elapsed > 0.0 {
                now.saturating_sub(then) as f64 / elapsed
            } else {
                0.0
            }
        };
        let rates = (per_sec(records_in, last.1), per_sec(jobs_in, last.2));
        if elapsed >= 1.0 {
            *last = (now, records_in, jobs_in);
        }
        rates
    }

    /// The status document: this peer's own, or (in a cluster, unless `local`) every
    /// peer's put together, each other peer asked through its client listener at once.
    /// The status, this peer's own or (unless `local`) the cluster's, gathered through
    /// `relays` (the asking client's).
    pub async fn status(
        &self,
        shard: &Rc<Shard>,
        local: bool,
        relays: &relay::Relays,
    ) -> crate::protocol::status::Status {
        let metrics = &shard.shared.metrics;
        let rates = self.rates(metrics.records_in.get(), metrics.jobs.get());
        let mut own = api::status::status(shard, self.started, &self.listeners, rates).await;
        own.insecure = self.exposed.clone();
        match shard.shared.peers.as_deref() {
            Some(peers) if !local => {
                let answers = relay::statuses(relays, peers).await;
                api::status::merge(own, answers)
            }
            _ => own,
        }
    }
}

/// The next connection `listener` takes. Accept errors (out of file descriptors, most
/// likely) are logged and retried after a pause instead of spinning.
pub(crate) async fn accept(listener: &glommio::net::TcpListener, what: &str) -> glommio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok(stream) => return stream,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a {what} connection");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts connections on the listening socket `fd` (this shard's) until the engine
/// stops: each is admitted, opened by the door (`speaks`) and served by `serve` on a
/// task of its own, or refused (over a limit) by `refuse`, which tells the client why.
pub(crate) async fn accept_loop<S, R>(
    shard: Rc<Shard>,
    front: Rc<Front>,
    fd: std::os::fd::RawFd,
    speaks: door::Speaks,
    serve: fn(Rc<Shard>, Rc<Front>, door::Stream) -> S,
    refuse: fn(door::Stream, admission::Refusal) -> R,
) where
    S: std::future::Future<Output = ()> + 'static,
    R: std::future::Future<Output = ()> + 'static,
{
    use std::os::fd::FromRawFd;
    // Safety: `fd` is a listening socket bound for this shard and owned by nothing else.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
    let metrics = Arc::clone(&shard.shared.metrics);
    let what = speaks.what;
    let door = Rc::new(door::Door {
        what,
        tls: front.tls.clone(),
        io_timeout: front.io_timeout,
        plain_answer: speaks.plain_answer,
        relays: front.peer_tls.clone().filter(|_| speaks.relays),
    });
    let first_wait = door.first_wait(front.idle_timeout, front.gate.closed());
    while !shard.shared.control.is_stopping() {
        let stream = accept(&listener, what).await;
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let (door, metrics) = (Rc::clone(&door), Arc::clone(&metrics));
        let open = match admit(&metrics, &front, what, peer) {
            Ok(open) => open,
            Err(refusal) => {
                // Told in the connection's own terms: through TLS on a TLS door.
                shard.tasks.spawn(async move {
                    let stream = match door.tls {
                        None => Some(door::Stream::plain(stream)),
                        Some(_) => door.open(stream, &metrics, Duration::from_secs(1)).await,
                    };
                    if let Some(stream) = stream {
                        refuse(stream, refusal).await;
                    }
                });
                continue;
            }
        };
        let (shard_, front_) = (Rc::clone(&shard), Rc::clone(&front));
        shard.tasks.spawn(async move {
            if let Some(stream) = door.open(stream, &metrics, first_wait).await {
                serve(shard_, front_, stream).await;
            }
            drop(open);
        });
    }
}

/// Counts a new connection in, or, over a limit, counts it refused and logs why.
pub(crate) fn admit(
    metrics: &Arc<Metrics>,
    front: &Front,
    what: &str,
    peer: Option<std::net::IpAddr>,
) -> Result<admission::Admitted, admission::Refusal> {
    match front.admission.admit(metrics, peer) {
        Ok(admitted) => {
            metrics.connections_total.add(1);
            Ok(admitted)
        }
        Err(refusal) => {
            metrics.connections_refused.add(1);
            metrics.error(crate::protocol::ErrorCode::Overloaded);
            tracing::warn!(?peer, "{what} connection refused: {}", refusal.message());
            Err(refusal)
        }
    }
}

/// A dataflow's listeners, bound for every shard before the engine starts: the doors
/// the engine opens on each shard (`runtime::Doors`).
pub struct Listeners {
    sockets: std::sync::Mutex<Vec<Option<ShardSockets>>>,
    /// Reloads the doors' TLS on SIGHUP while the listeners live.
    _hangup: Option<crate::tls::hangup::Hangup>,
}

impl crate::runtime::Doors for Listeners {
    fn open(&self, shard: &Rc<Shard>) {
        let sockets = self.sockets.lock().expect("listeners lock")[shard.index].take();
        if let Some(sockets) = sockets {
            serve(shard, sockets);
        }
    }
}

/// Binds the listeners of `spec` (none without `[ingest]`), one set per shard: the
/// doors to hand the engine, and the addresses bound (ports resolved). Clients may
/// connect as soon as this returns; they are served once the engine runs.
pub fn listen(spec: &DataflowSpec) -> Result<(Option<Arc<dyn crate::runtime::Doors>>, Bound), RuntimeError> {
    let Some(ingest) = &spec.ingest else {
        return Ok((None, Bound::default()));
    };
    let shards = crate::runtime::core_count(spec.engine.cores)?;
    let (bound, sockets) = bind(ingest, shards)?;
    let hangup = match sockets.first().and_then(|s| s.tls.clone()) {
        Some(tls) => Some(crate::tls::hangup::Hangup::start(tls).map_err(|e| {
            RuntimeError::Tls(format!("cannot wait for SIGHUP to reload the certificate: {e}"))
        })?),
        None => None,
    };
    let listeners = Listeners {
        sockets: std::sync::Mutex::new(sockets.into_iter().map(Some).collect()),
        _hangup: hangup,
    };
    Ok((Some(Arc::new(listeners)), bound))
}

/// An engine with its doors open (as one peer of `cluster` when given), and the
/// addresses they listen on.
pub fn start(spec: DataflowSpec, cluster: Option<Arc<Cluster>>) -> Result<(Engine, Bound), RuntimeError> {
    let (doors, bound) = listen(&spec)?;
    let engine = crate::runtime::start_in(spec, cluster, doors)?;
    Ok((engine, bound))
}

/// Starts this shard's accept loops, if the dataflow has listeners.
fn serve(shard: &Rc<Shard>, sockets: ShardSockets) {
    let Some(ingest) = shard.shared.spec.ingest.clone() else {
        return;
    };
    let (Some(admission), Some(gate)) = (sockets.admission.clone(), sockets.gate.clone()) else {
        return;
    };
    let peer_tls = shard
        .shared
        .peers
        .as_deref()
        .and_then(|peers| peers.cluster.dialer.tls.clone());
    let front = Rc::new(Front {
        max_frame_bytes: ingest.max_frame_bytes as usize,
        io_timeout: ingest.io_timeout,
        idle_timeout: ingest.idle_timeout,
        http_hosts: ingest.http_hosts.clone(),
        gate,
        admission,
        buffered: Rc::new(glommio::sync::Semaphore::new(ingest.max_buffered_bytes)),
        listeners: sockets.names.clone(),
        exposed: {
            let mut exposed = sockets.exposed.clone();
            if let Some(peers) = shard.shared.peers.as_deref()
                && !peers.cluster.me.addr.ip().is_loopback()
            {
                exposed.push(format!("peers {}", peers.cluster.me.addr));
            }
            exposed
        },
        started: Instant::now(),
        relays: relay::Relays::new(peer_tls.clone()),
        tls: sockets.tls.clone(),
        peer_tls,
        kafka_shared: sockets.kafka_shared.clone(),
        history: sockets.history.clone().unwrap_or_default(),
        last_sample: RefCell::new((Instant::now(), 0, 0)),
    });
    if let Some(history) = sockets.history.clone().filter(|_| shard.index == 0) {
        shard.tasks.spawn(history::sample_forever(
            Rc::clone(shard),
            Rc::clone(&front),
            history,
        ));
    }
    if let Some(fd) = sockets.tcp {
        shard
            .tasks
            .spawn(connection::accept_loop(Rc::clone(shard), Rc::clone(&front), fd));
    }
    if let Some(fd) = sockets.kafka {
        shard
            .tasks
            .spawn(kafka::accept_loop(Rc::clone(shard), Rc::clone(&front), fd));
    }
    if let Some(fd) = sockets.http {
        shard.tasks.spawn(http::accept_loop(Rc::clone(shard), front, fd));
    }
}
