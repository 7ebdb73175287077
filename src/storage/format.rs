//! The bytes on disk: segment header, marker slots, batches (format 2) and record frames
//! (format 1), byte by byte.
//!
//! Everything here is sans-io: functions take and return bytes, so the format can be
//! tested and fuzzed without a file system. All integers are little-endian.
//!
//! # Segment file
//! A segment is one preallocated file of `capacity` bytes named after its base offset.
//!
//! ```text
//! 0      SEGMENT_HEADER_BYTES (4096)                       data_end            capacity
//! | header | batch | batch | ... | batch | zeros (preallocated, never written yet) |
//! ```
//! Batches start at `SEGMENT_HEADER_BYTES` so that data pages never share a page with
//! the header, which is rewritten after syncs. A segment holds units of one format, named
//! by its header: batches (format 2, written by this build) or one frame per record
//! (format 1, written before; still read, never appended to).
//!
//! # Segment header (bytes 0..4096)
//! ```text
//! off  size  field
//!   0     8  magic            b"FLOWDSEG"
//!   8     4  format_version   u32: 2 (batches), or 1 (record frames, read only)
//!  12     4  header_bytes     u32, 4096
//!  16     8  base_offset      u64, offset of the first record in this segment
//!  24     8  capacity         u64, the file's preallocated size in bytes
//!  32     8  created_ms       i64, wall clock at creation
//!  40     4  reserved         zero
//!  44     4  crc32c           over bytes 0..44
//!  48    48  marker slot 0
//!  96    48  marker slot 1
//! 144  3952  zero
//! ```
//!
//! # Marker slot (48 bytes, two of them, written alternately)
//! A slot records how far the segment is known to be synced. It is written (without an
//! fsync of its own) after every successful fdatasync, so it becomes durable with the
//! next one: on disk it lags the truth by at most one sync, and never runs ahead of it.
//! Two slots mean a torn slot write always leaves the other, older slot intact.
//! ```text
//! off  size  field
//!   0     8  seq              u64, 0 = never written; the valid slot with the highest seq wins
//!   8     8  data_end         u64, every frame in [4096, data_end) was synced
//!  16     8  next_offset      u64, offset after the last frame below data_end
//!  24     8  max_timestamp_ms i64, largest record timestamp below data_end
//!  32     4  flags            u32, bit 0 = sealed (the segment is closed; data_end is its end)
//!  36     4  reserved         zero
//!  40     4  crc32c           over bytes 0..40 of the slot
//!  44     4  reserved         zero
//! ```
//!
//! # Batch (format 2; 8-byte aligned, occupies `align8(batch_len)` bytes)
//! One append is one batch: its records have consecutive offsets from `base_offset`, and
//! one chain of CRCs covers all of it (the header's CRC covers the body's), so a batch
//! is on disk whole or, torn by a crash, is cut whole by recovery. The body's CRC sits in
//! the header so that the fields the server stamps (base offset, epoch, time) cost a CRC
//! of 44 bytes, never of the whole batch again.
//! ```text
//! off  size  field
//!   0     4  header_crc         crc32c over bytes 4..48: the rest of the header
//!   4     4  batch_len          u32, header and body, padding excluded
//!   8     8  base_offset        u64, the offset of the batch's first record
//!  16     8  first_timestamp_ms i64, the first record's timestamp; the deltas' base
//!  24     8  max_timestamp_ms   i64, the largest record timestamp in the batch
//!  32     4  record_count       u32, >= 1
//!  36     4  leader_epoch       u32, the epoch of the leader that wrote it (0: unreplicated)
//!  40     1  batch_version      u8, 2
//!  41     1  reserved           zero
//!  42     2  flags              u16, bit 0: the producer asks the server to stamp the
//!                               time it takes the batch (it sent none; the server
//!                               clears the bit as it stamps, so a stored batch never
//!                               has it); a reader refuses bits it does not know
//!  44     4  body_crc           crc32c over bytes 48..batch_len: the body
//!  48     .  body               rkyv archive of the records (below), batch_len - 48 bytes
//!  ...  0-7  padding            zero, up to the next multiple of 8
//! ```
//! The body is the rkyv archive (32-bit relative pointers, little-endian, aligned) of
//! `BatchBody`; rkyv puts out-of-line data first and the root last:
//! ```text
//! values, keys and headers of the records, in record order (each aligned for its type)
//! records    record_count x 16 bytes, 4-aligned, one per record:
//!              0  4  timestamp_delta  i32, timestamp - first_timestamp_ms
//!              4  4  extra            relative pointer to the record's `Extra`; 1 = none
//!              8  4  value            relative pointer to its value bytes
//!             12  4  value_len        u32
//! root       8 bytes, the last of the body: relative pointer to `records`, record_count
//! ```
//! `Extra` (8-aligned, only for a record with a key, headers, or a timestamp further than
//! an i32 of milliseconds from the batch's first): key (an rkyv `Option` of a byte slice),
//! headers (a slice of name/value pairs) and an `Option<i64>` timestamp that, when
//! present, is the record's timestamp (its delta is then 0). A keyless 100-byte record
//! without headers thus takes 116 bytes, plus its share of the 56 bytes of header and root.
//! The exact layout of these rkyv types is checked by bytecheck when a segment is opened
//! and by the tests in `record`.
//!
//! # Record frame (format 1; 8-byte aligned, occupies `align8(32 + len)` bytes)
//! ```text
//! off  size  field
//!   0     4  crc32c           over bytes 4..32+len: everything after itself
//!   4     4  len              u32, payload length in bytes, >= MIN_PAYLOAD_BYTES
//!   8     8  offset           u64, the record's offset in its partition
//!  16     8  timestamp_ms     i64
//!  24     4  flags            u32, bit 0 = last frame of an atomic batch
//!  28     4  reserved         zero
//!  32   len  payload          rkyv archive of `RecordBody` (key, value, headers)
//!  ...  0-7  padding          zero, up to the next multiple of 8
//! ```
//! A zero-filled region never validates: its `len` is 0, below `MIN_PAYLOAD_BYTES`.

