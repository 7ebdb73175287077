//! Frames: the length prefix and the 12-byte header (version, kind, flags, request id)
//! that delimit every message. `parse_frame` is the sans-io decoder the server runs on
//! its read buffer; it never reads past what it was given and never panics.

use crate::protocol::error::{ErrorCode, ProtocolError};

pub const PROTOCOL_VERSION: u8 = 1;
/// The length prefix plus the header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// What the length field counts at least: the header after it.
const HEADER_AFTER_LENGTH: usize = 12;

/// Every message kind. Responses are the request kind with the high bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Produce = 0x01,
    Fetch = 0x02,
    Metadata = 0x03,
    Job = 0x04,
    Status = 0x05,
    /// A `state` stage's state for a key, answered with an Answer frame.
    State = 0x06,
    ProduceBatch = 0x07,
    FetchBatches = 0x08,
    /// A token, before anything else on a server with credentials.
    Auth = 0x09,
    /// A peer relaying over mutual TLS says which credential its client proved.
    Vouch = 0x0A,
    Claim = 0x10,
    Ack = 0x11,
    Reclaim = 0x12,
    AckCommit = 0x13,
    ConsumerAdmin = 0x14,
    Range = 0x15,
    Length = 0x16,
    /// Sets a consumer's committed offset (a Kafka group's commit, a reset).
    Seek = 0x17,
    Produced = 0x81,
    Fetched = 0x82,
    Batches = 0x88,
    Authed = 0x89,
    MetadataReply = 0x83,
    Answer = 0x84,
    StatusReply = 0x85,
    Claimed = 0x90,
    Acked = 0x91,
    Reclaimed = 0x92,
    Committed = 0x93,
    Consumers = 0x94,
    LengthReply = 0x96,
    Sought = 0x97,
    Error = 0xFF,
}

impl Kind {
    pub fn from_u8(byte: u8) -> Option<Kind> {
        use Kind::*;
        Some(match byte {
            0x01 => Produce,
            0x02 => Fetch,
            0x03 => Metadata,
            0x04 => Job,
            0x05 => Status,
            0x06 => State,
            0x07 => ProduceBatch,
            0x08 => FetchBatches,
            0x09 => Auth,
            0x0A => Vouch,
            0x10 => Claim,
            0x11 => Ack,
            0x12 => Reclaim,
            0x13 => AckCommit,
            0x14 => ConsumerAdmin,
            0x15 => Range,
            0x16 => Length,
            0x17 => Seek,
            0x81 => Produced,
            0x82 => Fetched,
            0x88 => Batches,
            0x89 => Authed,
            0x83 => MetadataReply,
            0x84 => Answer,
            0x85 => StatusReply,
            0x90 => Claimed,
            0x91 => Acked,
            0x92 => Reclaimed,
            0x93 => Committed,
            0x94 => Consumers,
            0x96 => LengthReply,
            0x97 => Sought,
            0xFF => Error,
            _ => return None,
        })
    }

    /// Kinds reserved for more consumer and read requests, not served by this version.
    pub fn is_reserved(byte: u8) -> bool {
        (0x18..=0x2F).contains(&byte)
    }
}

/// Frame flag bit 0: relayed by a peer from its client (`server::relay`); the receiver
/// serves it itself and never relays it on.
pub const FLAG_RELAYED: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    /// The raw kind byte: an unknown kind is answered, not fatal.
    pub kind: u8,
    pub flags: u16,
    pub request_id: u64,
}

/// One whole frame, borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
    /// Bytes the frame took from the buffer, prefix included.
    pub len: usize,
}

/// The first frame in `buf`: `Ok(None)` if more bytes are needed. A length over
/// `max_frame_bytes` (or under the header) is an error as soon as the prefix is in,
/// before any of the body is buffered. The version is checked before the kind.
pub fn parse_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<RawFrame<'_>>, ProtocolError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let length = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if length > max_frame_bytes {
        return Err(ProtocolError::new(
            ErrorCode::FrameTooLarge,
            format!(
                "a frame of {length} bytes is over this server's limit of {max_frame_bytes}; send smaller batches"
            ),
        ));
    }
    if length < HEADER_AFTER_LENGTH {
        return Err(ProtocolError::malformed(format!(
            "a frame length of {length} is shorter than the 12-byte header"
        )));
    }
    let Some(frame) = buf.get(4..4 + length) else {
        return Ok(None);
    };
    let header = FrameHeader {
        version: frame[0],
        kind: frame[1],
        flags: u16::from_le_bytes([frame[2], frame[3]]),
        request_id: u64::from_le_bytes(frame[4..12].try_into().expect("8 bytes")),
    };
    if header.version != PROTOCOL_VERSION {
        return Err(ProtocolError::new(
            ErrorCode::BadVersion,
            format!(
                "protocol version {} is not spoken here (this server speaks {PROTOCOL_VERSION}); upgrade the client or the server",
                header.version
            ),
        ));
    }
    Ok(Some(RawFrame {
        header,
        body: &frame[HEADER_AFTER_LENGTH..],
        len: 4 + length,
    }))
}

/// Starts a frame in `out`; `finish_frame` fills in the length once the body is written.
pub fn begin_frame(out: &mut Vec<u8>, kind: Kind, request_id: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(PROTOCOL_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    start
}

pub fn finish_frame(out: &mut [u8], start: usize) {
    let length = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, id: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin_frame(&mut out, kind, id);
        out.extend_from_slice(body);
        finish_frame(&mut out, start);
        out
    }

    #[test]
    fn round_trip_and_partial_input() {
        let bytes = frame(Kind::Produce, 42, b"hello");
        for cut in 0..bytes.len() {
            assert!(
                parse_frame(&bytes[..cut], 1024).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let parsed = parse_frame(&bytes, 1024).unwrap().unwrap();
        assert_eq!(parsed.header.kind, Kind::Produce as u8);
        assert_eq!(parsed.header.request_id, 42);
        assert_eq!(parsed.body, b"hello");
        assert_eq!(parsed.len, bytes.len());
    }

    #[test]
    fn limits_and_versions() {
        let cases: &[(&[u8], ErrorCode)] = &[
            (&[0xFF, 0xFF, 0xFF, 0x7F], ErrorCode::FrameTooLarge),
            (&[3, 0, 0, 0, 1, 1, 0], ErrorCode::Malformed),
            (
                &[12, 0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ErrorCode::BadVersion,
            ),
        ];
        for (bytes, code) in cases {
            assert_eq!(parse_frame(bytes, 1024).unwrap_err().code, *code, "{bytes:?}");
        }
    }
}
