//! The sweeper: reclaims claims past their `reclaim_timeout` and keeps the journal
//! compact, until the engine stops.

use std::rc::Rc;
use std::time::Duration;

use crate::consumer::cursor::Why;
use crate::runtime::shard::Shard;
use crate::storage::layout::now_ms;

use super::claims::reclaim;

/// How often the sweeper looks for claims past their `reclaim_timeout`.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// Reclaims claims past their `reclaim_timeout` and compacts the journal, until the
/// engine stops.
pub async fn run_sweeper(shard: Rc<Shard>) {
    while !shard.shared.control.is_stopping() {
        glommio::timer::sleep(SWEEP_EVERY).await;
        let now = now_ms();
        let expired: Vec<(usize, u32, String)> = shard
            .consumers
            .cursors
            .borrow()
            .iter()
            // Where another peer leads, or this one has not read them back yet, what
            // this shard holds of the cursors may be old: their leader reclaims.
            .filter(|((t, p), _)| super::follow::serves(&shard, *t, *p))
            .flat_map(|((t, p), groups)| {
                groups
                    .iter()
                    .filter(|(_, c)| c.expired(now))
                    .map(move |(g, _)| (*t, *p, g.clone()))
            })
            .collect();
        for (t, p, g) in expired {
            if let Err(error) = reclaim(&shard, t, p, &g, Why::Timeout).await {
                tracing::warn!(%error, group = %g, "a timed-out claim could not be reclaimed");
            }
        }
        if let Err(error) = shard.consumers.maybe_snapshot(&shard) {
            tracing::warn!(%error, "consumer journal snapshot failed");
        }
        shard.consumers.compact();
    }
}