pub const SEGMENT_MAGIC: [u8; 8] = *b"FLOWDSEG";
/// The format new segments are written in.
pub const FORMAT_VERSION: u32 = 2;
/// The format of segments written before batches, still read.
pub const FORMAT_VERSION_FRAMES: u32 = 1;
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
pub const SEGMENT_STATIC_HEADER_BYTES: usize = 48;
pub const MARKER_SLOT_BYTES: usize = 48;
pub const MARKER_SLOT_POSITIONS: [usize; 2] = [48, 96];
pub const FRAME_HEADER_BYTES: usize = 32;
pub const FRAME_ALIGN: usize = 8;
/// The smallest rkyv archive of a format-1 record body (its root, every field empty); a
/// frame claiming less is damaged. `record` checks that it matches the archive type.
pub const MIN_PAYLOAD_BYTES: u32 = 28;
/// The smallest batch body: one empty record (16 bytes) and the root (8). `record`
/// checks that it matches the archive types.
pub const BATCH_BODY_MIN_BYTES: usize = 24;
/// The smallest batch: its header and the body of one empty record.
pub const MIN_BATCH_BYTES: u32 = (BATCH_HEADER_BYTES + BATCH_BODY_MIN_BYTES) as u32;

pub const FRAME_FLAG_BATCH_END: u32 = 1;
pub const BATCH_HEADER_BYTES: usize = 48;
pub const BATCH_VERSION: u8 = 2;
/// The producer leaves the timestamps to the server, which stamps the time it takes the
/// batch as its first and max timestamp (every delta is 0) and clears the flag.
pub const BATCH_FLAG_SERVER_TIME: u16 = 1;
/// Batch flags this build knows.
pub const BATCH_FLAGS_KNOWN: u16 = BATCH_FLAG_SERVER_TIME;
pub const SLOT_FLAG_SEALED: u32 = 1;

const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));
const _: () = assert!((SEGMENT_HEADER_BYTES as usize).is_multiple_of(FRAME_ALIGN));
const _: () = assert!(MARKER_SLOT_POSITIONS[1] + MARKER_SLOT_BYTES <= SEGMENT_HEADER_BYTES as usize);
const _: () = assert!(MIN_PAYLOAD_BYTES > 0);
const _: () = assert!(BATCH_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));

