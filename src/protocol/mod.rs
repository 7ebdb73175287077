//! The binary client protocol: length-prefixed frames, their bodies, and the errors a
//! peer can cause. Sans-io: bytes in, typed messages out, and back; no sockets here.
//!
//! # Byte by byte
//!
//! All integers are little endian. A *string* is `u16 length` + UTF-8 bytes; *bytes* are
//! `u32 length` + bytes; *optional bytes* use the length `0xFFFF_FFFF` for "absent".
//!
//! ## Frame
//! ```text
//! offset size  field
//! 0      4     length: bytes after this field (12 + body), at most the server's
//!              max_frame_bytes (default 16 MiB)
//! 4      1     version: 1
//! 5      1     kind (below)
//! 6      2     flags: bit 0 set by a peer relaying its client's request to the peer
//!              that leads its partition (served there, never relayed on); the
//!              other bits 0 (reserved; a receiver ignores them)
//! 8      8     request id: chosen by the client, echoed in the response
//! 16     ...   body
//! ```
//! Requests may be pipelined: a client sends many before reading; responses carry the
//! request id and may come back in any order.
//!
//! ## Kinds and bodies
//! ```text
//! 0x01 PRODUCE   u16 groups; per group: string topic, u32 partition (0xFFFF_FFFF: the
//!                server picks: by key hash, or one partition for the group's keyless
//!                records), u32 count, count x record
//! 0x81 PRODUCED  u16 groups; per group: u32 runs; per run: u32 partition,
//!                u64 first offset, u32 count. Runs follow the input order, so the n-th
//!                record of a group is found by walking its runs.
//! 0x07 PRODUCE_BATCH  string topic, u32 partition (0xFFFF_FFFF: the server picks one;
//!                only for a batch without keys), bytes batch: one batch exactly as the
//!                log stores it (format 2, `src/storage/format.rs`), base offset and
//!                leader epoch 0 (the server stamps them), flag bit 0 set to have the
//!                server stamp the time. Checked whole (CRC, archive) and appended as it
//!                came; answered with PRODUCED (one group, one run)
//! 0x02 FETCH     string topic, u32 partition, u8 from (0 offset, 1 earliest, 2 latest,
//!                3 timestamp), i64 position (the offset or ms; ignored for 1 and 2),
//!                u32 max records, u32 max bytes, u32 wait ms (long poll when nothing new)
//! 0x82 FETCHED   u64 start offset, u64 next offset (the partition's ends), u32 count,
//!                count x (u64 offset, record with its timestamp)
//! 0x08 FETCH_BATCHES  as FETCH, answered with BATCHES (or with FETCHED when another peer
//!                serves the partition: clients take either)
//! 0x88 BATCHES   u64 start offset, u64 next offset (the partition's ends), u64 from (the
//!                first offset wanted), u32 count, count x bytes batch: whole batches as
//!                the log stores them (format 2, `src/storage/format.rs`), sent as they
//!                lie. A reader checks each (CRC, archive), skips the records of the first
//!                before `from`, and those with a `flowd-end` header (engine bookkeeping:
//!                end-of-input markers). Batches go until `max records` or `max bytes`
//!                is reached, at least one, whole: up to a batch more than asked
//! 0x03 METADATA  (empty)
//! 0x83 METADATA  u32 max frame bytes, u16 topics; per topic: string name,
//!                u32 partitions; u16 jobs; per job: string name, string topic
//! 0x04 JOB       string job, u32 timeout ms (0: the job's configured timeout), record
//! 0x84 ANSWER    record: the first output the dataflow's reply stage saw for the job
//! 0x05 STATUS    (empty: the whole cluster's, as this peer gathers it), or u8 scope
//!                (0 the cluster's, 1 this peer's own only)
//! 0x85 STATUS    bytes: the JSON document of GET /status
//! 0x06 STATE     string stage, bytes key: what a `state` stage holds for the key,
//!                answered with an ANSWER (key, state) or ERROR unknown_state
//! 0x09 AUTH      string token (`flowd_` and 64 hex digits, `flowd token add`). On a
//!                server with credentials, the first frame of every connection, within
//!                `io_timeout` of connecting; anything else first, a late AUTH or an
//!                unknown token gets ERROR unauthenticated (21) and the connection is
//!                closed. A request the credential may not make gets ERROR forbidden (22)
//!                naming the permission missing, and the connection stays open. On a
//!                server without credentials AUTH is answered AUTHED with an empty name.
//! 0x89 AUTHED    string the credential's name
//! 0x0A VOUCH     string a credential's name: the client a peer relays requests for
//!                proved it to that peer (by token or certificate). Taken only on a
//!                connection from a peer of this cluster in mutual TLS (the ALPN
//!                protocol `flowd-relay/1`, `tls::peer`), as its first frame on a server
//!                with credentials; answered AUTHED, or ERROR unauthenticated (21) for a
//!                name this server's credentials lack, or forbidden (22) from anyone
//!                else, and the connection is closed.
//!
//! On a port with TLS (`ingest.tls_cert`) every frame travels inside TLS 1.3. A client
//! that speaks plaintext there gets one plaintext ERROR tls_required (23) with request
//! id 0, and the connection is closed.
//! 0xFF ERROR     u16 code, u32 length + UTF-8 message
//! ```
//! Consumers and range reads:
//! ```text
//! 0x10 CLAIM     string topic, string consumer, u32 partition (0xFFFF_FFFF: the first
//!                partition, in turn, with records), u32 count, u32 max bytes,
//!                u8 create (0, or 1 followed by the options below)
//!                options: u8 start (0 `>` earliest, 1 `$>` new, 2 after an offset,
//!                3 a time), i64 position, u64 reclaim timeout ms (0: none),
//!                u32 max reclaims (0xFFFF_FFFF: none), u8 then (0 disable, 1 continue,
//!                2 dead letter), string dead-letter topic
//! 0x90 CLAIMED   u32 partition (0xFFFF_FFFF: nothing claimed), u64 from, u64 to (the
//!                claimed range, end exclusive), u64 the partition's next offset,
//!                u32 count, count x (u64 offset, record with its timestamp)
//! 0x11 ACK       string topic, string consumer, u32 partition
//! 0x91 ACKED     u32 partition, u64 from, u64 to: the range acked, once durable
//! 0x12 RECLAIM   as ACK
//! 0x92 RECLAIMED u32 partition, u64 from, u64 to, u32 reclaims so far, u8 outcome
//!                (0 re-delivered next, 1 consumer disabled, 2 skipped, 3 dead-lettered)
//! 0x13 ACK_COMMIT  as ACK, then a PRODUCE body: the ack and the records as one
//! 0x93 COMMITTED u32 partition, u64 from, u64 to (acked), then a PRODUCED body
//! 0x14 CONSUMERS u8 action (0 list, 1 disable, 2 resume, 3 destroy), string topic,
//!                string consumer (empty: all, for list only)
//! 0x94 CONSUMERS bytes: a JSON array of the cursors touched (topic, partition, group,
//!                committed, claimed, reclaims, state, lag, next_offset, skipped, options)
//! 0x15 RANGE     string topic, u32 partition, u8 flags (1 newest first, 2 bounds are
//!                times), from and to each as u8 kind (0 none, 1 inclusive, 2 exclusive)
//!                + i64 value, u32 limit, u32 max bytes; answered with FETCHED
//! 0x16 LENGTH    string topic, u32 partition (0xFFFF_FFFF: the whole topic)
//! 0x96 LENGTH    u64 records held
//! 0x17 SEEK      as ACK, then u64 value, then an optional u8 how (absent: 0). How 0:
//!                the consumer's committed offset becomes `value` (the next record it
//!                takes); 1 earliest (the oldest record held), 2 latest (the partition's
//!                next offset), 3 the first record at or after time `value` (i64 ms; the
//!                end if none), 4 `value` records past the committed offset (at most to
//!                the end). The consumer is made with the default options if new, its
//!                claim dropped and reclaims reset; an offset past the partition's next
//!                offset is refused (invalid). Answered once journaled and durable
//! 0x97 SOUGHT    u32 partition, u64 the committed offset now
//! ```
//! Kinds 0x18 to 0x2F are reserved and answered "unsupported".
//!
//! ## Record
//! ```text
//! u8 flags      bit 0: a key follows; bit 1: a timestamp follows (else the server
//!               stamps the time it took the record)
//! [i64 timestamp ms]
//! [bytes key]
//! bytes value
//! u16 headers; per header: string name, bytes value. Names starting "flowd-" are the
//!               engine's own and are refused in produced records.
//! ```
//!
//! ## Errors
//! A body that does not parse, an unknown kind, an unknown topic or job get an ERROR
//! frame and the connection stays open: the length prefix still delimits frames. A bad
//! version, or a length over the limit or under 12, gets an ERROR frame and the
//! connection is closed, because the framing itself cannot be trusted.

pub mod consumer;
pub mod error;
pub mod frame;
pub mod json;
pub mod message;
pub mod records;
pub mod routing;
pub mod status;
pub mod wire;

/// The batch format is the wire's too (PRODUCE_BATCH, BATCHES): what a client needs of it.
pub use crate::storage::batch::{BatchError, CheckedBatch, encode_batch};
pub use crate::storage::{Header, Record, RecordView};
pub use error::{ErrorCode, ProtocolError};
pub use frame::{FRAME_HEADER_BYTES, FrameHeader, Kind, PROTOCOL_VERSION, RawFrame, parse_frame};
pub use message::{FetchFrom, FetchRequest, Fetched, JobRequest, Metadata, ProduceGroup, Request};
pub use records::Run;
pub use wire::{OwnedWireRecord, WireRecord};
