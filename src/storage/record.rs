//! The record model: what a producer hands in (`Record`), what is archived (a batch's
//! `BatchBody`, or a format-1 frame's `RecordBody`) and the zero-copy view a reader gets
//! back (`RecordView`).
//!
//! The offsets and the timestamp base live in the batch header (see `format`), so the log
//! can index and seek without touching the archive; timestamp deltas, keys, values and
//! headers live in an rkyv archive that readers use in place, straight from the mapped
//! segment.

use rkyv::rancor::Failure;
use rkyv::ser::allocator::Arena;
use rkyv::ser::writer::Buffer;
use rkyv::with::{InlineAsBox, Map, MapNiche};
use rkyv::{Archive, Serialize};

/// Most headers a record may carry.
pub const RECORD_HEADERS_MAX: usize = 64;
/// Longest header name in bytes.
pub const HEADER_NAME_BYTES_MAX: usize = 256;

/// One record header: a small name and an opaque value.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    #[rkyv(with = InlineAsBox)]
    pub name: &'a str,
    #[rkyv(with = InlineAsBox)]
    pub value: &'a [u8],
}

/// A record to append. Borrowed, so that appending never copies it except into the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [Header<'a>],
}

impl<'a> Record<'a> {
    /// A record with only a value.
    pub fn new(timestamp_ms: i64, value: &'a [u8]) -> Record<'a> {
        Record {
            timestamp_ms,
            key: None,
            value,
            headers: &[],
        }
    }

    pub fn with_key(self, key: &'a [u8]) -> Record<'a> {
        Record {
            key: Some(key),
            ..self
        }
    }

    pub fn with_headers(self, headers: &'a [Header<'a>]) -> Record<'a> {
        Record { headers, ..self }
    }

    /// The record as a format-1 frame archived it (frames are only read now; tests
    /// write them to check that).
    #[cfg(test)]
    pub(crate) fn body(&self) -> RecordBody<'a> {
        RecordBody {
            key: self.key,
            value: self.value,
            headers: self.headers,
        }
    }

    /// An upper bound on the archive length of this record's format-1 body.
    #[cfg(test)]
    pub fn archived_len_bound(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| header_bytes_bound(h.name.len(), h.value.len()))
            .sum();
        body_bytes_bound(self.key.map(<[u8]>::len), self.value.len(), headers)
    }
}

/// Each unsized slice may be preceded by up to 3 bytes of padding to 4-byte alignment;
/// the root itself may need 3 more.
const SLICE_PAD: usize = 3;

/// What one header adds to a record's archive, at most: for sizing a record before it
/// exists (the provenance stamp a producer will add, say).
pub const fn header_bytes_bound(name_len: usize, value_len: usize) -> usize {
    size_of::<ArchivedHeader<'static>>() + name_len + value_len + 2 * SLICE_PAD
}

/// The most bytes the format-1 archive of a record body with a key of `key_len` (if
/// any), a value of `value_len` and headers adding `headers_bytes` can take.
#[cfg(test)]
pub const fn body_bytes_bound(key_len: Option<usize>, value_len: usize, headers_bytes: usize) -> usize {
    let key = match key_len {
        Some(len) => len + SLICE_PAD,
        None => 0,
    };
    size_of::<ArchivedRecordBody<'static>>()
        + SLICE_PAD
        + key
        + value_len
        + SLICE_PAD
        + headers_bytes
        + SLICE_PAD
}

/// How a batch stores one record: 16 bytes next to its value. Its archive is
/// `ArchivedStoredRecord`.
#[derive(Archive, Serialize)]
pub(crate) struct StoredRecord<'a> {
    /// The record's timestamp less the batch's first (0 when `extra` holds the timestamp).
    timestamp_delta: i32,
    #[rkyv(with = MapNiche<InlineAsBox>)]
    extra: Option<&'a Extra<'a>>,
    #[rkyv(with = InlineAsBox)]
    value: &'a [u8],
}

/// What only some records have: a key, headers, or a timestamp too far from the batch's
/// first for an i32 of milliseconds.
#[derive(Archive, Serialize)]
pub(crate) struct Extra<'a> {
    #[rkyv(with = Map<InlineAsBox>)]
    key: Option<&'a [u8]>,
    #[rkyv(with = InlineAsBox)]
    headers: &'a [Header<'a>],
    timestamp_ms: Option<i64>,
}

/// The body of a batch: its records, in offset order.
#[derive(Archive, Serialize)]
pub(crate) struct BatchBody<'a> {
    #[rkyv(with = InlineAsBox)]
    records: &'a [StoredRecord<'a>],
}