/// Rounds a length up to the frame alignment.
pub const fn align_frame(len: usize) -> usize {
    (len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Bytes a frame with a payload of `payload_len` bytes occupies in a segment.
pub const fn frame_bytes(payload_len: usize) -> usize {
    align_frame(FRAME_HEADER_BYTES + payload_len)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8-byte slice"))
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8-byte slice"))
}

/// The fixed part of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `FORMAT_VERSION` (batches) or `FORMAT_VERSION_FRAMES` (one frame per record).
    pub format_version: u32,
    pub base_offset: u64,
    pub capacity: u64,
    pub created_ms: i64,
}

/// Why a segment header did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDefect {
    /// Fewer bytes than a header: the file was cut short.
    Truncated,
    /// Every header byte is zero: the file was created but its header never reached disk.
    Zeroed,
    BadMagic,
    BadCrc,
    /// A well-formed header of a format this build does not read.
    UnsupportedVersion(u32),
    /// The header's fields contradict each other (size fields out of range).
    BadFields,
}

impl std::fmt::Display for HeaderDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderDefect::Truncated => write!(f, "the file is shorter than a segment header"),
            HeaderDefect::Zeroed => write!(f, "the segment header is all zeros"),
            HeaderDefect::BadMagic => write!(f, "the file does not start with the segment magic"),
            HeaderDefect::BadCrc => write!(f, "the segment header fails its CRC check"),
            HeaderDefect::UnsupportedVersion(v) => write!(
                f,
                "format version {v} is not supported (this build reads versions {FORMAT_VERSION_FRAMES} and {FORMAT_VERSION}): open it with the flowd that wrote it"
            ),
            HeaderDefect::BadFields => write!(f, "the segment header's size fields are invalid"),
        }
    }
}

impl SegmentHeader {
    /// Writes the fixed header into `out[0..48]`. Marker slots are left untouched.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..SEGMENT_STATIC_HEADER_BYTES];
        out.fill(0);
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        out[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..44]);
        out[44..48].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderDefect> {
        if bytes.len() < SEGMENT_HEADER_BYTES as usize {
            return Err(HeaderDefect::Truncated);
        }
        let fixed = &bytes[..SEGMENT_STATIC_HEADER_BYTES];
        if fixed.iter().all(|b| *b == 0) {
            return Err(HeaderDefect::Zeroed);
        }
        if fixed[0..8] != SEGMENT_MAGIC {
            return Err(HeaderDefect::BadMagic);
        }
        if crc32c::crc32c(&fixed[0..44]) != u32_at(fixed, 44) {
            return Err(HeaderDefect::BadCrc);
        }
        let version = u32_at(fixed, 8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_FRAMES {
            return Err(HeaderDefect::UnsupportedVersion(version));
        }
        let header = SegmentHeader {
            format_version: version,
            base_offset: u64_at(fixed, 16),
            capacity: u64_at(fixed, 24),
            created_ms: i64_at(fixed, 32),
        };
        let header_bytes = u64::from(u32_at(fixed, 12));
        if header_bytes != SEGMENT_HEADER_BYTES
            || header.capacity <= SEGMENT_HEADER_BYTES
            || header.capacity > u64::from(u32::MAX)
        {
            return Err(HeaderDefect::BadFields);
        }
        Ok(header)
    }
}

/// One marker slot: how far a segment is known to be synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerSlot {
    pub seq: u64,
    pub data_end: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    pub sealed: bool,
}

impl MarkerSlot {
    pub fn encode(&self) -> [u8; MARKER_SLOT_BYTES] {
        let mut out = [0u8; MARKER_SLOT_BYTES];
        out[0..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.data_end.to_le_bytes());
        out[16..24].copy_from_slice(&self.next_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        let flags = if self.sealed { SLOT_FLAG_SEALED } else { 0 };
        out[32..36].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..40]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a slot; `None` for a slot never written or one whose write was torn.
    pub fn decode(bytes: &[u8]) -> Option<MarkerSlot> {
        let bytes = &bytes[..MARKER_SLOT_BYTES];
        let seq = u64_at(bytes, 0);
        if seq == 0 || crc32c::crc32c(&bytes[0..40]) != u32_at(bytes, 40) {
            return None;
        }
        Some(MarkerSlot {
            seq,
            data_end: u64_at(bytes, 8),
            next_offset: u64_at(bytes, 16),
            max_timestamp_ms: i64_at(bytes, 24),
            sealed: u32_at(bytes, 32) & SLOT_FLAG_SEALED != 0,
        })
    }

    /// The newest valid slot of a header, if any slot was ever written intact.
    pub fn newest(header: &[u8]) -> Option<MarkerSlot> {
        MARKER_SLOT_POSITIONS
            .iter()
            .filter_map(|at| MarkerSlot::decode(&header[*at..]))
            .max_by_key(|slot| slot.seq)
    }

    /// Where the slot with this sequence number goes: the two slots alternate.
    pub fn position(seq: u64) -> usize {
        MARKER_SLOT_POSITIONS[(seq % 2) as usize]
    }
}

/// The decoded header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub flags: u32,
}

