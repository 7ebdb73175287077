//! Retention in a running engine: each shard deletes the oldest closed segments of its
//! partitions that their topic's policy no longer keeps, once a second (by age) and
//! right after an append rolled a segment (by size), so a topic stays within its bound
//! while it is written.
//!
//! Deleting never happens silently to a reader that had not got there yet: a named
//! consumer whose unacked records went is moved to the new start with its `skipped`
//! count raised and a log line; a stage, sink or fetch that finds its position below the
//! start does the same through [`Shard::resume_at`]. What retention deleted is counted
//! in `/metrics`.

use std::rc::Rc;
use std::time::Duration;

use crate::runtime::shard::{LocalPartition, Shard};
use crate::storage::layout::now_ms;

/// How often each shard looks for segments past their topic's `max_age`.
pub const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// Applies retention on this shard's partitions until the engine stops.
pub async fn run(shard: Rc<Shard>) {
    let bounded: Vec<Rc<LocalPartition>> = shard
        .partitions
        .values()
        .filter(|p| is_bounded(&shard, p))
        .cloned()
        .collect();
    if bounded.is_empty() {
        return;
    }
    while !shard.shared.control.is_stopping() {
        glommio::timer::sleep(RETENTION_EVERY).await;
        for partition in &bounded {
            apply(&shard, partition);
        }
    }
}

/// Whether the partition's topic has a retention bound at all.
pub fn is_bounded(shard: &Shard, partition: &LocalPartition) -> bool {
    let policy = shard.shared.spec.topics[partition.topic].retention;
    policy.max_age_ms.is_some() || policy.max_bytes.is_some()
}

/// Deletes what the policy no longer keeps of one partition, and tells the consumers
/// that had not acked it. A deletion that fails is logged and tried again next time:
/// the data stays, nothing is lost, the disk stays fuller than asked.
pub fn apply(shard: &Shard, partition: &LocalPartition) {
    let report = partition.log.borrow_mut().apply_retention(now_ms());
    let spec = &shard.shared.spec;
    let topic = &spec.topics[partition.topic].name;
    match report {
        Ok(report) if report.deleted_segments > 0 => {
            let metrics = &shard.shared.metrics;
            metrics.retention_segments.add(report.deleted_segments as u64);
            metrics.retention_records.add(report.deleted_records);
            metrics.retention_bytes.add(report.deleted_bytes);
            tracing::info!(
                %topic,
                partition = partition.partition,
                segments = report.deleted_segments,
                records = report.deleted_records,
                start_offset = report.start_offset,
                "retention deleted the oldest segments"
            );
            shard
                .consumers
                .skip_deleted(shard, partition.topic, partition.partition, report.start_offset);
        }
        Ok(_) => {}
        Err(error) => tracing::error!(
            %topic,
            partition = partition.partition,
            %error,
            "retention could not delete old segments; it tries again in a second"
        ),
    }
}
