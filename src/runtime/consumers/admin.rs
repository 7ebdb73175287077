//! Admin requests: list, disable, resume and destroy consumers, journaled and answered
//! once durable.

use std::rc::Rc;

use crate::consumer::journal::Entry;
use crate::protocol::consumer::AdminAction;
use crate::runtime::shard::Shard;

use super::{OpReply, OpResult, follow, info, local};

pub(super) async fn admin(
    shard: &Rc<Shard>,
    topic: Option<usize>,
    group: Option<&str>,
    action: AdminAction,
) -> OpResult {
    let consumers = &shard.consumers;
    let spec = &shard.shared.spec;
    // In a cluster, the partitions this peer leads have their cursors read back first;
    // those led elsewhere are their leader's to list and change.
    let owned: Vec<(usize, u32)> = (0..spec.topics.len())
        .filter(|t| topic.is_none_or(|topic| topic == *t))
        .flat_map(|t| (0..spec.topics[t].partitions).map(move |p| (t, p)))
        .filter(|(_, p)| crate::runtime::placement::owner(*p, shard.shared.shards) == shard.index)
        .collect();
    for (t, p) in owned {
        if !follow::led_elsewhere(shard, t, p) {
            follow::ready(shard, t, p).await?;
        }
    }
    let mut keys: Vec<(usize, u32, String)> = consumers
        .cursors
        .borrow()
        .iter()
        .filter(|((t, _), _)| topic.is_none_or(|topic| topic == *t))
        .filter(|((t, p), _)| follow::serves(shard, *t, *p))
        .flat_map(|((t, p), groups)| {
            groups
                .keys()
                .filter(|g| group.is_none_or(|group| group == g.as_str()))
                .map(move |g| (*t, *p, g.clone()))
        })
        .collect();
    keys.sort();
    let mut cursors = Vec::new();
    let mut changed = 0;
    let mut refused = Vec::new();
    let mut written = Vec::new();
    for (t, p, g) in keys {
        let Some(mut cursor) = consumers.get(t, p, &g) else {
            continue;
        };
        let (start, next) = {
            let local = local(shard, t, p)?;
            let log = local.log.borrow();
            (log.start_offset(), log.committed_offset())
        };
        let outcome = match action {
            AdminAction::List => Ok(false),
            AdminAction::Disable => cursor.disable("disabled by request").map(|()| true),
            AdminAction::Resume => cursor.resume().map(|()| true),
            AdminAction::Destroy => {
                let entry = Entry::Drop {
                    topic: spec.topics[t].name.clone(),
                    partition: p,
                    group: g.clone(),
                };
                if let Some(groups) = consumers.cursors.borrow_mut().get_mut(&(t, p)) {
                    groups.remove(&g);
                }
                written.push(consumers.change(shard, t, p, entry).await?);
                changed += 1;
                cursors.push(info(&spec.topics[t].name, p, &g, &cursor, start, next));
                continue;
            }
        };
        match outcome {
            Ok(true) => {
                consumers.put(t, p, &g, cursor.clone());
                written.push(consumers.write_set(shard, t, p, &g, &cursor).await?);
                changed += 1;
            }
            Ok(false) => {}
            Err(error) => refused.push(error),
        }
        cursors.push(info(&spec.topics[t].name, p, &g, &cursor, start, next));
    }
    if action == AdminAction::Destroy
        && let (Some(t), Some(g)) = (topic, group)
    {
        consumers.ensured.borrow_mut().remove(&(t, g.to_owned()));
    }
    consumers.all_durable(written).await?;
    if changed > 0 {
        // A person's change to consumers: the audit line.
        tracing::info!(
            topic = topic.map_or("*", |t| spec.topics[t].name.as_str()),
            consumer = group.unwrap_or("*"),
            "consumer {}: {changed} partition cursor(s) changed",
            action.name()
        );
    }
    Ok(OpReply::Admin {
        cursors,
        changed,
        refused,
    })
}
