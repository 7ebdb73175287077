//! The bodies of the consumer requests (claim, ack, reclaim, ack-and-commit, admin) and
//! of the reads outside consumers (range, length), with their responses. Layouts are
//! in the module doc of `protocol`.

use serde::{Deserialize, Serialize};

// What a claim's create options and a cursor's ranges are on the wire: the consumer
// room's own types, re-exported so that clients need the protocol alone.
pub use crate::consumer::cursor::{OnMax, Options, Position, Range, Start};
use crate::protocol::error::ProtocolError;
use crate::protocol::frame::{Kind, begin_frame, finish_frame};
use crate::protocol::records::{ANY_PARTITION, RecordsWriter, Run, encode_runs, for_each_item};
use crate::protocol::wire::{Cursor, OwnedWireRecord, WireRecord, put_bytes, put_str, put_u32, put_u64};

/// Names one consumer's place in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRef<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub partition: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    /// `None`: any partition with records to claim.
    pub partition: Option<u32>,
    pub count: u32,
    pub max_bytes: u32,
    /// Create the consumer with these options if it does not exist.
    pub create: Option<Options>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    List = 0,
    Disable = 1,
    Resume = 2,
    Destroy = 3,
}

impl AdminAction {
    pub fn name(self) -> &'static str {
        ["list", "disable", "resume", "destroy"][self as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest<'a> {
    pub action: AdminAction,
    /// Empty: every topic (list only).
    pub topic: &'a str,
    /// Empty: every consumer (list only).
    pub group: &'a str,
}

/// One end of a range read, by offset or by time (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Unbounded,
    Included(i64),
    Excluded(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest<'a> {
    pub topic: &'a str,
    pub spec: RangeSpec,
}

/// What a range read asks of one partition: its bounds, order and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSpec {
    pub partition: u32,
    /// The bounds are timestamps (ms), not offsets.
    pub by_time: bool,
    /// Newest first: the last `limit` records of the range.
    pub reverse: bool,
    pub from: Bound,
    pub to: Bound,
    pub limit: u32,
    pub max_bytes: u32,
}

const RANGE_REVERSE: u8 = 1;
const RANGE_BY_TIME: u8 = 2;

fn decode_bound(c: &mut Cursor<'_>, what: &str) -> Result<Bound, ProtocolError> {
    let kind = c.u8(what)?;
    let value = c.i64(what)?;
    match kind {
        0 => Ok(Bound::Unbounded),
        1 => Ok(Bound::Included(value)),
        2 => Ok(Bound::Excluded(value)),
        other => Err(ProtocolError::malformed(format!(
            "unknown bound kind {other} for {what}"
        ))),
    }
}

fn put_bound(out: &mut Vec<u8>, bound: Bound) {
    let (kind, value) = match bound {
        Bound::Unbounded => (0u8, 0),
        Bound::Included(v) => (1, v),
        Bound::Excluded(v) => (2, v),
    };
    out.push(kind);
    put_u64(out, value as u64);
}

fn decode_options(c: &mut Cursor<'_>) -> Result<Options, ProtocolError> {
    let start_kind = c.u8("the start kind")?;
    let position = c.i64("the start position")?;
    let start = match start_kind {
        0 => Start::Earliest,
        1 => Start::New,
        2 if position >= 0 => Start::After(position as u64),
        2 => return Err(ProtocolError::malformed("a start offset cannot be negative")),
        3 => Start::Time(position),
        other => return Err(ProtocolError::malformed(format!("unknown start kind {other}"))),
    };
    let timeout = c.u64("the reclaim timeout")?;
    let max = c.u32("max reclaims")?;
    let on_max = c.u8("the max-reclaims rule")?;
    let dead_letter = c.str("the dead-letter topic")?;
    let on_max = match on_max {
        0 => OnMax::Disable,
        1 => OnMax::Continue,
        2 if !dead_letter.is_empty() => OnMax::DeadLetter(dead_letter.to_owned()),
        2 => return Err(ProtocolError::malformed("dead_letter needs a topic name")),
        other => {
            return Err(ProtocolError::malformed(format!(
                "unknown max-reclaims rule {other}"
            )));
        }
    };
    Ok(Options {
        start,
        reclaim_timeout_ms: (timeout > 0).then_some(timeout),
        max_reclaims: (max != u32::MAX).then_some(max),
        on_max,
    })
}

fn put_options(out: &mut Vec<u8>, options: &Options) {
    let (kind, position) = match options.start {
        Start::Earliest => (0u8, 0i64),
        Start::New => (1, 0),
        Start::After(o) => (2, o as i64),
        Start::Time(t) => (3, t),
    };
    out.push(kind);
    put_u64(out, position as u64);
    put_u64(out, options.reclaim_timeout_ms.unwrap_or(0));
    put_u32(out, options.max_reclaims.unwrap_or(u32::MAX));
    let (rule, topic) = match &options.on_max {
        OnMax::Disable => (0u8, ""),
        OnMax::Continue => (1, ""),
        OnMax::DeadLetter(topic) => (2, topic.as_str()),
    };
    out.push(rule);
    put_str(out, topic);
}