// The format's sizes are these archive types' (format.rs imports nothing, so it states
// them; here they are checked).
const _: () = assert!(
    crate::storage::format::BATCH_BODY_MIN_BYTES
        == size_of::<ArchivedStoredRecord<'static>>() + size_of::<ArchivedBatchBody<'static>>()
);
const _: () = assert!(size_of::<ArchivedStoredRecord<'static>>() == 16);
const _: () =
    assert!(crate::storage::format::MIN_PAYLOAD_BYTES as usize == size_of::<ArchivedRecordBody<'static>>());

/// What a batch adds to its records' bytes, at most: the batch header, the body's root,
/// the padding before the records' array and after the body.
pub const BATCH_OVERHEAD_BYTES: usize =
    crate::storage::format::BATCH_HEADER_BYTES + size_of::<ArchivedBatchBody<'static>>() + SLICE_PAD + 7;

/// Where `Extra` may need padding to its 8-byte alignment.
const EXTRA_PAD: usize = 7;

/// The most bytes a record with a key of `key_len` (if any), a value of `value_len` and
/// headers adding `headers_bytes` (a sum of [`header_bytes_bound`]) adds to a batch,
/// wherever its timestamp lies.
pub const fn stored_bytes_bound(key_len: Option<usize>, value_len: usize, headers_bytes: usize) -> usize {
    let key = match key_len {
        Some(len) => len,
        None => 0,
    };
    size_of::<ArchivedStoredRecord<'static>>()
        + value_len
        + EXTRA_PAD
        + size_of::<ArchivedExtra<'static>>()
        + key
        + SLICE_PAD
        + headers_bytes
}

/// Whether `record` needs an `Extra` in a batch whose first timestamp is `first_ms`, and
/// its timestamp delta if it fits.
fn delta_of(record: &Record<'_>, first_ms: i64) -> Option<i32> {
    record
        .timestamp_ms
        .checked_sub(first_ms)
        .and_then(|d| i32::try_from(d).ok())
}

fn needs_extra(record: &Record<'_>, delta: Option<i32>) -> bool {
    record.key.is_some() || !record.headers.is_empty() || delta.is_none()
}

impl Record<'_> {
    /// The most bytes this record adds to a batch whose first timestamp is `first_ms`:
    /// exact up to padding, for deciding where a batch goes before writing it.
    pub fn stored_len_bound(&self, first_ms: i64) -> usize {
        if needs_extra(self, delta_of(self, first_ms)) {
            self.stored_len_max()
        } else {
            size_of::<ArchivedStoredRecord<'static>>() + self.value.len()
        }
    }

    /// The most bytes this record adds to any batch: what record size limits compare.
    pub fn stored_len_max(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| header_bytes_bound(h.name.len(), h.value.len()))
            .sum();
        stored_bytes_bound(self.key.map(<[u8]>::len), self.value.len(), headers)
    }
}

/// Serializes `records` as a batch body whose timestamps are relative to the first
/// record's into the front of `out`; returns its length, or `None` when `out` is too
/// small. Never allocates once `scratch` has warmed up, but for the per-batch lists.
pub(crate) fn write_batch_body(records: &[Record<'_>], out: &mut [u8], scratch: &mut Arena) -> Option<usize> {
    let first_ms = records.first()?.timestamp_ms;
    let extras: Vec<Option<Extra<'_>>> = records
        .iter()
        .map(|record| {
            let delta = delta_of(record, first_ms);
            needs_extra(record, delta).then_some(Extra {
                key: record.key,
                headers: record.headers,
                timestamp_ms: delta.is_none().then_some(record.timestamp_ms),
            })
        })
        .collect();
    let stored: Vec<StoredRecord<'_>> = records
        .iter()
        .zip(&extras)
        .map(|(record, extra)| StoredRecord {
            timestamp_delta: delta_of(record, first_ms).unwrap_or(0),
            extra: extra.as_ref(),
            value: record.value,
        })
        .collect();
    let body = BatchBody { records: &stored };
    rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(&body, Buffer::from(out), scratch.acquire())
        .ok()
        .map(|written| written.len())
}

/// What a batch body holds, from `check_batch_body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyFacts {
    pub min_timestamp_ms: i64,
}

