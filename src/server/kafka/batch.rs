//! Kafka's record batch (format 2): split from a produce request, its records read
//! with every bound checked before anything is allocated, and written for a fetch.
//!
//! kafka-protocol reads each batch's header and checks its CRC (`decode_batch_info`);
//! the records inside are read and written here, because the crate's `Record` keeps
//! headers in a map (a header name given twice, which Kafka allows, keeps its last
//! value only) and its reader reserves what a batch claims (2^31 records, 2^31 headers)
//! before it looks at the bytes (docs/decisions.md).
//!
//! A batch, all integers big-endian:
//!
//! ```text
//! base offset            i64
//! batch length           i32   bytes after this field (49 + the record section)
//! partition leader epoch i32
//! magic                  i8    2
//! crc                    u32   CRC-32C of everything after it
//! attributes             i16   bits 0-2 compression, 3 log-append time,
//!                              4 transactional, 5 control
//! last offset delta      i32
//! base timestamp         i64   ms since the epoch, the first record's
//! max timestamp          i64
//! producer id            i64   -1: none
//! producer epoch         i16
//! base sequence          i32
//! record count           i32
//! record section         the records, compressed as the attributes say
//! ```
//!
//! A record, its integers zigzag varints (`varint` of at most 5 bytes, `varlong` of at
//! most 10), a length of -1 meaning null:
//!
//! ```text
//! length            varint  bytes after this field
//! attributes        i8      unused
//! timestamp delta   varlong from the base timestamp
//! offset delta      varint  from the base offset
//! key length        varint, key bytes
//! value length      varint, value bytes
//! header count      varint
//!   name length     varint (never -1), name bytes (UTF-8)
//!   value length    varint, value bytes
//! ```

/// Bytes before a batch's record section.
pub const RECORDS_AT: usize = 61;
/// Bytes of a batch after its length field and before its record section.
const HEADER_AFTER_LENGTH: usize = RECORDS_AT - 12;
/// Where the CRC starts, and what it covers from.
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
/// Where the format's magic byte is.
pub const MAGIC_AT: usize = 16;
/// The fewest bytes a record takes (every field of one byte, no key, value or header).
const RECORD_BYTES_MIN: usize = 7;

/// One record of a batch, borrowed from its record section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its offset less the batch's base offset.
    pub delta: i32,
    /// Milliseconds since the epoch (-1: none).
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// In the order sent, a name as often as it was given.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// The first batch of `batches` (its whole length checked), and what follows it.
pub fn split(batches: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let length = batches
        .get(8..12)
        .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("{} bytes where a batch's header was due", batches.len()))?;
    let length = usize::try_from(length)
        .ok()
        .filter(|l| *l >= HEADER_AFTER_LENGTH)
        .ok_or_else(|| {
            format!("a batch of length {length} (its header alone takes {HEADER_AFTER_LENGTH})")
        })?;
    let end = 12 + length;
    if end > batches.len() {
        return Err(format!(
            "a batch of {end} bytes with {} left in the request",
            batches.len()
        ));
    }
    Ok(batches.split_at(end))
}

/// The `count` records of a decompressed record section, read one at a time (so a
/// caller that stops early holds no more than it took), each within the bytes it says it
/// has: a count, length or header count the bytes cannot hold, a record whose fields end
/// before or after its length, or bytes after the last record, are errors.
pub fn read(section: &[u8], count: i32, base_timestamp: i64) -> Result<Records<'_>, String> {
    let fits = section.len() / RECORD_BYTES_MIN;
    let count = usize::try_from(count)
        .ok()
        .filter(|c| *c <= fits)
        .ok_or_else(|| {
            format!(
                "a batch claims {count} records in {} bytes (at most {fits} fit)",
                section.len()
            )
        })?;
    Ok(Records {
        reader: Reader { bytes: section },
        count,
        index: 0,
        base_timestamp,
        done: false,
    })
}

