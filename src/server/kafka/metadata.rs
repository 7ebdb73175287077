//! Metadata: the brokers and the topics' partitions with their leaders.
//!
//! In version 0 an empty list of topics asks for every topic (later versions say so with
//! no list, and an empty one asks for none): kafka-python's first request is one.
//!
//! The brokers and each partition's leader are `brokers.rs`'s: this door alone on one
//! machine, every peer with a Kafka listener in a cluster. A partition's replicas and
//! in-sync replicas are named as its leader alone (flowd's replicas serve no client
//! reads). Topics are the dataflow's, never created by a request; the engine's own
//! topics are not listed.

use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::protocol::StrBytes;

use super::brokers::Brokers;
use super::errors;
use crate::runtime::shard::Shard;

/// The answer to `request`, the brokers being `brokers`.
pub fn answer(
    shard: &Shard,
    request: &MetadataRequest,
    version: i16,
    brokers: &Brokers,
    cluster_id: &str,
) -> MetadataResponse {
    let spec = &shard.shared.spec;
    let mut response = MetadataResponse::default();
    response.brokers = brokers
        .list
        .iter()
        .map(|b| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(b.node);
            broker.host = StrBytes::from_string(b.kafka.ip().to_string());
            broker.port = i32::from(b.kafka.port());
            broker
        })
        .collect();
    response.cluster_id = Some(StrBytes::from_string(cluster_id.to_owned()));
    response.controller_id = BrokerId(brokers.me());
    let every = match &request.topics {
        None => true,
        Some(asked) => version == 0 && asked.is_empty(),
    };
    let names: Vec<String> = match &request.topics {
        _ if every => spec
            .topics
            .iter()
            .filter(|t| !t.is_internal())
            .map(|t| t.name.clone())
            .collect(),
        None => Vec::new(),
        Some(asked) => asked
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_owned()))
            .collect(),
    };
    response.topics = names.iter().map(|name| topic(shard, brokers, name)).collect();
    response
}

fn topic(shard: &Shard, brokers: &Brokers, name: &str) -> MetadataResponseTopic {
    let spec = &shard.shared.spec;
    let mut topic = MetadataResponseTopic::default();
    topic.name = Some(StrBytes::from_string(name.to_owned()).into());
    let Some(index) = spec.client_topic(name) else {
        topic.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
        return topic;
    };
    topic.partitions = (0..spec.topics[index].partitions)
        .map(|p| {
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = p as i32;
            let leader = BrokerId(brokers.leader(index, p));
            partition.leader_id = leader;
            // No leader epochs: clients then skip the checks that would need
            // OffsetForLeaderEpoch.
            partition.leader_epoch = -1;
            partition.replica_nodes = vec![leader];
            partition.isr_nodes = vec![leader];
            partition
        })
        .collect();
    topic
}