impl FrameHeader {
    pub fn frame_bytes(&self) -> usize {
        frame_bytes(self.payload_len as usize)
    }

    pub fn is_batch_end(&self) -> bool {
        self.flags & FRAME_FLAG_BATCH_END != 0
    }

    /// Reads the header fields without checking anything: for frames already validated.
    #[inline]
    pub fn read_trusted(frame: &[u8]) -> FrameHeader {
        FrameHeader {
            payload_len: u32_at(frame, 4),
            offset: u64_at(frame, 8),
            timestamp_ms: i64_at(frame, 16),
            flags: u32_at(frame, 24),
        }
    }
}

/// Finishes a frame whose payload is already in `frame[32..32+payload_len]`: writes the
/// header, the CRC and zero padding. `frame` must span the whole aligned frame.
pub fn seal_frame(frame: &mut [u8], header: &FrameHeader) {
    let payload_end = FRAME_HEADER_BYTES + header.payload_len as usize;
    debug_assert_eq!(frame.len(), header.frame_bytes());
    frame[4..8].copy_from_slice(&header.payload_len.to_le_bytes());
    frame[8..16].copy_from_slice(&header.offset.to_le_bytes());
    frame[16..24].copy_from_slice(&header.timestamp_ms.to_le_bytes());
    frame[24..28].copy_from_slice(&header.flags.to_le_bytes());
    frame[28..32].fill(0);
    frame[payload_end..].fill(0);
    let crc = crc32c::crc32c(&frame[4..payload_end]);
    frame[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at a position are not the frame expected there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDefect {
    /// The frame would run past the end of the readable bytes.
    Truncated,
    /// The length field is zero: unwritten (zero-filled) space, or a frame cut short.
    Empty,
    /// The length is below the smallest possible payload.
    BadLength,
    BadCrc,
    /// The CRC holds but the frame is not the next record (wrong offset or reserved bits).
    WrongOffset {
        found: u64,
    },
    BadReserved,
    /// The CRC holds but the payload is not a valid record archive.
    BadPayload,
    /// The CRC holds but the batch is of a version this build does not read.
    BadVersion(u8),
}

impl std::fmt::Display for FrameDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameDefect::Truncated => write!(f, "it runs past the end of the file"),
            FrameDefect::Empty => write!(f, "nothing is there (zero length)"),
            FrameDefect::BadLength => write!(f, "its length or record count is invalid"),
            FrameDefect::BadCrc => write!(f, "it fails its CRC check"),
            FrameDefect::WrongOffset { found } => {
                write!(f, "it holds offset {found} where another was expected")
            }
            FrameDefect::BadReserved => write!(f, "its reserved or unknown flag bits are set"),
            FrameDefect::BadPayload => write!(
                f,
                "its records are not a valid archive, or disagree with its header"
            ),
            FrameDefect::BadVersion(v) => write!(
                f,
                "it is a batch of version {v}; this build reads version {BATCH_VERSION}: open it with the flowd that wrote it"
            ),
        }
    }
}