pub fn decode_ref<'a>(c: &mut Cursor<'a>) -> Result<ConsumerRef<'a>, ProtocolError> {
    Ok(ConsumerRef {
        topic: c.str("a topic name")?,
        group: c.str("a consumer name")?,
        partition: c.u32("a partition")?,
    })
}

pub fn put_ref(out: &mut Vec<u8>, r: &ConsumerRef<'_>) {
    put_str(out, r.topic);
    put_str(out, r.group);
    put_u32(out, r.partition);
}

pub fn decode_claim<'a>(c: &mut Cursor<'a>) -> Result<ClaimRequest<'a>, ProtocolError> {
    let topic = c.str("a topic name")?;
    let group = c.str("a consumer name")?;
    let partition = c.u32("a partition")?;
    let count = c.u32("a count")?;
    let max_bytes = c.u32("max bytes")?;
    let create = match c.u8("the create flag")? {
        0 => None,
        1 => Some(decode_options(c)?),
        other => return Err(ProtocolError::malformed(format!("unknown create flag {other}"))),
    };
    Ok(ClaimRequest {
        topic,
        group,
        partition: (partition != ANY_PARTITION).then_some(partition),
        count,
        max_bytes,
        create,
    })
}

pub fn put_claim(out: &mut Vec<u8>, r: &ClaimRequest<'_>) {
    put_str(out, r.topic);
    put_str(out, r.group);
    put_u32(out, r.partition.unwrap_or(ANY_PARTITION));
    put_u32(out, r.count);
    put_u32(out, r.max_bytes);
    match &r.create {
        None => out.push(0),
        Some(options) => {
            out.push(1);
            put_options(out, options);
        }
    }
}

pub fn decode_admin<'a>(c: &mut Cursor<'a>) -> Result<AdminRequest<'a>, ProtocolError> {
    let action = match c.u8("the admin action")? {
        0 => AdminAction::List,
        1 => AdminAction::Disable,
        2 => AdminAction::Resume,
        3 => AdminAction::Destroy,
        other => return Err(ProtocolError::malformed(format!("unknown admin action {other}"))),
    };
    Ok(AdminRequest {
        action,
        topic: c.str("a topic name")?,
        group: c.str("a consumer name")?,
    })
}

pub fn put_admin(out: &mut Vec<u8>, r: &AdminRequest<'_>) {
    out.push(r.action as u8);
    put_str(out, r.topic);
    put_str(out, r.group);
}

pub fn decode_range<'a>(c: &mut Cursor<'a>) -> Result<RangeRequest<'a>, ProtocolError> {
    let topic = c.str("a topic name")?;
    let partition = c.u32("a partition")?;
    let flags = c.u8("the range flags")?;
    if flags & !(RANGE_REVERSE | RANGE_BY_TIME) != 0 {
        return Err(ProtocolError::malformed(format!(
            "unknown range flags {flags:#04x}"
        )));
    }
    Ok(RangeRequest {
        topic,
        spec: RangeSpec {
            partition,
            reverse: flags & RANGE_REVERSE != 0,
            by_time: flags & RANGE_BY_TIME != 0,
            from: decode_bound(c, "the range start")?,
            to: decode_bound(c, "the range end")?,
            limit: c.u32("the limit")?,
            max_bytes: c.u32("max bytes")?,
        },
    })
}

pub fn put_range(out: &mut Vec<u8>, request: &RangeRequest<'_>) {
    put_str(out, request.topic);
    let r = &request.spec;
    put_u32(out, r.partition);
    let flags = if r.reverse { RANGE_REVERSE } else { 0 } | if r.by_time { RANGE_BY_TIME } else { 0 };
    out.push(flags);
    put_bound(out, r.from);
    put_bound(out, r.to);
    put_u32(out, r.limit);
    put_u32(out, r.max_bytes);
}

/// Claimed records as a client holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// `None`: nothing was claimed (no partition had records, or claims are pending).
    pub partition: Option<u32>,
    pub from: u64,
    pub to: u64,
    /// The partition's next offset when claimed: `next_offset - to` records wait.
    pub next_offset: u64,
    pub records: Vec<(u64, OwnedWireRecord)>,
}

/// u32 partition, u64 from, u64 to, u64 next offset: the fields before the count.
const CLAIMED_FIELDS: usize = 4 + 8 + 8 + 8;

/// Starts a CLAIMED frame; the claimed range is filled in by `finish_claimed`, once the
/// records that fit are pushed.
pub fn begin_claimed(out: &mut Vec<u8>, request_id: u64) -> RecordsWriter {
    RecordsWriter::begin(out, Kind::Claimed, request_id, &[0; CLAIMED_FIELDS])
}

