//! The batched worker protocol: length-prefixed binary frames, many records per frame.
//! All integers are little-endian.
//!
//! Request frame (flowd → worker, on stdin):
//! ```text
//! u32 body length (bytes after this field)
//! u32 record count
//! per record:
//!   u64 id
//!   u32 key length, 0xFFFFFFFF for no key; then the key bytes
//!   u32 value length; then the value bytes
//! ```
//! Answer frame (worker → flowd, on stdout), answering any requests in any grouping:
//! ```text
//! u32 body length (bytes after this field; at most max_answer_bytes)
//! u32 answer count
//! per answer:
//!   u64 id
//!   u8  status: 0 = outputs follow, 1 = error
//!   status 0: u32 output count; per output:
//!             u32 key length (0xFFFFFFFF no key, 0xFFFFFFFE the input's key); key bytes
//!             u32 value length; value bytes
//!   status 1: u32 message length; the message (UTF-8)
//! ```
//! A record's bytes after its id (`key length, key, value length, value`) are exactly one
//! output in the answer layout, so an echo worker copies them through.

use std::io::Read;

use crate::exec::{Answer, AnswerRecord, OutKey, Request, excerpt};

const NO_KEY: u32 = u32::MAX;
const INPUT_KEY: u32 = u32::MAX - 1;
const STATUS_OK: u8 = 0;
const STATUS_ERROR: u8 = 1;
/// Bytes of a frame before its first record or answer.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Starts a request frame in an empty buffer.
pub fn start_frame(out: &mut Vec<u8>) {
    debug_assert!(out.is_empty(), "one frame per buffer");
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
}

/// Appends one record to the frame `out` holds.
pub fn push_request(out: &mut Vec<u8>, request: &Request<'_>) {
    out.extend_from_slice(&request.id.to_le_bytes());
    push_key(out, request.key.map_or(NO_KEY, |k| k.len() as u32), request.key);
    push_bytes(out, request.value);
}

/// Fills in the header of the frame `out` holds: its length and record count.
pub fn finish_frame(out: &mut [u8], count: u32) {
    let body = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&body.to_le_bytes());
    out[4..8].copy_from_slice(&count.to_le_bytes());
}

fn push_key(out: &mut Vec<u8>, tag: u32, key: Option<&[u8]>) {
    out.extend_from_slice(&tag.to_le_bytes());
    if let Some(key) = key {
        out.extend_from_slice(key);
    }
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A cursor over a frame body that refuses to read past its end.
struct Cursor<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.body.len())
            .ok_or_else(|| {
                format!(
                    "a frame that ends early: {} bytes wanted at byte {} of a {}-byte body",
                    n,
                    self.at,
                    self.body.len()
                )
            })?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A count of items that take at least `min_bytes` each: one that cannot fit in what
    /// is left is a lie, refused before anything is allocated for it.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, String> {
        let count = self.u32()? as usize;
        let left = self.body.len() - self.at;
        if count > left / min_bytes {
            return Err(format!("a frame claiming {count} {what} in {left} bytes"));
        }
        Ok(count)
    }
}

/// Parses one answer frame body (after its length field).
pub fn decode_answers(body: &[u8]) -> Result<Vec<Answer>, String> {
    let mut c = Cursor { body, at: 0 };
    let count = c.count(13, "answers")?;
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        let id = c.u64()?;
        let outcome = match c.u8()? {
            STATUS_OK => {
                let outputs = c.count(8, &format!("outputs for id {id}"))?;
                let mut records = Vec::with_capacity(outputs);
                for _ in 0..outputs {
                    let key = match c.u32()? {
                        NO_KEY => OutKey::Set(None),
                        INPUT_KEY => OutKey::Input,
                        n => OutKey::Set(Some(c.take(n as usize)?.to_vec())),
                    };
                    let n = c.u32()? as usize;
                    records.push(AnswerRecord {
                        key,
                        value: c.take(n)?.to_vec(),
                    });
                }
                Ok(records)
            }
            STATUS_ERROR => {
                let n = c.u32()? as usize;
                Err(String::from_utf8_lossy(c.take(n)?).into_owned())
            }
            other => {
                return Err(format!(
                    "an answer for id {id} with status {other} (0 or 1 expected)"
                ));
            }
        };
        answers.push(Answer { id, outcome });
    }
    if c.at != body.len() {
        return Err(format!(
            "a frame with {} bytes left after its {count} answers",
            body.len() - c.at
        ));
    }
    Ok(answers)
}

