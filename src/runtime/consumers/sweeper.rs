//! The sweeper: reclaims claims past their `reclaim_timeout` and keeps the journal
//! compact, until the engine stops. It sleeps until the next claim expires or a cursor
//! or the journal changes (idle means idle): no timer runs while no claim is held.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::consumer::cursor::Why;
use crate::runtime::shard::{Shard, at_wall_ms};
use crate::storage::layout::now_ms;

use super::claims::reclaim;

/// How soon it looks again while a journal snapshot waits to become durable (the
/// journal's syncer moves that point and tells no one), or after a reclaim failed.
const RECHECK: Duration = Duration::from_millis(10);
/// In a cluster, how soon it looks again at an expired claim of a partition this peer
/// does not serve (it may serve it later, and nothing else would wake the sweeper).
const UNSERVED_RECHECK: Duration = Duration::from_secs(1);

/// Reclaims claims past their `reclaim_timeout` and compacts the journal, until the
/// engine stops.
pub async fn run_sweeper(shard: Rc<Shard>) {
    let control = &shard.shared.control;
    while !control.is_stopping() {
        // Listening before looking: a change made while it works wakes the next wait.
        let changed = shard.consumers.changed.listen();
        let now = now_ms();
        let mut until: Option<Instant> = None;
        let mut sooner = |at: Instant| until = Some(until.map_or(at, |u| u.min(at)));
        let mut expired: Vec<(usize, u32, String)> = Vec::new();
        for ((t, p), groups) in shard.consumers.cursors.borrow().iter() {
            // Where another peer leads, or this one has not read them back yet, what
            // this shard holds of the cursors may be old: their leader reclaims.
            let serves = super::follow::serves(&shard, *t, *p);
            for (g, cursor) in groups {
                match cursor.expires_at_ms() {
                    Some(at) if at > now => sooner(at_wall_ms(at)),
                    Some(_) if serves => expired.push((*t, *p, g.clone())),
                    Some(_) => sooner(Instant::now() + UNSERVED_RECHECK),
                    None => {}
                }
            }
        }
        for (t, p, g) in expired {
            if let Err(error) = reclaim(&shard, t, p, &g, Why::Timeout).await {
                tracing::warn!(%error, group = %g, "a timed-out claim could not be reclaimed; trying again");
                sooner(Instant::now() + RECHECK);
            }
        }
        if let Err(error) = shard.consumers.maybe_snapshot(&shard) {
            tracing::warn!(%error, "consumer journal snapshot failed");
        }
        shard.consumers.compact();
        if shard.consumers.compaction.get().is_some() {
            sooner(Instant::now() + RECHECK);
        }
        futures_lite::future::or(changed, control.until_stopping_or(until)).await;
    }
}
