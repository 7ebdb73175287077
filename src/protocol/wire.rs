//! The primitive encodings of the protocol (integers, strings, bytes) and of a record,
//! with a bounds-checked cursor: a short or lying body is a `Malformed` error, never a
//! panic or an over-read.

use crate::protocol::error::ProtocolError;

const NONE_LEN: u32 = u32::MAX;
const FLAG_KEY: u8 = 1;
const FLAG_TIMESTAMP: u8 = 2;
/// Header names starting with this belong to the engine (provenance, end markers,
/// reply addresses); a client may not forge them.
pub const RESERVED_HEADER_PREFIX: &str = "flowd-";
/// The header of an end-of-input marker: engine bookkeeping in a topic, which a reader
/// of stored batches skips (a FETCHED never holds one).
pub const END_MARKER_HEADER: &str = "flowd-end";
/// The engine header on a record whose value is null rather than empty (a Kafka
/// tombstone): its stored value is empty, and a Kafka client reads it back null.
pub const NULL_VALUE_HEADER: &str = "flowd-null";

/// Whether header `name` goes on with a record's own value when the engine writes that
/// value elsewhere (a filter's output, a dead letter, a dead letter's replay): every
/// client header and the null mark (a tombstone stays one); none of the engine's other
/// headers, which belong to the record where they were written.
pub fn goes_with_value(name: &str) -> bool {
    !name.starts_with(RESERVED_HEADER_PREFIX) || name == NULL_VALUE_HEADER
}

/// A record as it travels, borrowed from a frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord<'a> {
    /// `None`: the server stamps the time it took the record.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The record's own encoding, for copying it on unchanged.
    pub raw: &'a [u8],
}

/// A record a client builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedWireRecord {
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OwnedWireRecord {
    pub fn value(value: impl Into<Vec<u8>>) -> OwnedWireRecord {
        OwnedWireRecord {
            value: value.into(),
            ..OwnedWireRecord::default()
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        encode_record(out, self.timestamp_ms, self.key.as_deref(), &self.value, &headers);
    }
}

impl WireRecord<'_> {
    pub fn to_owned(&self) -> OwnedWireRecord {
        OwnedWireRecord {
            timestamp_ms: self.timestamp_ms,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.to_vec(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
        }
    }
}

pub fn encode_record(
    out: &mut Vec<u8>,
    timestamp_ms: Option<i64>,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) {
    let flags =
        if key.is_some() { FLAG_KEY } else { 0 } | if timestamp_ms.is_some() { FLAG_TIMESTAMP } else { 0 };
    out.push(flags);
    if let Some(ts) = timestamp_ms {
        out.extend_from_slice(&ts.to_le_bytes());
    }
    if let Some(key) = key {
        put_bytes(out, key);
    }
    put_bytes(out, value);
    out.extend_from_slice(&(headers.len() as u16).to_le_bytes());
    for (name, value) in headers {
        put_str(out, name);
        put_bytes(out, value);
    }
}

/// Re-encodes the last of `count` records encoded one after another in `bytes` with
/// header `name` = `value` added (an engine's mark on a batch: its last record).
pub fn add_header_to_last(
    bytes: &mut Vec<u8>,
    count: usize,
    name: &str,
    value: &[u8],
) -> Result<(), ProtocolError> {
    let mut cursor = Cursor::new(bytes);
    let mut last_start = 0;
    for _ in 0..count {
        last_start = bytes.len() - cursor.remaining();
        cursor.record()?;
    }
    let last = Cursor::new(&bytes[last_start..]).record()?;
    let mut headers = last.headers.clone();
    headers.push((name, value));
    let mut encoded = Vec::with_capacity(last.raw.len() + name.len() + value.len() + 8);
    encode_record(&mut encoded, last.timestamp_ms, last.key, last.value, &headers);
    bytes.truncate(last_start);
    bytes.extend_from_slice(&encoded);
    Ok(())
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A string of at most 65535 bytes (names); longer ones are cut at a char boundary.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_u16(out, end as u16);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

pub fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => put_bytes(out, b),
        None => put_u32(out, NONE_LEN),
    }
}

/// Reads a body front to back; every read checks what is left.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// How many bytes were read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::malformed(format!(
                "the body ends inside {what}: {n} bytes needed at byte {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn i64(&mut self, what: &str) -> Result<i64, ProtocolError> {
        Ok(self.u64(what)? as i64)
    }

    pub fn str(&mut self, what: &str) -> Result<&'a str, ProtocolError> {
        let len = self.u16(what)? as usize;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::malformed(format!("{what} is not UTF-8")))
    }

    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    pub fn opt_bytes(&mut self, what: &str) -> Result<Option<&'a [u8]>, ProtocolError> {
        let len = self.u32(what)?;
        if len == NONE_LEN {
            return Ok(None);
        }
        self.take(len as usize, what).map(Some)
    }

    pub fn record(&mut self) -> Result<WireRecord<'a>, ProtocolError> {
        let start = self.pos;
        let flags = self.u8("a record's flags")?;
        if flags & !(FLAG_KEY | FLAG_TIMESTAMP) != 0 {
            return Err(ProtocolError::malformed(format!(
                "unknown record flags {flags:#04x}"
            )));
        }
        let timestamp_ms = if flags & FLAG_TIMESTAMP != 0 {
            Some(self.i64("a record's timestamp")?)
        } else {
            None
        };
        let key = if flags & FLAG_KEY != 0 {
            Some(self.bytes("a record's key")?)
        } else {
            None
        };
        let value = self.bytes("a record's value")?;
        let count = self.u16("a record's header count")? as usize;
        // Each header takes at least 6 bytes: a lying count fails before it allocates.
        if count * 6 > self.remaining() {
            return Err(ProtocolError::malformed(format!(
                "a record claims {count} headers but only {} bytes are left",
                self.remaining()
            )));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.str("a header name")?;
            headers.push((name, self.bytes("a header value")?));
        }
        Ok(WireRecord {
            timestamp_ms,
            key,
            value,
            headers,
            raw: &self.buf[start..self.pos],
        })
    }

    /// Fails unless the whole body was read: trailing bytes mean a client bug.
    pub fn finish(&self, what: &str) -> Result<(), ProtocolError> {
        if self.remaining() != 0 {
            return Err(ProtocolError::malformed(format!(
                "{} bytes after the end of the {what} body",
                self.remaining()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let cases = [
            OwnedWireRecord::value("v"),
            OwnedWireRecord {
                timestamp_ms: Some(-5),
                key: Some(b"k".to_vec()),
                value: Vec::new(),
                headers: vec![("trace".into(), b"1".to_vec()), ("é".into(), Vec::new())],
            },
        ];
        for record in cases {
            let mut out = Vec::new();
            record.encode(&mut out);
            let mut cursor = Cursor::new(&out);
            let decoded = cursor.record().unwrap();
            cursor.finish("record").unwrap();
            assert_eq!(decoded.to_owned(), record);
            assert_eq!(decoded.raw, &out[..]);
            for cut in 0..out.len() {
                assert!(Cursor::new(&out[..cut]).record().is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn lying_lengths_are_errors() {
        let cases: &[&[u8]] = &[
            &[0, 0xFF, 0xFF, 0xFF, 0x7F],
            &[0, 0, 0, 0, 0, 0xFF, 0xFF],
            &[9],
            &[0, 0, 0, 0, 0, 1, 0, 2, 0, 0xFF, 0xFE, 0, 0, 0, 0],
        ];
        for bytes in cases {
            assert!(Cursor::new(bytes).record().is_err(), "{bytes:?}");
        }
    }
}
