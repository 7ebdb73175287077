//! Claims: a consumer takes records, gives them back (reclaim), and is created on
//! first use within its topic's `max_consumers`.

use std::rc::Rc;

use crate::consumer::cursor::{Cursor, Options, Outcome, Reclaimed, State, Why};
use crate::protocol::consumer::{begin_claimed, finish_claimed};
use crate::runtime::error::EngineError;
use crate::runtime::service::copy_read;
use crate::runtime::shard::Shard;
use crate::storage::layout::now_ms;

use super::transactions::commit;
use super::transactions::dead_letters;
use super::{OpReply, OpResult, local, report_skipped, txn_id, unknown};

/// A new consumer's cursor on `partition`, or an error when the topic already has as
/// many consumers as it may (`max_consumers`): their state is kept in memory and in
/// the journal, so it must stay bounded whatever clients create.
pub(super) fn new_cursor(
    shard: &Shard,
    topic: usize,
    partition: u32,
    options: &Options,
) -> Result<Cursor, EngineError> {
    let topic_spec = &shard.shared.spec.topics[topic];
    let count = shard
        .consumers
        .cursors
        .borrow()
        .get(&(topic, partition))
        .map_or(0, |groups| groups.len());
    if count >= topic_spec.max_consumers {
        return Err(EngineError::Overloaded(format!(
            "topic \"{}\" has its limit of {} consumers; destroy ones no longer used (DELETE /consumers/TOPIC/NAME) \
                 or raise the topic's max_consumers",
            topic_spec.name, topic_spec.max_consumers
        )));
    }
    let local = local(shard, topic, partition)?;
    let log = local.log.borrow();
    let at_time = match options.start {
        crate::consumer::cursor::Start::Time(t) => log.offset_at_time(t)?,
        _ => None,
    };
    // Read committed: a consumer sees, and starts among, durable records only.
    Ok(Cursor::new(
        options.clone(),
        log.start_offset(),
        log.committed_offset(),
        |_| at_time,
    ))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn claim(
    shard: &Rc<Shard>,
    topic: usize,
    partition: u32,
    group: &str,
    count: u32,
    max_bytes: u32,
    create: Option<Options>,
    request_id: u64,
) -> OpResult {
    let consumers = &shard.consumers;
    let now = now_ms();
    if consumers
        .get(topic, partition, group)
        .is_some_and(|c| c.expired(now))
    {
        reclaim(shard, topic, partition, group, Why::Timeout).await?;
    }
    let (mut cursor, created) = match (consumers.get(topic, partition, group), &create) {
        (Some(cursor), _) => (cursor, false),
        (None, Some(options)) => (new_cursor(shard, topic, partition, options)?, true),
        (None, None) => return Err(unknown(shard, topic, group)),
    };
    let before = cursor.clone();
    let local = local(shard, topic, partition)?;
    // The log is read in here, and let go before the change is sent on.
    let (out, taken) = {
        let log = local.log.borrow();
        let committed_before = cursor.committed;
        let from = cursor.claimable(log.start_offset())?;
        if cursor.committed > committed_before {
            report_skipped(shard, topic, partition, group, committed_before, cursor.committed);
        }
        let mut out = Vec::new();
        let mut writer = begin_claimed(&mut out, request_id);
        let mut range = None;
        let read_to = match from {
            Some(from) => copy_read(
                &mut writer,
                &mut out,
                log.read_committed(from),
                log.committed_offset().saturating_sub(from),
                count,
                max_bytes,
            )?,
            None => None,
        };
        if let Some(to) = read_to {
            if writer.count() == 0 {
                // Only engine markers: nothing for the client, and nothing to hold back.
                cursor.committed = to;
            } else {
                range = cursor.claim(to, now);
            }
        }
        let taken = writer.count();
        let (from, to) = range.map_or((0, 0), |r| (r.from, r.to));
        finish_claimed(
            writer,
            &mut out,
            range.map(|_| partition),
            from,
            to,
            log.committed_offset(),
        );
        (out, taken)
    };
    if created || cursor != before {
        consumers.put(topic, partition, group, cursor.clone());
        // Not waited for: a claim lost in a crash only delivers its records again.
        consumers
            .write_set(shard, topic, partition, group, &cursor)
            .await?;
    }
    shard.shared.metrics.records_claimed.add(u64::from(taken));
    Ok(OpReply::Frame {
        frame: out,
        records: taken,
    })
}

/// Gives a claim back; past `max_reclaims` disables, skips or dead-letters its records.
pub(super) async fn reclaim(
    shard: &Rc<Shard>,
    topic: usize,
    partition: u32,
    group: &str,
    why: Why,
) -> Result<Reclaimed, EngineError> {
    let consumers = &shard.consumers;
    let mut cursor = consumers
        .get(topic, partition, group)
        .ok_or_else(|| unknown(shard, topic, group))?;
    let mut reclaimed = cursor.reclaim(why)?;
    let name = &shard.shared.spec.topics[topic].name;
    let dead_letters = match &reclaimed.outcome {
        Outcome::DeadLetter { topic: dead, reason } => Some(
            dead_letters(shard, topic, partition, reclaimed.range, dead, reason)
                .map_err(|e| (dead.clone(), reason.clone(), e)),
        ),
        _ => None,
    };
    if let Some(Err((dead, reason, cannot))) = &dead_letters {
        // Records that cannot go to the dead-letter topic stay unacked: the consumer
        // stops, and says why, rather than lose them.
        let why = format!("{reason}; they cannot be dead-lettered to \"{dead}\": {}", cannot);
        tracing::error!(topic = %name, partition, %group, "consumer disabled: {why}");
        cursor.committed = reclaimed.range.from;
        cursor.state = State::Disabled(why);
        reclaimed.outcome = Outcome::Disabled;
    }
    match (&reclaimed.outcome, dead_letters) {
        (Outcome::DeadLetter { topic: dead, reason }, Some(Ok(parts))) => {
            let id = txn_id(shard);
            commit(shard, topic, partition, group, cursor, id, parts).await?;
            tracing::warn!(topic = %name, partition, %group, from = reclaimed.range.from, to = reclaimed.range.to, dead_letter = %dead, "records dead-lettered: {reason}");
        }
        (outcome, _) => {
            consumers.put(topic, partition, group, cursor.clone());
            let written = consumers
                .write_set(shard, topic, partition, group, &cursor)
                .await?;
            if *outcome != Outcome::Redeliver {
                tracing::warn!(topic = %name, partition, %group, outcome = outcome.name(), "max_reclaims passed");
            }
            consumers.durable(written).await?;
        }
    }
    Ok(reclaimed)
}
