//! What the metadata group's leader decides for the replicated partitions, on a thread
//! of every peer that acts only while its peer leads the group:
//!
//! - a partition with no assignment gets its replica set and first leader by rendezvous
//!   over the live peers, once as many peers live as it wants replicas (epoch 1);
//! - a partition whose leader is down, restarted since it was chosen, or leaving (or
//!   whose election another peer began and did not finish) gets a new one: the
//!   election is recorded in the metadata first, then a majority of its replicas (the leaving leader left out when the others
//!   make one) are fenced with the next epoch (each promises, durably, to take nothing
//!   older and says its view and its end), the copy of the latest view, the longest of
//!   those, leads, and the choice is proposed over the epoch it was made on, so a
//!   choice made on stale metadata is refused by the group rather than applied.
//!
//! - a partition whose leader serves and whose replica set is not where rendezvous over
//!   the live peers puts it now (a peer joined, one leaves gracefully, one stayed down
//!   for `--replace-after`, or one came back on another data directory) moves: the
//!   peers it gains first copy the log as learners, then one fenced epoch makes the new
//!   set the replicas, only if enough of the new set hold every acked record (below).
//!   A replica down for less than `--replace-after` is waited for (it may come back
//!   with its copy); one back on another data directory (its storage id is not the one
//!   the metadata records) holds nothing it was counted for: it is never counted in an
//!   election or a quorum, and is replaced at once, by itself if placement still puts
//!   the partition there (it copies the log as a learner first).
//!
//! - a partition led by another replica than its preferred one (the first of its set
//!   by rendezvous, the one that led it first) for `--rebalance-after`, while every
//!   replica holds its copy and the preferred one is live, not leaving, has room and
//!   holds every acked record, is led by it again: an election at the next epoch that
//!   chooses it only if, fenced, it still holds every acked record (the leader's
//!   high-water mark). A peer back from a restart so takes its share of the writes
//!   back, as Kafka's preferred leader election does.
//!
//! Why: a batch is acked once a majority holds it in copies of the leader's view, so
//! one of any majority holds it in a copy of that view or a later one; copies of one
//! view are prefixes of its leader's log, so the longest of the latest view holds every
//! acked batch (Viewstamped Replication's view change, the group's leader standing for
//! the new primary). The last batch's epoch alone would not do: a new leader that
//! wrote nothing yet would leave the older batches it holds uncounted (Raft's figure 8).
//!
//! A set change keeps that true: with the leader and a majority of the old replicas
//! fenced (replicas that are gone cannot answer), no batch is acked above the leader's
//! high-water mark (only the leader acks; earlier epochs' acked batches lie below where
//! its epoch began, and a copy of its view is durable past that); a copy of the latest
//! view that ends at or past the mark holds every acked batch; the new set takes over
//! only if every member of it answered and at least half of it hold such copies, so
//! every acked batch lies on a member of any majority of the new set, and every later
//! election finds it.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use crate::cluster::consensus::{Assignment, Command, Outcome};
use crate::cluster::frame::Kind;
use crate::cluster::replication::{self as wire, Fenced};
use crate::cluster::transport::Requests;
use crate::cluster::view::ViewCell;
use crate::cluster::{PeerId, View, rendezvous};
use crate::protocol::status::AbsentReplica;
use crate::runtime::cluster::peers::Peers;
use crate::runtime::cluster::replica::fence;

/// How often the group's leader looks at every replicated partition.
const ROUND: Duration = Duration::from_millis(100);
/// How long a fence or a proposal may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a peer whose disk is full looks for room again.
const FULL_LOOK: Duration = Duration::from_secs(1);

/// How long a leaving leader's batches may take to be acked before its leadership
/// moves anyway (those still waiting are then told they may or may not be written).
const LEAVE_DRAIN: Duration = Duration::from_secs(3);