/// Checks the frame at the start of `bytes`, which must be the record `expected_offset`.
/// Checks length, CRC, offset and reserved bits; the payload archive is checked by the
/// caller (see `record::validate_body`).
pub fn check_frame(bytes: &[u8], expected_offset: u64) -> Result<FrameHeader, FrameDefect> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return if bytes.iter().all(|b| *b == 0) {
            Err(FrameDefect::Empty)
        } else {
            Err(FrameDefect::Truncated)
        };
    }
    let header = FrameHeader::read_trusted(bytes);
    if header.payload_len == 0 {
        return Err(FrameDefect::Empty);
    }
    if header.payload_len < MIN_PAYLOAD_BYTES {
        return Err(FrameDefect::BadLength);
    }
    // The whole aligned frame must be there, padding included: a frame is only ever
    // considered as a unit.
    if header.frame_bytes() > bytes.len() {
        return Err(FrameDefect::Truncated);
    }
    let payload_end = FRAME_HEADER_BYTES + header.payload_len as usize;
    if crc32c::crc32c(&bytes[4..payload_end]) != u32_at(bytes, 0) {
        return Err(FrameDefect::BadCrc);
    }
    if header.offset != expected_offset {
        return Err(FrameDefect::WrongOffset { found: header.offset });
    }
    if header.flags & !FRAME_FLAG_BATCH_END != 0 || u32_at(bytes, 28) != 0 {
        return Err(FrameDefect::BadReserved);
    }
    Ok(header)
}

/// Checks the frame at the start of `bytes` again, whatever record it holds (its CRC
/// covers its offset): what a read does before it trusts a frame checked before.
pub fn recheck_frame(bytes: &[u8]) -> Result<FrameHeader, FrameDefect> {
    let offset = match bytes.len() >= FRAME_HEADER_BYTES {
        true => FrameHeader::read_trusted(bytes).offset,
        false => 0,
    };
    check_frame(bytes, offset)
}

/// The decoded header of one batch (format 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Header and body, padding excluded.
    pub batch_len: u32,
    pub base_offset: u64,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub record_count: u32,
    pub leader_epoch: u32,
    pub flags: u16,
}

impl BatchHeader {
    /// Bytes the batch occupies in its segment, padding included.
    pub fn batch_bytes(&self) -> usize {
        align_frame(self.batch_len as usize)
    }

    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Reads the header fields without checking anything: for batches already validated.
    #[inline]
    pub fn read_trusted(batch: &[u8]) -> BatchHeader {
        BatchHeader {
            batch_len: u32_at(batch, 4),
            base_offset: u64_at(batch, 8),
            first_timestamp_ms: i64_at(batch, 16),
            max_timestamp_ms: i64_at(batch, 24),
            record_count: u32_at(batch, 32),
            leader_epoch: u32_at(batch, 36),
            flags: u16::from_le_bytes([batch[42], batch[43]]),
        }
    }

    /// The body of the batch at the start of `batch`.
    #[inline]
    pub fn body<'a>(&self, batch: &'a [u8]) -> &'a [u8] {
        &batch[BATCH_HEADER_BYTES..self.batch_len as usize]
    }
}

/// Finishes a batch whose body is already in `batch[48..batch_len]`: writes the header,
/// both CRCs and zero padding. `batch` must span the whole aligned batch.
pub fn seal_batch(batch: &mut [u8], header: &BatchHeader) {
    let end = header.batch_len as usize;
    debug_assert_eq!(batch.len(), header.batch_bytes());
    let body_crc = crc32c::crc32c(&batch[BATCH_HEADER_BYTES..end]);
    batch[end..].fill(0);
    seal_batch_header(&mut batch[..BATCH_HEADER_BYTES], header, body_crc);
}