/// Reads answer frames from a worker's stdout.
pub struct AnswerReader<R> {
    input: R,
    max_frame: usize,
    body: Vec<u8>,
}

impl<R: Read> AnswerReader<R> {
    pub fn new(input: R, max_frame: usize) -> AnswerReader<R> {
        AnswerReader {
            input,
            max_frame,
            body: Vec::new(),
        }
    }

    /// The answers of the next frame (a frame holding more than a bounded batch is still
    /// handed over whole: its size is bounded by `max_answer_bytes`). `Ok(None)` at the
    /// end of the stream.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Answer>>, String> {
        let mut length = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.input.read(&mut length[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err("its output ended inside a frame's length".into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading its stdout failed: {e}")),
            }
        }
        let raw = length;
        let length = u32::from_le_bytes(raw) as usize;
        if length > self.max_frame {
            return Err(format!(
                "a frame of {length} bytes, over max_answer_bytes ({}); a worker that writes text \
                 instead of batched frames does this (its first bytes: {:?})",
                self.max_frame,
                excerpt(&raw)
            ));
        }
        self.body.clear();
        self.body.resize(length, 0);
        self.input
            .read_exact(&mut self.body)
            .map_err(|e| format!("its output ended inside a {length}-byte frame ({e})"))?;
        decode_answers(&self.body).map(Some)
    }
}

/// The worker's side, for workers written in Rust (the bench's echo worker) and tests:
/// the records of one request frame body.
pub fn decode_requests(body: &[u8]) -> Result<Vec<Request<'_>>, String> {
    let mut c = Cursor { body, at: 0 };
    let count = c.count(16, "records")?;
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        let id = c.u64()?;
        let key = match c.u32()? {
            NO_KEY => None,
            n => Some(c.take(n as usize)?),
        };
        let n = c.u32()? as usize;
        requests.push(Request {
            id,
            key,
            value: c.take(n)?,
        });
    }
    Ok(requests)
}

