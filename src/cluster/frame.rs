//! The peer protocol's frames, byte by byte; sans-io encode and decode.
//!
//! ```text
//! frame  = len:u32 kind:u8 request:u64 body     (little endian; len counts kind..body,
//!                                               at most `frame_limit()`)
//! HELLO    body = cluster:str8 from:str8 purpose:u8 protocol:u16
//!                                               first frame of every connection; `protocol`
//!                                               is `PROTOCOL` (a HELLO without it is from
//!                                               a flowd before the field, and refused)
//! GOSSIP   body = foca's message bytes          (request 0)
//! PRODUCE  body = topic:str8 partition:u32 count:u32 stamp_ms:i64 records
//!          records in the client protocol's record encoding, engine headers allowed
//! PRODUCE_AGAIN body = from:u64 then a PRODUCE body: an engine producer's batch whose
//!          first leader was lost unanswered; written only if the log holds no record
//!          from offset `from` on with its last record's `flowd-src` (answered as PRODUCE)
//! PRODUCE_LED body = lead:u32 again:u8 (from:u64 if again) then a PRODUCE body: a
//!          stage's batch made while its peer led the stage's input in epoch `lead`
//!          (answered STALE once a later lead's batch of its producer came, or the
//!          leader knows of a later lead of the input; else acked as PRODUCE); with
//!          `again`, sent again as a PRODUCE_AGAIN is
//! ACKED    body = first:u64 next:u64            the PRODUCE with this request id is durable
//! STALE    body = latest:u32                    the PRODUCE_LED was not written: a lead of
//!                                             its input in epoch `latest` writes its
//!                                             outputs; its producer counts it unwritten
//! FETCH    body = topic:str8 partition:u32 from:u8 offset:u64 max_records:u32 max_bytes:u32 wait_ms:u32
//! FRAME    body = one whole client protocol frame (the owner's answer, passed through)
//! REDIRECT body = message:str16               the PRODUCE was not written: the partition
//!                                             moves; route it again
//! CLAIM    body = count:u32 (topic:str8 partition:u32 phase:u8 end:u64){count}
//!          asked:u16 (peer:str8){asked}
//!          phase 0 fences (stop writing it, say your end), 1 says the claimer is done;
//!          `asked`: every peer the claimer asks ("ip:port"); a holder that sees another
//!          alive answers not agreed
//! CLAIMED  body = (agreed:u8 end:u64){count}    one per CLAIM entry, in order
//! COPY     body = topic:str8 partition:u32 from:u64
//! COPIED   body = first:u64 count:u32 records  (client record encoding, timestamps set)
//! ANSWER   body = a job's answer for a caller on the receiving peer (data.rs); not answered
//! RAFT RAFT_REPLY                             the metadata group's messages (consensus/network.rs)
//! REPLICA_FETCH REPLICA_DATA FENCE_EPOCH FENCED   replication (replication.rs)
//! ERROR    body = code:u16 message:str16
//! str8 = len:u8 utf8, str16 = len:u16 utf8
//! ```
//!
//! A connection that does not open with a HELLO naming this cluster and this protocol
//! is closed, after an ERROR saying why: two clusters sharing a network never merge by
//! accident, and a peer of another flowd build, whose frames may mean other things,
//! never reads or writes this one's partitions.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cluster::error::ClusterError;

/// The peer protocol's version, in every HELLO: raised whenever a frame's layout or
/// meaning changes, so peers that would read each other's frames differently refuse
/// each other instead (a cluster is upgraded by restarting every peer on the new build).
pub const PROTOCOL: u16 = 2;

/// The least limit on a peer frame: gossip, consensus, claims, and batches of topics
/// whose segments are smaller.
pub const PEER_FRAME_FLOOR: usize = 16 << 20;
/// Room above the largest batch for a frame's own fields and, in a fetch answer, the
/// smaller batches after its first (at most 1 MiB of them).
const BATCH_HEAD_ROOM: usize = 2 << 20;
/// The largest frame this process sends or takes; only ever raised.
static PEER_FRAME_LIMIT: AtomicUsize = AtomicUsize::new(PEER_FRAME_FLOOR);