/// Runs until the engine stops.
pub fn run(peers: Weak<Peers>) {
    let mut links: Option<Requests> = None;
    let mut said_waiting = false;
    // Leaving leaders whose batches were still being acked, since when.
    let mut draining: std::collections::HashMap<(usize, u32), std::time::Instant> =
        std::collections::HashMap::new();
    let mut room_looked = std::time::Instant::now();
    // Partitions led by another replica than their preferred one: since when, in which
    // epoch (a new epoch starts the wait again).
    let mut unbalanced: std::collections::HashMap<(usize, u32), (u32, std::time::Instant)> =
        std::collections::HashMap::new();
    loop {
        std::thread::sleep(ROUND);
        let Some(peers) = peers.upgrade() else { return };
        let Some(shared) = peers.shared() else { return };
        if shared.control.is_stopping() {
            return;
        }
        // A peer whose disk filled up looks every second whether a segment fits again.
        if peers.cluster.me_full() && room_looked.elapsed() >= FULL_LOOK {
            room_looked = std::time::Instant::now();
            let segment = shared
                .spec
                .topics
                .iter()
                .map(|t| t.segment_bytes)
                .max()
                .unwrap_or(0);
            let free = crate::storage::layout::free_bytes(&shared.spec.engine.data_dir);
            if free.is_some_and(|free| free >= 2 * segment) {
                tracing::info!("the disk has room for new segments again: this peer takes writes");
                peers.cluster.set_full(false);
            }
        }
        let consensus = &peers.cluster.consensus;
        let view = peers.cluster.view.get();
        let metadata = consensus.metadata().get();
        let health = Health::of(&peers, &view);
        // Every peer counts how long replicas are down (each address once), so that a
        // new leader of the group does not start counting afresh.
        let replicas: std::collections::BTreeSet<SocketAddr> = metadata
            .partitions
            .values()
            .flat_map(|assignments| assignments.values())
            .flat_map(|a| a.replicas.iter().copied())
            .collect();
        for r in replicas {
            health.cell.down_for(r);
        }
        if !consensus.is_leader() {
            continue;
        }
        let links = links.get_or_insert_with(|| Requests::new(&peers.cluster.dialer, REQUEST_TIMEOUT));
        let live = view.placement();
        let replication = &peers.replication;
        // One set change and one lead given back a round: each costs its partition an
        // epoch.
        let mut moved = false;
        let mut rebalanced = false;
        for (t, topic) in replication.topics().iter().enumerate() {
            let (name, replicas) = (&topic.name, topic.replicas);
            if replicas <= 1 {
                continue;
            }
            for p in 0..topic.partitions {
                let proposal = match metadata.assignment(name, p) {
                    None => {
                        // A named count waits for its peers; the default takes every
                        // live peer up to it, and grows with joins (`next_move`).
                        let size = (replicas as usize).min(live.len());
                        if size == 0 || (!topic.auto && size < replicas as usize) {
                            if !said_waiting {
                                tracing::info!(
                                    "\"{name}\" wants {replicas} replicas and {} peers are alive: its partitions get their replicas once enough peers join",
                                    live.len()
                                );
                                said_waiting = true;
                            }
                            continue;
                        }
                        let set = rendezvous::replica_set(&live, name, p, size);
                        Command::Assign {
                            topic: name.clone(),
                            partition: p,
                            expect_epoch: 0,
                            assignment: Assignment {
                                replicas: set.iter().map(|id| id.addr).collect(),
                                leader: set[0].addr,
                                leader_run: set[0].bump,
                                epoch: 1,
                                learners: Vec::new(),
                                storage: set.iter().map(|id| (id.addr, id.storage)).collect(),
                            },
                        }
                    }
                    Some(a) => {
                        let at = Partition {
                            shared: &shared,
                            view: &view,
                            topic: t,
                            name,
                            partition: p,
                        };
                        let leader = view.member(a.leader);
                        let open = metadata.electing(name, p).filter(|e| *e > a.epoch);
                        let serves = leader.is_some_and(|id| id.bump == a.leader_run && !id.leaving);
                        // A leaving leader takes no new batch; its leadership moves once
                        // those it took are acked (or the drain ran out). (Announcing the
                        // leave renewed its run: it keeps leading under the run it had.)
                        if open.is_none() && leader.is_some_and(|id| id.leaving) {
                            let since = *draining.entry((t, p)).or_insert_with(std::time::Instant::now);
                            let pending = at.fence(links, a.leader, a.epoch).is_ok_and(|f| f.end > f.hwm);
                            if pending && since.elapsed() < LEAVE_DRAIN {
                                continue;
                            }
                        }
                        draining.remove(&(t, p));
                        let mut prefer = None;
                        let to = if open.is_none() && serves {
                            match next_move(&health, &live, name, p, replicas, a) {
                                Move::Stay => {
                                    let Some(preferred) = preferred_lead(&health, name, p, a) else {
                                        unbalanced.remove(&(t, p));
                                        continue;
                                    };
                                    let since = unbalanced
                                        .entry((t, p))
                                        .or_insert((a.epoch, std::time::Instant::now()));
                                    if since.0 != a.epoch {
                                        *since = (a.epoch, std::time::Instant::now());
                                    }
                                    if rebalanced || since.1.elapsed() < peers.cluster.rebalance_after {
                                        continue;
                                    }
                                    // Looked at once a wait: a copy that lags (or a peer
                                    // slow to answer) is not asked every round.
                                    if !hold_every_acked(&at, links, a, &[preferred]) {
                                        since.1 = std::time::Instant::now();
                                        continue;
                                    }
                                    rebalanced = true;
                                    unbalanced.remove(&(t, p));
                                    tracing::info!(
                                        "partition {p} of \"{name}\": its lead goes back to {preferred}, its preferred replica"
                                    );
                                    prefer = Some(preferred);
                                    None
                                }
                                Move::Learn(learners) => {
                                    propose(
                                        consensus,
                                        name,
                                        p,
                                        Command::Learn {
                                            topic: name.clone(),
                                            partition: p,
                                            expect_epoch: a.epoch,
                                            learners,
                                        },
                                    );
                                    continue;
                                }
                                Move::To(set) => {
                                    if moved || !hold_every_acked(&at, links, a, &a.learners) {
                                        continue;
                                    }
                                    moved = true;
                                    Some(set)
                                }
                            }
                        } else {
                            None
                        };
                        // The election is recorded before anyone is fenced with its epoch.
                        let epoch = match open {
                            Some(epoch) => epoch,
                            None => {
                                let begin = Command::Elect {
                                    topic: name.clone(),
                                    partition: p,
                                    expect_epoch: a.epoch,
                                    epoch: a.epoch + 1,
                                };
                                match consensus.propose(begin, REQUEST_TIMEOUT) {
                                    Ok(Outcome::Applied) => a.epoch + 1,
                                    other => {
                                        tracing::debug!(
                                            "partition {p} of \"{name}\": opening an election: {other:?}"
                                        );
                                        continue;
                                    }
                                }
                            }
                        };
                        match elect(&at, links, a, epoch, to.as_deref(), prefer) {
                            Ok(command) => command,
                            Err(why) => {
                                tracing::debug!("partition {p} of \"{name}\": no new leader yet: {why}");
                                continue;
                            }
                        }
                    }
                };
                if !propose(consensus, name, p, proposal) {
                    break;
                }
            }
        }
    }
}