/// Writes the header of a batch whose body's CRC is `body_crc`, and its CRC: what
/// stamping a checked batch rewrites.
pub fn seal_batch_header(head: &mut [u8], header: &BatchHeader, body_crc: u32) {
    let batch = &mut head[..BATCH_HEADER_BYTES];
    batch[4..8].copy_from_slice(&header.batch_len.to_le_bytes());
    batch[8..16].copy_from_slice(&header.base_offset.to_le_bytes());
    batch[16..24].copy_from_slice(&header.first_timestamp_ms.to_le_bytes());
    batch[24..32].copy_from_slice(&header.max_timestamp_ms.to_le_bytes());
    batch[32..36].copy_from_slice(&header.record_count.to_le_bytes());
    batch[36..40].copy_from_slice(&header.leader_epoch.to_le_bytes());
    batch[40] = BATCH_VERSION;
    batch[41] = 0;
    batch[42..44].copy_from_slice(&header.flags.to_le_bytes());
    batch[44..48].copy_from_slice(&body_crc.to_le_bytes());
    let crc = crc32c::crc32c(&batch[4..BATCH_HEADER_BYTES]);
    batch[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Checks the batch at the start of `bytes`, which must begin with the record
/// `expected_offset`: length, CRC, offset, version and reserved bits. The body archive
/// is checked by the caller (see `record::check_batch_body`).
pub fn check_batch(bytes: &[u8], expected_offset: u64) -> Result<BatchHeader, FrameDefect> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return if bytes.iter().all(|b| *b == 0) {
            Err(FrameDefect::Empty)
        } else {
            Err(FrameDefect::Truncated)
        };
    }
    let header = BatchHeader::read_trusted(bytes);
    if header.batch_len == 0 {
        return Err(FrameDefect::Empty);
    }
    if header.batch_len < MIN_BATCH_BYTES || header.record_count == 0 {
        return Err(FrameDefect::BadLength);
    }
    // The whole aligned batch must be there, padding included.
    if header.batch_bytes() > bytes.len() {
        return Err(FrameDefect::Truncated);
    }
    let end = header.batch_len as usize;
    if crc32c::crc32c(&bytes[4..BATCH_HEADER_BYTES]) != u32_at(bytes, 0)
        || crc32c::crc32c(&bytes[BATCH_HEADER_BYTES..end]) != u32_at(bytes, 44)
    {
        return Err(FrameDefect::BadCrc);
    }
    if header.base_offset != expected_offset {
        return Err(FrameDefect::WrongOffset {
            found: header.base_offset,
        });
    }
    if bytes[40] != BATCH_VERSION {
        return Err(FrameDefect::BadVersion(bytes[40]));
    }
    if bytes[41] != 0 || header.flags & !BATCH_FLAGS_KNOWN != 0 {
        return Err(FrameDefect::BadReserved);
    }
    Ok(header)
}

/// Checks the header of the batch at the start of `bytes` again (its own CRC, which
/// covers its base offset, record count and length), not its body: what a read that
/// walks past a batch needs of it.
pub fn recheck_batch_header(bytes: &[u8]) -> Result<BatchHeader, FrameDefect> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(FrameDefect::Truncated);
    }
    if crc32c::crc32c(&bytes[4..BATCH_HEADER_BYTES]) != u32_at(bytes, 0) {
        return Err(FrameDefect::BadCrc);
    }
    let header = BatchHeader::read_trusted(bytes);
    if header.batch_len < MIN_BATCH_BYTES || header.record_count == 0 {
        return Err(FrameDefect::BadLength);
    }
    if header.batch_bytes() > bytes.len() {
        return Err(FrameDefect::Truncated);
    }
    Ok(header)
}

