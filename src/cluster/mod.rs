//! Many machines, one engine: peers find each other through a TCP seed list and gossip
//! (SWIM, by foca), every peer computes who owns each partition (rendezvous hashing over
//! the live members), and records and fetches sent to any peer reach the owner.
//!
//! Codemap: `identity` (who a member is) → `membership` (the foca thread) → `view`
//! (the members as this peer sees them) → `rendezvous` (placement); `frame` (the peer
//! protocol), `handover` (the bodies of the messages that move partitions) and
//! `transport` (listener, gossip in and out).

pub mod consensus;
pub mod data;
pub mod error;
pub mod frame;
pub mod handover;
pub mod identity;
pub mod membership;
pub mod rendezvous;
pub mod replication;
pub mod storage_id;
pub mod stream;
pub mod transport;
pub mod view;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use consensus::Consensus;
pub use error::ClusterError;
pub use identity::PeerId;
use membership::{Input, Membership};
use transport::{DataSlot, Dialer, Listener};
pub use view::{PeerState, View, ViewCell};

/// How long the first of several seeds goes without founding a cluster (some seed is a
/// member of a group, or does not answer) before it says so.
pub const NOT_FOUNDED_SAID_AFTER: Duration = Duration::from_secs(10);
/// How often a wait that goes on (for seeds, for founding) is said again.
pub const WAITING_SAID_EVERY: Duration = Duration::from_secs(60);

/// When to warn about a wait that goes on: once it has lasted `after`, then every
/// `every`, so that a peer stuck waiting says why without filling its log.
pub struct Reminder {
    after: Duration,
    every: Duration,
    said: Option<Instant>,
}

impl Reminder {
    pub fn new(after: Duration, every: Duration) -> Reminder {
        Reminder {
            after,
            every,
            said: None,
        }
    }

    /// Whether to say it now, `waited` into the wait; if so, it counts as said.
    pub fn due(&mut self, waited: Duration) -> bool {
        let due = match self.said {
            None => waited >= self.after,
            Some(at) => at.elapsed() >= self.every,
        };
        if due {
            self.said = Some(Instant::now());
        }
        due
    }
}

/// The cluster id peers use when none is given.
pub const DEFAULT_CLUSTER_ID: &str = "flowd";

/// How a peer joins: where it listens for peers, whom it asks first, which cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The address the others reach this peer at: its identity.
    pub listen: SocketAddr,
    /// Where the peer listener binds, if not at `listen` (`--peer-bind`): behind an
    /// address that forwards to it, such as a Kubernetes Service's.
    pub bind: Option<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    pub cluster_id: String,
    /// A peer down this long is replaced: its replicas are copied to live peers and its
    /// vote in the metadata group goes to one (a peer back on a new data directory is
    /// replaced at once).
    pub replace_after: Duration,
    /// A partition led by another replica than its preferred one this long is led by
    /// the preferred one again (`runtime::cluster::controller`).
    pub rebalance_after: Duration,
    /// Bytes per second a leader sends, over all its partitions, to peers that copy a
    /// log without being counted yet (new replicas): producers keep their latency.
    pub copy_rate: u64,
    /// Where this peer's clients connect, told to the others so that they relay
    /// requests about partitions this peer leads (`server::relay`).
    pub client: Option<SocketAddr>,
    /// Where this peer's Kafka clients connect, told to the others so that their Kafka
    /// doors name it as the leader of its partitions (`server::kafka::metadata`).
    pub kafka: Option<SocketAddr>,
    /// Mutual TLS with the cluster's CA on the peer port (`--peer-tls-*`).
    pub tls: Option<crate::tls::peer::PeerFiles>,
    /// The host names `listen` and `seeds` were given as, and where each was found: a
    /// peer certificate naming one speaks for that address.
    pub names: crate::tls::peer::PeerNames,
}

/// This peer's membership: running from `start` until `leave` or the process ends.
pub struct Cluster {
    pub me: PeerId,
    pub cluster_id: String,
    /// Whether seeds were given: a peer that has some serves nothing until it has heard
    /// from the cluster (unless it founded it: `Consensus::founded_here`), so it never
    /// writes beside a live owner nor serves empty a partition whose records the
    /// cluster holds.
    pub seeded: bool,
    /// See `ClusterOptions::replace_after`.
    pub replace_after: Duration,
    /// See `ClusterOptions::rebalance_after`.
    pub rebalance_after: Duration,
    /// See `ClusterOptions::copy_rate`.
    pub copy_rate: u64,
    pub view: Arc<ViewCell>,
    /// This peer's member of the metadata group (who leads each replicated partition).
    pub consensus: Arc<Consensus>,
    /// Set once the engine serves forwarded records and fetches.
    pub data: DataSlot,
    /// How this peer connects to the others (with the cluster's TLS, if any).
    pub dialer: Dialer,
    /// Reads the peer certificate again on SIGHUP.
    _hangup: Option<crate::tls::hangup::Hangup>,
    inputs: flume::Sender<Input>,
    outgoing: membership::GossipOut,
}