/// Proposes a change to the metadata and says what came of it; false if the group
/// could not be reached (this peer may not lead it any more).
fn propose(consensus: &crate::cluster::consensus::Consensus, name: &str, p: u32, command: Command) -> bool {
    match consensus.propose(command, REQUEST_TIMEOUT) {
        Ok(Outcome::Applied) => {
            if let Some(a) = consensus.metadata().get().assignment(name, p) {
                tracing::info!(
                    "partition {p} of \"{name}\": {} leads in epoch {} (replicas {:?}, learners {:?})",
                    a.leader,
                    a.epoch,
                    a.replicas,
                    a.learners
                );
            }
            true
        }
        Ok(other) => {
            tracing::debug!("partition {p} of \"{name}\": {other:?}");
            true
        }
        Err(error) => {
            tracing::debug!("partition {p} of \"{name}\": {error}");
            false
        }
    }
}

/// Where a served partition's replica set goes next.
#[derive(Debug, PartialEq, Eq)]
enum Move {
    Stay,
    /// These peers copy the log first (none: the move is off).
    Learn(Vec<SocketAddr>),
    /// Its learners are the peers this set gains: the set can change.
    To(Vec<SocketAddr>),
}

/// Whether a replicated partition's set is not where placement puts it under this
/// peer's view of the cluster: a move is under way or due (`flowd status`).
pub fn moving(peers: &Peers, topic: usize, partition: u32) -> bool {
    let topic = &peers.replication.topics()[topic];
    let view = peers.cluster.view.get();
    let health = Health::of(peers, &view);
    let metadata = peers.cluster.consensus.metadata().get();
    metadata.assignment(&topic.name, partition).is_some_and(|a| {
        next_move(
            &health,
            &view.placement(),
            &topic.name,
            partition,
            topic.replicas,
            a,
        ) != Move::Stay
    })
}

