//! Fetch: a read of one partition, served by the shard (or peer) that owns it.

use std::rc::Rc;

use crate::protocol::{FetchFrom, ProtocolError};
use crate::runtime::error::EngineError;
use crate::runtime::service::{self, FetchOrder};
use crate::runtime::shard::Shard;

/// A whole FETCHED (or ERROR) frame for `order`, served by the owner shard (here or on
/// the peer that owns the partition).
pub async fn fetch(shard: &Rc<Shard>, topic: &str, order: FetchOrder) -> Vec<u8> {
    let spec = &shard.shared.spec;
    let request_id = order.request_id;
    let Some(t) = spec.topic_index(topic) else {
        return error_frame(
            request_id,
            &ProtocolError::from(EngineError::UnknownTopic(topic.to_owned())),
        );
    };
    let partitions = spec.topics[t].partitions;
    if order.partition >= partitions {
        let error = EngineError::UnknownPartition {
            topic: topic.to_owned(),
            partition: order.partition,
            partitions,
        };
        return error_frame(request_id, &error.into());
    }
    shard.shared.metrics.fetch_requests.add(1);
    let order = FetchOrder { topic: t, ..order };
    service::fetch(shard, order)
        .await
        .unwrap_or_else(|error| error_frame(request_id, &error.into()))
}

/// An ERROR frame saying `error`.
fn error_frame(request_id: u64, error: &ProtocolError) -> Vec<u8> {
    let mut out = Vec::new();
    crate::protocol::message::encode_error(&mut out, request_id, error.code, &error.message);
    out
}

/// Converts a fetch position given as text: `earliest`, `latest` or an offset.
pub fn parse_from(text: &str) -> Option<FetchFrom> {
    match text {
        "earliest" => Some(FetchFrom::Earliest),
        "latest" => Some(FetchFrom::Latest),
        n => n.parse().ok().map(FetchFrom::Offset),
    }
}
