//! Partitions follow their owner when membership changes. Every peer runs this thread:
//! when its view places a partition here that is away, it claims it from every other
//! reachable peer (each fences it once its own view agrees: no more appends there, and
//! says where its copy ends), copies in the records of the longest copy from where its
//! own ends, and only then serves it. A leaving peer waits until the new owners said they
//! hold what it had (`leave`).
//!
//! Why fencing needs the holder's agreement: right after a change two views differ; a
//! holder that still believes it owns the partition keeps taking writes, so the claimer
//! waits (and asks again) until the holder's view moved too. For the same reason a
//! holder fences only for a claimer that asked every peer the holder sees alive: one
//! whose view is behind would miss a longer copy. Nothing is written twice or lost
//! between the fence and the copy: a fenced holder routes every later batch on
//! (rerouter), and the new owner writes nothing but the copy until the copy is whole.
//! A peer given seeds serves nothing before it has heard from the cluster (or founded
//! it): alone, every claim would be agreed by nobody and served empty.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::cluster::frame::Kind;
use crate::cluster::handover::{self as msg, ClaimEntry, CopyOrder, Phase};
use crate::cluster::transport::Requests;
use crate::cluster::{Reminder, WAITING_SAID_EVERY};
use crate::protocol::status::Standing;
use crate::protocol::wire::Cursor;
use crate::runtime::cluster::peers::Peers;
use crate::runtime::mesh::{Ack, Batch, Payload};
use crate::runtime::placement::owner;
use crate::runtime::service::ShardRequest;
use crate::runtime::shard::Shared;

/// How often the thread looks at the view and retries claims not agreed yet.
const ROUND: Duration = Duration::from_millis(50);
/// How long a peer given seeds waits to hear from the cluster before it says, loudly,
/// that it still serves nothing (and again every `cluster::WAITING_SAID_EVERY`).
const JOIN_PATIENCE: Duration = Duration::from_secs(5);
/// How long one hand-over request may take (a copy is at most one batch).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving peer waits for the new owners to take its partitions.
pub const LEAVE_PATIENCE: Duration = Duration::from_secs(30);

/// Runs until the engine stops.
pub fn run(peers: Weak<Peers>) {
    let started = Instant::now();
    let mut links: Option<Requests> = None;
    // Once this peer heard from the cluster (or founded it), for the rest of its run.
    let mut may_serve = false;
    let mut waiting = Reminder::new(JOIN_PATIENCE, WAITING_SAID_EVERY);
    if peers.upgrade().is_some_and(|p| p.cluster.seeded) {
        tracing::info!("waiting to hear from a seed before serving any partition");
    }
    loop {
        std::thread::sleep(ROUND);
        let Some(peers) = peers.upgrade() else {
            return;
        };
        let Some(shared) = peers.shared() else {
            return;
        };
        if shared.control.is_stopping() {
            return;
        }
        let view = peers.cluster.view.get();
        may_serve = may_serve
            || !view.others.is_empty()
            || may_serve_alone(&peers.cluster, started.elapsed(), &mut waiting);
        if !may_serve {
            continue;
        }
        let owners = peers.owners();
        let mut claims = Vec::new();
        for (t, topic) in owners.iter().enumerate() {
            // A replicated partition moves by the metadata group's decision, not by claims.
            if peers.replication.is_replicated(t) {
                continue;
            }
            for (p, owner) in topic.iter().enumerate() {
                let p = p as u32;
                match (owner, peers.ownership.standing(t, p)) {
                    (Some(_), Standing::Away) => {}
                    (Some(_), _) => peers.ownership.fence(t, p),
                    (None, Standing::Away) => {
                        peers.ownership.start_claim(t, p);
                        claims.push((t, p));
                    }
                    (None, Standing::Claiming) => claims.push((t, p)),
                    (None, Standing::Serving) => {}
                }
            }
        }
        if !claims.is_empty() {
            let links = links.get_or_insert_with(|| Requests::new(&peers.cluster.dialer, REQUEST_TIMEOUT));
            claim(&peers, &shared, links, &claims);
        }
    }
}

/// Whether a peer that has heard from no other peer yet may serve partitions: one
/// without seeds (or seeded only with itself) at once, the first of several seeds once
/// it founded the cluster (every other seed said it is a member of no group: the
/// metadata group's rule), any other never. Serving alone, it would claim every
/// partition from nobody and serve them empty: once its seeds answer, the records they
/// hold for the partitions it keeps would be hidden behind its empty copies. So it
/// waits, and says so.
fn may_serve_alone(cluster: &crate::cluster::Cluster, waited: Duration, waiting: &mut Reminder) -> bool {
    if !cluster.seeded {
        return true;
    }
    if cluster.consensus.founded_here() {
        tracing::info!("this peer founded the cluster: it serves every partition until others join");
        return true;
    }
    if waiting.due(waited) {
        tracing::warn!(
            "heard from none of its seeds in {} s: it serves no partition until it has (alone it would serve empty the partitions whose records the cluster holds); check that a seed (--seeds) runs and that its peer port is reachable",
            waited.as_secs()
        );
    }
    false
}