/// The largest peer frame this process sends or takes.
pub fn frame_limit() -> usize {
    PEER_FRAME_LIMIT.load(Ordering::Acquire)
}

/// Lets peer frames carry a batch of `batch_bytes`: a forwarded PRODUCE holds a client's
/// batch (at most its stored size, see `data`), and a REPLICA_DATA or a fetch answer
/// holds at least one stored batch whole, so the limit must take the largest batch any
/// topic takes (one segment's worth), not the client's `max_frame_bytes`: a frame of
/// small records is stored larger than it came. Every peer runs the same dataflow, so
/// each sets the same limit; one process's engines share it, so it only grows.
pub fn allow_batches_of(batch_bytes: u64) {
    let wanted = usize::try_from(batch_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(BATCH_HEAD_ROOM)
        .min(u32::MAX as usize);
    PEER_FRAME_LIMIT.fetch_max(wanted, Ordering::AcqRel);
}
/// Bytes before the body: len, kind, request.
pub const HEAD: usize = 4 + 1 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 0x01,
    Gossip = 0x02,
    Produce = 0x10,
    Acked = 0x11,
    Fetch = 0x12,
    Frame = 0x13,
    Redirect = 0x14,
    Claim = 0x15,
    Claimed = 0x16,
    Copy = 0x17,
    Copied = 0x18,
    Answer = 0x19,
    ProduceAgain = 0x1a,
    ProduceLed = 0x1b,
    Stale = 0x1c,
    Raft = 0x20,
    RaftReply = 0x21,
    ReplicaFetch = 0x22,
    ReplicaData = 0x23,
    FenceEpoch = 0x24,
    Fenced = 0x25,
    Error = 0x1f,
}

impl Kind {
    fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Gossip,
            0x10 => Kind::Produce,
            0x11 => Kind::Acked,
            0x12 => Kind::Fetch,
            0x13 => Kind::Frame,
            0x14 => Kind::Redirect,
            0x15 => Kind::Claim,
            0x16 => Kind::Claimed,
            0x17 => Kind::Copy,
            0x18 => Kind::Copied,
            0x19 => Kind::Answer,
            0x1a => Kind::ProduceAgain,
            0x1b => Kind::ProduceLed,
            0x1c => Kind::Stale,
            0x20 => Kind::Raft,
            0x21 => Kind::RaftReply,
            0x22 => Kind::ReplicaFetch,
            0x23 => Kind::ReplicaData,
            0x24 => Kind::FenceEpoch,
            0x25 => Kind::Fenced,
            0x1f => Kind::Error,
            _ => return None,
        })
    }
}

/// One decoded frame; `body` is parsed by the reader of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub request: u64,
    pub body: Vec<u8>,
}

/// Appends a frame to `out`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, request: u64, body: &[u8]) {
    let len = (1 + 8 + body.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&request.to_le_bytes());
    out.extend_from_slice(body);
}

/// One whole frame, in a buffer of its own.
pub fn framed(kind: Kind, request: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + body.len());
    encode(&mut out, kind, request, body);
    out
}

/// An ERROR frame answering `request`: `code` is the client protocol's error code (0
/// when none fits), `message` says what went wrong.
pub fn error(request: u64, code: u16, message: &str) -> Vec<u8> {
    framed(Kind::Error, request, &Body::default().u16(code).str16(message).0)
}

/// An ERROR frame's code and message; a body too short for them still gives a message.
pub fn read_error(body: &[u8]) -> (u16, String) {
    let mut fields = Fields(body);
    let code = fields.u16().unwrap_or(0);
    (code, fields.str16().unwrap_or("(no message)").to_string())
}