/// Checks that `body` is a well-formed batch body (bytecheck) that agrees with its
/// header: `record_count` records, the first at `first_timestamp_ms`, none later than
/// `max_timestamp_ms` and one at it. Done once per batch when a segment is opened or
/// recovered, never on the read path.
pub(crate) fn check_batch_body(
    body: &[u8],
    header: &crate::storage::format::BatchHeader,
) -> Option<BodyFacts> {
    let archived = rkyv::access::<ArchivedBatchBody<'_>, Failure>(body).ok()?;
    let records = archived.records.get();
    if records.len() != header.record_count as usize {
        return None;
    }
    let (mut min, mut max) = (i64::MAX, i64::MIN);
    for (i, record) in records.iter().enumerate() {
        let overridden = record.extra.as_ref().and_then(|e| e.timestamp_ms.as_ref());
        if overridden.is_some() && record.timestamp_delta.to_native() != 0 {
            return None;
        }
        let ts = stored_timestamp(record, header.first_timestamp_ms);
        if i == 0 && ts != header.first_timestamp_ms {
            return None;
        }
        min = min.min(ts);
        max = max.max(ts);
    }
    (max == header.max_timestamp_ms).then_some(BodyFacts {
        min_timestamp_ms: min,
    })
}

/// The records of a batch body.
///
/// # Safety
/// `body` must have passed `check_batch_body` and stay unchanged for `'a`.
#[inline]
pub(crate) unsafe fn batch_records<'a>(body: &'a [u8]) -> &'a [ArchivedStoredRecord<'a>] {
    // SAFETY: the caller guarantees the body was checked when its segment was opened or
    // written, and segments are append-only, so it is still valid.
    unsafe { rkyv::access_unchecked::<ArchivedBatchBody<'a>>(body) }
        .records
        .get()
}

/// The timestamp of a stored record in a batch whose first timestamp is `first_ms`.
#[inline]
pub(crate) fn stored_timestamp(record: &ArchivedStoredRecord<'_>, first_ms: i64) -> i64 {
    match record.extra.as_ref().and_then(|e| e.timestamp_ms.as_ref()) {
        Some(ts) => ts.to_native(),
        None => first_ms.wrapping_add(i64::from(record.timestamp_delta.to_native())),
    }
}

/// A unit of a range read by batches: a stored batch, as its bytes lie in the segment
/// (it may begin before the range: a reader skips those records), or a record of a
/// format-1 segment, which has no batches to hand out.
#[derive(Debug, Clone, Copy)]
pub enum Stored<'a> {
    Batch {
        bytes: &'a [u8],
        base_offset: u64,
        record_count: u32,
    },
    Frame(RecordView<'a>),
}

impl Stored<'_> {
    /// The offset after its last record.
    pub fn next_offset(&self) -> u64 {
        match self {
            Stored::Batch {
                base_offset,
                record_count,
                ..
            } => base_offset + u64::from(*record_count),
            Stored::Frame(view) => view.offset() + 1,
        }
    }
}

/// The archived part of a format-1 record frame. Its archive is `ArchivedRecordBody`;
/// this build reads it, and builds one only in tests.
#[derive(Archive, Serialize)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct RecordBody<'a> {
    #[rkyv(with = Map<InlineAsBox>)]
    key: Option<&'a [u8]>,
    #[rkyv(with = InlineAsBox)]
    value: &'a [u8],
    #[rkyv(with = InlineAsBox)]
    headers: &'a [Header<'a>],
}

/// The smallest archive a record body can have: its root with every field empty.
pub const RECORD_BODY_ARCHIVE_MIN_BYTES: usize = size_of::<ArchivedRecordBody<'static>>();

/// Serializes a format-1 `body` into the front of `out` and returns the archive length,
/// or `None` when `out` is too small.
#[cfg(test)]
pub(crate) fn write_body(body: &RecordBody<'_>, out: &mut [u8], scratch: &mut Arena) -> Option<usize> {
    rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(body, Buffer::from(out), scratch.acquire())
        .ok()
        .map(|written| written.len())
}

/// Checks that `payload` is a well-formed record archive (bytecheck). Done once per
/// frame when a segment is opened or recovered, never on the read path.
pub(crate) fn validate_body(payload: &[u8]) -> bool {
    rkyv::access::<ArchivedRecordBody<'_>, Failure>(payload).is_ok()
}

/// A record read from the log, borrowed straight from the mapped segment.
#[derive(Clone, Copy)]
pub struct RecordView<'a> {
    offset: u64,
    timestamp_ms: i64,
    body: Body<'a>,
}

#[derive(Clone, Copy)]
enum Body<'a> {
    Batched(&'a ArchivedStoredRecord<'a>),
    Frame(&'a ArchivedRecordBody<'a>),
}

