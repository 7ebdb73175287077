//! Kafka records to flowd's and back, one to one: key to key, value to value, each
//! header to a header (a name given twice stays twice, in order, as Kafka's headers are
//! a list), the record's time to its timestamp.
//!
//! What a flowd record cannot say is said here: a Kafka record whose value is null (a
//! tombstone) is stored with an empty value and the engine header `flowd-null`, and
//! given back to Kafka clients as null (flowd's own readers see the empty value); a
//! header whose value is null is stored empty. An
//! idempotent producer's batches come with their producer id, epoch and sequence
//! numbers (`Idempotent`, checked in `producers.rs`); transactional batches are refused.
//! flowd's engine headers (`flowd-...`) are not shown to Kafka clients.
//!
//! One partition's records in a produce request, decompressed, take at most `limit`
//! bytes (the door passes `ingest.max_frame_bytes`, what one request of flowd's own
//! protocol carries), and so do they once in flowd's encoding: the batch they make is
//! one atomic append, as a frame's is.

use kafka_protocol::records::{NO_PRODUCER_ID, RecordBatchDecoder};

use super::batch;
use super::errors::{CORRUPT_MESSAGE, INVALID_RECORD, MESSAGE_TOO_LARGE, UNSUPPORTED_FOR_MESSAGE_FORMAT};
use super::inflate::{self, Failed};
use crate::protocol::wire::{Cursor, RESERVED_HEADER_PREFIX, WireRecord, encode_record};
use crate::protocol::{OwnedWireRecord, ProtocolError};
use crate::server::api;

/// One partition's records of a produce request in flowd's wire encoding, one after
/// another (what `WireRecord::raw` borrows).
#[derive(Debug, Default)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub count: usize,
    /// Who sent them, if an idempotent producer.
    pub idempotent: Option<Idempotent>,
}

/// An idempotent producer's batch: its producer, epoch, and the sequence numbers of its
/// first and last records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotent {
    pub producer_id: i64,
    pub epoch: i16,
    pub first: i32,
    pub last: i32,
}

impl Encoded {
    /// The records, borrowed.
    pub fn records(&self) -> Result<Vec<WireRecord<'_>>, ProtocolError> {
        let mut c = Cursor::new(&self.bytes);
        (0..self.count).map(|_| c.record()).collect()
    }
}

/// Why a produce's records were not taken, with the Kafka error code to answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: i16,
    pub message: String,
}

