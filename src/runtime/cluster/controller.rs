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
//! Why: a batch is acked once a majority holds it in copies of the leader's view, so
//! one of any majority holds it in a copy of that view or a later one; copies of one
//! view are prefixes of its leader's log, so the longest of the latest view holds every
//! acked batch (Viewstamped Replication's view change, the group's leader standing for
//! the new primary). The last batch's epoch alone would not do: a new leader that
//! wrote nothing yet would leave the older batches it holds uncounted (Raft's figure 8).

use std::sync::Weak;
use std::time::Duration;

use crate::cluster::consensus::{Assignment, Command, Outcome};
use crate::cluster::frame::Kind;
use crate::cluster::replication as wire;
use crate::cluster::transport::Requests;
use crate::cluster::{PeerId, View, rendezvous};
use crate::runtime::cluster::peers::Peers;
use crate::runtime::cluster::replica::fence;

/// How often the group's leader looks at every replicated partition.
const ROUND: Duration = Duration::from_millis(100);
/// How long a fence or a proposal may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until the engine stops.
pub fn run(peers: Weak<Peers>) {
    let mut links: Option<Requests> = None;
    let mut said_waiting = false;
    loop {
        std::thread::sleep(ROUND);
        let Some(peers) = peers.upgrade() else { return };
        let Some(shared) = peers.shared() else { return };
        if shared.control.is_stopping() {
            return;
        }
        let consensus = &peers.cluster.consensus;
        if !consensus.is_leader() {
            continue;
        }
        let links = links.get_or_insert_with(|| {
            Requests::new(&peers.cluster.cluster_id, peers.cluster.me.addr, REQUEST_TIMEOUT)
        });
        let view = peers.cluster.view.get();
        let metadata = consensus.metadata().get();
        let live = view.placement();
        let replication = &peers.replication;
        for (t, (name, partitions, replicas)) in replication.topics().iter().enumerate() {
            if *replicas <= 1 {
                continue;
            }
            for p in 0..*partitions {
                let proposal = match metadata.assignment(name, p) {
                    None => {
                        if live.len() < *replicas as usize {
                            if !said_waiting {
                                tracing::info!(
                                    "\"{name}\" wants {replicas} replicas and {} peers are alive: its partitions get their replicas once enough peers join",
                                    live.len()
                                );
                                said_waiting = true;
                            }
                            continue;
                        }
                        let set = rendezvous::replica_set(&live, name, p, *replicas as usize);
                        Command::Assign {
                            topic: name.clone(),
                            partition: p,
                            expect_epoch: 0,
                            assignment: Assignment {
                                replicas: set.iter().map(|id| id.addr).collect(),
                                leader: set[0].addr,
                                leader_run: set[0].bump,
                                epoch: 1,
                            },
                        }
                    }
                    Some(a) => {
                        let leader = view.member(a.leader);
                        let open = metadata.electing(name, p).filter(|e| *e > a.epoch);
                        if open.is_none() && leader.is_some_and(|id| id.bump == a.leader_run && !id.leaving) {
                            continue;
                        }
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
                        match elect(&peers, &shared, &view, links, t, p, a, epoch) {
                            Ok(command) => command,
                            Err(why) => {
                                tracing::debug!("partition {p} of \"{name}\": no new leader yet: {why}");
                                continue;
                            }
                        }
                    }
                };
                match consensus.propose(proposal, REQUEST_TIMEOUT) {
                    Ok(Outcome::Applied) => {
                        let a = consensus.metadata().get().assignment(name, p).cloned();
                        if let Some(a) = a {
                            tracing::info!(
                                "partition {p} of \"{name}\": {} leads in epoch {} (replicas {:?})",
                                a.leader,
                                a.epoch,
                                a.replicas
                            );
                        }
                    }
                    Ok(other) => tracing::debug!("partition {p} of \"{name}\": {other:?}"),
                    Err(error) => {
                        tracing::debug!("partition {p} of \"{name}\": {error}");
                        break;
                    }
                }
            }
        }
    }
}

/// Fences a majority of the partition's replicas with the next epoch and chooses the
/// longest copy among them.
#[allow(clippy::too_many_arguments)]
fn elect(
    peers: &Peers,
    shared: &crate::runtime::shard::Shared,
    view: &View,
    links: &mut Requests,
    topic: usize,
    partition: u32,
    a: &Assignment,
    epoch: u32,
) -> Result<Command, String> {
    let majority = a.replicas.len() / 2 + 1;
    let name = peers.topic_name(topic).to_string();
    let reachable: Vec<PeerId> = a.replicas.iter().filter_map(|r| view.member(*r)).collect();
    // A leaving leader keeps serving until the others are fenced, if they make a
    // majority without it.
    let others: Vec<PeerId> = reachable
        .iter()
        .copied()
        .filter(|id| id.addr != a.leader)
        .collect();
    let fenced = if others.len() >= majority {
        others
    } else {
        reachable
    };
    if fenced.len() < majority {
        return Err(format!(
            "{} of its {} replicas are reachable, {majority} are needed",
            fenced.len(),
            a.replicas.len()
        ));
    }
    let mut answers: Vec<(u32, u64, PeerId)> = Vec::new();
    for id in fenced {
        let answer = if id.addr == view.me.addr {
            fence(shared, topic, partition, epoch)
        } else {
            links
                .request(
                    id.addr,
                    Kind::FenceEpoch,
                    &wire::encode_fence(&name, partition, epoch),
                    Kind::Fenced,
                )
                .and_then(|body| wire::decode_fenced(&body).map_err(|e| e.to_string()))
        };
        match answer {
            Ok((view, end)) => answers.push((view, end, id)),
            Err(error) => tracing::debug!(
                "fencing partition {partition} of \"{name}\" on {}: {error}",
                id.addr
            ),
        }
    }
    if answers.len() < majority {
        return Err(format!(
            "{} of {majority} replicas promised epoch {epoch}",
            answers.len()
        ));
    }
    // The copy of the latest view, the longest of those; among equals, one that stays.
    answers.sort_by_key(|(view, end, id)| (std::cmp::Reverse((*view, *end)), id.leaving, id.addr));
    let chosen = answers[0].2;
    Ok(Command::Assign {
        topic: name,
        partition,
        expect_epoch: a.epoch,
        assignment: Assignment {
            replicas: a.replicas.clone(),
            leader: chosen.addr,
            leader_run: chosen.bump,
            epoch,
        },
    })
}
