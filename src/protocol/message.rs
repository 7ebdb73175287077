//! The bodies of every frame kind: requests (decoded by the server, borrowed from the
//! frame) and responses (decoded by clients into owned values), and their encoders.

use crate::protocol::consumer::{
    self, AdminRequest, ClaimRequest, Claimed, ConsumerRef, Position, RangeRequest, ReclaimedReply,
};
use crate::protocol::error::{ErrorCode, ProtocolError};
use crate::protocol::frame::{FrameHeader, Kind, begin_frame, finish_frame};
use crate::protocol::records::{ANY_PARTITION, RecordsWriter, Run, decode_runs, encode_runs, for_each_item};
use crate::protocol::wire::{
    Cursor, END_MARKER_HEADER, OwnedWireRecord, WireRecord, encode_record, put_bytes, put_str, put_u16,
    put_u32, put_u64,
};
use crate::storage::batch::{CheckedBatch, encode_batch};
use crate::storage::{Header, Record, RecordView};

/// Records for one topic in a produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceGroup<'a> {
    pub topic: &'a str,
    /// `None`: by key hash, or one partition for the group's keyless records.
    pub partition: Option<u32>,
    pub records: Vec<WireRecord<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFrom {
    Offset(u64),
    Earliest,
    Latest,
    /// The first record at or after this time (ms since the epoch).
    Time(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub from: FetchFrom,
    pub max_records: u32,
    pub max_bytes: u32,
    /// How long to wait for a record when there is none yet.
    pub wait_ms: u32,
}

impl<'a> FetchRequest<'a> {
    /// A fetch of at most 1 MiB.
    pub fn new(
        topic: &'a str,
        partition: u32,
        from: FetchFrom,
        max_records: u32,
        wait_ms: u32,
    ) -> FetchRequest<'a> {
        FetchRequest {
            topic,
            partition,
            from,
            max_records,
            max_bytes: 1 << 20,
            wait_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest<'a> {
    pub job: &'a str,
    /// 0: the job's configured timeout.
    pub timeout_ms: u32,
    pub record: WireRecord<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Produce(Vec<ProduceGroup<'a>>),
    /// One batch in the storage format, for one partition (`None`: the server picks
    /// one; only for batches without keys).
    ProduceBatch {
        topic: &'a str,
        partition: Option<u32>,
        batch: &'a [u8],
    },
    Fetch(FetchRequest<'a>),
    /// A fetch answered with the stored batches (BATCHES), sent on as they lie.
    FetchBatches(FetchRequest<'a>),
    Metadata,
    Job(JobRequest<'a>),
    /// The status document: the whole cluster's as this peer gathers it, or (`local`)
    /// this peer's own only.
    Status {
        local: bool,
    },
    Claim(ClaimRequest<'a>),
    Ack(ConsumerRef<'a>),
    Reclaim(ConsumerRef<'a>),
    /// An ack and a produce, committed as one.
    AckCommit(ConsumerRef<'a>, Vec<ProduceGroup<'a>>),
    ConsumerAdmin(AdminRequest<'a>),
    /// A consumer's committed offset set to an offset (a Kafka commit), or reset to
    /// earliest, latest, a time or past N records.
    Seek(ConsumerRef<'a>, Position),
    Range(RangeRequest<'a>),
    /// Records in a partition (`None`: in the whole topic).
    Length {
        topic: &'a str,
        partition: Option<u32>,
    },
    /// The state a `state` stage holds for a key.
    State {
        stage: &'a str,
        key: &'a [u8],
    },
    /// Who the client is: a token (`auth::credentials`).
    Auth {
        token: &'a str,
    },
    /// Who the client a relaying peer speaks for is: the name of the credential it
    /// proved to that peer (taken only from a peer in mutual TLS).
    Vouch {
        name: &'a str,
    },
}

fn decode_groups<'a>(c: &mut Cursor<'a>) -> Result<Vec<ProduceGroup<'a>>, ProtocolError> {
    let count = c.u16("the group count")?;
    if count == 0 {
        return Err(ProtocolError::malformed(
            "a produce request needs at least one group",
        ));
    }
    let mut groups = Vec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        let topic = c.str("a topic name")?;
        let partition = c.u32("a partition")?;
        let n = c.u32("a record count")? as usize;
        // A record takes at least 7 bytes: a lying count fails before it allocates.
        if n.saturating_mul(7) > c.remaining() {
            return Err(ProtocolError::malformed(format!(
                "a group claims {n} records but only {} bytes are left",
                c.remaining()
            )));
        }
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            records.push(c.record()?);
        }
        groups.push(ProduceGroup {
            topic,
            partition: (partition != ANY_PARTITION).then_some(partition),
            records,
        });
    }
    Ok(groups)
}

fn put_groups(out: &mut Vec<u8>, groups: &[ProduceGroup<'_>]) {
    put_u16(out, groups.len() as u16);
    for g in groups {
        put_str(out, g.topic);
        put_u32(out, g.partition.unwrap_or(ANY_PARTITION));
        put_u32(out, g.records.len() as u32);
        for r in &g.records {
            encode_record(out, r.timestamp_ms, r.key, r.value, &r.headers);
        }
    }
}

impl<'a> Request<'a> {
    /// Decodes a request body. An unknown or response kind is an `UnknownKind` error.
    pub fn decode(header: &FrameHeader, body: &'a [u8]) -> Result<Request<'a>, ProtocolError> {
        let mut c = Cursor::new(body);
        let request = match Kind::from_u8(header.kind) {
            Some(Kind::Produce) => Request::Produce(decode_groups(&mut c)?),
            Some(Kind::ProduceBatch) => {
                let topic = c.str("a topic name")?;
                let partition = c.u32("a partition")?;
                Request::ProduceBatch {
                    topic,
                    partition: (partition != ANY_PARTITION).then_some(partition),
                    batch: c.bytes("a batch")?,
                }
            }
            Some(kind @ (Kind::Fetch | Kind::FetchBatches)) => {
                let topic = c.str("a topic name")?;
                let partition = c.u32("a partition")?;
                let from_kind = c.u8("the fetch position kind")?;
                let position = c.i64("the fetch position")?;
                let from = match from_kind {
                    0 if position >= 0 => FetchFrom::Offset(position as u64),
                    0 => return Err(ProtocolError::malformed("a fetch offset cannot be negative")),
                    1 => FetchFrom::Earliest,
                    2 => FetchFrom::Latest,
                    3 => FetchFrom::Time(position),
                    other => {
                        return Err(ProtocolError::malformed(format!(
                            "unknown fetch position kind {other}"
                        )));
                    }
                };
                let fetch = FetchRequest {
                    topic,
                    partition,
                    from,
                    max_records: c.u32("max records")?,
                    max_bytes: c.u32("max bytes")?,
                    wait_ms: c.u32("the wait")?,
                };
                if kind == Kind::Fetch {
                    Request::Fetch(fetch)
                } else {
                    Request::FetchBatches(fetch)
                }
            }
            Some(Kind::Metadata) => Request::Metadata,
            Some(Kind::Status) => Request::Status {
                local: match c.remaining() {
                    0 => false,
                    _ => match c.u8("the status scope")? {
                        0 => false,
                        1 => true,
                        other => {
                            return Err(ProtocolError::malformed(format!(
                                "a status scope is 0 (the cluster's) or 1 (this peer's own), not {other}"
                            )));
                        }
                    },
                },
            },
            Some(Kind::Job) => Request::Job(JobRequest {
                job: c.str("a job name")?,
                timeout_ms: c.u32("a timeout")?,
                record: c.record()?,
            }),
            Some(Kind::Claim) => Request::Claim(consumer::decode_claim(&mut c)?),
            Some(Kind::Ack) => Request::Ack(consumer::decode_ref(&mut c)?),
            Some(Kind::Reclaim) => Request::Reclaim(consumer::decode_ref(&mut c)?),
            Some(Kind::AckCommit) => {
                let r = consumer::decode_ref(&mut c)?;
                Request::AckCommit(r, decode_groups(&mut c)?)
            }
            Some(Kind::ConsumerAdmin) => Request::ConsumerAdmin(consumer::decode_admin(&mut c)?),
            Some(Kind::Seek) => {
                let r = consumer::decode_ref(&mut c)?;
                let value = c.u64("an offset")?;
                // The `how` byte is optional: absent, the value is an offset.
                let how = if c.remaining() > 0 {
                    c.u8("the reset kind")?
                } else {
                    0
                };
                let to = Position::from_code(how, value).ok_or_else(|| {
                    ProtocolError::malformed(format!(
                        "unknown reset kind {how} (0 offset, 1 earliest, 2 latest, 3 time, 4 skip)"
                    ))
                })?;
                Request::Seek(r, to)
            }
            Some(Kind::Range) => Request::Range(consumer::decode_range(&mut c)?),
            Some(Kind::Length) => {
                let topic = c.str("a topic name")?;
                let partition = c.u32("a partition")?;
                Request::Length {
                    topic,
                    partition: (partition != ANY_PARTITION).then_some(partition),
                }
            }
            Some(Kind::State) => Request::State {
                stage: c.str("a stage name")?,
                key: c.bytes("a key")?,
            },
            Some(Kind::Auth) => Request::Auth {
                token: c.str("a token")?,
            },
            Some(Kind::Vouch) => Request::Vouch {
                name: c.str("a credential name")?,
            },
            _ if Kind::is_reserved(header.kind) => {
                return Err(ProtocolError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "kind {:#04x} is reserved for requests this version does not serve",
                        header.kind
                    ),
                ));
            }
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownKind,
                    format!("unknown request kind {:#04x}", header.kind),
                ));
            }
        };
        c.finish("request")?;
        Ok(request)
    }

    /// Appends this request as one frame.
    pub fn encode(&self, request_id: u64, out: &mut Vec<u8>) {
        let kind = match self {
            Request::Produce(_) => Kind::Produce,
            Request::ProduceBatch { .. } => Kind::ProduceBatch,
            Request::Fetch(_) => Kind::Fetch,
            Request::FetchBatches(_) => Kind::FetchBatches,
            Request::Metadata => Kind::Metadata,
            Request::Job(_) => Kind::Job,
            Request::Status { .. } => Kind::Status,
            Request::Claim(_) => Kind::Claim,
            Request::Ack(_) => Kind::Ack,
            Request::Reclaim(_) => Kind::Reclaim,
            Request::AckCommit(..) => Kind::AckCommit,
            Request::ConsumerAdmin(_) => Kind::ConsumerAdmin,
            Request::Seek(..) => Kind::Seek,
            Request::Range(_) => Kind::Range,
            Request::Length { .. } => Kind::Length,
            Request::State { .. } => Kind::State,
            Request::Auth { .. } => Kind::Auth,
            Request::Vouch { .. } => Kind::Vouch,
        };
        let start = begin_frame(out, kind, request_id);
        match self {
            Request::Produce(groups) => put_groups(out, groups),
            Request::ProduceBatch {
                topic,
                partition,
                batch,
            } => {
                put_str(out, topic);
                put_u32(out, partition.unwrap_or(ANY_PARTITION));
                put_bytes(out, batch);
            }
            Request::Fetch(f) | Request::FetchBatches(f) => {
                put_str(out, f.topic);
                put_u32(out, f.partition);
                let (kind, position) = match f.from {
                    FetchFrom::Offset(o) => (0u8, o as i64),
                    FetchFrom::Earliest => (1, 0),
                    FetchFrom::Latest => (2, 0),
                    FetchFrom::Time(t) => (3, t),
                };
                out.push(kind);
                put_u64(out, position as u64);
                put_u32(out, f.max_records);
                put_u32(out, f.max_bytes);
                put_u32(out, f.wait_ms);
            }
            Request::Metadata | Request::Status { local: false } => {}
            Request::Status { local: true } => out.push(1),
            Request::Job(j) => {
                put_str(out, j.job);
                put_u32(out, j.timeout_ms);
                let r = &j.record;
                encode_record(out, r.timestamp_ms, r.key, r.value, &r.headers);
            }
            Request::Claim(r) => consumer::put_claim(out, r),
            Request::Ack(r) | Request::Reclaim(r) => consumer::put_ref(out, r),
            Request::AckCommit(r, groups) => {
                consumer::put_ref(out, r);
                put_groups(out, groups);
            }
            Request::ConsumerAdmin(r) => consumer::put_admin(out, r),
            Request::Seek(r, to) => {
                consumer::put_ref(out, r);
                let (how, value) = to.code();
                put_u64(out, value);
                if how != 0 {
                    out.push(how);
                }
            }
            Request::Range(r) => consumer::put_range(out, r),
            Request::Length { topic, partition } => {
                put_str(out, topic);
                put_u32(out, partition.unwrap_or(ANY_PARTITION));
            }
            Request::State { stage, key } => {
                put_str(out, stage);
                put_bytes(out, key);
            }
            Request::Auth { token } => put_str(out, token),
            Request::Vouch { name } => put_str(out, name),
        }
        finish_frame(out, start);
    }
}

/// Produce requests of one topic's records, built and encoded in one go by clients.
pub fn encode_produce(
    out: &mut Vec<u8>,
    request_id: u64,
    topic: &str,
    partition: Option<u32>,
    records: &[OwnedWireRecord],
) {
    let start = begin_frame(out, Kind::Produce, request_id);
    put_owned_group(out, topic, partition, records);
    finish_frame(out, start);
}

/// A PRODUCE_BATCH of `records` (non-empty) for one partition of `topic` (`None`: the server picks,
/// for records without keys), encoded as the batch the log stores. Records without a
/// timestamp get the server's when none has one; when only some lack one, they get the
/// client's clock (`now_ms`).
pub fn encode_produce_batch(
    out: &mut Vec<u8>,
    request_id: u64,
    topic: &str,
    partition: Option<u32>,
    records: &[OwnedWireRecord],
    now_ms: i64,
) {
    let server_time = records.iter().all(|r| r.timestamp_ms.is_none());
    let headers: Vec<Vec<Header<'_>>> = records
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(name, value)| Header { name, value })
                .collect()
        })
        .collect();
    let records: Vec<Record<'_>> = records
        .iter()
        .zip(&headers)
        .map(|(r, headers)| Record {
            timestamp_ms: r.timestamp_ms.unwrap_or(now_ms),
            key: r.key.as_deref(),
            value: &r.value,
            headers,
        })
        .collect();
    let start = begin_frame(out, Kind::ProduceBatch, request_id);
    put_str(out, topic);
    put_u32(out, partition.unwrap_or(ANY_PARTITION));
    let length_at = out.len();
    put_u32(out, 0);
    encode_batch(&records, 0, server_time, out);
    let length = (out.len() - length_at - 4) as u32;
    out[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
    finish_frame(out, start);
}

/// An ACK_COMMIT of a claim with client-built records for one topic.
pub fn encode_ack_commit(
    out: &mut Vec<u8>,
    request_id: u64,
    claim: &ConsumerRef<'_>,
    topic: &str,
    records: &[OwnedWireRecord],
) {
    let start = begin_frame(out, Kind::AckCommit, request_id);
    consumer::put_ref(out, claim);
    put_owned_group(out, topic, None, records);
    finish_frame(out, start);
}

/// A produce body of one group of client-built records.
fn put_owned_group(out: &mut Vec<u8>, topic: &str, partition: Option<u32>, records: &[OwnedWireRecord]) {
    put_u16(out, 1);
    put_str(out, topic);
    put_u32(out, partition.unwrap_or(ANY_PARTITION));
    put_u32(out, records.len() as u32);
    for r in records {
        r.encode(out);
    }
}

/// Reads a BATCHES body: checks each batch (CRC, archive) and hands `f` a zero-copy view
/// of each record from the offset wanted on, engine bookkeeping skipped. Returns the
/// partition's ends `(start offset, next offset)`.
pub fn for_each_batched_record(
    c: &mut Cursor<'_>,
    mut f: impl FnMut(RecordView<'_>),
) -> Result<(u64, u64), ProtocolError> {
    let start_offset = c.u64("the start offset")?;
    let next_offset = c.u64("the next offset")?;
    let from = c.u64("the first offset wanted")?;
    for _ in 0..c.u32("the batch count")? {
        let batch = CheckedBatch::check(c.bytes("a batch")?)
            .map_err(|error| ProtocolError::malformed(error.to_string()))?;
        for view in batch.records().filter(|v| v.offset() >= from) {
            if view.headers().any(|(name, _)| name == END_MARKER_HEADER) {
                continue;
            }
            f(view);
        }
    }
    Ok((start_offset, next_offset))
}

/// Starts a BATCHES frame: the partition's ends and the first offset wanted; stored
/// batches follow, each pushed as it is (`RecordsWriter::push_bytes`).
pub fn begin_batches(
    out: &mut Vec<u8>,
    request_id: u64,
    start_offset: u64,
    next_offset: u64,
    from: u64,
) -> RecordsWriter {
    let mut fields = Vec::with_capacity(24);
    put_u64(&mut fields, start_offset);
    put_u64(&mut fields, next_offset);
    put_u64(&mut fields, from);
    RecordsWriter::begin(out, Kind::Batches, request_id, &fields)
}

pub fn encode_produced(out: &mut Vec<u8>, request_id: u64, groups: &[Vec<Run>]) {
    let start = begin_frame(out, Kind::Produced, request_id);
    encode_runs(out, groups);
    finish_frame(out, start);
}

/// Fetched records as a client holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub start_offset: u64,
    pub next_offset: u64,
    /// `(offset, record)`; the record's timestamp is always set.
    pub records: Vec<(u64, OwnedWireRecord)>,
}

/// What a server serves: its frame limit, topics and jobs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    pub max_frame_bytes: u32,
    /// `(name, partitions)`.
    pub topics: Vec<(String, u32)>,
    /// `(job name, the topic it enters)`.
    pub jobs: Vec<(String, String)>,
}

pub fn encode_metadata(out: &mut Vec<u8>, request_id: u64, metadata: &Metadata) {
    let start = begin_frame(out, Kind::MetadataReply, request_id);
    put_u32(out, metadata.max_frame_bytes);
    put_u16(out, metadata.topics.len() as u16);
    for (name, partitions) in &metadata.topics {
        put_str(out, name);
        put_u32(out, *partitions);
    }
    put_u16(out, metadata.jobs.len() as u16);
    for (name, topic) in &metadata.jobs {
        put_str(out, name);
        put_str(out, topic);
    }
    finish_frame(out, start);
}

pub fn encode_answer(out: &mut Vec<u8>, request_id: u64, key: Option<&[u8]>, value: &[u8]) {
    let start = begin_frame(out, Kind::Answer, request_id);
    encode_record(out, None, key, value, &[]);
    finish_frame(out, start);
}

pub fn encode_authed(out: &mut Vec<u8>, request_id: u64, name: &str) {
    let start = begin_frame(out, Kind::Authed, request_id);
    put_str(out, name);
    finish_frame(out, start);
}

pub fn encode_status(out: &mut Vec<u8>, request_id: u64, json: &[u8]) {
    let start = begin_frame(out, Kind::StatusReply, request_id);
    put_bytes(out, json);
    finish_frame(out, start);
}

pub fn encode_error(out: &mut Vec<u8>, request_id: u64, code: ErrorCode, message: &str) {
    let start = begin_frame(out, Kind::Error, request_id);
    put_u16(out, code as u16);
    put_bytes(out, message.as_bytes());
    finish_frame(out, start);
}

/// A response as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Produced(Vec<Vec<Run>>),
    Fetched(Fetched),
    Metadata(Metadata),
    Answer(OwnedWireRecord),
    Status(Vec<u8>),
    Claimed(Claimed),
    Acked {
        partition: u32,
        from: u64,
        to: u64,
    },
    Reclaimed(ReclaimedReply),
    Committed {
        partition: u32,
        from: u64,
        to: u64,
        runs: Vec<Vec<Run>>,
    },
    /// The JSON array of consumer cursors an admin request touched.
    Consumers(Vec<u8>),
    Length(u64),
    /// SEEK done: the committed offset now.
    Sought {
        partition: u32,
        offset: u64,
    },
    /// AUTH taken: the credential's name (empty on a server without credentials).
    Authed(String),
    /// An error code this client does not know is kept as `Internal` with its number.
    Error {
        code: ErrorCode,
        raw_code: u16,
        message: String,
    },
}

impl Response {
    pub fn decode(header: &FrameHeader, body: &[u8]) -> Result<Response, ProtocolError> {
        let mut records = Vec::new();
        let mut response = Response::decode_each(header, body, |offset, record| {
            records.push((offset, record.to_owned()));
        })?;
        match &mut response {
            // A BATCHES answer decodes as a FETCHED that holds its records already.
            Response::Fetched(fetched) if fetched.records.is_empty() => fetched.records = records,
            Response::Claimed(claimed) => claimed.records = records,
            _ => {}
        }
        Ok(response)
    }

    /// As `decode`, but the records of FETCHED and CLAIMED are handed to `each` as they
    /// lie in `body` (checked, not copied) and left out of the response. BATCHES, whose
    /// records are stored batches, comes back whole.
    pub fn decode_each<'a>(
        header: &FrameHeader,
        body: &'a [u8],
        each: impl FnMut(u64, WireRecord<'a>),
    ) -> Result<Response, ProtocolError> {
        let mut c = Cursor::new(body);
        let response = match Kind::from_u8(header.kind) {
            Some(Kind::Produced) => Response::Produced(decode_runs(&mut c)?),
            Some(Kind::Fetched) => {
                let start_offset = c.u64("the start offset")?;
                let next_offset = c.u64("the next offset")?;
                for_each_item(&mut c, each)?;
                Response::Fetched(Fetched {
                    start_offset,
                    next_offset,
                    records: Vec::new(),
                })
            }
            Some(Kind::Batches) => {
                let mut records = Vec::new();
                let ends = for_each_batched_record(&mut c, |view| {
                    let record = OwnedWireRecord {
                        timestamp_ms: Some(view.timestamp_ms()),
                        key: view.key().map(<[u8]>::to_vec),
                        value: view.value().to_vec(),
                        headers: view
                            .headers()
                            .map(|(name, value)| (name.to_owned(), value.to_vec()))
                            .collect(),
                    };
                    records.push((view.offset(), record));
                })?;
                Response::Fetched(Fetched {
                    start_offset: ends.0,
                    next_offset: ends.1,
                    records,
                })
            }
            Some(Kind::MetadataReply) => {
                let max_frame_bytes = c.u32("the frame limit")?;
                let mut metadata = Metadata {
                    max_frame_bytes,
                    ..Metadata::default()
                };
                for _ in 0..c.u16("the topic count")? {
                    let name = c.str("a topic name")?.to_owned();
                    metadata.topics.push((name, c.u32("a partition count")?));
                }
                for _ in 0..c.u16("the job count")? {
                    let name = c.str("a job name")?.to_owned();
                    metadata.jobs.push((name, c.str("a topic name")?.to_owned()));
                }
                Response::Metadata(metadata)
            }
            Some(Kind::Answer) => Response::Answer(c.record()?.to_owned()),
            Some(Kind::StatusReply) => Response::Status(c.bytes("the status document")?.to_vec()),
            Some(Kind::Claimed) => Response::Claimed(consumer::decode_claimed_each(&mut c, each)?),
            Some(Kind::Acked) => Response::Acked {
                partition: c.u32("a partition")?,
                from: c.u64("the range start")?,
                to: c.u64("the range end")?,
            },
            Some(Kind::Reclaimed) => Response::Reclaimed(consumer::decode_reclaimed(&mut c)?),
            Some(Kind::Committed) => Response::Committed {
                partition: c.u32("a partition")?,
                from: c.u64("the range start")?,
                to: c.u64("the range end")?,
                runs: decode_runs(&mut c)?,
            },
            Some(Kind::Consumers) => Response::Consumers(c.bytes("the consumer list")?.to_vec()),
            Some(Kind::LengthReply) => Response::Length(c.u64("the length")?),
            Some(Kind::Sought) => Response::Sought {
                partition: c.u32("a partition")?,
                offset: c.u64("an offset")?,
            },
            Some(Kind::Authed) => Response::Authed(c.str("a credential name")?.to_owned()),
            Some(Kind::Error) => {
                let raw_code = c.u16("the error code")?;
                let message = String::from_utf8_lossy(c.bytes("the error message")?).into_owned();
                Response::Error {
                    code: ErrorCode::from_u16(raw_code).unwrap_or(ErrorCode::Internal),
                    raw_code,
                    message,
                }
            }
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownKind,
                    format!("unknown response kind {:#04x}", header.kind),
                ));
            }
        };
        c.finish("response")?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::parse_frame;
    use crate::protocol::records::RecordsWriter;

    fn decode_request(bytes: &[u8]) -> Result<Request<'_>, ProtocolError> {
        let frame = parse_frame(bytes, 1 << 20)?.expect("whole frame");
        Request::decode(&frame.header, frame.body)
    }

    fn decode_response(bytes: &[u8]) -> Response {
        let frame = parse_frame(bytes, 1 << 20).unwrap().expect("whole frame");
        Response::decode(&frame.header, frame.body).unwrap()
    }

    #[test]
    fn a_batches_answer_decodes_whole_as_a_fetched_holding_each_record_from_the_offset_wanted() {
        use crate::protocol::{Header, Record, encode_batch};
        let trace = [Header {
            name: "trace",
            value: b"t1",
        }];
        let record = |timestamp_ms, key, value, headers| Record {
            timestamp_ms,
            key,
            value,
            headers,
        };
        // Two stored batches: offsets 10 and 11, then 12. The fetch wanted 11 on.
        let mut first = Vec::new();
        encode_batch(
            &[
                record(21, Some(&b"a"[..]), &b"before"[..], &[][..]),
                record(22, None, &b"two"[..], &trace[..]),
            ],
            10,
            false,
            &mut first,
        );
        let mut second = Vec::new();
        encode_batch(
            &[record(23, Some(&b"c"[..]), &b""[..], &[][..])],
            12,
            false,
            &mut second,
        );
        let mut out = Vec::new();
        let mut w = begin_batches(&mut out, 7, 5, 13, 11);
        w.push_bytes(&mut out, &first);
        w.push_bytes(&mut out, &second);
        w.finish(&mut out);

        let frame = parse_frame(&out, 1 << 20).unwrap().expect("whole frame");
        assert_eq!(frame.header.request_id, 7);
        let Response::Fetched(fetched) = Response::decode(&frame.header, frame.body).unwrap() else {
            panic!("a BATCHES answer decodes as FETCHED");
        };
        assert_eq!((fetched.start_offset, fetched.next_offset), (5, 13));
        let owned = |timestamp_ms, key: Option<&[u8]>, value: &[u8], headers: Vec<(String, Vec<u8>)>| {
            OwnedWireRecord {
                timestamp_ms: Some(timestamp_ms),
                key: key.map(<[u8]>::to_vec),
                value: value.to_vec(),
                headers,
            }
        };
        assert_eq!(
            fetched.records,
            vec![
                (
                    11,
                    owned(22, None, b"two", vec![("trace".into(), b"t1".to_vec())])
                ),
                (12, owned(23, Some(b"c"), b"", vec![])),
            ]
        );
        // `decode_each` hands none of them out: they come back in the response.
        let mut handed = 0;
        let Response::Fetched(whole) =
            Response::decode_each(&frame.header, frame.body, |_, _| handed += 1).unwrap()
        else {
            panic!("a BATCHES answer decodes as FETCHED");
        };
        assert_eq!((handed, whole.records), (0, fetched.records));
    }

    #[test]
    fn records_handed_in_place_are_the_records_decoded_whole_and_the_rest_is_the_same() {
        let mut out = Vec::new();
        let mut w = RecordsWriter::fetched(&mut out, 4, 2, 9);
        w.push(&mut out, 3, 5, Some(b"k"), b"first", &[("h", b"1")]);
        w.push(&mut out, 4, 6, None, b"second", &[]);
        w.finish(&mut out);
        let mut w = crate::protocol::consumer::begin_claimed(&mut out, 5);
        w.push(&mut out, 7, 8, None, b"claimed", &[]);
        w.push(&mut out, 8, 9, Some(b"k2"), b"", &[("a", b""), ("b", b"2")]);
        crate::protocol::consumer::finish_claimed(w, &mut out, Some(1), 7, 9, 12);
        crate::protocol::consumer::encode_acked(&mut out, 6, 1, 7, 9);
        let mut handed = Vec::new();
        let mut at = 0;
        while let Some(frame) = parse_frame(&out[at..], 1 << 20).unwrap() {
            at += frame.len;
            let mut each = Vec::new();
            let rest = Response::decode_each(&frame.header, frame.body, |offset, record| {
                each.push((offset, record.to_owned()));
            })
            .unwrap();
            // Decoded whole, the same answer holds the same records.
            let (whole, expected) = match Response::decode(&frame.header, frame.body).unwrap() {
                Response::Fetched(f) => (
                    f.records.clone(),
                    Response::Fetched(Fetched {
                        records: Vec::new(),
                        ..f
                    }),
                ),
                Response::Claimed(c) => (
                    c.records.clone(),
                    Response::Claimed(crate::protocol::consumer::Claimed {
                        records: Vec::new(),
                        ..c
                    }),
                ),
                other => (Vec::new(), other),
            };
            assert_eq!(each, whole);
            assert_eq!(rest, expected);
            handed.extend(
                each.into_iter()
                    .map(|(offset, r)| (offset, r.key, r.value, r.headers.len())),
            );
        }
        assert_eq!(at, out.len());
        let k = |k: &[u8]| Some(k.to_vec());
        assert_eq!(
            handed,
            vec![
                (3, k(b"k"), b"first".to_vec(), 1),
                (4, None, b"second".to_vec(), 0),
                (7, None, b"claimed".to_vec(), 0),
                (8, k(b"k2"), Vec::new(), 2),
            ]
        );
    }

    #[test]
    fn requests_round_trip() {
        let value = WireRecord {
            timestamp_ms: None,
            key: Some(b"k"),
            value: b"v",
            headers: vec![("h", b"x")],
            raw: &[],
        };
        let requests = [
            Request::Produce(vec![ProduceGroup {
                topic: "events",
                partition: None,
                records: vec![value.clone(), value.clone()],
            }]),
            Request::Fetch(FetchRequest {
                topic: "t",
                partition: 3,
                from: FetchFrom::Time(-1),
                max_records: 10,
                max_bytes: 100,
                wait_ms: 5,
            }),
            Request::Metadata,
            Request::Status { local: false },
            Request::Status { local: true },
            Request::Job(JobRequest {
                job: "j",
                timeout_ms: 0,
                record: value.clone(),
            }),
            Request::Claim(ClaimRequest {
                topic: "t",
                group: "g",
                partition: None,
                count: 10,
                max_bytes: 99,
                create: Some(crate::consumer::Options {
                    start: crate::consumer::Start::After(4),
                    reclaim_timeout_ms: Some(5),
                    max_reclaims: Some(2),
                    on_max: crate::consumer::OnMax::DeadLetter("dead".into()),
                }),
            }),
            Request::Ack(ConsumerRef {
                topic: "t",
                group: "g",
                partition: 1,
            }),
            Request::Reclaim(ConsumerRef {
                topic: "t",
                group: "g",
                partition: 2,
            }),
            Request::Seek(
                ConsumerRef {
                    topic: "t",
                    group: "g",
                    partition: 3,
                },
                Position::Offset(u64::MAX - 1),
            ),
            Request::Seek(
                ConsumerRef {
                    topic: "t",
                    group: "g",
                    partition: 0,
                },
                Position::Time(-5),
            ),
            Request::Seek(
                ConsumerRef {
                    topic: "t",
                    group: "g",
                    partition: 1,
                },
                Position::Skip(7),
            ),
            Request::AckCommit(
                ConsumerRef {
                    topic: "t",
                    group: "g",
                    partition: 0,
                },
                vec![ProduceGroup {
                    topic: "out",
                    partition: Some(1),
                    records: vec![value],
                }],
            ),
            Request::ConsumerAdmin(AdminRequest {
                action: crate::protocol::consumer::AdminAction::Resume,
                topic: "t",
                group: "g",
            }),
            Request::Range(RangeRequest {
                topic: "t",
                spec: crate::protocol::consumer::RangeSpec {
                    partition: 0,
                    by_time: true,
                    reverse: true,
                    from: crate::protocol::consumer::Bound::Excluded(3),
                    to: crate::protocol::consumer::Bound::Unbounded,
                    limit: 7,
                    max_bytes: 8,
                },
            }),
            Request::Length {
                topic: "t",
                partition: None,
            },
            Request::State {
                stage: "counter",
                key: b"ada",
            },
        ];
        for request in requests {
            let mut out = Vec::new();
            request.encode(7, &mut out);
            let mut decoded = decode_request(&out).unwrap();
            // `raw` points into the frame; compare everything else.
            let clear = |r: &mut WireRecord<'_>| r.raw = &[];
            match &mut decoded {
                Request::Produce(groups) | Request::AckCommit(_, groups) => {
                    groups.iter_mut().flat_map(|g| &mut g.records).for_each(clear)
                }
                Request::Job(j) => clear(&mut j.record),
                _ => {}
            }
            assert_eq!(decoded, request);
        }
    }

    #[test]
    fn responses_round_trip() {
        let mut out = Vec::new();
        let runs = vec![vec![Run {
            partition: 1,
            first_offset: 9,
            count: 3,
        }]];
        encode_produced(&mut out, 1, &runs);
        assert_eq!(decode_response(&out), Response::Produced(runs));

        let mut out = Vec::new();
        let mut w = RecordsWriter::fetched(&mut out, 2, 0, 5);
        w.push(&mut out, 4, 99, None, b"x", &[]);
        w.finish(&mut out);
        let mut record = OwnedWireRecord::value("x");
        record.timestamp_ms = Some(99);
        assert_eq!(
            decode_response(&out),
            Response::Fetched(Fetched {
                start_offset: 0,
                next_offset: 5,
                records: vec![(4, record)]
            })
        );

        let mut out = Vec::new();
        let metadata = Metadata {
            max_frame_bytes: 5,
            topics: vec![("a".into(), 2)],
            jobs: vec![("j".into(), "a".into())],
        };
        encode_metadata(&mut out, 3, &metadata);
        assert_eq!(decode_response(&out), Response::Metadata(metadata));

        let mut out = Vec::new();
        encode_error(&mut out, 4, ErrorCode::UnknownTopic, "no such topic");
        assert_eq!(
            decode_response(&out),
            Response::Error {
                code: ErrorCode::UnknownTopic,
                raw_code: 5,
                message: "no such topic".into()
            }
        );
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let cases: &[(u8, &[u8], ErrorCode)] = &[
            (0x01, &[], ErrorCode::Malformed),
            (0x01, &[0, 0], ErrorCode::Malformed),
            (
                0x01,
                &[1, 0, 1, 0, b't', 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
                ErrorCode::Malformed,
            ),
            (0x02, &[1, 0, b't'], ErrorCode::Malformed),
            (0x03, &[1], ErrorCode::Malformed),
            (0x10, &[], ErrorCode::Malformed),
            (0x11, &[1, 0, b't'], ErrorCode::Malformed),
            (0x15, &[1, 0, b't', 0, 0, 0, 0, 0x80], ErrorCode::Malformed),
            (0x20, &[], ErrorCode::Unsupported),
            (0x81, &[], ErrorCode::UnknownKind),
            (0x77, &[], ErrorCode::UnknownKind),
        ];
        for (kind, body, code) in cases {
            let header = FrameHeader {
                version: 1,
                kind: *kind,
                flags: 0,
                request_id: 0,
            };
            assert_eq!(
                Request::decode(&header, body).unwrap_err().code,
                *code,
                "kind {kind:#x} body {body:?}"
            );
        }
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::frame::parse_frame;
    use crate::protocol::records::RecordsWriter;

    fn valid_frames() -> Vec<u8> {
        let record = OwnedWireRecord {
            timestamp_ms: Some(1),
            key: Some(b"k".to_vec()),
            value: b"value".to_vec(),
            headers: vec![("h".into(), b"x".to_vec())],
        };
        let mut out = Vec::new();
        encode_produce(&mut out, 1, "events", None, &[record.clone(), record]);
        Request::Metadata.encode(2, &mut out);
        encode_produced(
            &mut out,
            3,
            &[vec![Run {
                partition: 0,
                first_offset: 1,
                count: 2,
            }]],
        );
        let mut w = RecordsWriter::fetched(&mut out, 4, 0, 1);
        w.push(&mut out, 0, 5, Some(b"k"), b"v", &[("h", b"1")]);
        w.finish(&mut out);
        let mut w = crate::protocol::consumer::begin_claimed(&mut out, 5);
        w.push(&mut out, 3, 5, None, b"v", &[]);
        crate::protocol::consumer::finish_claimed(w, &mut out, Some(1), 3, 4, 9);
        crate::protocol::consumer::encode_acked(&mut out, 6, 1, 3, 4);
        crate::protocol::consumer::encode_sought(&mut out, 6, 2, 7);
        Request::Range(RangeRequest {
            topic: "t",
            spec: crate::protocol::consumer::RangeSpec {
                partition: 0,
                by_time: false,
                reverse: true,
                from: crate::protocol::consumer::Bound::Included(1),
                to: crate::protocol::consumer::Bound::Excluded(9),
                limit: 3,
                max_bytes: 100,
            },
        })
        .encode(7, &mut out);
        out
    }

    proptest! {
        // Mutated valid frames reach deep into every decoder; none may panic.
        #[test]
        fn decoders_survive_mutations(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), cut in any::<prop::sample::Index>()) {
            let mut bytes = valid_frames();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let end = cut.index(bytes.len() + 1);
            let mut rest = &bytes[..end];
            while let Ok(Some(frame)) = parse_frame(rest, 1 << 20) {
                let _ = Request::decode(&frame.header, frame.body);
                let _ = Response::decode(&frame.header, frame.body);
                rest = &rest[frame.len..];
            }
        }
    }
}
