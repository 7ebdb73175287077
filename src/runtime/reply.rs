//! Request/reply jobs inside the engine: the reply address a job carries (`flowd-reply`
//! header), and the task that runs a `reply` stage: it reads its input partition and
//! sends each job's first answer to the shard holding the caller's connection.

use std::net::SocketAddr;
use std::rc::Rc;

use crate::cluster::data;
use crate::cluster::frame::{self, Kind};

use crate::protocol::wire::encode_record;
use crate::runtime::error::Result;
use crate::runtime::mesh::{Ack, Batch, Payload};
use crate::runtime::reader::PartitionReader;
use crate::runtime::service::{Answer, JobOutcome, ShardRequest};
use crate::runtime::shard::Shard;
use crate::storage::layout::now_ms;

/// The header holding a job's reply address; stages copy it from input to outputs.
pub const REPLY_HEADER: &str = "flowd-reply";

/// Where an answer goes: the engine run (`epoch`: a job taken before a restart has no
/// caller left), the shard holding the caller's connection, the job there, and in a
/// cluster the peer (its peer address) that shard is on.
///
/// ```text
/// u64 epoch, u32 shard, u64 job                      20 bytes: a caller on this peer
/// then u8 family (4 or 6), the IP's 4 or 16 bytes,   27 or 39 bytes: the caller's peer
///      u16 port
/// ```
/// All little-endian. Any other length or family is no address: nobody is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyAddress {
    pub epoch: u64,
    pub shard: u32,
    pub job: u64,
    pub peer: Option<SocketAddr>,
}

impl ReplyAddress {
    /// The address of `job` taken by `shard`, on this peer in a cluster.
    pub fn here(shard: &Shard, job: u64) -> ReplyAddress {
        ReplyAddress {
            epoch: shard.shared.epoch,
            shard: shard.index as u32,
            job,
            peer: shard.shared.peers.as_ref().map(|p| p.cluster.me.addr),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(39);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.job.to_le_bytes());
        match self.peer {
            None => {}
            Some(SocketAddr::V4(peer)) => {
                out.push(4);
                out.extend_from_slice(&peer.ip().octets());
                out.extend_from_slice(&peer.port().to_le_bytes());
            }
            Some(SocketAddr::V6(peer)) => {
                out.push(6);
                out.extend_from_slice(&peer.ip().octets());
                out.extend_from_slice(&peer.port().to_le_bytes());
            }
        }
        out
    }

    /// The address in `bytes` if a caller may wait on it: one on another peer (that peer
    /// judges whether it is of its run), or one of this run here. A job taken before a
    /// restart, or naming a shard this run does not have, has nobody to answer.
    pub fn of_this_run(bytes: &[u8], shard: &Shard) -> Option<ReplyAddress> {
        let address = ReplyAddress::decode(bytes)?;
        if address.elsewhere(shard).is_some() {
            return Some(address);
        }
        Some(address).filter(|a| a.epoch == shard.shared.epoch && (a.shard as usize) < shard.shared.shards)
    }

    /// The peer holding the caller, if that is another peer than `shard`'s.
    fn elsewhere(&self, shard: &Shard) -> Option<SocketAddr> {
        let peers = shard.shared.peers.as_ref()?;
        self.peer.filter(|peer| *peer != peers.cluster.me.addr)
    }

    pub fn decode(bytes: &[u8]) -> Option<ReplyAddress> {
        let (head, peer) = bytes.split_at_checked(20)?;
        let peer = match peer {
            [] => None,
            [4, rest @ ..] => {
                let (ip, port): (&[u8; 4], &[u8; 2]) =
                    (rest.get(..4)?.try_into().ok()?, rest.get(4..)?.try_into().ok()?);
                Some(SocketAddr::from((*ip, u16::from_le_bytes(*port))))
            }
            [6, rest @ ..] => {
                let (ip, port): (&[u8; 16], &[u8; 2]) =
                    (rest.get(..16)?.try_into().ok()?, rest.get(16..)?.try_into().ok()?);
                Some(SocketAddr::from((*ip, u16::from_le_bytes(*port))))
            }
            _ => return None,
        };
        Some(ReplyAddress {
            epoch: u64::from_le_bytes(head[..8].try_into().ok()?),
            shard: u32::from_le_bytes(head[8..12].try_into().ok()?),
            job: u64::from_le_bytes(head[12..].try_into().ok()?),
            peer,
        })
    }
}

/// Sends a job's `outcome` to its caller at `address`: the shard here that holds the
/// caller's connection, or over the peer link to the peer that does (which checks that
/// the caller is of its run). False once this engine stops.
pub async fn deliver(shard: &Shard, address: ReplyAddress, outcome: JobOutcome) -> bool {
    if let (Some(peer), Some(peers)) = (address.elsewhere(shard), &shard.shared.peers) {
        let body = data::encode_answer(&data::AnswerBody {
            epoch: address.epoch,
            shard: address.shard,
            job: address.job,
            outcome: match &outcome {
                Ok(answer) => Ok((answer.key.as_deref(), answer.value.as_slice())),
                Err(reason) => Err(reason.as_str()),
            },
        });
        return peers
            .answerer(peer)
            .send_async(frame::framed(Kind::Answer, 0, &body))
            .await
            .is_ok();
    }
    let request = ShardRequest::Answer {
        job: address.job,
        answer: outcome,
    };
    // The target shard only goes away when the engine stops.
    shard.shared.services[address.shard as usize]
        .send_async(request)
        .await
        .is_ok()
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
        let mut read = 0;
        {
            let log = reader.log();
            for view in reader.readable(&log, position).take(1024) {
                read += 1;
                position = view.offset() + 1;
                let address = view
                    .headers()
                    .find(|(name, _)| *name == REPLY_HEADER)
                    .and_then(|(_, value)| ReplyAddress::of_this_run(value, &shard));
                if let Some(address) = address {
                    answers.push((
                        address,
                        Ok(Answer {
                            key: view.key().map(<[u8]>::to_vec),
                            value: view.value().to_vec(),
                        }),
                    ));
                }
            }
        }
        reader.publish(position);
        // Records without a caller of this run count as read too: a round that took
        // 1024 of them goes on at once instead of waiting for the next append.
        reader.pause(&shard, read, None).await;
        for (address, answer) in answers.drain(..) {
            if !deliver(&shard, address, answer).await {
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
            deliver(shard, address, Err(reason)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_reject_other_lengths() {
        for peer in [None, Some("10.0.0.7:7400"), Some("[::1]:9")] {
            let a = ReplyAddress {
                epoch: 7,
                shard: 1,
                job: u64::MAX,
                peer: peer.map(|p| p.parse().unwrap()),
            };
            let bytes = a.encode();
            assert_eq!(
                bytes.len(),
                [20, 27, 39][peer.map_or(0, |p| 1 + usize::from(p.starts_with('[')))]
            );
            assert_eq!(ReplyAddress::decode(&bytes), Some(a));
            for cut in (0..bytes.len()).filter(|&cut| cut != 20) {
                assert_eq!(ReplyAddress::decode(&bytes[..cut]), None, "cut at {cut}");
            }
            let mut longer = bytes;
            longer.push(0);
            assert_eq!(ReplyAddress::decode(&longer), None);
        }
        let mut other_family = ReplyAddress::decode(&[0; 20]).unwrap().encode();
        other_family.extend_from_slice(&[5, 1, 2, 3, 4, 0, 0]);
        assert_eq!(ReplyAddress::decode(&other_family), None);
    }
}
