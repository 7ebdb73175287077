//! The hand-over messages by which a partition's new owner takes it from the peers
//! that held it (CLAIM/CLAIMED: fence and say your end; COPY/COPIED: the records from
//! an offset), byte by byte; sans-io encode and decode (layout in `frame.rs`).

use std::net::SocketAddr;

use crate::cluster::error::ClusterError;
use crate::cluster::frame::{Body, Fields};

/// The longest CLAIM: more partitions than this go in several.
pub const CLAIM_ENTRIES_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Stop writing the partition (route its batches on) and say where it ends.
    Fence = 0,
    /// The claimer holds the partition up to `end` and serves it: a leaving peer may go.
    Done = 1,
}

/// One partition a CLAIM names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimEntry {
    pub topic: String,
    pub partition: u32,
    pub phase: Phase,
    /// Where the claimer's copy of the partition ends.
    pub end: u64,
}

/// The most peers a CLAIM says it asks.
pub const CLAIM_ASKED_MAX: usize = 4096;

/// A CLAIM: its partitions, and every other peer the claimer asks along with the one
/// it is sent to. A holder fences only for a claimer that asks every peer the holder
/// sees alive: one that does not know them all yet would take a partition over from
/// the copies it knows of, missing a longer one elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub entries: Vec<ClaimEntry>,
    pub asked: Vec<SocketAddr>,
}

pub fn encode_claim(entries: &[ClaimEntry], asked: &[SocketAddr]) -> Vec<u8> {
    let mut body = Body::default().u32(entries.len() as u32);
    for e in entries {
        body = body.str8(&e.topic).u32(e.partition).u8(e.phase as u8).u64(e.end);
    }
    body = body.u16(asked.len().min(CLAIM_ASKED_MAX) as u16);
    for peer in asked.iter().take(CLAIM_ASKED_MAX) {
        body = body.str8(&peer.to_string());
    }
    body.0
}

pub fn decode_claim(body: &[u8]) -> Result<Claim, ClusterError> {
    let mut fields = Fields(body);
    let count = fields.u32()? as usize;
    if count > CLAIM_ENTRIES_MAX {
        return Err(ClusterError::Frame(format!(
            "a CLAIM of {count} partitions (at most {CLAIM_ENTRIES_MAX})"
        )));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let topic = fields.str8()?.to_string();
        let partition = fields.u32()?;
        let phase = match fields.u8()? {
            0 => Phase::Fence,
            1 => Phase::Done,
            other => return Err(ClusterError::Frame(format!("claim phase {other}"))),
        };
        let end = fields.u64()?;
        entries.push(ClaimEntry {
            topic,
            partition,
            phase,
            end,
        });
    }
    let count = fields.u16()? as usize;
    if count > CLAIM_ASKED_MAX {
        return Err(ClusterError::Frame(format!(
            "a CLAIM asking {count} peers (at most {CLAIM_ASKED_MAX})"
        )));
    }
    let mut asked = Vec::with_capacity(count);
    for _ in 0..count {
        let peer = fields.str8()?;
        asked.push(peer.parse().map_err(|_| {
            ClusterError::Frame(format!("a CLAIM names {peer:?} as a peer asked, not an address"))
        })?);
    }
    if !fields.rest().is_empty() {
        return Err(ClusterError::Frame("bytes after a CLAIM's peers".into()));
    }
    Ok(Claim { entries, asked })
}

/// The answers to a CLAIM, in its order: `Some(end)` where this peer agrees the
/// claimer owns the partition (and, for a fence, stopped writing it at `end`), `None`
/// where its own view places it elsewhere (the claimer asks again).
pub fn encode_claimed(answers: &[Option<u64>]) -> Vec<u8> {
    let mut body = Body::default();
    for answer in answers {
        body = body.u8(u8::from(answer.is_some())).u64(answer.unwrap_or(0));
    }
    body.0
}

pub fn decode_claimed(body: &[u8], count: usize) -> Result<Vec<Option<u64>>, ClusterError> {
    let mut fields = Fields(body);
    let mut answers = Vec::with_capacity(count.min(CLAIM_ENTRIES_MAX));
    for _ in 0..count {
        let agreed = fields.u8()? != 0;
        let end = fields.u64()?;
        answers.push(agreed.then_some(end));
    }
    if !fields.rest().is_empty() {
        return Err(ClusterError::Frame(
            "a CLAIMED frame with more answers than asked".into(),
        ));
    }
    Ok(answers)
}

