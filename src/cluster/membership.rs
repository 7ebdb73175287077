//! The membership thread: drives foca (SWIM with suspicion) with the peers' gossip
//! frames and its timers, and publishes every change of the member list as a new view.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
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
/// How often a peer that knows no one announces itself to its seeds again.
const SEED_RETRY: Duration = Duration::from_secs(1);

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
}

type Swim = Foca<PeerId, PostcardCodec, SmallRng, NoCustomBroadcast>;

pub struct Membership {
    foca: Swim,
    runtime: AccumulatingRuntime<PeerId>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Timer<PeerId>>,
    next_timer: u64,
    seeds: Vec<SocketAddr>,
    outgoing: flume::Sender<(SocketAddr, Vec<u8>)>,
    view: Arc<ViewCell>,
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
    pub fn new(
        me: PeerId,
        seeds: Vec<SocketAddr>,
        outgoing: flume::Sender<(SocketAddr, Vec<u8>)>,
        view: Arc<ViewCell>,
    ) -> Membership {
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
        }
    }

    /// Runs until `Leave` (or every sender is gone).
    pub fn run(mut self, inputs: flume::Receiver<Input>) {
        let mut next_announce = Instant::now();
        loop {
            let now = Instant::now();
            if self.foca.num_members() == 0 && now >= next_announce && !self.seeds.is_empty() {
                for seed in self.seeds.clone() {
                    let result = self.foca.announce(PeerId::seed(seed), &mut self.runtime);
                    self.report(result);
                }
                next_announce = now + SEED_RETRY;
            }
            self.drain();
            let wake = self
                .timers
                .peek()
                .map_or(now + SEED_RETRY, |Reverse((at, _))| *at)
                .min(next_announce.max(now + Duration::from_millis(10)));
            match inputs.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Input::Data(data)) => {
                    let result = self.foca.handle_data(&data, &mut self.runtime);
                    self.report(result);
                }
                Ok(Input::Leaving(done)) => {
                    let leaving = self.foca.identity().leaving();
                    let result = self.foca.change_identity(leaving, &mut self.runtime);
                    self.report(result);
                    self.drain();
                    let _ = done.send(());
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
            let _ = self.outgoing.try_send((to.addr, data.to_vec()));
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
                    tracing::warn!("the others declared this peer down; rejoining as a new run")
                }
                _ => {}
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
