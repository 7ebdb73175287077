//! Metadata and status: what the server serves, and the engine's state put together
//! from every shard, and in a cluster from every peer (`merge`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::protocol::message::Metadata;
use crate::protocol::status::{
    GroupStatus, PartitionStatus, PeerLoad, PeerStatus, Quantiles, Scope, ShardLoad, Standing, Status,
    TopicStatus, Unanswered,
};
use crate::runtime::cluster::peers::Peers;
use crate::runtime::service::{self, ShardRequest, ShardStatus};
use crate::runtime::shard::Shard;

use super::within;

pub fn metadata(shard: &Shard, max_frame_bytes: u32) -> Metadata {
    let spec = &shard.shared.spec;
    Metadata {
        max_frame_bytes,
        topics: spec
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions))
            .collect(),
        jobs: spec
            .jobs
            .iter()
            .map(|j| (j.name.clone(), spec.topics[j.topic].name.clone()))
            .collect(),
    }
}

/// This peer's own status: asks every shard for its partitions and puts the answers
/// together. `rates` are the records and jobs taken per second lately.
pub async fn status(shard: &Rc<Shard>, started: Instant, listeners: &[String], rates: (f64, f64)) -> Status {
    let shared = &shard.shared;
    let mut shards: Vec<ShardStatus> = Vec::new();
    for (i, service) in shared.services.iter().enumerate() {
        if i == shard.index {
            shards.push(service::status(shard));
            continue;
        }
        let (tx, rx) = flume::bounded(1);
        if service
            .send_async(ShardRequest::Status { reply: tx })
            .await
            .is_ok()
            && let Some(Ok(s)) = within(Duration::from_secs(5), rx.recv_async()).await
        {
            shards.push(s);
        } else {
            tracing::warn!(
                "shard {i} did not answer a status request within 5 s: its partitions are missing from this status"
            );
        }
    }
    let spec = &shared.spec;
    let mut topics: Vec<TopicStatus> = spec
        .topics
        .iter()
        .map(|t| TopicStatus {
            name: t.name.clone(),
            partitions: Vec::new(),
            retention: crate::protocol::status::retention_text(t.retention.max_age_ms, t.retention.max_bytes),
        })
        .collect();
    let jobs_waiting = shards.iter().map(|s| s.jobs_waiting).sum();
    let mut loads: Vec<ShardLoad> = shards.iter().map(|s| s.load.clone()).collect();
    loads.sort_by_key(|l| l.shard);
    let metadata = shared
        .peers
        .as_ref()
        .map(|peers| peers.cluster.consensus.metadata().get());
    for p in shards.into_iter().flat_map(|s| s.partitions) {
        if let Some(t) = spec.topic_index(&p.topic) {
            // In a cluster: the partitions this peer owns (its copies of others' are
            // stale), and the replicas the metadata gives it of replicated ones, even
            // fenced (role `none`) while no leader can be chosen: their absent replicas
            // are what a user needs to see then.
            if let (Some(peers), Some(metadata)) = (&shared.peers, &metadata) {
                let me = peers.cluster.me.addr;
                let member = metadata
                    .assignment(&p.topic, p.partition)
                    .is_some_and(|a| a.replicas.contains(&me) || a.learners.contains(&me));
                let serves = p.replica.as_ref().is_some_and(|r| r.role != "none");
                if peers.owner(t, p.partition).is_some() && !serves && !member {
                    continue;
                }
            }
            topics[t].partitions.push(p);
        }
    }
    for t in &mut topics {
        t.partitions.sort_by_key(|p| p.partition);
    }
    let (internal_topics, topics): (Vec<TopicStatus>, Vec<TopicStatus>) = topics
        .into_iter()
        .partition(|t| t.name.starts_with(crate::config::spec::INTERNAL_TOPIC_PREFIX));
    let h = shared.metrics.produce_latency.merged();
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: started.elapsed().as_secs_f64(),
        cores: shared.shards,
        durability: format!("{:?}", spec.engine.durability).to_lowercase(),
        listeners: listeners.to_vec(),
        insecure: Vec::new(),
        topics,
        internal_topics,
        jobs: spec.jobs.iter().map(|j| j.name.clone()).collect(),
        records_in: shared.metrics.records_in.get(),
        records_in_per_sec: rates.0,
        bytes_in: shared.metrics.bytes_in.get(),
        connections_open: shared
            .metrics
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed),
        jobs_waiting,
        jobs_in: shared.metrics.jobs.get(),
        jobs_in_per_sec: rates.1,
        scope: Scope::Peer,
        unanswered: Vec::new(),
        shards: loads,
        produce_latency_us: Quantiles {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        },
        peers: shared.peers.as_deref().map(peer_statuses).unwrap_or_default(),
        metadata_group: shared.peers.as_deref().map(|peers| {
            let group = peers.cluster.consensus.status();
            let names = |list: Vec<std::net::SocketAddr>| list.iter().map(|a| a.to_string()).collect();
            GroupStatus {
                role: group.role.to_string(),
                term: group.term,
                leader: group.leader.map(|a| a.to_string()),
                voters: names(group.voters),
                learners: names(group.learners),
                applied: group.applied,
            }
        }),
    }
}

