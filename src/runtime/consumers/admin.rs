//! Admin requests: list, disable, resume and destroy consumers, journaled and answered
//! once durable.

use std::rc::Rc;

use crate::consumer::journal::Entry;
use crate::protocol::consumer::AdminAction;
use crate::runtime::shard::Shard;

use super::{OpReply, OpResult, info, local};

pub(super) async fn admin(
    shard: &Rc<Shard>,
    topic: Option<usize>,
    group: Option<&str>,
    action: AdminAction,
) -> OpResult {
    let consumers = &shard.consumers;
    let spec = &shard.shared.spec;
    let mut keys: Vec<(usize, u32, String)> = consumers
        .cursors
        .borrow()
        .iter()
        .filter(|((t, _), _)| topic.is_none_or(|topic| topic == *t))
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
    let mut last = None;
    for (t, p, g) in keys {
        let Some(mut cursor) = consumers.get(t, p, &g) else {
            continue;
        };
        let next = local(shard, t, p)?.log.borrow().committed_offset();
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
                last = Some(consumers.write(shard, &[entry], &[])?);
                if let Some(groups) = consumers.cursors.borrow_mut().get_mut(&(t, p)) {
                    groups.remove(&g);
                }
                changed += 1;
                cursors.push(info(&spec.topics[t].name, p, &g, &cursor, next));
                continue;
            }
        };
        match outcome {
            Ok(true) => {
                last = Some(consumers.write_set(shard, t, p, &g, &cursor)?);
                consumers.put(t, p, &g, cursor.clone());
                changed += 1;
            }
            Ok(false) => {}
            Err(error) => refused.push(error),
        }
        cursors.push(info(&spec.topics[t].name, p, &g, &cursor, next));
    }
    if action == AdminAction::Destroy
        && let (Some(t), Some(g)) = (topic, group)
    {
        consumers.ensured.borrow_mut().remove(&(t, g.to_owned()));
    }
    if let Some(receipt) = last {
        consumers.durable(receipt).await?;
    }
    Ok(OpReply::Admin {
        cursors,
        changed,
        refused,
    })
}
