//! Metadata and status: what the server serves, and the engine's state put together
//! from every shard.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::protocol::message::Metadata;
use crate::protocol::status::{GroupStatus, PeerStatus, Quantiles, Status, TopicStatus};
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

/// Asks every shard for its partitions and puts the answers together.
pub async fn status(shard: &Rc<Shard>, started: Instant, listeners: &[String], rate: f64) -> Status {
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
        })
        .collect();
    let jobs_waiting = shards.iter().map(|s| s.jobs_waiting).sum();
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
        topics,
        internal_topics,
        jobs: spec.jobs.iter().map(|j| j.name.clone()).collect(),
        records_in: shared.metrics.records_in.get(),
        records_in_per_sec: rate,
        bytes_in: shared.metrics.bytes_in.get(),
        connections_open: shared
            .metrics
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed),
        jobs_waiting,
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
            }
        }))
        .collect()
}
