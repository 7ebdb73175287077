//! Metadata: the brokers and the topics' partitions with their leaders.
//!
//! In version 0 an empty list of topics asks for every topic (later versions say so with
//! no list, and an empty one asks for none): kafka-python's first request is one.
//!
//! The door names one broker, itself (node 0, at the address the client reached it by),
//! leading every partition: whatever a client sends it, the engine takes to the
//! partition's owner shard or peer, as it does for the binary protocol. Topics are the
//! dataflow's, never created by a request; the engine's own topics are not listed.

use std::net::SocketAddr;

use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::protocol::StrBytes;

use super::errors;
use crate::config::DataflowSpec;

/// This door's broker id.
pub const NODE: i32 = 0;

/// The answer to `request`, for a client that reached this door at `me`.
pub fn answer(
    spec: &DataflowSpec,
    request: &MetadataRequest,
    version: i16,
    me: SocketAddr,
    cluster_id: &str,
) -> MetadataResponse {
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(NODE);
    broker.host = StrBytes::from_string(me.ip().to_string());
    broker.port = i32::from(me.port());
    let mut response = MetadataResponse::default();
    response.brokers = vec![broker];
    response.cluster_id = Some(StrBytes::from_string(cluster_id.to_owned()));
    response.controller_id = BrokerId(NODE);
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
    response.topics = names.iter().map(|name| topic(spec, name)).collect();
    response
}

fn topic(spec: &DataflowSpec, name: &str) -> MetadataResponseTopic {
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
            partition.leader_id = BrokerId(NODE);
            // No leader epochs: clients then skip the checks that would need
            // OffsetForLeaderEpoch.
            partition.leader_epoch = -1;
            partition.replica_nodes = vec![BrokerId(NODE)];
            partition.isr_nodes = vec![BrokerId(NODE)];
            partition
        })
        .collect();
    topic
}