pub fn finish_claimed(
    writer: RecordsWriter,
    out: &mut [u8],
    partition: Option<u32>,
    from: u64,
    to: u64,
    next_offset: u64,
) {
    let mut fields = Vec::with_capacity(CLAIMED_FIELDS);
    put_u32(&mut fields, partition.unwrap_or(ANY_PARTITION));
    put_u64(&mut fields, from);
    put_u64(&mut fields, to);
    put_u64(&mut fields, next_offset);
    writer.finish_with(out, &fields);
}

/// An empty CLAIMED frame: nothing to claim.
pub fn encode_nothing_claimed(out: &mut Vec<u8>, request_id: u64, next_offset: u64) {
    let writer = begin_claimed(out, request_id);
    finish_claimed(writer, out, None, 0, 0, next_offset);
}

/// CLAIMED with its records handed to `each` as they lie in the body; `records` is empty.
pub fn decode_claimed_each<'a>(
    c: &mut Cursor<'a>,
    each: impl FnMut(u64, WireRecord<'a>),
) -> Result<Claimed, ProtocolError> {
    let partition = c.u32("a partition")?;
    let from = c.u64("the claim start")?;
    let to = c.u64("the claim end")?;
    let next_offset = c.u64("the next offset")?;
    for_each_item(c, each)?;
    Ok(Claimed {
        partition: (partition != ANY_PARTITION).then_some(partition),
        from,
        to,
        next_offset,
        records: Vec::new(),
    })
}

/// ACKED: the partition and the range acked.
pub fn encode_acked(out: &mut Vec<u8>, request_id: u64, partition: u32, from: u64, to: u64) {
    let start = begin_frame(out, Kind::Acked, request_id);
    put_u32(out, partition);
    put_u64(out, from);
    put_u64(out, to);
    finish_frame(out, start);
}

/// SOUGHT: the partition and the committed offset now.
pub fn encode_sought(out: &mut Vec<u8>, request_id: u64, partition: u32, offset: u64) {
    let start = begin_frame(out, Kind::Sought, request_id);
    put_u32(out, partition);
    put_u64(out, offset);
    finish_frame(out, start);
}

/// What a reclaim did, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReclaimedReply {
    pub partition: u32,
    pub from: u64,
    pub to: u64,
    pub reclaims: u32,
    /// 0 redeliver, 1 disabled, 2 skipped, 3 dead letter.
    pub outcome: u8,
}

pub fn encode_reclaimed(out: &mut Vec<u8>, request_id: u64, r: &ReclaimedReply) {
    let start = begin_frame(out, Kind::Reclaimed, request_id);
    put_u32(out, r.partition);
    put_u64(out, r.from);
    put_u64(out, r.to);
    put_u32(out, r.reclaims);
    out.push(r.outcome);
    finish_frame(out, start);
}

pub fn decode_reclaimed(c: &mut Cursor<'_>) -> Result<ReclaimedReply, ProtocolError> {
    Ok(ReclaimedReply {
        partition: c.u32("a partition")?,
        from: c.u64("the range start")?,
        to: c.u64("the range end")?,
        reclaims: c.u32("the reclaim count")?,
        outcome: c.u8("the outcome")?,
    })
}

/// COMMITTED: the range acked, then the offsets of the records produced, as PRODUCED.
pub fn encode_committed(
    out: &mut Vec<u8>,
    request_id: u64,
    partition: u32,
    from: u64,
    to: u64,
    groups: &[Vec<Run>],
) {
    let start = begin_frame(out, Kind::Committed, request_id);
    put_u32(out, partition);
    put_u64(out, from);
    put_u64(out, to);
    encode_runs(out, groups);
    finish_frame(out, start);
}

pub fn encode_consumers(out: &mut Vec<u8>, request_id: u64, json: &[u8]) {
    let start = begin_frame(out, Kind::Consumers, request_id);
    put_bytes(out, json);
    finish_frame(out, start);
}

pub fn encode_length(out: &mut Vec<u8>, request_id: u64, length: u64) {
    let start = begin_frame(out, Kind::LengthReply, request_id);
    put_u64(out, length);
    finish_frame(out, start);
}

/// One cursor as inspected: `flowd` admin answers, `GET /consumers`, `flowd drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorInfo {
    pub topic: String,
    pub partition: u32,
    pub group: String,
    /// Everything below is acked.
    pub committed: u64,
    pub claimed: Option<Range>,
    pub claimed_at_ms: Option<i64>,
    pub reclaims: u32,
    /// `active` or `disabled`.
    pub state: String,
    pub disabled_reason: Option<String>,
    /// Records not yet acked: `next_offset - committed`.
    pub lag: u64,
    pub next_offset: u64,
    /// Records retention deleted before they were acked.
    pub skipped: u64,
    pub options: Options,
}
