//! The record model: what a producer hands in (`Record`), what is archived (`RecordBody`)
//! and the zero-copy view a reader gets back (`RecordView`).
//!
//! The offset and timestamp live in the frame header (see `format`), so the log can
//! index and seek without touching the archive; key, value and headers live in an rkyv
//! archive that readers use in place, straight from the mapped segment.

use rkyv::rancor::Failure;
use rkyv::ser::allocator::Arena;
use rkyv::ser::writer::Buffer;
use rkyv::with::{InlineAsBox, Map};
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

    pub(crate) fn body(&self) -> RecordBody<'a> {
        RecordBody {
            key: self.key,
            value: self.value,
            headers: self.headers,
        }
    }

    /// An upper bound on the archive length of this record's body, so the log can
    /// decide where a batch goes before writing it. Checked against the real length by
    /// a debug assertion on every append and by a property test.
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

/// The most bytes the archive of a record body with a key of `key_len` (if any), a
/// value of `value_len` and headers adding `headers_bytes` (a sum of
/// [`header_bytes_bound`]) can take.
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

/// The archived part of a record. Its archive is `ArchivedRecordBody`.
#[derive(Archive, Serialize)]
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

/// Serializes `body` into the front of `out` and returns the archive length, or `None`
/// when `out` is too small. Never allocates once `scratch` has warmed up.
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
    body: &'a ArchivedRecordBody<'a>,
}

impl<'a> RecordView<'a> {
    /// Makes a view over a payload.
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
            body,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        self.body.key.as_ref().map(|k| k.get())
    }

    #[inline]
    pub fn value(&self) -> &'a [u8] {
        self.body.value.get()
    }

    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + 'a {
        self.body
            .headers
            .get()
            .iter()
            .map(|h| (h.name.get(), h.value.get()))
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

    proptest! {
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