/// What became of one replica the metadata records, as this peer sees the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Alive on the data directory it was recorded with.
    Holds,
    /// Down for the time given; replaced once it has been down for `--replace-after`.
    Down(Duration),
    /// Down for `--replace-after` or longer: its place goes to a live peer.
    Gone,
    /// Alive on another data directory (wiped, replaced): it holds nothing it was
    /// counted for, and copies the log again before it counts.
    Emptied,
}

/// The replicas of a partition that do not hold their copy now, for `flowd status`.
pub fn absent(peers: &Peers, topic: usize, partition: u32) -> Vec<AbsentReplica> {
    let topic = &peers.replication.topics()[topic];
    let view = peers.cluster.view.get();
    let health = Health::of(peers, &view);
    let metadata = peers.cluster.consensus.metadata().get();
    let Some(a) = metadata.assignment(&topic.name, partition) else {
        return Vec::new();
    };
    a.replicas
        .iter()
        .filter_map(|r| {
            let (state, down, left) = match health.standing(a, *r) {
                Standing::Holds => return None,
                Standing::Down(down) => ("down", down, Some(health.replace_after.saturating_sub(down))),
                Standing::Gone if view.placement().len() < a.replicas.len() => (
                    "waiting",
                    peers.cluster.view.down_for(*r).unwrap_or_default(),
                    None,
                ),
                Standing::Gone => ("gone", peers.cluster.view.down_for(*r).unwrap_or_default(), None),
                Standing::Emptied => ("emptied", Duration::ZERO, None),
            };
            Some(AbsentReplica {
                replica: r.to_string(),
                state: state.to_string(),
                down_secs: down.as_secs(),
                replaced_in_secs: left.map(|l| l.as_secs()),
            })
        })
        .collect()
}

/// The cluster as the controller judges replicas by.
struct Health<'a> {
    view: &'a View,
    cell: &'a ViewCell,
    replace_after: Duration,
}

impl<'a> Health<'a> {
    fn of(peers: &'a Peers, view: &'a View) -> Health<'a> {
        Health {
            view,
            cell: &peers.cluster.view,
            replace_after: peers.cluster.replace_after,
        }
    }

    fn standing(&self, a: &Assignment, replica: SocketAddr) -> Standing {
        match self.view.member(replica) {
            Some(id) if a.holds(replica, id.storage) => Standing::Holds,
            Some(_) => Standing::Emptied,
            None => match self.cell.down_for(replica) {
                Some(down) if down >= self.replace_after => Standing::Gone,
                Some(down) => Standing::Down(down),
                // Back between the two looks: judged again next round.
                None => Standing::Down(Duration::ZERO),
            },
        }
    }
}