/// Records of a partition from `from`, asked of a peer that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOrder {
    pub topic: String,
    pub partition: u32,
    pub from: u64,
}

pub fn encode_copy(order: &CopyOrder) -> Vec<u8> {
    Body::default()
        .str8(&order.topic)
        .u32(order.partition)
        .u64(order.from)
        .0
}

pub fn decode_copy(body: &[u8]) -> Result<CopyOrder, ClusterError> {
    let mut fields = Fields(body);
    Ok(CopyOrder {
        topic: fields.str8()?.to_string(),
        partition: fields.u32()?,
        from: fields.u64()?,
    })
}

/// Copied records: the first one's offset, how many, and the records back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied<'a> {
    pub first: u64,
    pub count: u32,
    pub records: &'a [u8],
}

pub fn encode_copied(first: u64, count: u32, records: &[u8]) -> Vec<u8> {
    Body::default().u64(first).u32(count).bytes(records).0
}

pub fn decode_copied(body: &[u8]) -> Result<Copied<'_>, ClusterError> {
    let mut fields = Fields(body);
    Ok(Copied {
        first: fields.u64()?,
        count: fields.u32()?,
        records: fields.rest(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip() {
        let entries = vec![
            ClaimEntry {
                topic: "words".into(),
                partition: 3,
                phase: Phase::Fence,
                end: 17,
            },
            ClaimEntry {
                topic: "counts".into(),
                partition: 0,
                phase: Phase::Done,
                end: u64::MAX,
            },
        ];
        let asked: Vec<SocketAddr> = vec!["10.0.0.2:7946".parse().unwrap(), "[::1]:9".parse().unwrap()];
        assert_eq!(
            decode_claim(&encode_claim(&entries, &asked)).unwrap(),
            Claim {
                entries: entries.clone(),
                asked
            }
        );
        assert!(
            decode_claim(&encode_claim(&entries, &[]))
                .unwrap()
                .asked
                .is_empty()
        );
        let answers = vec![Some(5), None, Some(0)];
        assert_eq!(decode_claimed(&encode_claimed(&answers), 3).unwrap(), answers);
        assert!(decode_claimed(&encode_claimed(&answers), 2).is_err());
        assert!(decode_claimed(&encode_claimed(&answers), 4).is_err());
    }

    #[test]
    fn copies_round_trip() {
        let order = CopyOrder {
            topic: "t".into(),
            partition: 9,
            from: 1 << 40,
        };
        assert_eq!(decode_copy(&encode_copy(&order)).unwrap(), order);
        let body = encode_copied(7, 2, b"abc");
        assert_eq!(
            decode_copied(&body).unwrap(),
            Copied {
                first: 7,
                count: 2,
                records: b"abc"
            }
        );
    }

    #[test]
    fn bad_claims_are_errors() {
        assert!(decode_claim(&(u32::MAX).to_le_bytes()).is_err());
        let entry = ClaimEntry {
            topic: "t".into(),
            partition: 0,
            phase: Phase::Fence,
            end: 0,
        };
        let good = encode_claim(std::slice::from_ref(&entry), &["127.0.0.1:1".parse().unwrap()]);
        assert!(decode_claim(&good).is_ok());
        let mut body = good.clone();
        let phase_at = 4 + 2 + 4;
        body[phase_at] = 9;
        assert!(decode_claim(&body).is_err());
        assert!(decode_claim(&good[..5]).is_err());
        // Without its peers (the old layout), with a peer that is no address, or with
        // bytes after them: refused, not read as "asked nobody".
        let entries_end = 4 + 2 + 4 + 1 + 8;
        assert!(decode_claim(&good[..entries_end]).is_err());
        let mut bad = encode_claim(std::slice::from_ref(&entry), &[]);
        bad[entries_end] = 1;
        bad.extend_from_slice(&[3, b'a', b'b', b'c']);
        assert!(decode_claim(&bad).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_claim(&trailing).is_err());
        assert!(decode_copy(&[1]).is_err());
    }
}