impl<'a> RecordView<'a> {
    /// Makes a view over a format-1 frame's payload.
    ///
    /// # Safety
    /// `payload` must have passed `validate_body` and stay unchanged for `'a`.
    #[inline]
    pub(crate) unsafe fn new(offset: u64, timestamp_ms: i64, payload: &'a [u8]) -> RecordView<'a> {
        // SAFETY: the caller guarantees the payload was validated when its segment was
        // opened or written, and segments are append-only, so it is still valid.
        let body = unsafe { rkyv::access_unchecked::<ArchivedRecordBody<'a>>(payload) };
        RecordView {
            offset,
            timestamp_ms,
            body: Body::Frame(body),
        }
    }

    /// Makes a view of a record of a batch whose first timestamp is `first_ms`.
    #[inline]
    pub(crate) fn batched(
        offset: u64,
        first_ms: i64,
        record: &'a ArchivedStoredRecord<'a>,
    ) -> RecordView<'a> {
        RecordView {
            offset,
            timestamp_ms: stored_timestamp(record, first_ms),
            body: Body::Batched(record),
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        match self.body {
            Body::Batched(record) => record.extra.as_ref()?.key.as_ref().map(|k| k.get()),
            Body::Frame(body) => body.key.as_ref().map(|k| k.get()),
        }
    }

    #[inline]
    pub fn value(&self) -> &'a [u8] {
        match self.body {
            Body::Batched(record) => record.value.get(),
            Body::Frame(body) => body.value.get(),
        }
    }

    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + 'a {
        let headers: &'a [ArchivedHeader<'a>] = match self.body {
            Body::Batched(record) => record.extra.as_ref().map_or(&[], |e| e.headers.get()),
            Body::Frame(body) => body.headers.get(),
        };
        headers.iter().map(|h| (h.name.get(), h.value.get()))
    }
}

