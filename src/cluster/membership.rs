//! The membership thread: drives foca (SWIM with suspicion) with the peers' gossip
//! frames and its timers, and publishes every change of the member list as a new view.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use foca::{
    AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PeriodicParams, PostcardCodec, Timer,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::cluster::identity::PeerId;
use crate::cluster::view::{Member, ViewCell};

/// How often each peer probes one other.
pub const PROBE_PERIOD: Duration = Duration::from_millis(500);
/// How long a probe waits for its answer before asking others to probe indirectly.
pub const PROBE_RTT: Duration = Duration::from_millis(200);
/// How long a suspect has to refute before it is declared down.
pub const SUSPECT_TO_DOWN: Duration = Duration::from_secs(2);
/// How often a peer that is not (or no longer) a member announces itself again, to its
/// seeds and to every peer it knows.
const SEED_RETRY: Duration = Duration::from_secs(1);
/// The longest the membership thread sleeps with no timer of foca's pending (a member
/// always has its probe timer: this is a backstop, not a poll).
const NO_TIMER_WAKE: Duration = Duration::from_secs(60);

/// The longest a dead peer stays listed as alive by the others, in a cluster of
/// `members`: every other member probes it within `members - 1` periods, the probe
/// times out, suspicion runs out, and the news takes a few gossip rounds.
pub fn detection_bound(members: usize) -> Duration {
    PROBE_PERIOD * members.max(2) as u32 + PROBE_RTT + SUSPECT_TO_DOWN + Duration::from_millis(600)
}

pub enum Input {
    /// A gossip message from a peer.
    Data(Vec<u8>),
    /// Announce that this peer hands its partitions over and goes (placement leaves it
    /// out from then on), then answer.
    Leaving(flume::Sender<()>),
    /// Leave the cluster: tell the others, then answer.
    Leave(flume::Sender<()>),
    /// Say that this peer's disk is full (or has room again): a new run of it.
    Full(bool),
}

type Swim = Foca<PeerId, PostcardCodec, SmallRng, NoCustomBroadcast>;

pub struct Membership {
    foca: Swim,
    runtime: AccumulatingRuntime<PeerId>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Timer<PeerId>>,
    next_timer: u64,
    seeds: Vec<SocketAddr>,
    outgoing: GossipOut,
    view: Arc<ViewCell>,
    /// Whether foca counts itself a member (its `Active` notification): false at the
    /// start, once it sees no one alive (`Idle`), and after any change of identity
    /// (its own `Rejoin` when declared down, a full disk, leaving). Foca then waits for
    /// a message addressed to its new identity before it probes anyone; if every peer
    /// took a new identity at once (all declared each other down in a partition, then
    /// healed), each one's gossip goes to the others' old identities, is not heard, and
    /// the cluster stays apart for good. So until then this peer announces itself.
    joined: bool,
}

/// The gossip this peer sends: the queue the membership thread fills (`transport::
/// send_gossip` empties it), and how many of its messages are not written yet, queued
/// or at a peer's sender, so that a leaving peer can wait for its goodbye to go out.
#[derive(Clone)]
pub struct GossipOut {
    queue: flume::Sender<(SocketAddr, Vec<u8>)>,
    unsent: Arc<AtomicUsize>,
}

impl GossipOut {
    /// A queue of `bound` messages and its receiving end.
    pub fn new(bound: usize) -> (GossipOut, flume::Receiver<(SocketAddr, Vec<u8>)>) {
        let (queue, receiver) = flume::bounded(bound);
        let out = GossipOut {
            queue,
            unsent: Arc::new(AtomicUsize::new(0)),
        };
        (out, receiver)
    }

    /// Queues a message; dropped (like a lost datagram) when the queue is full.
    pub fn try_send(&self, to: SocketAddr, data: Vec<u8>) {
        self.unsent.fetch_add(1, Ordering::AcqRel);
        if self.queue.try_send((to, data)).is_err() {
            self.done(1);
        }
    }

    /// `count` messages were written, or dropped.
    pub fn done(&self, count: usize) {
        self.unsent.fetch_sub(count, Ordering::AcqRel);
    }

    /// Messages queued and not yet written or dropped.
    pub fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Acquire)
    }
}

fn config() -> foca::Config {
    let mut config = foca::Config::new_lan(NonZeroU32::new(16).expect("non zero"));
    config.probe_period = PROBE_PERIOD;
    config.probe_rtt = PROBE_RTT;
    config.suspect_to_down_after = SUSPECT_TO_DOWN;
    // Frames travel over TCP: no datagram limit to respect.
    config.max_packet_size = NonZeroUsize::new(64 * 1024).expect("non zero");
    config.periodic_announce = Some(PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::new(1).expect("non zero"),
    });
    // A restarted peer that was given no seed is found by the others.
    config.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: Duration::from_secs(2),
        num_members: NonZeroUsize::new(2).expect("non zero"),
    });
    config
}