/// The set rendezvous hashing puts the partition on among the live peers (as many as
/// it wants, or every live peer if fewer), and the step towards it. A replica down for
/// less than `--replace-after` holds the set where it is.
fn next_move(health: &Health, live: &[PeerId], name: &str, p: u32, wanted: u32, a: &Assignment) -> Move {
    let view = health.view;
    let mut holding = Vec::new();
    let mut gone = false;
    for r in &a.replicas {
        match health.standing(a, *r) {
            Standing::Holds => holding.push(*r),
            Standing::Down(_) => return Move::Stay,
            Standing::Gone => gone = true,
            Standing::Emptied => {}
        }
    }
    let size = (wanted as usize).min(live.len());
    // A replica gone for good is replaced by a live peer, never just dropped: a smaller
    // set needs the same peers alive for its quorum, and could not use the dead one if
    // it came back.
    if size == 0 || (gone && size < a.replicas.len()) {
        return Move::Stay;
    }
    let mut target: Vec<SocketAddr> = rendezvous::replica_set(live, name, p, size)
        .iter()
        .map(|id| id.addr)
        .collect();
    // A move never takes the set away from a leader that stays: the batches it has in
    // flight would fail. It keeps its place, in that of the last the set would take; a
    // leader that leaves hands its leadership over first (`run`).
    if !target.contains(&a.leader) && view.member(a.leader).is_some_and(|id| !id.leaving) {
        target.pop();
        target.push(a.leader);
    }
    let same = |x: &[SocketAddr], y: &[SocketAddr]| x.len() == y.len() && x.iter().all(|m| y.contains(m));
    if same(&target, &holding) && holding.len() == a.replicas.len() {
        return if a.learners.is_empty() {
            Move::Stay
        } else {
            Move::Learn(Vec::new())
        };
    }
    // What the set gains: peers new to it, and replicas' addresses back on another data
    // directory (they copy the log again).
    let gains: Vec<SocketAddr> = target.iter().filter(|m| !holding.contains(m)).copied().collect();
    if !same(&gains, &a.learners) {
        return Move::Learn(gains);
    }
    Move::To(target)
}

/// The replica that should lead the partition and does not: the first of its set by
/// rendezvous (as placement first chose it), if every replica holds its copy here and
/// that one is live, not leaving and has room.
fn preferred_lead(health: &Health, name: &str, p: u32, a: &Assignment) -> Option<SocketAddr> {
    if !a.learners.is_empty() {
        return None;
    }
    let members: Vec<PeerId> = a
        .replicas
        .iter()
        .map(|r| match health.standing(a, *r) {
            Standing::Holds => health.view.member(*r),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let first = *rendezvous::replica_set(&members, name, p, 1).first()?;
    (first.addr != a.leader && !first.leaving && !first.full).then_some(first.addr)
}

/// One partition as the group's leader reaches its members' replicas.
struct Partition<'a> {
    shared: &'a crate::runtime::shard::Shared,
    view: &'a View,
    topic: usize,
    name: &'a str,
    partition: u32,
}

impl Partition<'_> {
    /// Fences `member`'s replica with `epoch` (the current one: a look) and returns
    /// its answer.
    fn fence(&self, links: &mut Requests, member: SocketAddr, epoch: u32) -> Result<Fenced, String> {
        if member == self.view.me.addr {
            return fence(self.shared, self.topic, self.partition, epoch);
        }
        links
            .request(
                member,
                Kind::FenceEpoch,
                &wire::encode_fence(self.name, self.partition, epoch),
                Kind::Fenced,
            )
            .and_then(|body| wire::decode_fenced(&body).map_err(|e| e.to_string()))
    }
}

/// Whether each of `members`, looked at in the current epoch, holds a copy of its log
/// up to the leader's high-water mark (every record it acked): learners a set change
/// would then not wait on, or a preferred replica that may take the lead.
fn hold_every_acked(at: &Partition, links: &mut Requests, a: &Assignment, members: &[SocketAddr]) -> bool {
    let Ok(leader) = at.fence(links, a.leader, a.epoch) else {
        return false;
    };
    members.iter().all(|m| {
        at.fence(links, *m, a.epoch)
            .is_ok_and(|f| f.view == a.epoch && f.end >= leader.hwm)
    })
}

