//! The replication messages' bodies, byte by byte; sans-io encode and decode.
//!
//! ```text
//! REPLICA_FETCH body = topic:str8 partition:u32 epoch:u32 offset:u64 last_epoch:u32
//!                      durable:u64 view:u32 wait_ms:u32 storage:u64
//!     a follower of `epoch` asks its leader for the batches from `offset` (where its
//!     copy ends); `last_epoch` is the epoch of its last batch, `durable` how far its
//!     copy is durable (what the leader counts towards the quorum, once `view`, the
//!     epoch whose leader's log its copy is a prefix of, is the leader's, and only if
//!     `storage`, the follower's storage id, is the one the metadata records for it)
//! REPLICA_DATA  body = hwm:u64 kind:u8 epoch:u32 end:u64 count:u32 (len:u32 batch){count}
//!     the leader's high-water mark, and either: kind = 2, the leader's log begins at
//!     `end`, past `offset` (retention deleted the records between; `epoch` and
//!     `count` are 0): the follower drops its copy and starts it again, empty, at
//!     `end`; or kind = 1 (diverged), the follower's last epoch
//!     is not the leader's up to `offset`: the leader's records of epochs up to `epoch`
//!     end at `end` (the follower cuts its copy back to the lower of that and where its
//!     own records of `epoch` end, and asks again; Kafka's KIP-101/279), or kind = 0
//!     and up to `count` stored batches from `offset`, as they are on the leader's
//!     disk (format 2, each checked again by the follower), with `end` where the
//!     leader's epoch began (its log's end when it took the lead): a follower records
//!     the leader's epoch as its view only once its copy is durable that far, so that
//!     every copy of a view holds every record its leader began with
//!     (`epoch` is 0)
//! FENCE_EPOCH   body = topic:str8 partition:u32 epoch:u32
//!     the metadata group's leader is about to choose the partition's leader for
//!     `epoch`: the replica promises (durably) to take nothing from an older epoch;
//!     for the current epoch, a look that changes nothing
//! FENCED        body = view:u32 end:u64 hwm:u64 storage:u64   its copy's view and end,
//!     the high-water mark it knows (a leader's own: no acked record lies above it), and
//!     the storage id of the data directory the copy is on
//! ```

use crate::cluster::error::ClusterError;
use crate::cluster::frame::{Body, Fields};

/// A follower's fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetch {
    pub topic: String,
    pub partition: u32,
    pub epoch: u32,
    pub offset: u64,
    pub last_epoch: u32,
    pub durable: u64,
    pub view: u32,
    pub wait_ms: u32,
    pub storage: u64,
}

pub fn encode_fetch(f: &ReplicaFetch) -> Vec<u8> {
    Body::default()
        .str8(&f.topic)
        .u32(f.partition)
        .u32(f.epoch)
        .u64(f.offset)
        .u32(f.last_epoch)
        .u64(f.durable)
        .u32(f.view)
        .u32(f.wait_ms)
        .u64(f.storage)
        .0
}

pub fn decode_fetch(body: &[u8]) -> Result<ReplicaFetch, ClusterError> {
    let mut f = Fields(body);
    Ok(ReplicaFetch {
        topic: f.str8()?.to_string(),
        partition: f.u32()?,
        epoch: f.u32()?,
        offset: f.u64()?,
        last_epoch: f.u32()?,
        durable: f.u64()?,
        view: f.u32()?,
        wait_ms: f.u32()?,
        storage: f.u64()?,
    })
}

/// The leader's answer to a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaData<'a> {
    Diverged {
        hwm: u64,
        epoch: u32,
        end: u64,
    },
    /// The leader's log begins at `start`, past where the follower's copy ends:
    /// retention deleted the records between.
    Begins {
        hwm: u64,
        start: u64,
    },
    Batches {
        hwm: u64,
        start: u64,
        batches: Vec<&'a [u8]>,
    },
}