pub(super) fn refused(code: i16, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

/// What the engine refused, with the Kafka code for it.
impl From<ProtocolError> for Refused {
    fn from(error: ProtocolError) -> Refused {
        refused(super::errors::code(&error), error.message)
    }
}

/// The engine header on a record whose Kafka value was null (a tombstone): its stored
/// value is empty, and a Kafka client reads it back null.
pub use crate::protocol::wire::NULL_VALUE_HEADER;

fn too_large(limit: usize) -> Refused {
    refused(
        MESSAGE_TOO_LARGE,
        format!(
            "a partition's records in one produce request come to over {limit} bytes, decompressed \
             (ingest.max_frame_bytes): send smaller batches, or raise ingest.max_frame_bytes"
        ),
    )
}

/// The records of a produce request's `records` field (record batches of format 2,
/// compressed or not), in flowd's wire encoding, if within `limit` bytes (decompressed,
/// and encoded).
pub fn from_kafka(batches: &[u8], limit: usize) -> Result<Encoded, Refused> {
    let corrupt = |e: String| refused(CORRUPT_MESSAGE, format!("the record batches do not decode: {e}"));
    let mut out = Encoded::default();
    let mut left = limit;
    let mut rest = batches;
    while !rest.is_empty() {
        if let Some(&magic) = rest.get(batch::MAGIC_AT)
            && magic != 2
        {
            return Err(refused(
                UNSUPPORTED_FOR_MESSAGE_FORMAT,
                format!("record format {magic} (this door takes record batches, format 2)"),
            ));
        }
        let (one, after) = batch::split(rest).map_err(corrupt)?;
        rest = after;
        // The crate reads the header and checks the CRC.
        let info = RecordBatchDecoder::decode_batch_info(&mut &one[..])
            .map_err(|e| corrupt(e.to_string()))?
            .pop()
            .ok_or_else(|| corrupt("a batch with no header".into()))?;
        if info.transactional || info.control {
            return Err(refused(
                INVALID_RECORD,
                "transactions are not served by flowd's Kafka door",
            ));
        }
        let section =
            inflate::inflate(&one[batch::RECORDS_AT..], info.compression, left).map_err(|e| match e {
                Failed::Over => too_large(limit),
                Failed::Corrupt(e) => corrupt(e),
            })?;
        left = left.checked_sub(section.len()).ok_or_else(|| too_large(limit))?;
        for record in batch::read(&section, info.record_count, info.min_timestamp).map_err(corrupt)? {
            let record = record.map_err(corrupt)?;
            let producer = (info.producer_id != NO_PRODUCER_ID).then(|| {
                let sequence = sequence_after(info.base_sequence, record.delta);
                Idempotent {
                    producer_id: info.producer_id,
                    epoch: info.producer_epoch,
                    first: sequence,
                    last: sequence,
                }
            });
            match (&mut out.idempotent, producer) {
                (None, None) => {}
                (None, Some(first)) if out.count == 0 => out.idempotent = Some(first),
                (Some(seen), Some(next))
                    if (seen.producer_id, seen.epoch) == (next.producer_id, next.epoch)
                        && next.first == sequence_after(seen.last, 1) =>
                {
                    seen.last = next.first;
                }
                _ => {
                    return Err(refused(
                        INVALID_RECORD,
                        "a partition's batches mix producers, or their sequence numbers do not follow one another",
                    ));
                }
            }
            if record.headers.len() + usize::from(record.value.is_none()) > usize::from(u16::MAX) {
                return Err(refused(INVALID_RECORD, "a record has over 65535 headers"));
            }
            // The door lets its own engine header through (`NULL_VALUE_HEADER`), so a
            // client's must stop here, with the engine's own check.
            api::check_header_names(record.headers.iter().map(|(name, _)| *name))?;
            let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                if name.len() > usize::from(u16::MAX) {
                    return Err(refused(INVALID_RECORD, "a header's name is over 65535 bytes"));
                }
                headers.push((name, value.unwrap_or_default()));
            }
            if record.value.is_none() {
                headers.push((NULL_VALUE_HEADER, b""));
            }
            let timestamp = (record.timestamp >= 0).then_some(record.timestamp);
            let value = record.value.unwrap_or_default();
            encode_record(&mut out.bytes, timestamp, record.key, value, &headers);
            out.count += 1;
            if out.bytes.len() > limit {
                return Err(too_large(limit));
            }
        }
    }
    Ok(out)
}

