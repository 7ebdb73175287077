//! External worker processes: the `exec` operator's protocols, processes and pool.
//!
//! A worker is any program that reads requests on stdin and writes answers on stdout,
//! in one of two protocols (byte-level descriptions in `json_lines.rs` and `batched.rs`,
//! user-facing ones in `dataflows/README.md`). Each request carries an id; the worker
//! answers each id once, in any order, with zero or more output records or an error.
//! Everything a worker writes to stderr goes to flowd's log under the worker's name.
//!
//! `pool.rs` keeps a stage's workers running (restart with backoff, recycle after
//! `restart_after`, kill on `timeout`), hands out records up to `concurrency` per worker,
//! and reports each record as answered, refused or lost. The stage task
//! (`runtime/exec_stage.rs`) decides what a lost record becomes: retried, skipped,
//! dead-lettered or the stage disabled.

pub mod batched;
pub mod error;
pub mod json_lines;
pub mod pool;
pub mod process;

pub use error::ExecError;

/// One record for a worker, borrowed from the log.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub id: u64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// A worker's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u64,
    /// The records it produced, or why it refused the record.
    pub outcome: Result<Vec<AnswerRecord>, String>,
}

/// One output record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRecord {
    pub key: OutKey,
    pub value: Vec<u8>,
}

/// The key of an output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutKey {
    /// The key of the input record.
    Input,
    /// This key (`None`: no key).
    Set(Option<Vec<u8>>),
}

/// Answers a reader hands over at once, at most: bounds one event's memory along with
/// `max_answer_bytes`.
pub const ANSWERS_PER_EVENT_MAX: usize = 4096;

/// Text from a worker, cut for a log line.
pub fn excerpt(bytes: &[u8]) -> String {
    const EXCERPT_BYTES: usize = 120;
    let cut = &bytes[..bytes.len().min(EXCERPT_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > EXCERPT_BYTES {
        text.push('…');
    }
    text
}