/// Starts a REPLICA_DATA body with batches; add each with `push_batch`, then `finish`.
pub fn begin_data(out: &mut Vec<u8>, hwm: u64, start: u64) -> usize {
    out.extend_from_slice(&hwm.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    count_at
}

pub fn push_batch(out: &mut Vec<u8>, count_at: usize, batch: &[u8]) {
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    out.extend_from_slice(batch);
    let count = u32::from_le_bytes(out[count_at..count_at + 4].try_into().expect("4")) + 1;
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
}

pub fn encode_diverged(hwm: u64, epoch: u32, end: u64) -> Vec<u8> {
    Body::default().u64(hwm).u8(1).u32(epoch).u64(end).u32(0).0
}

pub fn encode_begins(hwm: u64, start: u64) -> Vec<u8> {
    Body::default().u64(hwm).u8(2).u32(0).u64(start).u32(0).0
}

pub fn decode_data(body: &[u8]) -> Result<ReplicaData<'_>, ClusterError> {
    let mut f = Fields(body);
    let hwm = f.u64()?;
    let diverged = f.u8()?;
    let epoch = f.u32()?;
    let end = f.u64()?;
    let count = f.u32()?;
    match diverged {
        0 => {}
        1 => return Ok(ReplicaData::Diverged { hwm, epoch, end }),
        2 => return Ok(ReplicaData::Begins { hwm, start: end }),
        other => {
            return Err(ClusterError::Frame(format!(
                "a replica answer of kind {other} (0, 1 or 2 are known)"
            )));
        }
    }
    let mut rest = f.rest();
    let mut batches = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let mut f = Fields(rest);
        let len = f.u32()? as usize;
        let tail = f.rest();
        if tail.len() < len {
            return Err(ClusterError::Frame("a replicated batch cut short".into()));
        }
        batches.push(&tail[..len]);
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(ClusterError::Frame(
            "bytes after the last replicated batch".into(),
        ));
    }
    Ok(ReplicaData::Batches {
        hwm,
        start: end,
        batches,
    })
}

pub fn encode_fence(topic: &str, partition: u32, epoch: u32) -> Vec<u8> {
    Body::default().str8(topic).u32(partition).u32(epoch).0
}

pub fn decode_fence(body: &[u8]) -> Result<(String, u32, u32), ClusterError> {
    let mut f = Fields(body);
    Ok((f.str8()?.to_string(), f.u32()?, f.u32()?))
}

/// A replica's answer to a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    pub view: u32,
    pub end: u64,
    pub hwm: u64,
    pub storage: u64,
}

pub fn encode_fenced(f: Fenced) -> Vec<u8> {
    Body::default().u32(f.view).u64(f.end).u64(f.hwm).u64(f.storage).0
}

pub fn decode_fenced(body: &[u8]) -> Result<Fenced, ClusterError> {
    let mut f = Fields(body);
    Ok(Fenced {
        view: f.u32()?,
        end: f.u64()?,
        hwm: f.u64()?,
        storage: f.u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_short_ones_are_errors() {
        let fetch = ReplicaFetch {
            topic: "events".into(),
            partition: 3,
            epoch: 7,
            offset: 1000,
            last_epoch: 6,
            durable: 990,
            view: 7,
            wait_ms: 500,
            storage: 1 << 63 | 5,
        };
        let body = encode_fetch(&fetch);
        assert_eq!(decode_fetch(&body).unwrap(), fetch);
        assert!(decode_fetch(&body[..body.len() - 1]).is_err());

        let mut out = Vec::new();
        let count_at = begin_data(&mut out, 42, 7);
        push_batch(&mut out, count_at, b"first");
        push_batch(&mut out, count_at, b"second!");
        assert_eq!(
            decode_data(&out).unwrap(),
            ReplicaData::Batches {
                hwm: 42,
                start: 7,
                batches: vec![&b"first"[..], &b"second!"[..]]
            }
        );
        assert!(decode_data(&out[..out.len() - 1]).is_err());
        let mut extra = out.clone();
        extra.push(0);
        assert!(decode_data(&extra).is_err());
        assert_eq!(
            decode_data(&encode_diverged(5, 3, 77)).unwrap(),
            ReplicaData::Diverged {
                hwm: 5,
                epoch: 3,
                end: 77
            }
        );
        assert_eq!(
            decode_data(&encode_begins(5, 4096)).unwrap(),
            ReplicaData::Begins { hwm: 5, start: 4096 }
        );
        let mut unknown = encode_begins(5, 4096);
        unknown[8] = 3;
        assert!(decode_data(&unknown).is_err());
        assert_eq!(
            decode_fence(&encode_fence("t", 1, 9)).unwrap(),
            ("t".into(), 1, 9)
        );
        let fenced = Fenced {
            view: 9,
            end: 123,
            hwm: 120,
            storage: 77,
        };
        assert_eq!(decode_fenced(&encode_fenced(fenced)).unwrap(), fenced);
        assert!(decode_fenced(&[1, 2]).is_err());
    }
}