impl Membership {
    pub fn new(me: PeerId, seeds: Vec<SocketAddr>, outgoing: GossipOut, view: Arc<ViewCell>) -> Membership {
        let rng = SmallRng::seed_from_u64(me.bump ^ u64::from(me.addr.port()));
        Membership {
            foca: Foca::new(me, config(), rng, PostcardCodec),
            runtime: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            next_timer: 0,
            seeds: seeds.into_iter().filter(|s| *s != me.addr).collect(),
            outgoing,
            view,
            joined: false,
        }
    }

    /// Runs until `Leave` (or every sender is gone).
    pub fn run(mut self, inputs: flume::Receiver<Input>) {
        let mut next_announce = Instant::now();
        loop {
            let now = Instant::now();
            if !self.joined && now >= next_announce {
                self.announce();
                next_announce = now + SEED_RETRY;
            }
            self.drain();
            let mut wake = self
                .timers
                .peek()
                .map_or(now + NO_TIMER_WAKE, |Reverse((at, _))| *at);
            if !self.joined && !self.announce_to().is_empty() {
                wake = wake.min(next_announce);
            }
            match inputs.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Input::Data(data)) => {
                    let result = self.foca.handle_data(&data, &mut self.runtime);
                    self.report(result);
                }
                Ok(Input::Leaving(done)) => {
                    let leaving = self.foca.identity().leaving();
                    self.change_identity(leaving);
                    let _ = done.send(());
                }
                Ok(Input::Full(full)) => {
                    if self.foca.identity().full != full {
                        let renewed = self.foca.identity().with_full(full);
                        self.change_identity(renewed);
                    }
                }
                Ok(Input::Leave(done)) => {
                    let result = self.foca.leave_cluster(&mut self.runtime);
                    self.report(result);
                    self.drain();
                    let _ = done.send(());
                    return;
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            while let Some(Reverse((at, id))) = self.timers.peek().copied() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if let Some(timer) = self.pending.remove(&id) {
                    let result = self.foca.handle_timer(timer, &mut self.runtime);
                    self.report(result);
                }
            }
        }
    }

    /// Announces this peer to its seeds and to every address it has known a member at
    /// (alive or down): an announce is heard by whoever listens there, whatever
    /// identity it holds now, and its answer, addressed to this peer's identity, makes
    /// this peer a member again.
    fn announce(&mut self) {
        for addr in self.announce_to() {
            let result = self.foca.announce(PeerId::seed(addr), &mut self.runtime);
            self.report(result);
        }
    }

    /// Its seeds and every other address it has known a member at (a founder alone has
    /// none, and sleeps until someone announces to it).
    fn announce_to(&self) -> Vec<SocketAddr> {
        let me = self.foca.identity().addr;
        let mut to: Vec<SocketAddr> = self.seeds.clone();
        to.extend(self.foca.iter_membership_state().map(|m| m.id().addr));
        to.sort();
        to.dedup();
        to.retain(|a| *a != me);
        to
    }

    /// Takes a new identity (a full disk, leaving): foca waits for a message addressed
    /// to it, so this peer announces itself again until it is a member.
    fn change_identity(&mut self, id: PeerId) {
        let result = self.foca.change_identity(id, &mut self.runtime);
        self.joined = false;
        self.report(result);
        self.drain();
    }

    fn report(&self, result: Result<(), foca::Error>) {
        if let Err(error) = result {
            tracing::debug!("gossip: {error}");
        }
    }

    /// Sends what foca wants sent, schedules its timers, and publishes the view when a
    /// member came, went or changed.
    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            // Like a lost datagram: SWIM tolerates it, and a full queue must not stall us.
            self.outgoing.try_send(to.addr, data.to_vec());
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let id = self.next_timer;
            self.next_timer += 1;
            self.pending.insert(id, timer);
            self.timers.push(Reverse((now + after, id)));
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => tracing::info!("peer {} joined", id.addr),
                OwnedNotification::MemberDown(id) => tracing::info!("peer {} is down", id.addr),
                OwnedNotification::Rename(old, new) => {
                    tracing::info!("peer {} restarted ({old:?} is now {new:?})", new.addr)
                }
                // A leaving peer's old identity is declared down on purpose.
                OwnedNotification::Defunct if self.foca.identity().leaving => {}
                OwnedNotification::Defunct => {
                    self.joined = false;
                    tracing::warn!("the others declared this peer down and it cannot take a new identity")
                }
                OwnedNotification::Rejoin(id) => {
                    self.joined = false;
                    tracing::info!("the others declared this peer down; rejoining as a new run ({id:?})")
                }
                OwnedNotification::Idle => {
                    self.joined = false;
                    tracing::info!(
                        "no other peer is alive in this peer's view; announcing itself to those it knew"
                    )
                }
                OwnedNotification::Active => {
                    self.joined = true;
                    tracing::debug!("this peer is a member")
                }
            }
        }
        let others = self
            .foca
            .iter_membership_state()
            .map(|m| Member {
                id: *m.id(),
                state: m.state().into(),
            })
            .collect();
        self.view.publish(*self.foca.identity(), others);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::PeerState;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn the_detection_bound_grows_by_a_probe_period_per_member() {
        assert_eq!(detection_bound(3), Duration::from_millis(4300));
        assert_eq!(detection_bound(5), Duration::from_millis(5300));
        // One or two members: still a full probe round of two.
        assert_eq!(detection_bound(1), detection_bound(2));
    }

    /// One member, run on its own thread, whose gossip is carried by `route`.
    struct Node {
        id: PeerId,
        view: Arc<ViewCell>,
        inputs: flume::Sender<Input>,
        /// Cut off: nothing it sends arrives and nothing reaches it (a SIGKILLed peer).
        dead: Arc<AtomicBool>,
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn state_of(node: &Node, of: &PeerId) -> Option<PeerState> {
        let view = node.view.get();
        view.others.iter().find(|m| m.id.addr == of.addr).map(|m| m.state)
    }

    /// Polls (bounded) until `check`; how long it took.
    fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if check() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Members on threads of their own, and the network between them: what a member
    /// sends reaches the member at that address unless either end is cut off.
    struct Harness {
        nodes: Vec<Node>,
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Harness {
        /// Members on `ports`, each seeded with the first only (which founds the cluster).
        fn start(ports: &[u16]) -> Harness {
            let mut nodes: Vec<Node> = Vec::new();
            let mut outgoing = Vec::new();
            let mut threads = Vec::new();
            for (i, port) in ports.iter().enumerate() {
                let id = PeerId::new(addr(*port), 1, u64::from(*port));
                let view = Arc::new(ViewCell::new(id));
                let (out_tx, out_rx) = GossipOut::new(1024);
                let (in_tx, in_rx) = flume::bounded(1024);
                let seeds = if i == 0 { vec![] } else { vec![addr(ports[0])] };
                let membership = Membership::new(id, seeds, out_tx, Arc::clone(&view));
                threads.push(std::thread::spawn(move || membership.run(in_rx)));
                outgoing.push(out_rx);
                nodes.push(Node {
                    id,
                    view,
                    inputs: in_tx,
                    dead: Arc::new(AtomicBool::new(false)),
                });
            }
            let senders: Vec<(SocketAddr, flume::Sender<Input>, Arc<AtomicBool>)> = nodes
                .iter()
                .map(|n| (n.id.addr, n.inputs.clone(), Arc::clone(&n.dead)))
                .collect();
            let stop = Arc::new(AtomicBool::new(false));
            for (from, rx) in outgoing.into_iter().enumerate() {
                let senders = senders.clone();
                let stop = Arc::clone(&stop);
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let Ok((to, data)) = rx.recv_timeout(Duration::from_millis(50)) else {
                            continue;
                        };
                        let (_, _, sender_dead) = &senders[from];
                        if let Some((_, tx, dead)) = senders.iter().find(|(a, _, _)| *a == to)
                            && !dead.load(Ordering::Acquire)
                            && !sender_dead.load(Ordering::Acquire)
                        {
                            let _ = tx.send(Input::Data(data));
                        }
                    }
                }));
            }
            Harness { nodes, stop, threads }
        }

        /// Whether `node` sees every one of `others` alive.
        fn sees_alive(&self, node: usize, others: &[usize]) -> bool {
            others
                .iter()
                .all(|o| state_of(&self.nodes[node], &self.nodes[*o].id) == Some(PeerState::Alive))
        }

        /// Whether every member sees every other one alive.
        fn all_alive(&self) -> bool {
            let all: Vec<usize> = (0..self.nodes.len()).collect();
            all.iter().all(|n| {
                let others: Vec<usize> = all.iter().copied().filter(|o| o != n).collect();
                self.sees_alive(*n, &others)
            })
        }

        /// What each member sees of the others, for a failure's message.
        fn views(&self) -> String {
            self.nodes
                .iter()
                .map(|n| {
                    let view = n.view.get();
                    format!("{:?} sees {:?}", view.me, view.others)
                })
                .collect::<Vec<_>>()
                .join("\n")
        }

        fn finish(self) {
            self.stop.store(true, Ordering::Release);
            for node in &self.nodes {
                let (done, _) = flume::bounded(1);
                let _ = node.inputs.send(Input::Leave(done));
            }
            for thread in self.threads {
                thread.join().unwrap();
            }
        }
    }

    #[test]
    fn three_members_find_each_other_through_one_seed_and_a_silent_one_is_down_within_the_bound() {
        let cluster = Harness::start(&[7101, 7102, 7103]);
        let nodes = &cluster.nodes;
        let joined = within(Duration::from_secs(10), || cluster.all_alive());
        assert!(joined.is_some(), "the members never all saw each other alive");

        // The third goes silent: the others declare it down within the bound (twice it:
        // this machine is shared).
        nodes[2].dead.store(true, Ordering::Release);
        let bound = detection_bound(3);
        for node in &nodes[..2] {
            let took = within(bound * 2, || {
                state_of(node, &nodes[2].id) == Some(PeerState::Down)
            });
            assert!(
                took.is_some(),
                "{} still lists the silent member after {:?}",
                node.id.addr,
                bound * 2
            );
        }
        // The two left still see each other alive.
        assert!(cluster.sees_alive(0, &[1]) && cluster.sees_alive(1, &[0]));
        cluster.finish();
    }

    /// A member cut off long enough that it and the others declare each other down
    /// comes back once the cut heals, even the founder, which has no seed to announce
    /// to, and even when the others renew their identities at once (each then gossips to
    /// the other's old identity, which is not heard: foca waits for a message addressed
    /// to its new one before it probes again).
    #[test]
    fn after_a_cut_in_which_all_declared_each_other_down_the_members_find_each_other_again() {
        for round in 0..2 {
            let base = 7111 + round * 10;
            let cluster = Harness::start(&[base, base + 1, base + 2]);
            let nodes = &cluster.nodes;
            assert!(
                within(Duration::from_secs(10), || cluster.all_alive()).is_some(),
                "the members never all saw each other alive:\n{}",
                cluster.views()
            );
            // The founder is cut off until it sees the others down and they see it down.
            nodes[0].dead.store(true, Ordering::Release);
            let bound = detection_bound(3) * 2;
            let apart = within(bound, || {
                state_of(&nodes[0], &nodes[1].id) == Some(PeerState::Down)
                    && state_of(&nodes[0], &nodes[2].id) == Some(PeerState::Down)
                    && state_of(&nodes[1], &nodes[0].id) == Some(PeerState::Down)
                    && state_of(&nodes[2], &nodes[0].id) == Some(PeerState::Down)
            });
            assert!(apart.is_some(), "the cut was never seen:\n{}", cluster.views());
            nodes[0].dead.store(false, Ordering::Release);
            let healed = within(bound * 2, || cluster.all_alive());
            assert!(
                healed.is_some(),
                "round {round}: the members did not find each other again within {:?} of the heal:\n{}",
                bound * 2,
                cluster.views()
            );
            cluster.finish();
        }
    }

    /// Every member takes a new identity at the same moment (as when all were declared
    /// down by each other and renewed at once), with the network cut so that none hears
    /// of the others' new ones: once it heals they still find each other.
    #[test]
    fn members_that_all_took_a_new_identity_at_once_find_each_other_again() {
        let cluster = Harness::start(&[7131, 7132, 7133]);
        let nodes = &cluster.nodes;
        assert!(
            within(Duration::from_secs(10), || cluster.all_alive()).is_some(),
            "the members never all saw each other alive:\n{}",
            cluster.views()
        );
        for node in nodes {
            node.dead.store(true, Ordering::Release);
        }
        for node in nodes {
            node.inputs.send(Input::Full(true)).unwrap();
        }
        let renewed = within(Duration::from_secs(5), || {
            nodes.iter().all(|n| n.view.get().me.full)
        });
        assert!(renewed.is_some(), "the members did not take their new identities");
        for node in nodes {
            node.dead.store(false, Ordering::Release);
        }
        // Each one must see each other's new identity alive (not only the old one it
        // still lists).
        let current = |n: usize, o: usize| {
            let now = nodes[o].view.get().me;
            nodes[n]
                .view
                .get()
                .others
                .iter()
                .any(|m| m.id == now && m.state == PeerState::Alive)
        };
        let bound = detection_bound(3) * 2;
        let met = within(bound, || {
            (0..3).all(|n| (0..3).filter(|o| *o != n).all(|o| current(n, o)))
        });
        assert!(
            met.is_some(),
            "the members did not find each other's new identities within {bound:?}:\n{}",
            cluster.views()
        );
        cluster.finish();
    }
}