/// The sequence number `delta` after `sequence`, wrapping from `i32::MAX` to 0 as
/// Kafka's do.
fn sequence_after(sequence: i32, delta: i32) -> i32 {
    ((i64::from(sequence) + i64::from(delta)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Fetched records as one record batch (format 2, uncompressed), offsets kept.
pub fn to_kafka(items: &[(u64, OwnedWireRecord)]) -> Result<Vec<u8>, String> {
    let Some((base, _)) = items.first() else {
        return Ok(Vec::new());
    };
    let base = i64::try_from(*base).map_err(|_| format!("offset {base} is past Kafka's"))?;
    let records = items
        .iter()
        .map(|(offset, record)| {
            let delta = offset
                .checked_sub(base as u64)
                .and_then(|d| i32::try_from(d).ok())
                .ok_or_else(|| format!("offsets {base} and {offset} in one batch"))?;
            let tombstone = record.headers.iter().any(|(name, _)| name == NULL_VALUE_HEADER);
            Ok(batch::Record {
                delta,
                timestamp: record.timestamp_ms.unwrap_or(-1),
                key: record.key.as_deref(),
                value: (!tombstone).then_some(&record.value[..]),
                headers: record
                    .headers
                    .iter()
                    .filter(|(name, _)| !name.starts_with(RESERVED_HEADER_PREFIX))
                    .map(|(name, value)| (name.as_str(), Some(value.as_slice())))
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut out = Vec::new();
    batch::write(&mut out, base, &records);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_SEQUENCE, Record, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };

    const LIMIT: usize = 1 << 20;

    fn kafka_record(offset: i64, key: &str, value: Option<&str>, producer_id: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id,
            producer_epoch: if producer_id == NO_PRODUCER_ID {
                NO_PRODUCER_EPOCH
            } else {
                3
            },
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: if producer_id == NO_PRODUCER_ID {
                NO_SEQUENCE
            } else {
                40 + offset as i32
            },
            timestamp: 1_700_000_000_000 + offset,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: [(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"v")))]
                .into_iter()
                .collect(),
        }
    }

    fn batch(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, records, &options).unwrap();
        buf.freeze()
    }

    #[test]
    fn keys_values_headers_and_times_cross_both_ways_in_every_compression() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let sent: Vec<Record> = (0..5)
                .map(|i| kafka_record(i, &format!("k{i}"), Some(&format!("v{i}")), NO_PRODUCER_ID))
                .collect();
            let encoded = from_kafka(&batch(&sent, compression), LIMIT).unwrap();
            assert_eq!(encoded.count, 5, "{compression:?}");
            let records = encoded.records().unwrap();
            let items: Vec<(u64, OwnedWireRecord)> = records
                .iter()
                .enumerate()
                .map(|(i, r)| (100 + i as u64, r.to_owned()))
                .collect();
            for (i, (_, r)) in items.iter().enumerate() {
                assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
                assert_eq!(r.value, format!("v{i}").as_bytes());
                assert_eq!(r.timestamp_ms, Some(1_700_000_000_000 + i as i64));
                assert_eq!(r.headers, vec![("h".to_owned(), b"v".to_vec())]);
            }
            let mut back = Bytes::from(to_kafka(&items).unwrap());
            let decoded = RecordBatchDecoder::decode_all(&mut back).unwrap();
            let decoded: Vec<Record> = decoded.into_iter().flat_map(|s| s.records).collect();
            assert_eq!(decoded.len(), 5);
            for (i, r) in decoded.iter().enumerate() {
                assert_eq!(r.offset, 100 + i as i64);
                assert_eq!(r.key, sent[i].key);
                assert_eq!(r.value, sent[i].value);
                assert_eq!(r.timestamp, sent[i].timestamp);
                assert_eq!(r.headers, sent[i].headers);
            }
        }
    }

    #[test]
    fn a_tombstone_is_stored_empty_an_idempotent_batch_says_its_sequences_and_damaged_batches_are_refused() {
        let encoded = from_kafka(
            &batch(&[kafka_record(0, "k", None, NO_PRODUCER_ID)], Compression::None),
            LIMIT,
        )
        .unwrap();
        let stored = &encoded.records().unwrap()[0];
        assert_eq!(stored.value, b"");
        assert_eq!(stored.headers, [("h", &b"v"[..]), (NULL_VALUE_HEADER, b"")]);
        // A Kafka client reads it back null, without the engine's header; an empty value
        // stays empty.
        let empty = from_kafka(
            &batch(
                &[kafka_record(0, "k", Some(""), NO_PRODUCER_ID)],
                Compression::None,
            ),
            LIMIT,
        )
        .unwrap();
        let items = [
            (0, stored.to_owned()),
            (1, empty.records().unwrap()[0].to_owned()),
        ];
        let fetched = to_kafka(&items).unwrap();
        let back: Vec<batch::Record> = batch::read(&fetched[batch::RECORDS_AT..], 2, 0)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back[0].value, None);
        assert_eq!(back[0].headers, [("h", Some(&b"v"[..]))]);
        assert_eq!(back[1].value, Some(&b""[..]));
        // A client cannot send the engine's header (or any `flowd-` one) itself.
        let mut forged = kafka_record(0, "k", Some("v"), NO_PRODUCER_ID);
        forged
            .headers
            .insert(StrBytes::from_static_str(NULL_VALUE_HEADER), None);
        let refused = from_kafka(&batch(&[forged], Compression::None), LIMIT).unwrap_err();
        assert_eq!(refused.code, INVALID_RECORD);
        assert!(
            refused.message.contains("reserved for the engine"),
            "{}",
            refused.message
        );
        let records = [
            kafka_record(0, "k", Some("v"), 7),
            kafka_record(1, "k", Some("w"), 7),
        ];
        let idempotent = from_kafka(&batch(&records, Compression::None), LIMIT).unwrap();
        assert_eq!(
            idempotent.idempotent,
            Some(Idempotent {
                producer_id: 7,
                epoch: 3,
                first: 40,
                last: 41
            })
        );
        let mixed = [
            kafka_record(0, "k", Some("v"), 7),
            kafka_record(1, "k", Some("w"), 8),
        ];
        let mixed = from_kafka(&batch(&mixed, Compression::None), LIMIT);
        assert_eq!(mixed.unwrap_err().code, super::super::errors::INVALID_RECORD);
        let mut damaged = batch(
            &[kafka_record(0, "k", Some("v"), NO_PRODUCER_ID)],
            Compression::None,
        )
        .to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let damaged = from_kafka(&damaged, LIMIT);
        assert_eq!(damaged.unwrap_err().code, super::super::errors::CORRUPT_MESSAGE);
    }

    #[test]
    fn a_partitions_records_past_the_limit_are_refused_decompressed_or_encoded() {
        let records: Vec<Record> = (0..50)
            .map(|i| kafka_record(i, "k", Some(&"v".repeat(1000)), NO_PRODUCER_ID))
            .collect();
        let gzipped = batch(&records, Compression::Gzip);
        let encoded = from_kafka(&gzipped, LIMIT).unwrap();
        assert_eq!(encoded.count, 50);
        let need = encoded.bytes.len();
        assert!(gzipped.len() < need / 4, "it compresses well");
        assert_eq!(from_kafka(&gzipped, need).unwrap().count, 50);
        for limit in [need - 1, need / 2, gzipped.len()] {
            let refused = from_kafka(&gzipped, limit).unwrap_err();
            assert_eq!(refused.code, MESSAGE_TOO_LARGE, "limit {limit}");
            assert!(
                refused.message.contains("ingest.max_frame_bytes"),
                "{}",
                refused.message
            );
        }
        // Two batches count together.
        let mut two = gzipped.to_vec();
        two.extend_from_slice(&gzipped);
        assert_eq!(from_kafka(&two, 2 * need).unwrap().count, 100);
        assert_eq!(
            from_kafka(&two, 2 * need - 1).unwrap_err().code,
            MESSAGE_TOO_LARGE
        );
    }

    #[test]
    fn a_header_given_twice_is_kept_twice_and_sequences_wrap_to_zero_within_a_batch() {
        let mut out = Vec::new();
        let value = b"v";
        let written: Vec<batch::Record> = (0..2)
            .map(|i| batch::Record {
                delta: i,
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(value),
                headers: vec![("h", Some(b"1")), ("x", None), ("h", Some(b"2"))],
            })
            .collect();
        batch::write(&mut out, 0, &written);
        let plain = from_kafka(&out, LIMIT).unwrap();
        assert_eq!(plain.idempotent, None);
        for record in plain.records().unwrap() {
            assert_eq!(record.headers, [("h", &b"1"[..]), ("x", b""), ("h", b"2")]);
        }
        // The same batch from producer 7, epoch 3, its base sequence i32::MAX.
        out[43..51].copy_from_slice(&7i64.to_be_bytes());
        out[51..53].copy_from_slice(&3i16.to_be_bytes());
        out[53..57].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        let idempotent = from_kafka(&out, LIMIT).unwrap().idempotent;
        assert_eq!(
            idempotent,
            Some(Idempotent {
                producer_id: 7,
                epoch: 3,
                first: i32::MAX,
                last: 0
            })
        );
        // What a fetch gives a Kafka client keeps both too.
        let items: Vec<(u64, OwnedWireRecord)> = plain
            .records()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, r)| (7 + i as u64, r.to_owned()))
            .collect();
        let fetched = to_kafka(&items).unwrap();
        let (one, rest) = batch::split(&fetched).unwrap();
        assert!(rest.is_empty(), "one batch for all the records");
        let back: Vec<batch::Record> = batch::read(&one[batch::RECORDS_AT..], 2, 1_700_000_000_000)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            back[1].headers,
            [("h", Some(&b"1"[..])), ("x", Some(b"")), ("h", Some(b"2"))]
        );
        assert_eq!(back[1].delta, 1);
    }

    /// A batch a client could send: records with keys, values and repeated headers, in
    /// one batch compressed as `compression` (index into Kafka's five).
    fn sample_batch(compression: usize) -> Vec<u8> {
        let written: Vec<batch::Record> = (0..12)
            .map(|i| batch::Record {
                delta: i,
                timestamp: 1_700_000_000_000 + i64::from(i),
                key: (i % 3 != 0).then_some(&b"key"[..]),
                value: (i % 5 != 0).then_some(&b"a value"[..]),
                headers: vec![("h", Some(b"1")), ("x", None), ("h", Some(b"2"))],
            })
            .collect();
        let mut plain = Vec::new();
        batch::write(&mut plain, 0, &written);
        if compression == 0 {
            return plain;
        }
        use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
        let section = plain[batch::RECORDS_AT..].to_vec();
        let fill = |buf: &mut BytesMut| {
            bytes::BufMut::put_slice(buf, &section);
            Ok(())
        };
        let mut packed = BytesMut::new();
        match compression {
            1 => Gzip::compress(&mut packed, fill),
            2 => Snappy::compress(&mut packed, fill),
            3 => Lz4::compress(&mut packed, fill),
            _ => Zstd::compress(&mut packed, fill),
        }
        .unwrap();
        let mut out = plain[..batch::RECORDS_AT].to_vec();
        out[21..23].copy_from_slice(&(compression as i16).to_be_bytes());
        out.extend_from_slice(&packed);
        seal(&mut out);
        out
    }

    /// A batch's length and CRC made right for what it now holds.
    fn seal(batch: &mut [u8]) {
        let length = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn every_compression_of_the_sample_reads_back_whole() {
        for compression in 0..5 {
            let encoded = from_kafka(&sample_batch(compression), LIMIT).unwrap();
            assert_eq!(encoded.count, 12, "compression {compression}");
            let records = encoded.records().unwrap();
            assert_eq!(records[4].headers, [("h", &b"1"[..]), ("x", b""), ("h", b"2")]);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any damage to a batch past its CRC, with the CRC and length made right again
        /// (so it reaches the decompressor and the record reader, as a hostile client's
        /// would), is refused or read within the limit: never a panic, never more.
        #[test]
        fn a_damaged_batch_with_its_crc_made_right_is_refused_or_read_within_the_limit(
            compression in 0usize..5,
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut bytes = sample_batch(compression);
            for (at, byte, how) in edits {
                let at = batch::RECORDS_AT - 40 + at % (bytes.len() - batch::RECORDS_AT + 40);
                match how {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if bytes.len() > batch::RECORDS_AT + 1 => {
                        bytes.remove(at.min(bytes.len() - 1));
                    }
                    _ => {}
                }
            }
            seal(&mut bytes);
            let limit = 600;
            if let Ok(encoded) = from_kafka(&bytes, limit) {
                proptest::prop_assert!(encoded.bytes.len() <= limit);
                proptest::prop_assert_eq!(encoded.records().unwrap().len(), encoded.count);
            }
        }
    }
}