/// One round of claims: fence everywhere, copy where all agreed, serve, say so.
fn claim(peers: &Peers, shared: &Shared, links: &mut Requests, claims: &[(usize, u32)]) {
    let view = peers.cluster.view.get();
    let targets: Vec<SocketAddr> = view.reachable_others().map(|id| id.addr).collect();
    let end = |t: usize, p: u32| shared.ends[t][p as usize].load(std::sync::atomic::Ordering::Acquire);
    // Per claim: whether every target agreed, and the longest copy (end, holder).
    let mut agreed = vec![true; claims.len()];
    let mut longest: Vec<(u64, Option<SocketAddr>)> =
        claims.iter().map(|&(t, p)| (end(t, p), None)).collect();
    for chunk_start in (0..claims.len()).step_by(msg::CLAIM_ENTRIES_MAX) {
        let chunk = &claims[chunk_start..(chunk_start + msg::CLAIM_ENTRIES_MAX).min(claims.len())];
        let entries: Vec<ClaimEntry> = chunk
            .iter()
            .map(|&(t, p)| ClaimEntry {
                topic: peers.topic_name(t).to_string(),
                partition: p,
                phase: Phase::Fence,
                end: end(t, p),
            })
            .collect();
        for &to in &targets {
            let answers = links
                .request(
                    to,
                    Kind::Claim,
                    &msg::encode_claim(&entries, &targets),
                    Kind::Claimed,
                )
                .and_then(|body| msg::decode_claimed(&body, entries.len()).map_err(|e| e.to_string()));
            match answers {
                Ok(answers) => {
                    for (i, answer) in answers.into_iter().enumerate() {
                        match answer {
                            None => agreed[chunk_start + i] = false,
                            Some(held) if held > longest[chunk_start + i].0 => {
                                longest[chunk_start + i] = (held, Some(to))
                            }
                            Some(_) => {}
                        }
                    }
                }
                // Listed as alive but not answering: ask again next round (by then the
                // view may say it is down).
                Err(error) => {
                    tracing::debug!("claim to peer {to}: {error}");
                    for a in &mut agreed[chunk_start..chunk_start + chunk.len()] {
                        *a = false;
                    }
                }
            }
        }
    }
    let mut done = Vec::new();
    for (i, &(t, p)) in claims.iter().enumerate() {
        if !agreed[i] {
            continue;
        }
        if let (held, Some(from)) = longest[i]
            && let Err(error) = copy_in(peers, shared, links, from, t, p, held)
        {
            tracing::warn!(
                "taking partition {p} of \"{}\" over from peer {from}: {error}; trying again",
                peers.topic_name(t)
            );
            continue;
        }
        if peers.ownership.finish_claim(t, p) {
            tracing::debug!(
                "serving partition {p} of \"{}\" from offset {}",
                peers.topic_name(t),
                end(t, p)
            );
            done.push(ClaimEntry {
                topic: peers.topic_name(t).to_string(),
                partition: p,
                phase: Phase::Done,
                end: end(t, p),
            });
        }
    }
    // Best effort: a leaving peer that misses it waits out its patience.
    for chunk in done.chunks(msg::CLAIM_ENTRIES_MAX) {
        for &to in &targets {
            let _ = links.request(
                to,
                Kind::Claim,
                &msg::encode_claim(chunk, &targets),
                Kind::Claimed,
            );
        }
    }
}

/// Copies partition `p` of topic `t` from `from` (which holds it up to `held`) into
/// this peer's copy, batch by batch through the owner shard's inbox.
#[allow(clippy::too_many_arguments)]
fn copy_in(
    peers: &Peers,
    shared: &Shared,
    links: &mut Requests,
    from: SocketAddr,
    t: usize,
    p: u32,
    held: u64,
) -> Result<(), String> {
    let inbox = &shared.mesh.inboxes[t][owner(p, shared.shards)];
    loop {
        let at = shared.ends[t][p as usize].load(std::sync::atomic::Ordering::Acquire);
        if at >= held {
            return Ok(());
        }
        if peers.ownership.standing(t, p) != Standing::Claiming {
            return Err("another peer claimed it meanwhile".into());
        }
        let order = CopyOrder {
            topic: peers.topic_name(t).to_string(),
            partition: p,
            from: at,
        };
        let body = links.request(from, Kind::Copy, &msg::encode_copy(&order), Kind::Copied)?;
        let copied = msg::decode_copied(&body).map_err(|e| e.to_string())?;
        if copied.first != at || copied.count == 0 {
            return Err(format!(
                "asked for records from offset {at}, got {} from offset {}",
                copied.count, copied.first
            ));
        }
        let mut cursor = Cursor::new(copied.records);
        for _ in 0..copied.count {
            cursor
                .record()
                .map_err(|e| format!("a copied record does not decode: {e}"))?;
        }
        if cursor.remaining() != 0 {
            return Err("bytes after the copy's last record".into());
        }
        let (tx, rx) = flume::bounded(1);
        let mut batch = Batch::new(
            p,
            Payload::Wire {
                bytes: copied.records.to_vec(),
                count: copied.count as usize,
                stamp_ms: 0,
            },
            Ack::Client(tx, 0),
        );
        batch.copy_at = Some(at);
        inbox
            .send(batch)
            .map_err(|_| "the engine is stopping".to_string())?;
        match rx.recv_timeout(REQUEST_TIMEOUT * 3) {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("the copy was not made durable in time".into()),
        }
    }
}