fn peer_statuses(peers: &Peers) -> Vec<PeerStatus> {
    let view = peers.cluster.view.get();
    let counts = peers.partition_counts();
    let me = PeerStatus {
        addr: view.me.addr.to_string(),
        state: "alive".into(),
        me: true,
        cores: view.me.cores,
        last_seen_ms: None,
        partitions: counts.get(&view.me.addr).copied().unwrap_or(0),
        disk_full: view.me.full,
        load: None,
    };
    std::iter::once(me)
        .chain(view.others.iter().map(|m| {
            PeerStatus {
                addr: m.id.addr.to_string(),
                state: format!("{:?}", m.state).to_lowercase(),
                me: false,
                cores: m.id.cores,
                last_seen_ms: peers
                    .cluster
                    .view
                    .last_heard(m.id.addr)
                    .map(|at| at.elapsed().as_millis() as u64),
                partitions: counts.get(&m.id.addr).copied().unwrap_or(0),
                disk_full: m.id.full,
                load: None,
            }
        }))
        .collect()
}

/// A cluster's status, put together from this peer's own and the other peers' answers
/// (`relay::statuses`): every peer with its own figures (`load`); each partition as the
/// peer best placed to say sees it (its leader in the highest epoch, its owner when it
/// is not replicated, else any holder), named by `peer`; counters and rates summed over
/// the peers that answered, latency quantiles the highest of theirs; and the peers that
/// did not answer, with why.
pub fn merge(own: Status, others: Vec<(std::net::SocketAddr, Result<Status, String>)>) -> Status {
    let me = own
        .peers
        .iter()
        .find(|p| p.me)
        .map(|p| p.addr.clone())
        .unwrap_or_default();
    let mut unanswered = Vec::new();
    let mut answered = Vec::new();
    for (addr, answer) in others {
        match answer {
            Ok(status) => answered.push((addr.to_string(), status)),
            Err(why) => unanswered.push(Unanswered {
                addr: addr.to_string(),
                why,
            }),
        }
    }
    let mut merged = own;
    let all: Vec<(String, Status)> = std::iter::once((me, merged.clone())).chain(answered).collect();
    let load = |s: &Status| PeerLoad {
        records_in: s.records_in,
        records_in_per_sec: s.records_in_per_sec,
        bytes_in: s.bytes_in,
        jobs_in: s.jobs_in,
        jobs_in_per_sec: s.jobs_in_per_sec,
        jobs_waiting: s.jobs_waiting,
        connections_open: s.connections_open,
        produce_latency_us: s.produce_latency_us.clone(),
        shards: s.shards.clone(),
    };
    for peer in &mut merged.peers {
        peer.load = all
            .iter()
            .find(|(addr, _)| *addr == peer.addr)
            .map(|(_, s)| load(s));
    }
    merged.topics = best_rows(&merged.topics, &all, |s| &s.topics);
    merged.internal_topics = best_rows(&merged.internal_topics, &all, |s| &s.internal_topics);
    let statuses = || all.iter().map(|(_, s)| s);
    merged.insecure = statuses().flat_map(|s| s.insecure.iter().cloned()).collect();
    merged.insecure.sort();
    merged.insecure.dedup();
    merged.records_in = statuses().map(|s| s.records_in).sum();
    merged.records_in_per_sec = statuses().map(|s| s.records_in_per_sec).sum();
    merged.bytes_in = statuses().map(|s| s.bytes_in).sum();
    merged.connections_open = statuses().map(|s| s.connections_open).sum();
    merged.jobs_waiting = statuses().map(|s| s.jobs_waiting).sum();
    merged.jobs_in = statuses().map(|s| s.jobs_in).sum();
    merged.jobs_in_per_sec = statuses().map(|s| s.jobs_in_per_sec).sum();
    let highest = |q: fn(&Quantiles) -> u64| statuses().map(|s| q(&s.produce_latency_us)).max().unwrap_or(0);
    merged.produce_latency_us = Quantiles {
        p50: highest(|q| q.p50),
        p99: highest(|q| q.p99),
        p999: highest(|q| q.p999),
        max: highest(|q| q.max),
    };
    merged.scope = Scope::Cluster;
    merged.unanswered = unanswered;
    merged
}