/// The length of the frame starting at `head` (its first 4 bytes), checked against the
/// limit before anything is buffered.
pub fn frame_len(head: [u8; 4]) -> Result<usize, ClusterError> {
    let len = u32::from_le_bytes(head) as usize;
    let limit = frame_limit();
    if !(9..=limit).contains(&len) {
        return Err(ClusterError::Frame(format!(
            "a peer frame of {len} bytes (from 9 to {limit} are allowed: the largest segment_bytes of the dataflow's topics and 2 MiB, at least 16 MiB; run the same dataflow on every peer)"
        )));
    }
    Ok(len)
}

/// Decodes `rest` (what followed the length prefix).
pub fn decode(rest: &[u8]) -> Result<Frame, ClusterError> {
    let (&kind, rest) = rest
        .split_first()
        .ok_or_else(|| ClusterError::Frame("an empty peer frame".into()))?;
    let kind = Kind::from_u8(kind)
        .ok_or_else(|| ClusterError::Frame(format!("unknown peer frame kind {kind:#04x}")))?;
    let request = rest
        .get(..8)
        .ok_or_else(|| ClusterError::Frame("a peer frame without its request id".into()))?;
    Ok(Frame {
        kind,
        request: u64::from_le_bytes(request.try_into().expect("8 bytes")),
        body: rest[8..].to_vec(),
    })
}

/// Writes fields into a body.
#[derive(Default)]
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn str8(mut self, s: &str) -> Body {
        let bytes = &s.as_bytes()[..s.len().min(255)];
        self.0.push(bytes.len() as u8);
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn str16(mut self, s: &str) -> Body {
        let bytes = &s.as_bytes()[..s.len().min(65535)];
        self.0.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn u8(mut self, v: u8) -> Body {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Body {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Body {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Body {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Body {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Body {
        self.0.extend_from_slice(v);
        self
    }
}

/// Reads fields out of a body; every read checks the length.
pub struct Fields<'a>(pub &'a [u8]);

impl<'a> Fields<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ClusterError> {
        if self.0.len() < n {
            return Err(ClusterError::Frame("a peer frame shorter than its fields".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn str8(&mut self) -> Result<&'a str, ClusterError> {
        let len = self.take(1)?[0] as usize;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| ClusterError::Frame("a name that is not UTF-8".into()))
    }
    pub fn str16(&mut self) -> Result<&'a str, ClusterError> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as usize;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| ClusterError::Frame("a text that is not UTF-8".into()))
    }
    pub fn u8(&mut self) -> Result<u8, ClusterError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ClusterError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    pub fn u32(&mut self) -> Result<u32, ClusterError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> Result<u64, ClusterError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn i64(&mut self) -> Result<i64, ClusterError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Reads one frame from a blocking stream; `Ok(None)` at a clean end of stream.
pub fn read(stream: &mut impl std::io::Read) -> Result<Option<Frame>, ClusterError> {
    let mut head = [0u8; 4];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ClusterError::Io(e)),
    }
    let len = frame_len(head)?;
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).map_err(ClusterError::Io)?;
    decode(&rest).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        let body = Body::default().str8("flowd").u32(7).i64(-3).bytes(b"xyz").0;
        encode(&mut out, Kind::Produce, 42, &body);
        let frame = read(&mut out.as_slice()).unwrap().unwrap();
        assert_eq!((frame.kind, frame.request), (Kind::Produce, 42));
        let mut fields = Fields(&frame.body);
        assert_eq!(fields.str8().unwrap(), "flowd");
        assert_eq!(fields.u32().unwrap(), 7);
        assert_eq!(fields.i64().unwrap(), -3);
        assert_eq!(fields.rest(), b"xyz");
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(frame_len([0, 0, 0, 0]).is_err());
        assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
        assert!(decode(&[0x77, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[0x01, 0, 0]).is_err());
        assert!(Fields(&[5, b'a']).str8().is_err());
        assert!(read(&mut &[20u8, 0, 0, 0, 1][..]).is_err());
    }
}