/// Whether every stage and reply task of this peer read its input partitions to their
/// end (nothing is appended to them any more once they are handed over).
fn stages_caught_up(shared: &Shared) -> bool {
    shared.services.iter().all(|service| {
        let (tx, rx) = flume::bounded(1);
        service.send(ShardRequest::Status { reply: tx }).is_ok()
            && rx.recv_timeout(REQUEST_TIMEOUT).is_ok_and(|status| {
                status
                    .partitions
                    .iter()
                    .all(|p| p.consumers.iter().all(|c| c.lag == 0))
            })
    })
}

/// Hands this peer's partitions over before it goes: announces that it leaves (the
/// others place its partitions elsewhere and claim them), then waits until every
/// partition it served with records in it was fenced here and its new owner said it
/// holds all of them, or `patience` ran out. Returns how many were not handed over.
pub fn leave(peers: &Arc<Peers>, shared: &Shared, patience: Duration) -> usize {
    peers.ownership.set_leaving();
    peers.replication.leaving_run.store(
        peers.cluster.view.get().me.bump,
        std::sync::atomic::Ordering::Release,
    );
    let serving: Vec<(usize, u32)> = peers
        .topics()
        .iter()
        .enumerate()
        .flat_map(|(t, (_, n))| (0..*n).map(move |p| (t, p)))
        .filter(|&(t, p)| peers.ownership.serving(t, p) && !peers.replication.is_replicated(t))
        .collect();
    // Replicated partitions it holds a replica of: once this peer says it leaves, the
    // metadata group's leader chooses new leaders among the other replicas and moves
    // the replica sets onto the peers that stay; it waits for both.
    let me = peers.cluster.me.addr;
    let holding = || {
        let metadata = peers.cluster.consensus.metadata().get();
        peers
            .topics()
            .iter()
            .enumerate()
            .filter(|(t, _)| peers.replication.is_replicated(*t))
            .flat_map(|(t, (name, n))| (0..*n).map(move |p| (t, name, p)))
            .filter(|&(t, name, p)| {
                peers.replication.state(t, p).leads().is_some()
                    || metadata
                        .assignment(name, p)
                        .is_some_and(|a| a.replicas.contains(&me) || a.learners.contains(&me))
            })
            .count()
    };
    peers.cluster.announce_leaving(Duration::from_secs(1));
    let deadline = Instant::now() + patience;
    loop {
        // The whole cluster stops (or this is the last peer): nobody to hand over to.
        if peers.cluster.view.get().reachable_others().all(|id| id.leaving) {
            tracing::warn!(
                "no other peer stays to take partitions over: their records stay in this peer's data directory"
            );
            return 0;
        }
        let left: Vec<&(usize, u32)> = serving
            .iter()
            .filter(|&&(t, p)| {
                let end = shared.ends[t][p as usize].load(std::sync::atomic::Ordering::Acquire);
                peers.ownership.standing(t, p) != Standing::Away
                    || (end > 0 && !peers.ownership.handed_up_to(t, p, end))
            })
            .collect();
        // Handed over, every batch routed on through here answered, and this peer's
        // stages through what they had to read (the new owners step over those records).
        if left.is_empty()
            && holding() == 0
            && peers.unsettled() == 0
            && peers.answering.load(std::sync::atomic::Ordering::Acquire) == 0
            && stages_caught_up(shared)
        {
            tracing::info!("handed {} partitions over", serving.len());
            return 0;
        }
        if Instant::now() >= deadline && left.is_empty() && holding() > 0 {
            tracing::warn!(
                "within {} s of leaving, {} replicated partitions did not move off this peer: their replica sets still count it, and lose a member while it is gone",
                patience.as_secs(),
                holding()
            );
            return holding();
        }
        if Instant::now() >= deadline && left.is_empty() {
            tracing::warn!(
                "within {} s of leaving, {} batches routed on through this peer were not answered, or its stages did not read all their input; it stops anyway",
                patience.as_secs(),
                peers.unsettled(),
            );
            return 0;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "{} partitions were not taken over within {} s (first: partition {} of \"{}\"); their records stay here",
                left.len(),
                patience.as_secs(),
                left[0].1,
                peers.topic_name(left[0].0)
            );
            return left.len();
        }
        std::thread::sleep(ROUND);
    }
}
