//! Kafka records to flowd's and back, one to one: key to key, value to value, each
//! header to a header, the record's time to its timestamp.
//!
//! Two things a flowd record cannot say are refused or said here: a Kafka record whose
//! value is null (a tombstone) is stored with an empty value, and a flowd record read by
//! a Kafka client carries its headers by name (the codec keeps one value per name, so a
//! record with two headers of one name shows the last). An idempotent producer's batches
//! come with their producer id, epoch and sequence numbers (`Idempotent`, checked in
//! `producers.rs`); transactional batches are refused. flowd's engine headers
//! (`flowd-...`) are not shown to Kafka clients.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record,
    RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::protocol::wire::{Cursor, WireRecord, encode_record};
use crate::protocol::{OwnedWireRecord, ProtocolError};

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

/// The records of a produce request's `records` field (record batches of format 2,
/// compressed or not), in flowd's wire encoding.
pub fn from_kafka(mut batches: Bytes) -> Result<Encoded, Refused> {
    use super::errors::{CORRUPT_MESSAGE, INVALID_RECORD, UNSUPPORTED_FOR_MESSAGE_FORMAT};
    let sets = RecordBatchDecoder::decode_all(&mut batches)
        .map_err(|e| refused(CORRUPT_MESSAGE, format!("the record batches do not decode: {e}")))?;
    let mut out = Encoded::default();
    for set in sets {
        if set.version != 2 {
            return Err(refused(
                UNSUPPORTED_FOR_MESSAGE_FORMAT,
                format!(
                    "record format {} (this door takes record batches, format 2)",
                    set.version
                ),
            ));
        }
        for record in set.records {
            if record.transactional || record.control {
                return Err(refused(
                    INVALID_RECORD,
                    "transactions are not served by flowd's Kafka door",
                ));
            }
            let producer = (record.producer_id != NO_PRODUCER_ID).then_some(Idempotent {
                producer_id: record.producer_id,
                epoch: record.producer_epoch,
                first: record.sequence,
                last: record.sequence,
            });
            match (&mut out.idempotent, producer) {
                (None, None) => {}
                (None, Some(first)) if out.count == 0 => out.idempotent = Some(first),
                (Some(seen), Some(next))
                    if (seen.producer_id, seen.epoch) == (next.producer_id, next.epoch)
                        && next.first == seen.last.wrapping_add(1) & i32::MAX =>
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
            if record.headers.len() > usize::from(u16::MAX) {
                return Err(refused(INVALID_RECORD, "a record has over 65535 headers"));
            }
            let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                if name.len() > usize::from(u16::MAX) {
                    return Err(refused(INVALID_RECORD, "a header's name is over 65535 bytes"));
                }
                headers.push((name.as_str(), value.as_deref().unwrap_or_default()));
            }
            let timestamp = (record.timestamp >= 0).then_some(record.timestamp);
            let value = record.value.as_deref().unwrap_or_default();
            encode_record(&mut out.bytes, timestamp, record.key.as_deref(), value, &headers);
            out.count += 1;
        }
    }
    Ok(out)
}

/// Fetched records as one record batch (format 2, uncompressed), offsets kept.
pub fn to_kafka(items: &[(u64, OwnedWireRecord)]) -> Result<Bytes, String> {
    if items.is_empty() {
        return Ok(Bytes::new());
    }
    let records: Vec<Record> = items
        .iter()
        .map(|(offset, record)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: *offset as i64,
            sequence: NO_SEQUENCE,
            timestamp: record.timestamp_ms.unwrap_or(-1),
            key: record.key.as_ref().map(|k| Bytes::copy_from_slice(k)),
            value: Some(Bytes::copy_from_slice(&record.value)),
            headers: record
                .headers
                .iter()
                .filter(|(name, _)| !name.starts_with(crate::protocol::wire::RESERVED_HEADER_PREFIX))
                .map(|(name, value)| {
                    (
                        StrBytes::from_string(name.clone()),
                        Some(Bytes::copy_from_slice(value)),
                    )
                })
                .collect(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let encoded = from_kafka(batch(&sent, compression)).unwrap();
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
            let mut back = to_kafka(&items).unwrap();
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
        let encoded = from_kafka(batch(
            &[kafka_record(0, "k", None, NO_PRODUCER_ID)],
            Compression::None,
        ))
        .unwrap();
        assert_eq!(encoded.records().unwrap()[0].value, b"");
        let records = [
            kafka_record(0, "k", Some("v"), 7),
            kafka_record(1, "k", Some("w"), 7),
        ];
        let idempotent = from_kafka(batch(&records, Compression::None)).unwrap();
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
        let mixed = from_kafka(batch(&mixed, Compression::None));
        assert_eq!(mixed.unwrap_err().code, super::super::errors::INVALID_RECORD);
        let mut damaged = batch(
            &[kafka_record(0, "k", Some("v"), NO_PRODUCER_ID)],
            Compression::None,
        )
        .to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let damaged = from_kafka(Bytes::from(damaged));
        assert_eq!(damaged.unwrap_err().code, super::super::errors::CORRUPT_MESSAGE);
    }
}