impl std::fmt::Debug for RecordView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordView")
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("key", &self.key())
            .field("value_len", &self.value().len())
            .field("headers", &self.headers().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Archives a record into an 8-aligned buffer, as a segment's frames are.
    fn round_trip(record: &Record<'_>) -> (usize, rkyv::util::AlignedVec<8>) {
        let mut out = rkyv::util::AlignedVec::<8>::with_capacity(1 << 16);
        out.resize(1 << 16, 0);
        let mut scratch = Arena::new();
        let len = write_body(&record.body(), &mut out, &mut scratch).expect("fits");
        out.resize(len, 0);
        (len, out)
    }

    #[test]
    fn empty_record_is_the_minimum_archive() {
        let (len, bytes) = round_trip(&Record::new(0, b""));
        assert_eq!(len, RECORD_BODY_ARCHIVE_MIN_BYTES);
        assert!(validate_body(&bytes));
    }

    #[test]
    fn too_small_output_is_refused_not_overrun() {
        let mut out = [0u8; 16];
        let value = [1u8; 100];
        let record = Record::new(0, &value);
        assert_eq!(write_body(&record.body(), &mut out, &mut Arena::new()), None);
    }

    /// A batch of `records` as the writer lays it out: header, body, CRC, padding.
    fn batch(records: &[Record<'_>]) -> (rkyv::util::AlignedVec<8>, crate::storage::format::BatchHeader) {
        use crate::storage::format::{BATCH_HEADER_BYTES, BatchHeader, seal_batch};
        let bound = crate::storage::writer::batch_bytes_bound(records);
        let mut out = rkyv::util::AlignedVec::<8>::with_capacity(bound);
        out.resize(bound, 0);
        let body = write_batch_body(records, &mut out[BATCH_HEADER_BYTES..], &mut Arena::new())
            .expect("fits its bound");
        let header = BatchHeader {
            batch_len: (BATCH_HEADER_BYTES + body) as u32,
            base_offset: 7,
            first_timestamp_ms: records[0].timestamp_ms,
            max_timestamp_ms: records.iter().map(|r| r.timestamp_ms).max().unwrap(),
            record_count: records.len() as u32,
            leader_epoch: 0,
            flags: 0,
        };
        assert!(
            header.batch_bytes() <= bound,
            "{} over its bound {bound}",
            header.batch_bytes()
        );
        out.resize(header.batch_bytes(), 0);
        seal_batch(&mut out, &header);
        (out, header)
    }

    #[test]
    fn a_batch_of_100_byte_records_takes_at_most_120_bytes_a_record() {
        let value = [42u8; 100];
        let records: Vec<Record<'_>> = (0..1000)
            .map(|i| Record::new(1_700_000_000_000 + i, &value))
            .collect();
        let (bytes, header) = batch(&records);
        assert_eq!(
            bytes.len(),
            116_056,
            "16 bytes a record beside its value, 56 a batch"
        );
        assert!(bytes.len() <= 120 * records.len());
        assert!(check_batch_body(header.body(&bytes), &header).is_some());
    }

    #[test]
    fn a_body_that_disagrees_with_its_header_is_refused() {
        let value = [1u8; 10];
        let records = [Record::new(5, &value), Record::new(9, &value)];
        let (bytes, header) = batch(&records);
        let body = header.body(&bytes);
        assert_eq!(
            check_batch_body(body, &header),
            Some(BodyFacts { min_timestamp_ms: 5 })
        );
        for wrong in [
            BatchHeader {
                record_count: 3,
                ..header
            },
            BatchHeader {
                max_timestamp_ms: 10,
                ..header
            },
            BatchHeader {
                max_timestamp_ms: 5,
                ..header
            },
            BatchHeader {
                first_timestamp_ms: 4,
                ..header
            },
        ] {
            assert_eq!(check_batch_body(body, &wrong), None, "{wrong:?}");
        }
        // Garbage in place of the body.
        let mut junk = rkyv::util::AlignedVec::<8>::new();
        junk.extend_from_slice(&[0xffu8; 64]);
        assert_eq!(check_batch_body(&junk, &header), None);
    }

    use crate::storage::format::BatchHeader;

    proptest! {
        #[test]
        fn a_batch_round_trips_within_its_bound(
            records in proptest::collection::vec((
                any::<i64>(),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                proptest::collection::vec(any::<u8>(), 0..200),
                proptest::collection::vec(("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..8)), 0..3),
                any::<bool>(),
            ), 1..20),
        ) {
            // Timestamps near each other (deltas) or anywhere at all (stored whole).
            let first = records[0].0;
            let timestamps: Vec<i64> = records
                .iter()
                .map(|(ts, _, _, _, near)| if *near { first.wrapping_add(ts % 1_000_000) } else { *ts })
                .collect();
            let headers: Vec<Vec<Header<'_>>> = records
                .iter()
                .map(|(_, _, _, h, _)| h.iter().map(|(n, v)| Header { name: n, value: v }).collect())
                .collect();
            let input: Vec<Record<'_>> = records
                .iter()
                .zip(&headers)
                .zip(&timestamps)
                .map(|(((_, key, value, _, _), headers), ts)| Record {
                    timestamp_ms: *ts,
                    key: key.as_deref(),
                    value,
                    headers,
                })
                .collect();
            let (bytes, header) = batch(&input);
            let facts = check_batch_body(header.body(&bytes), &header);
            prop_assert_eq!(facts, Some(BodyFacts { min_timestamp_ms: *timestamps.iter().min().unwrap() }));
            // SAFETY: checked just above; `bytes` outlives the views.
            let stored = unsafe { batch_records(header.body(&bytes)) };
            prop_assert_eq!(stored.len(), input.len());
            for (i, (record, want)) in stored.iter().zip(&input).enumerate() {
                let view = RecordView::batched(7 + i as u64, header.first_timestamp_ms, record);
                prop_assert_eq!(view.offset(), 7 + i as u64);
                prop_assert_eq!(view.timestamp_ms(), want.timestamp_ms);
                prop_assert_eq!(view.key(), want.key);
                prop_assert_eq!(view.value(), want.value);
                let got: Vec<(&str, &[u8])> = view.headers().collect();
                let wanted: Vec<(&str, &[u8])> = want.headers.iter().map(|h| (h.name, h.value)).collect();
                prop_assert_eq!(got, wanted);
                prop_assert!(want.stored_len_bound(header.first_timestamp_ms) <= want.stored_len_max());
            }
        }

        #[test]
        fn archive_round_trips_within_its_bound(
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            value in proptest::collection::vec(any::<u8>(), 0..300),
            names in proptest::collection::vec("[a-z]{0,12}", 0..5),
            hvalue in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let headers: Vec<Header<'_>> =
                names.iter().map(|n| Header { name: n, value: &hvalue }).collect();
            let record = Record { timestamp_ms: 5, key: key.as_deref(), value: &value, headers: &headers };
            let (len, bytes) = round_trip(&record);
            prop_assert!(len <= record.archived_len_bound());
            prop_assert!(validate_body(&bytes));
            // SAFETY: validated just above; `bytes` outlives the view.
            let view = unsafe { RecordView::new(1, 5, &bytes) };
            prop_assert_eq!(view.key(), key.as_deref());
            prop_assert_eq!(view.value(), &value[..]);
            let got: Vec<(&str, &[u8])> = view.headers().collect();
            let want: Vec<(&str, &[u8])> = headers.iter().map(|h| (h.name, h.value)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