/// Fences a majority of the partition's replicas with the next epoch and chooses the
/// longest copy among them (`prefer`, if it holds every acked record); with `to`,
/// fences every member old and new and makes `to` the replica set if enough of it hold
/// every acked record (else the set stays).
fn elect(
    at: &Partition,
    links: &mut Requests,
    a: &Assignment,
    epoch: u32,
    to: Option<&[SocketAddr]>,
    prefer: Option<SocketAddr>,
) -> Result<Command, String> {
    let (view, name, partition) = (at.view, at.name, at.partition);
    let majority = a.replicas.len() / 2 + 1;
    // Replicas on the data directories recorded for them (the others are fenced too
    // when they are members of the new set, but never counted as replicas).
    let reachable: Vec<PeerId> = a
        .replicas
        .iter()
        .filter_map(|r| view.member(*r))
        .filter(|id| a.holds(id.addr, id.storage))
        .collect();
    let fenced: Vec<PeerId> = match to {
        // Every member, old and new.
        Some(to) => {
            let mut all = reachable.clone();
            all.extend(
                a.learners
                    .iter()
                    .chain(to)
                    .filter(|m| !reachable.iter().any(|id| id.addr == **m))
                    .filter_map(|m| view.member(*m)),
            );
            all.sort_by_key(|id| id.addr);
            all.dedup_by_key(|id| id.addr);
            all
        }
        None => {
            // A leaving leader keeps serving until the others are fenced, if they make
            // a majority without it. A lead given back fences the leader too: its answer
            // says what was acked.
            let others: Vec<PeerId> = reachable
                .iter()
                .copied()
                .filter(|id| id.addr != a.leader)
                .collect();
            if prefer.is_none() && others.len() >= majority {
                others
            } else {
                reachable.clone()
            }
        }
    };
    let replicas_fenced = fenced.iter().filter(|id| a.replicas.contains(&id.addr)).count();
    if replicas_fenced < majority {
        return Err(format!(
            "{replicas_fenced} of its {} replicas are reachable, {majority} are needed",
            a.replicas.len()
        ));
    }
    let mut answers: Vec<(Fenced, PeerId)> = Vec::new();
    let mut fence = |id: PeerId, answers: &mut Vec<(Fenced, PeerId)>| match at.fence(links, id.addr, epoch) {
        Ok(answer) => answers.push((answer, id)),
        Err(error) => tracing::debug!(
            "fencing partition {partition} of \"{name}\" on {}: {error}",
            id.addr
        ),
    };
    let left_out = reachable
        .iter()
        .copied()
        .filter(|id| !fenced.iter().any(|f| f.addr == id.addr))
        .collect::<Vec<_>>();
    for id in fenced {
        fence(id, &mut answers);
    }
    // Counted as replicas only from the data directory recorded for them: a copy on
    // another (a wiped disk under the old address) or a damaged one holds none of what
    // was acked there.
    let counted = |answers: &[(Fenced, PeerId)]| -> Vec<(Fenced, PeerId)> {
        answers
            .iter()
            .filter(|(f, id)| a.holds(id.addr, f.storage))
            .copied()
            .collect()
    };
    // The leader was left out while the others made a majority; if some of them do not
    // count (a damaged copy), it is fenced too, or the partition would wait for ever on
    // a majority it already has.
    if counted(&answers).len() < majority {
        for id in left_out {
            fence(id, &mut answers);
        }
    }
    let of_replicas = counted(&answers);
    if of_replicas.len() < majority {
        return Err(format!(
            "{} of {majority} replicas promised epoch {epoch}",
            of_replicas.len()
        ));
    }
    if let Some(to) = to {
        if let Some(chosen) = new_set_leader(&answers, &of_replicas, a, to) {
            // Each member of the new set on the data directory it answered from.
            let storage = answers
                .iter()
                .filter(|(_, id)| to.contains(&id.addr))
                .map(|(f, id)| (id.addr, f.storage))
                .collect();
            return Ok(Command::Assign {
                topic: name.to_string(),
                partition,
                expect_epoch: a.epoch,
                assignment: Assignment {
                    replicas: to.to_vec(),
                    leader: chosen.addr,
                    leader_run: chosen.bump,
                    epoch,
                    learners: Vec::new(),
                    storage,
                },
            });
        }
        tracing::info!(
            "partition {partition} of \"{name}\": the move to {to:?} waits, too few of them hold every acked record"
        );
    }
    // The copy of the latest view, the longest of those; among equals, one that stays.
    let mut chosen = of_replicas
        .iter()
        .min_by_key(|(f, id)| (std::cmp::Reverse((f.view, f.end)), id.leaving, id.addr))
        .expect("a majority answered")
        .1;
    // One whose disk is full takes no writes: another leads if it holds every acked
    // record, which is sure when the current leader answered (fenced, it acks nothing
    // more, and its high-water mark bounds what it acked; a copy of its view is durable
    // past where its epoch began, below which every earlier ack lies).
    if chosen.full
        && let Some((leader, _)) = of_replicas.iter().find(|(_, id)| id.addr == a.leader)
        && leader.view == a.epoch
        && let Some((_, other)) = of_replicas
            .iter()
            .filter(|(f, id)| !id.full && f.view == a.epoch && f.end >= leader.hwm)
            .min_by_key(|(f, id)| (std::cmp::Reverse(f.end), id.leaving, id.addr))
    {
        chosen = *other;
    }
    // A lead given back goes to the preferred replica if, fenced, it holds every acked
    // record (sure when the leader answered, as for a full disk above); else it stays
    // with the leader, whose log holds its whole view.
    if let Some(prefer) = prefer
        && let Some((leader, leader_id)) = of_replicas.iter().find(|(_, id)| id.addr == a.leader)
        && leader.view == a.epoch
    {
        let preferred = of_replicas
            .iter()
            .find(|(f, id)| id.addr == prefer && !id.full && f.view == a.epoch && f.end >= leader.hwm);
        match preferred {
            Some((_, id)) => chosen = *id,
            None if !leader_id.full => chosen = *leader_id,
            None => {}
        }
    }
    // The set stays; a replica recorded before storage ids gets the one it answered from.
    let mut storage = a.storage.clone();
    for (f, id) in &of_replicas {
        storage.entry(id.addr).or_insert(f.storage);
    }
    Ok(Command::Assign {
        topic: name.to_string(),
        partition,
        expect_epoch: a.epoch,
        assignment: Assignment {
            replicas: a.replicas.clone(),
            leader: chosen.addr,
            leader_run: chosen.bump,
            epoch,
            learners: a.learners.clone(),
            storage,
        },
    })
}

