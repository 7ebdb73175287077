//! A batch made outside the log (by a client, from `encode_batch`), checked once, whole,
//! and appended as it came: only the base offset and the leader epoch (and, when the
//! producer left them to the server, the timestamps) are stamped in place.
//!
//! `CheckedBatch::check` is the only way to make one, and it checks everything recovery
//! would (length, CRC, version, flags, the body's archive against its header), so the log
//! can append its bytes without looking at them again, and readers can trust them.

use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

use crate::storage::format::{
    self, BATCH_FLAG_SERVER_TIME, BATCH_HEADER_BYTES, BatchHeader, FrameDefect, MIN_BATCH_BYTES, align_frame,
};
use crate::storage::record::{self, Record, RecordView};
use crate::storage::writer;

/// Encodes `records` (non-empty) as one batch of format 2 at the end of `out`, from
/// `base_offset` (0 for what a producer sends: the log stamps it). With `server_time`,
/// the records' timestamps are left out (the server stamps the time it takes the batch);
/// otherwise each keeps its own.
pub fn encode_batch(records: &[Record<'_>], base_offset: u64, server_time: bool, out: &mut Vec<u8>) {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let stripped: Vec<Record<'_>>;
    let records = if server_time {
        stripped = records
            .iter()
            .map(|r| Record {
                timestamp_ms: 0,
                ..*r
            })
            .collect();
        &stripped[..]
    } else {
        records
    };
    let start = out.len();
    out.resize(start + writer::batch_bytes_bound(records), 0);
    let flags = if server_time { BATCH_FLAG_SERVER_TIME } else { 0 };
    let stamp = writer::Stamp {
        base_offset,
        leader_epoch: 0,
        flags,
    };
    let len = writer::encode_into(records, stamp, &mut out[start..], &mut Arena::new());
    out.truncate(start + len);
}

/// Why a batch was refused, in words for whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the batch is not a valid flowd batch (format 2): {0}")]
pub struct BatchError(pub String);

/// A batch that passed every check, in an aligned buffer of its own, ready to append.
#[derive(Debug)]
pub struct CheckedBatch {
    /// The whole batch, padding included.
    bytes: AlignedVec<8>,
    header: BatchHeader,
    /// CRC32C of the body, in the header: stamping re-hashes the header only.
    body_crc: u32,
    min_timestamp_ms: i64,
}

impl CheckedBatch {
    /// Copies `bytes` (one batch, its padding optional) into an aligned buffer and checks
    /// it whole: length, CRC, version, flags, and its records' archive against its
    /// header. The base offset and leader epoch are not checked: the log stamps them.
    pub fn check(bytes: &[u8]) -> Result<CheckedBatch, BatchError> {
        if bytes.len() < MIN_BATCH_BYTES as usize {
            return Err(BatchError(format!(
                "{} bytes is shorter than the smallest batch ({MIN_BATCH_BYTES})",
                bytes.len()
            )));
        }
        let claimed = BatchHeader::read_trusted(bytes);
        let len = claimed.batch_len as usize;
        if len != bytes.len() && align_frame(len) != bytes.len() {
            return Err(BatchError(format!(
                "its header says {len} bytes but {} came",
                bytes.len()
            )));
        }
        let mut aligned = AlignedVec::<8>::with_capacity(align_frame(len));
        aligned.extend_from_slice(&bytes[..len]);
        aligned.resize(align_frame(len), 0);
        let header = format::check_batch(&aligned, claimed.base_offset).map_err(|defect| match defect {
            FrameDefect::BadCrc => BatchError(
                "it fails a CRC check (damaged on the way, or its CRCs were not computed as format 2 says: \
                 the body's over bytes 48..batch_len into bytes 44..48, then the header's over bytes 4..48)"
                    .into(),
            ),
            other => BatchError(other.to_string()),
        })?;
        if header.flags & BATCH_FLAG_SERVER_TIME != 0
            && (header.first_timestamp_ms != 0 || header.max_timestamp_ms != 0)
        {
            return Err(BatchError(
                "it leaves its timestamps to the server but carries some".into(),
            ));
        }
        let body = header.body(&aligned);
        let facts = record::check_batch_body(body, &header).ok_or_else(|| {
            BatchError("its records are not a valid archive, or disagree with its header (count, first or max timestamp)".into())
        })?;
        let body_crc = u32::from_le_bytes(aligned[44..48].try_into().expect("4 bytes"));
        Ok(CheckedBatch {
            bytes: aligned,
            header,
            body_crc,
            min_timestamp_ms: facts.min_timestamp_ms,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Bytes the batch takes in a segment, padding included.
    pub fn stored_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn min_timestamp_ms(&self) -> i64 {
        self.min_timestamp_ms
    }

    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    /// Whether the producer left the timestamps to the server.
    pub fn wants_server_time(&self) -> bool {
        self.header.flags & BATCH_FLAG_SERVER_TIME != 0
    }

    /// Its records, numbered from the batch's current base offset.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordView<'_>> {
        // SAFETY: the body passed `check_batch_body` in `check`, and `bytes` is only
        // changed in its header since.
        let records = unsafe { record::batch_records(self.header.body(&self.bytes)) };
        let (base, first) = (self.header.base_offset, self.header.first_timestamp_ms);
        records
            .iter()
            .enumerate()
            .map(move |(i, r)| RecordView::batched(base + i as u64, first, r))
    }

    /// Gives a batch that left its timestamps to the server the time the server took it
    /// (and clears the request: a stored batch never carries it).
    pub fn stamp_time(&mut self, now_ms: i64) {
        if self.wants_server_time() {
            self.header.flags &= !BATCH_FLAG_SERVER_TIME;
            self.header.first_timestamp_ms = now_ms;
            self.header.max_timestamp_ms = now_ms;
            self.min_timestamp_ms = now_ms;
            self.reseal();
        }
    }

    /// Stamps the base offset and leader epoch, and returns the bytes to write.
    pub fn stamp(&mut self, base_offset: u64, leader_epoch: u32) -> &[u8] {
        self.header.base_offset = base_offset;
        self.header.leader_epoch = leader_epoch;
        self.reseal();
        &self.bytes
    }

    /// Rewrites the header and its CRC (the body and its CRC stay as they are).
    fn reseal(&mut self) {
        format::seal_batch_header(&mut self.bytes[..BATCH_HEADER_BYTES], &self.header, self.body_crc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Header;

    fn records<'a>(values: &'a [Vec<u8>], headers: &'a [Header<'a>]) -> Vec<Record<'a>> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let r = Record::new(1_000 + i as i64 * 3, v);
                if i % 2 == 1 {
                    r.with_key(b"k").with_headers(headers)
                } else {
                    r
                }
            })
            .collect()
    }

    #[test]
    fn an_encoded_batch_checks_and_reads_back_and_a_stamped_one_is_still_sound() {
        let values: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; i as usize]).collect();
        let headers = [Header {
            name: "trace",
            value: b"x",
        }];
        let input = records(&values, &headers);
        let mut bytes = vec![9u8; 3];
        encode_batch(&input, 0, false, &mut bytes);
        let mut batch = CheckedBatch::check(&bytes[3..]).unwrap();
        assert_eq!(batch.record_count(), 50);
        for (view, want) in batch.records().zip(&input) {
            assert_eq!(view.value(), want.value);
            assert_eq!(view.key(), want.key);
            assert_eq!(view.timestamp_ms(), want.timestamp_ms);
            assert_eq!(view.headers().len(), want.headers.len());
        }
        let stamped = batch.stamp(4242, 7).to_vec();
        let header = format::check_batch(&stamped, 4242).expect("the CRC is right after stamping");
        assert_eq!(header.leader_epoch, 7);
        assert!(record::check_batch_body(header.body(&stamped), &header).is_some());
    }

    #[test]
    fn server_time_is_stamped_in_place() {
        let values = vec![b"a".to_vec(), b"b".to_vec()];
        let input = records(&values, &[]);
        let mut bytes = Vec::new();
        encode_batch(&input, 0, true, &mut bytes);
        let mut batch = CheckedBatch::check(&bytes).unwrap();
        assert!(batch.wants_server_time());
        batch.stamp_time(1_700_000_000_123);
        assert!(!batch.wants_server_time());
        assert!(batch.records().all(|r| r.timestamp_ms() == 1_700_000_000_123));
        let stamped = batch.stamp(0, 0).to_vec();
        let header = format::check_batch(&stamped, 0).unwrap();
        assert_eq!(header.flags, 0);
        // What a reader gets back checks as a batch again.
        assert!(CheckedBatch::check(&stamped).is_ok());
        assert_eq!(
            record::check_batch_body(header.body(&stamped), &header).map(|f| f.min_timestamp_ms),
            Some(1_700_000_000_123)
        );
    }

    #[test]
    fn damaged_or_lying_batches_are_refused_with_the_reason() {
        let values: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        let mut good = Vec::new();
        encode_batch(&records(&values, &[]), 0, false, &mut good);
        let error = |bytes: &[u8]| CheckedBatch::check(bytes).unwrap_err().to_string();
        assert!(error(&good[..20]).contains("shorter than the smallest batch"));
        assert!(error(&good[..good.len() - 9]).contains("its header says"));
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        assert!(error(&flipped).contains("CRC"), "{}", error(&flipped));
        // Every single flipped bit of the batch is refused (the CRC covers all but
        // itself, and a flip in the CRC mismatches it), never a panic.
        let len = BatchHeader::read_trusted(&good).batch_len as usize;
        for at in 0..len {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[at] ^= 1 << bit;
                assert!(
                    CheckedBatch::check(&bad).is_err(),
                    "a flip of bit {bit} of byte {at} passed"
                );
            }
        }
        // A batch claiming server time with timestamps in it.
        let mut lying = good.clone();
        let mut header = BatchHeader::read_trusted(&lying);
        header.flags = BATCH_FLAG_SERVER_TIME;
        format::seal_batch(&mut lying, &header);
        assert!(error(&lying).contains("leaves its timestamps to the server"));
    }
}
