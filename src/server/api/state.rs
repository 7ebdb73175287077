//! State reads: a key's value in a `state` stage, asked of the shard that owns the key.

use std::rc::Rc;

use crate::config::{DataflowSpec, OpSpec};
use crate::protocol::routing::partition_of_bytes;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::error::EngineError;
use crate::runtime::placement::owner;
use crate::runtime::service::ShardRequest;
use crate::runtime::shard::Shard;

use super::{check_local, unknown_name};

fn is_state(stage: &&crate::config::StageSpec) -> bool {
    matches!(stage.op, OpSpec::State { .. })
}

/// Where `key`'s state in the `state` stage `stage_name` lives: `(stage, its input
/// topic, the key's partition of it)`; `None` if there is no such stage.
pub fn state_partition(spec: &DataflowSpec, stage_name: &str, key: &[u8]) -> Option<(usize, usize, u32)> {
    let stage = spec
        .stages
        .iter()
        .position(|s| s.name == stage_name && is_state(&s))?;
    let input = spec.stages[stage].from[0];
    Some((
        stage,
        input,
        partition_of_bytes(key, spec.topics[input].partitions),
    ))
}

/// The state a `state` stage holds for `key`, from the shard that owns the key's input
/// partition; `Ok(None)` when the key has none yet.
pub async fn state(
    shard: &Rc<Shard>,
    stage_name: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, ProtocolError> {
    let spec = &shard.shared.spec;
    let Some((stage, input, partition)) = state_partition(spec, stage_name, key) else {
        let known = spec.stages.iter().filter(is_state).map(|s| s.name.as_str());
        return Err(unknown_name(
            ErrorCode::UnknownState,
            "state stage",
            stage_name,
            known,
        ));
    };
    if let Some(peers) = &shard.shared.peers {
        check_local(peers, &spec.topics[input].name, input, partition)?;
    }
    let (tx, rx) = flume::bounded(1);
    let request = ShardRequest::State {
        stage,
        partition,
        key: key.to_vec(),
        reply: tx,
    };
    let to = owner(partition, shard.shared.shards);
    shard.shared.services[to]
        .send_async(request)
        .await
        .map_err(|_| ProtocolError::from(EngineError::Stopping))?;
    match rx
        .recv_async()
        .await
        .map_err(|_| ProtocolError::from(EngineError::Stopping))?
    {
        Some(state) => Ok(state),
        // The stage task is not there: it finished (bounded input) or has not started.
        None => Err(ProtocolError::new(
            ErrorCode::Unavailable,
            format!("the state stage \"{stage_name}\" is not running on that key's partition"),
        )),
    }
}
