//! Request/reply jobs inside the engine: the reply address a job carries (`flowd-reply`
//! header), and the task that runs a `reply` stage: it reads its input partition and
//! sends each job's first answer to the shard holding the caller's connection.

use std::rc::Rc;

use crate::protocol::wire::encode_record;
use crate::runtime::error::Result;
use crate::runtime::mesh::{Ack, Batch, Payload};
use crate::runtime::reader::PartitionReader;
use crate::runtime::service::{Answer, ShardRequest};
use crate::runtime::shard::Shard;
use crate::storage::layout::now_ms;

/// The header holding a job's reply address; stages copy it from input to outputs.
pub const REPLY_HEADER: &str = "flowd-reply";

/// Where an answer goes: the engine run (`epoch`: a job taken before a restart has no
/// caller left), the shard holding the caller's connection, and the job there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyAddress {
    pub epoch: u64,
    pub shard: u32,
    pub job: u64,
}

impl ReplyAddress {
    pub fn encode(&self) -> [u8; 20] {
        let mut out = [0; 20];
        out[..8].copy_from_slice(&self.epoch.to_le_bytes());
        out[8..12].copy_from_slice(&self.shard.to_le_bytes());
        out[12..].copy_from_slice(&self.job.to_le_bytes());
        out
    }

    /// The address in `bytes` if a caller of this run waits on it: a job taken before a
    /// restart, or naming a shard this run does not have, has nobody to answer.
    pub fn of_this_run(bytes: &[u8], shard: &Shard) -> Option<ReplyAddress> {
        ReplyAddress::decode(bytes)
            .filter(|a| a.epoch == shard.shared.epoch && (a.shard as usize) < shard.shared.shards)
    }

    pub fn decode(bytes: &[u8]) -> Option<ReplyAddress> {
        let bytes: &[u8; 20] = bytes.try_into().ok()?;
        Some(ReplyAddress {
            epoch: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            shard: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            job: u64::from_le_bytes(bytes[12..].try_into().ok()?),
        })
    }
}

/// The one-record batch that writes a job to `partition`: its record with the reply
/// address in the `flowd-reply` header (after `headers`); `ack` hears when it is durable.
pub fn job_batch(
    partition: u32,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
    address: &ReplyAddress,
    ack: Ack,
) -> Batch {
    let address = address.encode();
    let mut all_headers: Vec<(&str, &[u8])> = headers.to_vec();
    all_headers.push((REPLY_HEADER, &address));
    let mut bytes = Vec::new();
    encode_record(&mut bytes, None, key, value, &all_headers);
    Batch::new(
        partition,
        Payload::Wire {
            bytes,
            count: 1,
            stamp_ms: now_ms(),
        },
        ack,
    )
}

/// One `reply` stage on one input partition.
pub struct ReplyTask {
    pub stage: usize,
    pub topic: usize,
    pub partition: u32,
}

/// Answers come only to callers of this run, so the task starts at the partition's end
/// and keeps no progress: a job written before a restart has nobody waiting for it.
/// That end is read now, when the task is made, not when it first runs: the shard must
/// make its reply tasks before anything can write the partition (its inboxes take jobs
/// from other shards' connections as soon as they are spawned), or the first jobs of a
/// run would fall before the start and never be answered.
pub fn run(shard: Rc<Shard>, task: ReplyTask) -> impl std::future::Future<Output = Result<()>> {
    let position = shard
        .partition(task.topic, task.partition)
        .log
        .borrow()
        .next_offset();
    answer_from(shard, task, position)
}

async fn answer_from(shard: Rc<Shard>, task: ReplyTask, mut position: u64) -> Result<()> {
    let shared = Rc::clone(&shard);
    let control = &shared.shared.control;
    let name = format!("{} (reply)", shard.shared.spec.stages[task.stage].name);
    let mut reader = PartitionReader::new(
        Rc::clone(shard.partition(task.topic, task.partition)),
        name,
        position,
    );
    let mut answers = Vec::new();
    while !control.is_stopping() {
        position = reader.start(&shard, position);
        {
            let log = reader.log();
            for view in reader.readable(&log, position).take(1024) {
                position = view.offset() + 1;
                let address = view
                    .headers()
                    .find(|(name, _)| *name == REPLY_HEADER)
                    .and_then(|(_, value)| ReplyAddress::of_this_run(value, &shard));
                if let Some(address) = address {
                    answers.push((
                        address,
                        ShardRequest::Answer {
                            job: address.job,
                            answer: Ok(Answer {
                                key: view.key().map(<[u8]>::to_vec),
                                value: view.value().to_vec(),
                            }),
                        },
                    ));
                }
            }
        }
        reader.publish(position);
        reader.pause(answers.len()).await;
        for (address, answer) in answers.drain(..) {
            // The target shard only goes away when the engine stops.
            if shard.shared.services[address.shard as usize]
                .send_async(answer)
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Jobs a stage failed, answered with why once the stage gets to it (it must not wait on
/// another shard in the middle of reading its input).
#[derive(Default)]
pub struct FailedJobs {
    pending: Vec<(ReplyAddress, String)>,
}

impl FailedJobs {
    /// Notes that the job at `reply` (a `flowd-reply` header value) failed.
    pub fn fail(&mut self, shard: &Shard, reply: Option<&[u8]>, reason: String) {
        if let Some(address) = reply.and_then(|r| ReplyAddress::of_this_run(r, shard)) {
            self.pending.push((address, reason));
        }
    }

    /// Sends every noted failure to the shard waiting on its job.
    pub async fn answer(&mut self, shard: &Shard) {
        for (address, reason) in self.pending.drain(..) {
            let request = ShardRequest::Answer {
                job: address.job,
                answer: Err(reason),
            };
            // The target shard only goes away when the engine stops.
            let _ = shard.shared.services[address.shard as usize]
                .send_async(request)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_reject_other_lengths() {
        let a = ReplyAddress {
            epoch: 7,
            shard: 1,
            job: u64::MAX,
        };
        assert_eq!(ReplyAddress::decode(&a.encode()), Some(a));
        assert_eq!(ReplyAddress::decode(&a.encode()[..19]), None);
    }
}