/// A record section's records, in order; after an error, nothing more.
pub struct Records<'a> {
    reader: Reader<'a>,
    count: usize,
    index: usize,
    base_timestamp: i64,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.count {
            self.done = true;
            let left = self.reader.bytes.len();
            return (left > 0).then(|| {
                Err(format!(
                    "{left} bytes after the {} records the batch claims",
                    self.count
                ))
            });
        }
        let record = self
            .reader
            .record(self.base_timestamp)
            .map_err(|e| format!("record {} of the batch: {e}", self.index));
        self.index += 1;
        self.done = record.is_err();
        Some(record)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn record(&mut self, base_timestamp: i64) -> Result<Record<'a>, String> {
        let length = self.length("its length")?.ok_or("a length of -1")?;
        let mut r = Reader {
            bytes: self.take(length, "its fields")?,
        };
        r.take(1, "its attributes")?;
        let timestamp = base_timestamp.wrapping_add(r.varlong("its timestamp delta")?);
        let delta = r.varint("its offset delta")?;
        let key = r.field("its key")?;
        let value = r.field("its value")?;
        let count = r.varint("its header count")?;
        // A header takes at least two bytes (two lengths).
        let count = usize::try_from(count)
            .ok()
            .filter(|c| *c <= r.bytes.len() / 2)
            .ok_or_else(|| format!("{count} headers claimed in {} bytes", r.bytes.len()))?;
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.field("a header's name")?.ok_or("a header's name is null")?;
            let name = std::str::from_utf8(name).map_err(|_| "a header's name is not UTF-8")?;
            headers.push((name, r.field("a header's value")?));
        }
        if !r.bytes.is_empty() {
            return Err(format!(
                "{} bytes after its fields, within its length",
                r.bytes.len()
            ));
        }
        Ok(Record {
            delta,
            timestamp,
            key,
            value,
            headers,
        })
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!("{what} take {n} bytes, {} are left", self.bytes.len()));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    /// A length: -1 is `None`, any other negative an error.
    fn length(&mut self, what: &str) -> Result<Option<usize>, String> {
        match self.varint(what)? {
            -1 => Ok(None),
            n => usize::try_from(n).map(Some).map_err(|_| format!("{what} is {n}")),
        }
    }

    /// A length and that many bytes (`None` for -1).
    fn field(&mut self, what: &str) -> Result<Option<&'a [u8]>, String> {
        match self.length(what)? {
            None => Ok(None),
            Some(n) => self.take(n, what).map(Some),
        }
    }

    fn varint(&mut self, what: &str) -> Result<i32, String> {
        let z = self.unsigned(5, what)?;
        let z = u32::try_from(z).map_err(|_| format!("{what}: a varint over 32 bits"))?;
        Ok((z >> 1) as i32 ^ -((z & 1) as i32))
    }

    fn varlong(&mut self, what: &str) -> Result<i64, String> {
        let z = self.unsigned(10, what)?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    fn unsigned(&mut self, max_bytes: u32, what: &str) -> Result<u64, String> {
        let mut z = 0u64;
        for i in 0..max_bytes {
            let [b, rest @ ..] = self.bytes else {
                return Err(format!("{what} is cut short"));
            };
            self.bytes = rest;
            z |= u64::from(b & 0x7f).checked_shl(7 * i).unwrap_or(0);
            if *b < 0x80 {
                return Ok(z);
            }
        }
        Err(format!("{what}: a varint of over {max_bytes} bytes"))
    }
}