/// For each of `topics` (every peer runs the same dataflow), each partition any of `all`
/// lists, from the peer ranked best to show it (`rank`; the first of equals).
fn best_rows(
    topics: &[TopicStatus],
    all: &[(String, Status)],
    of: impl Fn(&Status) -> &Vec<TopicStatus>,
) -> Vec<TopicStatus> {
    topics
        .iter()
        .map(|topic| {
            let mut best: std::collections::BTreeMap<u32, (PartitionStatus, (u8, u32))> =
                std::collections::BTreeMap::new();
            for (addr, status) in all {
                let rows = of(status).iter().filter(|t| t.name == topic.name);
                for row in rows.flat_map(|t| &t.partitions) {
                    let rank = rank(row);
                    if best.get(&row.partition).is_none_or(|(_, held)| rank > *held) {
                        let mut row = row.clone();
                        row.peer = Some(addr.clone());
                        best.insert(row.partition, (row, rank));
                    }
                }
            }
            TopicStatus {
                name: topic.name.clone(),
                partitions: best.into_values().map(|(row, _)| row).collect(),
                retention: topic.retention.clone(),
            }
        })
        .collect()
}

/// How well a peer's row shows a partition: its leader (in a higher epoch better) or its
/// owner first, then a follower, then any other holder.
fn rank(row: &PartitionStatus) -> (u8, u32) {
    match &row.replica {
        Some(r) if r.role == "leader" => (3, r.epoch),
        Some(r) if r.role == "follower" => (1, r.epoch),
        Some(r) => (0, r.epoch),
        None if row.standing.is_none_or(|s| s == Standing::Serving) => (3, 0),
        None => (1, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::status::ReplicaStatus;

    /// A peer's own status: `addr` took `records` records; its rows `(partition, role,
    /// epoch)` of topic `t`.
    fn own(addr: &str, records: u64, p99: u64, rows: &[(u32, &str, u32)]) -> Status {
        let row = |&(partition, role, epoch): &(u32, &str, u32)| PartitionStatus {
            topic: "t".into(),
            partition,
            shard: 0,
            start_offset: 0,
            next_offset: u64::from(epoch),
            durable_offset: 0,
            segments: 1,
            bytes: 0,
            consumers: Vec::new(),
            named: Vec::new(),
            standing: Some(Standing::Serving),
            replica: Some(ReplicaStatus {
                role: role.into(),
                epoch,
                leader: None,
                replicas: Vec::new(),
                learners: Vec::new(),
                moving: false,
                hwm: 0,
                followers: Vec::new(),
                alive: 3,
                needed: 2,
                absent: Vec::new(),
                damaged: None,
            }),
            peer: None,
            unreadable: None,
        };
        Status {
            version: "0".into(),
            uptime_secs: 1.0,
            cores: 2,
            durability: "group".into(),
            listeners: Vec::new(),
            insecure: Vec::new(),
            topics: vec![TopicStatus {
                name: "t".into(),
                partitions: rows.iter().map(row).collect(),
                retention: String::new(),
            }],
            internal_topics: Vec::new(),
            jobs: Vec::new(),
            records_in: records,
            records_in_per_sec: records as f64,
            bytes_in: 10 * records,
            connections_open: 1,
            jobs_waiting: 0,
            jobs_in: 1,
            jobs_in_per_sec: 0.5,
            shards: Vec::new(),
            produce_latency_us: Quantiles {
                p50: 1,
                p99,
                p999: p99,
                max: p99,
            },
            scope: Scope::Peer,
            unanswered: Vec::new(),
            peers: ["10.0.0.1:7300", "10.0.0.2:7300", "10.0.0.3:7300"]
                .iter()
                .map(|peer| PeerStatus {
                    addr: (*peer).into(),
                    state: "alive".into(),
                    me: *peer == addr,
                    cores: 2,
                    last_seen_ms: None,
                    partitions: 0,
                    disk_full: false,
                    load: None,
                })
                .collect(),
            metadata_group: None,
        }
    }

    #[test]
    fn a_clusters_status_shows_each_partition_from_its_leader_sums_the_peers_and_names_the_silent() {
        let a = own(
            "10.0.0.1:7300",
            5,
            40,
            &[(0, "leader", 2), (1, "follower", 2), (2, "follower", 1)],
        );
        let b = own(
            "10.0.0.2:7300",
            7,
            90,
            &[
                (0, "follower", 2),
                (1, "leader", 2),
                (2, "leader", 1),
                (3, "none", 0),
            ],
        );
        let others = vec![
            ("10.0.0.2:7300".parse().unwrap(), Ok(b)),
            (
                "10.0.0.3:7300".parse().unwrap(),
                Err("no answer within 8s".to_string()),
            ),
        ];
        let merged = merge(a, others);
        assert_eq!(merged.scope, Scope::Cluster);
        let rows: Vec<(u32, String, String)> = merged.topics[0]
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition,
                    p.peer.clone().unwrap(),
                    p.replica.as_ref().unwrap().role.clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (0, "10.0.0.1:7300".into(), "leader".into()),
                (1, "10.0.0.2:7300".into(), "leader".into()),
                (2, "10.0.0.2:7300".into(), "leader".into()),
                (3, "10.0.0.2:7300".into(), "none".into()),
            ]
        );
        assert_eq!((merged.records_in, merged.bytes_in, merged.jobs_in), (12, 120, 2));
        assert_eq!(merged.connections_open, 2);
        assert_eq!(merged.produce_latency_us.p99, 90, "the highest of the peers'");
        assert_eq!(
            merged.unanswered,
            vec![Unanswered {
                addr: "10.0.0.3:7300".into(),
                why: "no answer within 8s".into()
            }]
        );
        let loads: Vec<Option<u64>> = merged
            .peers
            .iter()
            .map(|p| p.load.as_ref().map(|l| l.records_in))
            .collect();
        assert_eq!(loads, vec![Some(5), Some(7), None]);
    }

    #[test]
    fn a_newer_epochs_leader_shows_a_partition_over_an_older_ones() {
        let a = own("10.0.0.1:7300", 0, 0, &[(0, "leader", 1)]);
        let b = own("10.0.0.2:7300", 0, 0, &[(0, "leader", 3)]);
        let merged = merge(a, vec![("10.0.0.2:7300".parse().unwrap(), Ok(b))]);
        assert_eq!(
            merged.topics[0].partitions[0].peer.as_deref(),
            Some("10.0.0.2:7300")
        );
        assert_eq!(merged.topics[0].partitions[0].replica.as_ref().unwrap().epoch, 3);
    }
}