/// The worker's side: appends one answer to an answer frame begun with [`start_frame`].
pub fn push_answer(out: &mut Vec<u8>, answer: &Answer) {
    out.extend_from_slice(&answer.id.to_le_bytes());
    match &answer.outcome {
        Ok(records) => {
            out.push(STATUS_OK);
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for record in records {
                match &record.key {
                    OutKey::Input => push_key(out, INPUT_KEY, None),
                    OutKey::Set(None) => push_key(out, NO_KEY, None),
                    OutKey::Set(Some(k)) => push_key(out, k.len() as u32, Some(k)),
                }
                push_bytes(out, &record.value);
            }
        }
        Err(message) => {
            out.push(STATUS_ERROR);
            push_bytes(out, message.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_body(frame: &[u8]) -> &[u8] {
        let n = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(n, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn requests_round_trip() {
        let mut frame = Vec::new();
        start_frame(&mut frame);
        push_request(
            &mut frame,
            &Request {
                id: 1,
                key: Some(b"k"),
                value: b"v1",
            },
        );
        push_request(
            &mut frame,
            &Request {
                id: 2,
                key: None,
                value: b"",
            },
        );
        finish_frame(&mut frame, 2);
        let requests = decode_requests(frame_body(&frame)).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(
            (requests[0].id, requests[0].key, requests[0].value),
            (1, Some(&b"k"[..]), &b"v1"[..])
        );
        assert_eq!(
            (requests[1].id, requests[1].key, requests[1].value),
            (2, None, &b""[..])
        );
    }

    #[test]
    fn answers_round_trip_through_a_stream() {
        let answers = vec![
            Answer {
                id: 7,
                outcome: Ok(vec![
                    AnswerRecord {
                        key: OutKey::Input,
                        value: b"a".to_vec(),
                    },
                    AnswerRecord {
                        key: OutKey::Set(None),
                        value: b"b".to_vec(),
                    },
                    AnswerRecord {
                        key: OutKey::Set(Some(b"k".to_vec())),
                        value: Vec::new(),
                    },
                ]),
            },
            Answer {
                id: 8,
                outcome: Err("nope".into()),
            },
            Answer {
                id: 9,
                outcome: Ok(vec![]),
            },
        ];
        let mut frame = Vec::new();
        start_frame(&mut frame);
        for a in &answers {
            push_answer(&mut frame, a);
        }
        finish_frame(&mut frame, answers.len() as u32);
        let stream = [frame.clone(), frame].concat();
        let mut reader = AnswerReader::new(&stream[..], 1 << 20);
        assert_eq!(reader.next_batch().unwrap().unwrap(), answers);
        assert_eq!(reader.next_batch().unwrap().unwrap(), answers);
        assert_eq!(reader.next_batch().unwrap(), None);
    }

    #[test]
    fn an_echo_copies_a_record_through() {
        let mut frame = Vec::new();
        start_frame(&mut frame);
        push_request(
            &mut frame,
            &Request {
                id: 5,
                key: Some(b"key"),
                value: b"value",
            },
        );
        finish_frame(&mut frame, 1);
        // The record's bytes after its id are one output.
        let record = &frame[FRAME_HEADER_BYTES + 8..];
        let mut answer = Vec::new();
        start_frame(&mut answer);
        answer.extend_from_slice(&5u64.to_le_bytes());
        answer.push(STATUS_OK);
        answer.extend_from_slice(&1u32.to_le_bytes());
        answer.extend_from_slice(record);
        finish_frame(&mut answer, 1);
        let decoded = decode_answers(frame_body(&answer)).unwrap();
        let records = decoded[0].outcome.as_ref().unwrap();
        assert_eq!(records[0].key, OutKey::Set(Some(b"key".to_vec())));
        assert_eq!(records[0].value, b"value");
    }

    #[test]
    fn bad_frames_are_explained_not_trusted() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 0, 0, 0], "claiming 1 answers"),
            (vec![0, 0], "ends early"),
            (vec![0xff, 0xff, 0xff, 0x0f], "claiming"),
            (
                [&1u32.to_le_bytes()[..], &7u64.to_le_bytes(), &[9u8, 0, 0, 0, 0]].concat(),
                "status 9",
            ),
            ([&0u32.to_le_bytes()[..], &[1, 2]].concat(), "bytes left"),
            (
                [
                    &1u32.to_le_bytes()[..],
                    &7u64.to_le_bytes(),
                    &[0u8],
                    &1u32.to_le_bytes(),
                    &NO_KEY.to_le_bytes(),
                    &100u32.to_le_bytes(),
                ]
                .concat(),
                "ends early",
            ),
        ];
        for (body, expect) in cases {
            let error = decode_answers(&body).unwrap_err();
            assert!(error.contains(expect), "{error}");
        }
        let huge = (2u32 << 20).to_le_bytes();
        let mut reader = AnswerReader::new(&huge[..], 1 << 20);
        assert!(reader.next_batch().unwrap_err().contains("over max_answer_bytes"));
        let torn = [&10u32.to_le_bytes()[..], &[0, 0]].concat();
        let mut reader = AnswerReader::new(&torn[..], 1 << 20);
        assert!(reader.next_batch().unwrap_err().contains("ended inside"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_to_answers_or_an_error(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_answers(&body);
            let _ = decode_requests(&body);
            let framed = [&(body.len() as u32).to_le_bytes()[..], &body].concat();
            let mut reader = AnswerReader::new(&framed[..], 1 << 20);
            let _ = reader.next_batch();
        }
    }
}