/// `records` as one uncompressed batch from `base_offset`, with no producer, appended to
/// `out`. Its base timestamp is the first record's.
pub fn write(out: &mut Vec<u8>, base_offset: i64, records: &[Record<'_>]) {
    let start = out.len();
    let base_timestamp = records.first().map_or(-1, |r| r.timestamp);
    let max_timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(-1);
    let last_delta = records.last().map_or(0, |r| r.delta);
    out.extend_from_slice(&base_offset.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // the batch's length, once known
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2);
    out.extend_from_slice(&[0; 4]); // the CRC, once known
    out.extend_from_slice(&0i16.to_be_bytes()); // no compression, create time
    out.extend_from_slice(&last_delta.to_be_bytes());
    out.extend_from_slice(&base_timestamp.to_be_bytes());
    out.extend_from_slice(&max_timestamp.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    let mut body = Vec::new();
    for record in records {
        body.clear();
        body.push(0);
        put_varlong(&mut body, record.timestamp.wrapping_sub(base_timestamp));
        put_varlong(&mut body, i64::from(record.delta));
        put_field(&mut body, record.key);
        put_field(&mut body, record.value);
        put_varlong(&mut body, record.headers.len() as i64);
        for (name, value) in &record.headers {
            put_field(&mut body, Some(name.as_bytes()));
            put_field(&mut body, *value);
        }
        put_varlong(out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    let length = (out.len() - start - 12) as i32;
    out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + CRC_FROM..]);
    out[start + CRC_AT..start + CRC_FROM].copy_from_slice(&crc.to_be_bytes());
}

fn put_field(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => put_varlong(out, -1),
        Some(bytes) => {
            put_varlong(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

/// A zigzag varint (a varlong's encoding is a varint's for values that fit 32 bits).
fn put_varlong(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
        RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn sample() -> Vec<Record<'static>> {
        (0..40)
            .map(|i: i32| Record {
                delta: i * 3,
                timestamp: if i == 7 {
                    -1
                } else {
                    1_700_000_000_000 + i64::from(i % 5) * 1000 - 2000
                },
                key: (i % 4 != 0).then_some(&b"key"[..(i % 4) as usize]),
                value: (i % 6 != 0).then_some(&b"a value of some bytes"[..(i % 21) as usize]),
                headers: match i % 3 {
                    0 => vec![],
                    1 => vec![("h", Some(&b"1"[..])), ("é", None)],
                    _ => vec![
                        ("h", Some(&b"1"[..])),
                        ("x", Some(&b""[..])),
                        ("h", Some(&b"2"[..])),
                    ],
                },
            })
            .collect()
    }

    /// The sample without repeated header names, as the crate's map-keeping `Record`.
    fn as_crate(records: &[Record<'_>], base_offset: i64) -> Vec<kafka_protocol::records::Record> {
        records
            .iter()
            .map(|r| kafka_protocol::records::Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                timestamp_type: TimestampType::Creation,
                offset: base_offset + i64::from(r.delta),
                // What the crate reads from a batch with no producer (it counts from
                // the base sequence, -1), and what makes it write one batch, not one
                // per record.
                sequence: NO_SEQUENCE.wrapping_add(r.delta),
                timestamp: r.timestamp,
                key: r.key.map(Bytes::copy_from_slice),
                value: r.value.map(Bytes::copy_from_slice),
                headers: r
                    .headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned().into(), v.map(Bytes::copy_from_slice)))
                    .collect(),
            })
            .collect()
    }

    /// Every record of a section, or the first error.
    fn all(section: &[u8], count: i32, base_timestamp: i64) -> Result<Vec<Record<'_>>, String> {
        read(section, count, base_timestamp)?.collect()
    }

    #[test]
    fn what_is_written_reads_back_here_and_in_kafka_protocols_reader_and_the_reverse() {
        let records = sample();
        let mut out = Vec::new();
        write(&mut out, 500, &records);
        let (batch, rest) = split(&out).unwrap();
        assert!(rest.is_empty());
        let info = RecordBatchDecoder::decode_batch_info(&mut &batch[..]).unwrap();
        assert_eq!(info.len(), 1, "the crate checks the header and the CRC");
        assert_eq!(info[0].min_offset, 500);
        let back = all(&batch[RECORDS_AT..], info[0].record_count, info[0].min_timestamp).unwrap();
        assert_eq!(back, records, "a header name given twice stays twice, in order");

        // The crate reads what was written, repeated names aside (its map keeps one).
        let theirs = RecordBatchDecoder::decode(&mut Bytes::from(out.clone())).unwrap();
        assert_eq!(theirs.records, as_crate(&records, 500));

        // And what the crate writes reads the same here (it writes offsets one after
        // another in one batch, names once).
        let unique: Vec<Record> = records
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, mut r)| {
                r.delta = i as i32;
                r.headers.truncate(2);
                r
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &as_crate(&unique, 9), &options).unwrap();
        let info = RecordBatchDecoder::decode_batch_info(&mut &buf[..]).unwrap();
        assert_eq!(info.len(), 1);
        let back = all(&buf[RECORDS_AT..], info[0].record_count, info[0].min_timestamp).unwrap();
        assert_eq!(back, unique);
    }

    #[test]
    fn counts_lengths_and_varints_the_bytes_cannot_hold_are_errors_before_any_room_is_made() {
        let mut out = Vec::new();
        write(&mut out, 0, &sample()[1..3]);
        let section = &out[RECORDS_AT..];
        assert_eq!(all(section, 2, 0).unwrap().len(), 2);
        let e = all(section, i32::MAX, 0).unwrap_err();
        assert!(e.contains("claims 2147483647 records"), "{e}");
        assert!(all(section, -1, 0).unwrap_err().contains("claims -1 records"));
        let e = all(section, 1, 0).unwrap_err();
        assert!(e.contains("bytes after the 1 records"), "{e}");
        let e = all(&section[..section.len() - 1], 2, 0).unwrap_err();
        assert!(e.contains("record 1 of the batch"), "{e}");

        // A record claiming 2^31 - 1 headers; one whose fields end before its length;
        // a varint of six bytes; a header name that is not UTF-8.
        let record = |body: &[u8]| {
            let mut r = Vec::new();
            put_varlong(&mut r, body.len() as i64);
            r.extend_from_slice(body);
            r
        };
        let mut many = vec![0, 0, 0, 1, 1];
        put_varlong(&mut many, i64::from(i32::MAX));
        let e = all(&record(&many), 1, 0).unwrap_err();
        assert!(e.contains("2147483647 headers claimed in 0 bytes"), "{e}");
        let e = all(&record(&[0, 0, 0, 1, 1, 0, 9]), 1, 0).unwrap_err();
        assert!(e.contains("1 bytes after its fields"), "{e}");
        let e = all(
            &record(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 1, 0]),
            1,
            0,
        )
        .unwrap_err();
        assert!(e.contains("its offset delta: a varint of over 5 bytes"), "{e}");
        let e = all(&record(&[0, 0, 0, 1, 1, 2, 2, 0xff, 1]), 1, 0).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = all(&record(&[0, 0, 0, 1, 1, 2, 1, 1]), 1, 0).unwrap_err();
        assert!(e.contains("a header's name is null"), "{e}");

        // A batch's length that its header cannot hold, or past the request's end.
        let mut short = out.clone();
        short[8..12].copy_from_slice(&48i32.to_be_bytes());
        assert!(split(&short).unwrap_err().contains("length 48"));
        assert!(
            split(&out[..out.len() - 1])
                .unwrap_err()
                .contains("left in the request")
        );
        assert!(
            split(&out[..11])
                .unwrap_err()
                .contains("11 bytes where a batch's header was due")
        );
    }
}