impl Cluster {
    /// Binds the peer listener and starts gossiping; returns at once, before any peer
    /// answered (the view fills in as they do).
    /// The group's state lives in `data_dir/cluster/raft`.
    pub fn start(options: &ClusterOptions, cores: usize, data_dir: &Path) -> Result<Cluster, ClusterError> {
        let bind = options.bind.unwrap_or(options.listen);
        let listener = crate::net::bind_waiting(bind, || TcpListener::bind(bind))
            .map_err(|source| ClusterError::Listen { addr: bind, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ClusterError::Listen { addr: bind, source })?;
        // Behind a forwarding address the port the others reach is the one given.
        let addr = match options.bind {
            Some(_) => options.listen,
            None => bound,
        };
        let tls = match &options.tls {
            Some(files) => Some(Arc::new(
                crate::tls::peer::PeerTls::load(
                    files.clone(),
                    &options.cluster_id,
                    addr.ip(),
                    options.names.clone(),
                )
                .map_err(|e| ClusterError::Tls(e.to_string()))?,
            )),
            None => None,
        };
        let hangup = match &tls {
            Some(tls) => Some(
                crate::tls::hangup::Hangup::start(Arc::clone(tls) as Arc<dyn crate::tls::hangup::Reload>)
                    .map_err(|source| ClusterError::Thread {
                        what: "sighup",
                        source,
                    })?,
            ),
            None => None,
        };
        let dialer = Dialer {
            cluster: options.cluster_id.clone(),
            me: addr,
            tls: tls.clone(),
        };
        let storage = storage_id::load_or_create(data_dir, addr)?;
        let me = PeerId::new(addr, cores, storage).with_clients(options.client, options.kafka);
        let view = Arc::new(ViewCell::new(me));
        let (inputs, inputs_rx) = flume::bounded(transport::GOSSIP_QUEUE);
        let (outgoing, outgoing_rx) = membership::GossipOut::new(transport::GOSSIP_QUEUE);
        let data: DataSlot = Arc::new(OnceLock::new());
        let founder = options.seeds.iter().all(|s| *s == addr);
        let consensus = Arc::new(Consensus::start(
            &data_dir.join("cluster").join("raft"),
            dialer.clone(),
            storage,
            founder,
        )?);
        // The first of several seeds (every pod lists the same, pod 0's first) founds
        // the group only once every other seed says it is a member of none.
        if !founder && options.seeds.first() == Some(&addr) {
            consensus.found_when_no_seed_is_a_member(options.seeds.clone(), dialer.clone());
        }
        consensus.keep_members(Arc::clone(&view), options.replace_after);
        let membership = Membership::new(me, options.seeds.clone(), outgoing.clone(), Arc::clone(&view));
        spawn("membership", move || membership.run(inputs_rx))?;
        let gossip_dialer = dialer.clone();
        let written = outgoing.clone();
        spawn("gossip-out", move || {
            transport::send_gossip(gossip_dialer, outgoing_rx, written)
        })?;
        let serving = Arc::new(Listener {
            cluster: options.cluster_id.clone(),
            tls,
            refusals: transport::Refusals::default(),
            gossip: inputs.clone(),
            view: Arc::clone(&view),
            data: Arc::clone(&data),
            consensus: Arc::clone(&consensus),
            open: Arc::new(AtomicUsize::new(0)),
        });
        spawn("peer-listen", move || serving.run(listener))?;
        Ok(Cluster {
            me,
            cluster_id: options.cluster_id.clone(),
            seeded: options.seeds.iter().any(|s| *s != addr),
            replace_after: options.replace_after,
            rebalance_after: options.rebalance_after,
            copy_rate: options.copy_rate,
            view,
            consensus,
            data,
            dialer,
            _hangup: hangup,
            inputs,
            outgoing,
        })
    }

    /// Tells the others this peer is about to leave: they stop placing partitions on it
    /// and take over the ones it owns (it stays a member, answering, until `leave`).
    pub fn announce_leaving(&self, within: Duration) {
        let (done, wait) = flume::bounded(1);
        if self.inputs.send(Input::Leaving(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }

    /// Whether this peer said its disk is full.
    pub fn me_full(&self) -> bool {
        self.view.get().me.full
    }

    /// Tells the others that this peer's disk is full, or has room again (no wait).
    pub fn set_full(&self, full: bool) {
        if self.view.get().me.full != full {
            let _ = self.inputs.try_send(Input::Full(full));
        }
    }

    /// Tells the others this peer leaves, so they drop it at once rather than after the
    /// suspicion time; waits at most `within`.
    pub fn leave(&self, within: Duration) {
        let (done, wait) = flume::bounded(1);
        if self.inputs.send(Input::Leave(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
        // Let the gossip thread write the goodbye before the process goes.
        let deadline = std::time::Instant::now() + within;
        while self.outgoing.unsent() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn spawn(what: &'static str, f: impl FnOnce() + Send + 'static) -> Result<(), ClusterError> {
    std::thread::Builder::new()
        .name(format!("flowd-{what}"))
        .spawn(f)
        .map(drop)
        .map_err(|source| ClusterError::Thread { what, source })
}