/// The leader of the new set `to`, if the move may happen: the leader (on its recorded
/// data directory) and every member of `to` answered, and at least half of `to` hold
/// copies of the latest view at or past the highest high-water mark any answered (the
/// leader's: no batch was acked above it, and none is now that it is fenced). The
/// caller saw a majority of the old replicas answer.
fn new_set_leader(
    answers: &[(Fenced, PeerId)],
    of_replicas: &[(Fenced, PeerId)],
    a: &Assignment,
    to: &[SocketAddr],
) -> Option<PeerId> {
    if !of_replicas.iter().any(|(_, id)| id.addr == a.leader)
        || to.iter().any(|m| !answers.iter().any(|(_, id)| id.addr == *m))
    {
        return None;
    }
    let latest = of_replicas.iter().map(|(f, _)| f.view).max()?;
    let acked = answers.iter().map(|(f, _)| f.hwm).max()?;
    let mut holders: Vec<&(Fenced, PeerId)> = answers
        .iter()
        .filter(|(f, id)| to.contains(&id.addr) && f.view == latest && f.end >= acked)
        .collect();
    if holders.is_empty() || holders.len() < to.len().div_ceil(2) {
        return None;
    }
    // The longest; the current leader among equals (its producers move least).
    holders.sort_by_key(|(f, id)| (std::cmp::Reverse(f.end), id.addr != a.leader, id.addr));
    Some(holders[0].1)
}