/// Checks the batch at the start of `bytes` again, whatever records it holds (its
/// header's CRC covers its base offset): what a read does before it trusts a batch
/// checked before. The body's archive is not checked again: its CRC is the one of a
/// body that was.
pub fn recheck_batch(bytes: &[u8]) -> Result<BatchHeader, FrameDefect> {
    let base_offset = match bytes.len() >= BATCH_HEADER_BYTES {
        true => BatchHeader::read_trusted(bytes).base_offset,
        false => 0,
    };
    check_batch(bytes, base_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            format_version: FORMAT_VERSION,
            base_offset: 42,
            capacity: 1 << 20,
            created_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn segment_header_round_trips() {
        let mut bytes = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        header().encode(&mut bytes);
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header()));
    }

    #[test]
    fn segment_header_defects_are_named() {
        let mut bytes = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        assert_eq!(SegmentHeader::decode(&bytes), Err(HeaderDefect::Zeroed));
        assert_eq!(SegmentHeader::decode(&bytes[..100]), Err(HeaderDefect::Truncated));
        header().encode(&mut bytes);
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&flipped), Err(HeaderDefect::BadCrc));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(SegmentHeader::decode(&magic), Err(HeaderDefect::BadMagic));
        let mut version = bytes.clone();
        version[8] = 9;
        let crc = crc32c::crc32c(&version[0..44]);
        version[44..48].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&version),
            Err(HeaderDefect::UnsupportedVersion(9))
        );
    }

    #[test]
    fn newest_marker_slot_wins_and_torn_slot_is_ignored() {
        let mut bytes = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        assert_eq!(MarkerSlot::newest(&bytes), None);
        let slot = |seq| MarkerSlot {
            seq,
            data_end: 4096 + seq * 8,
            next_offset: seq,
            max_timestamp_ms: 7,
            sealed: false,
        };
        for seq in 1..=3 {
            let at = MarkerSlot::position(seq);
            bytes[at..at + MARKER_SLOT_BYTES].copy_from_slice(&slot(seq).encode());
        }
        assert_eq!(MarkerSlot::newest(&bytes), Some(slot(3)));
        // A torn write of slot 3 leaves slot 2.
        bytes[MarkerSlot::position(3) + 9] ^= 0xff;
        assert_eq!(MarkerSlot::newest(&bytes), Some(slot(2)));
    }

    #[test]
    fn zero_filled_bytes_never_validate_as_a_frame() {
        for len in [0, 8, 31, 32, 64, 4096] {
            let zeros = vec![0u8; len];
            assert_eq!(check_frame(&zeros, 0), Err(FrameDefect::Empty));
        }
    }

    #[test]
    fn batch_defects_are_detected() {
        let len = MIN_BATCH_BYTES as usize + 5;
        let mut batch = vec![0xabu8; align_frame(len)];
        let header = BatchHeader {
            batch_len: len as u32,
            base_offset: 9,
            first_timestamp_ms: -3,
            max_timestamp_ms: 4,
            record_count: 2,
            leader_epoch: 1,
            flags: 0,
        };
        seal_batch(&mut batch, &header);
        assert_eq!(check_batch(&batch, 9), Ok(header));
        assert_eq!(
            check_batch(&batch, 10),
            Err(FrameDefect::WrongOffset { found: 9 })
        );
        assert_eq!(
            check_batch(&batch[..batch.len() - 8], 9),
            Err(FrameDefect::Truncated)
        );
        assert_eq!(check_batch(&vec![0u8; 4096], 9), Err(FrameDefect::Empty));
        for at in [0usize, 4, 9, 17, 25, 33, 37, 41, 43, 50, len - 1] {
            let mut bad = batch.clone();
            bad[at] ^= 0x10;
            assert!(check_batch(&bad, 9).is_err(), "flip at byte {at} went unnoticed");
        }
        // A well-sealed batch of another version, or with a flag this build does not know.
        let mut other = batch.clone();
        other[40] = 3;
        let crc = crc32c::crc32c(&other[4..BATCH_HEADER_BYTES]);
        other[0..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check_batch(&other, 9), Err(FrameDefect::BadVersion(3)));
        let mut flagged = batch.clone();
        seal_batch(
            &mut flagged,
            &BatchHeader {
                flags: 0x8000,
                ..header
            },
        );
        assert_eq!(check_batch(&flagged, 9), Err(FrameDefect::BadReserved));
        let mut empty = batch.clone();
        seal_batch(
            &mut empty,
            &BatchHeader {
                record_count: 0,
                ..header
            },
        );
        assert_eq!(check_batch(&empty, 9), Err(FrameDefect::BadLength));
    }

    #[test]
    fn frame_defects_are_detected() {
        let payload_len = MIN_PAYLOAD_BYTES as usize + 5;
        let mut frame = vec![0xabu8; frame_bytes(payload_len)];
        let header = FrameHeader {
            payload_len: payload_len as u32,
            offset: 9,
            timestamp_ms: -3,
            flags: FRAME_FLAG_BATCH_END,
        };
        seal_frame(&mut frame, &header);
        assert_eq!(check_frame(&frame, 9), Ok(header));
        assert_eq!(
            check_frame(&frame, 10),
            Err(FrameDefect::WrongOffset { found: 9 })
        );
        assert_eq!(
            check_frame(&frame[..frame.len() - 8], 9),
            Err(FrameDefect::Truncated)
        );
        for at in [0usize, 4, 9, 17, 25, 40] {
            let mut bad = frame.clone();
            bad[at] ^= 0x10;
            assert!(check_frame(&bad, 9).is_err(), "flip at byte {at} went unnoticed");
        }
    }
}
