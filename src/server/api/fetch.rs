//! Fetch: a read of one partition, served by the shard (or peer) that owns it.

use std::rc::Rc;

use crate::protocol::{ErrorCode, FetchFrom, ProtocolError};
use crate::runtime::cluster::peers::Fetch;
use crate::runtime::error::EngineError;
use crate::runtime::placement::owner;
use crate::runtime::service::{self, FetchOrder, ShardRequest};
use crate::runtime::shard::Shard;

/// A whole FETCHED (or ERROR) frame for `order`, served by the owner shard.
pub async fn fetch(shard: &Rc<Shard>, topic: &str, order: FetchOrder) -> Vec<u8> {
    let spec = &shard.shared.spec;
    let request_id = order.request_id;
    let Some(t) = spec.topic_index(topic) else {
        return service::error_frame(
            request_id,
            &ProtocolError::from(EngineError::UnknownTopic(topic.to_owned())),
        );
    };
    let partitions = spec.topics[t].partitions;
    if order.partition >= partitions {
        let error = ProtocolError::new(
            ErrorCode::UnknownPartition,
            format!(
                "topic \"{topic}\" has partitions 0 to {}, not {}",
                partitions - 1,
                order.partition
            ),
        );
        return service::error_frame(request_id, &error);
    }
    shard.shared.metrics.fetch_requests.add(1);
    let order = FetchOrder { topic: t, ..order };
    if let Some(peers) = &shard.shared.peers
        && let Some(peer) = peers.owner(t, order.partition)
    {
        let (tx, rx) = flume::bounded(1);
        let fetch = Fetch {
            topic: topic.to_string(),
            order,
            reply: tx,
        };
        if peers.fetcher(peer).send_async(fetch).await.is_err() {
            return service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping));
        }
        return rx.recv_async().await.unwrap_or_else(|_| {
            service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping))
        });
    }
    if let Some(peers) = &shard.shared.peers
        && !peers.ownership.serving(t, order.partition)
    {
        return service::error_frame(
            request_id,
            &ProtocolError::from(EngineError::TakingOver {
                topic: topic.to_owned(),
                partition: order.partition,
            }),
        );
    }
    let to = owner(order.partition, shard.shared.shards);
    if to == shard.index {
        return service::fetch_local(shard, &order).await;
    }
    let (tx, rx) = flume::bounded(1);
    let request = ShardRequest::Fetch { order, reply: tx };
    if shard.shared.services[to].send_async(request).await.is_err() {
        return service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping));
    }
    rx.recv_async()
        .await
        .unwrap_or_else(|_| service::error_frame(request_id, &ProtocolError::from(EngineError::Stopping)))
}

/// Converts a fetch position given as text: `earliest`, `latest` or an offset.
pub fn parse_from(text: &str) -> Option<FetchFrom> {
    match text {
        "earliest" => Some(FetchFrom::Earliest),
        "latest" => Some(FetchFrom::Latest),
        n => n.parse().ok().map(FetchFrom::Offset),
    }
}
