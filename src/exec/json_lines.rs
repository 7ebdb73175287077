//! The JSON lines worker protocol: one request object per line on stdin, one answer
//! object per line on stdout.
//!
//! Request: `{"id":7,"key":"user-1","value":{"n":1}}`
//! - `id`: a number the answer must carry back.
//! - `key`: the record's key as a string, or `null`; a key that is not UTF-8 comes as
//!   `"key_base64"` instead.
//! - `value`: the record's value as JSON when it is a JSON text, otherwise as a string;
//!   a value that is not UTF-8 comes as `"value_base64"` instead.
//!
//! Answer, one of:
//! - `{"id":7,"values":[V, ...]}`: zero or more outputs, each keeping the input's key;
//! - `{"id":7,"records":[{"key":K,"value":V}, ...]}`: outputs with their own keys (`K` a
//!   string or `null`; leaving `key` out keeps the input's);
//! - `{"id":7,"error":"why"}`: the record failed; it is retried and then handled by the
//!   stage's `on_error` policy.
//!
//! An output value that is a JSON string is written as its text; any other JSON value is
//! written as JSON. Unknown fields are refused, so a typo (`"value"` for `"values"`) is
//! reported instead of silently writing nothing.

use std::io::{BufRead, BufReader, Read};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::exec::{ANSWERS_PER_EVENT_MAX, Answer, AnswerRecord, OutKey, Request, excerpt};

/// Appends one request line.
pub fn encode_request(out: &mut Vec<u8>, request: &Request<'_>) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(request.id.to_string().as_bytes());
    match request.key {
        None => out.extend_from_slice(b",\"key\":null"),
        Some(key) => match std::str::from_utf8(key) {
            Ok(text) => {
                out.extend_from_slice(b",\"key\":");
                write_string(out, text);
            }
            Err(_) => {
                out.extend_from_slice(b",\"key_base64\":\"");
                out.extend_from_slice(BASE64.encode(key).as_bytes());
                out.push(b'"');
            }
        },
    }
    let value = request.value;
    match std::str::from_utf8(value) {
        Ok(text) => {
            out.extend_from_slice(b",\"value\":");
            match serde_json::from_str::<&RawValue>(text) {
                // A JSON text spread over lines would break the line framing.
                Ok(json) if !json.get().contains(['\n', '\r']) => {
                    out.extend_from_slice(json.get().as_bytes())
                }
                Ok(json) => match serde_json::from_str::<serde_json::Value>(json.get()) {
                    Ok(parsed) => serde_json::to_writer(&mut *out, &parsed).expect("writing to a Vec"),
                    Err(_) => write_string(out, text),
                },
                Err(_) => write_string(out, text),
            }
        }
        Err(_) => {
            out.extend_from_slice(b",\"value_base64\":\"");
            out.extend_from_slice(BASE64.encode(value).as_bytes());
            out.push(b'"');
        }
    }
    out.extend_from_slice(b"}\n");
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("writing to a Vec");
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswer<'a> {
    id: u64,
    #[serde(default, borrow)]
    values: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    records: Option<Vec<RawRecord<'a>>>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    key: Option<Option<&'a str>>,
    #[serde(borrow)]
    value: &'a RawValue,
}

/// `key` present (even as `null`) is `Some`, absent is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<&'de str>>, D::Error> {
    Option::<&'de str>::deserialize(d).map(Some)
}

/// Parses one answer line (without its newline).
pub fn decode_answer(line: &[u8]) -> Result<Answer, String> {
    let raw: RawAnswer<'_> = serde_json::from_slice(line)
        .map_err(|e| format!("a line that is not a JSON answer ({e}): {}", excerpt(line)))?;
    if raw.error.is_some() && (raw.values.is_some() || raw.records.is_some()) {
        return Err(format!(
            "an answer with both an error and outputs for id {}: {}",
            raw.id,
            excerpt(line)
        ));
    }
    if let Some(error) = raw.error {
        return Ok(Answer {
            id: raw.id,
            outcome: Err(error),
        });
    }
    let mut records = Vec::new();
    for value in raw.values.unwrap_or_default() {
        records.push(AnswerRecord {
            key: OutKey::Input,
            value: value_bytes(value)?,
        });
    }
    for record in raw.records.unwrap_or_default() {
        records.push(AnswerRecord {
            key: match record.key {
                None => OutKey::Input,
                Some(key) => OutKey::Set(key.map(|k| k.as_bytes().to_vec())),
            },
            value: value_bytes(record.value)?,
        });
    }
    Ok(Answer {
        id: raw.id,
        outcome: Ok(records),
    })
}

/// A JSON string is written as its text, anything else as its JSON.
fn value_bytes(value: &RawValue) -> Result<Vec<u8>, String> {
    let text = value.get();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|e| format!("a bad string value ({e})"))?;
        Ok(s.into_bytes())
    } else {
        Ok(text.as_bytes().to_vec())
    }
}

/// Reads answer lines from a worker's stdout, a bounded batch at a time.
pub struct AnswerReader<R> {
    input: BufReader<R>,
    max_line: usize,
    line: Vec<u8>,
}

impl<R: Read> AnswerReader<R> {
    pub fn new(input: R, max_line: usize) -> AnswerReader<R> {
        AnswerReader {
            input: BufReader::with_capacity(64 << 10, input),
            max_line,
            line: Vec::new(),
        }
    }

    /// The next answers: waits for one line, then takes every further whole line that is
    /// already buffered. `Ok(None)` at the end of the stream.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Answer>>, String> {
        let mut answers = Vec::new();
        loop {
            if !answers.is_empty()
                && (answers.len() >= ANSWERS_PER_EVENT_MAX || !self.input.buffer().contains(&b'\n'))
            {
                return Ok(Some(answers));
            }
            match self.read_line()? {
                None if answers.is_empty() => return Ok(None),
                None => return Ok(Some(answers)),
                Some(()) => {
                    let line = trim_line(&self.line);
                    if line.is_empty() {
                        continue;
                    }
                    answers.push(decode_answer(line)?);
                }
            }
        }
    }

    /// One line into `self.line`, refusing one longer than `max_line`.
    fn read_line(&mut self) -> Result<Option<()>, String> {
        self.line.clear();
        loop {
            let buffer = self
                .input
                .fill_buf()
                .map_err(|e| format!("reading its stdout failed: {e}"))?;
            if buffer.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Err(format!(
                    "its output ended in the middle of a line: {}",
                    excerpt(&self.line)
                ));
            }
            let (taken, done) = match buffer.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buffer.len(), false),
            };
            if self.line.len() + taken > self.max_line + 1 {
                return Err(format!(
                    "a line longer than max_answer_bytes ({} bytes): {}",
                    self.max_line,
                    excerpt(&self.line)
                ));
            }
            self.line.extend_from_slice(&buffer[..taken]);
            self.input.consume(taken);
            if done {
                return Ok(Some(()));
            }
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: Option<&[u8]>, value: &[u8]) -> serde_json::Value {
        let mut out = Vec::new();
        encode_request(&mut out, &Request { id: 9, key, value });
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).expect("a JSON line")
    }

    #[test]
    fn requests_carry_json_values_as_json_and_text_as_strings() {
        let r = request(Some(b"k"), br#"{"n": 1}"#);
        assert_eq!(r, serde_json::json!({"id": 9, "key": "k", "value": {"n": 1}}));
        let r = request(None, b"the cat sat");
        assert_eq!(
            r,
            serde_json::json!({"id": 9, "key": null, "value": "the cat sat"})
        );
        let r = request(None, b"{\n \"a\": [1,\n 2]\n}");
        assert_eq!(r["value"], serde_json::json!({"a": [1, 2]}));
        let r = request(Some(&[0xff, 0]), &[0xfe, 1]);
        assert_eq!(r["key_base64"], "/wA=");
        assert_eq!(r["value_base64"], "/gE=");
        let r = request(None, b"line one\nline two");
        assert_eq!(r["value"], "line one\nline two");
    }

    #[test]
    fn answers_give_values_records_or_an_error() {
        let a = decode_answer(br#"{"id":3,"values":["text",{"a":1},2]}"#).unwrap();
        assert_eq!(a.id, 3);
        let records = a.outcome.unwrap();
        let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
        assert_eq!(values, [&b"text"[..], br#"{"a":1}"#, b"2"]);
        assert!(records.iter().all(|r| r.key == OutKey::Input));

        let a = decode_answer(
            br#"{"id":4,"records":[{"key":"x","value":"v"},{"key":null,"value":1},{"value":2}]}"#,
        )
        .unwrap();
        let keys: Vec<OutKey> = a.outcome.unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            [OutKey::Set(Some(b"x".to_vec())), OutKey::Set(None), OutKey::Input]
        );

        let a = decode_answer(br#"{"id":5,"error":"no such user"}"#).unwrap();
        assert_eq!(a.outcome, Err("no such user".into()));
        assert_eq!(decode_answer(br#"{"id":6}"#).unwrap().outcome, Ok(vec![]));
    }

    #[test]
    fn bad_answers_are_explained() {
        for (line, expect) in [
            (&b"hello"[..], "not a JSON answer"),
            (br#"{"id":1,"value":"x"}"#, "unknown field `value`"),
            (br#"{"values":[]}"#, "missing field `id`"),
            (br#"{"id":-1}"#, "not a JSON answer"),
            (
                br#"{"id":1,"error":"x","values":[1]}"#,
                "both an error and outputs",
            ),
        ] {
            let error = decode_answer(line).unwrap_err();
            assert!(error.contains(expect), "{error}");
        }
    }

    #[test]
    fn the_reader_batches_lines_and_bounds_them() {
        let input = b"{\"id\":1}\n\n{\"id\":2,\"values\":[1]}\r\n".to_vec();
        let mut reader = AnswerReader::new(&input[..], 1024);
        let mut ids = Vec::new();
        while let Some(batch) = reader.next_batch().unwrap() {
            ids.extend(batch.iter().map(|a| a.id));
        }
        assert_eq!(ids, [1, 2]);

        let long = format!("{{\"id\":1,\"values\":[\"{}\"]}}\n", "x".repeat(2000));
        let mut reader = AnswerReader::new(long.as_bytes(), 1024);
        assert!(
            reader
                .next_batch()
                .unwrap_err()
                .contains("longer than max_answer_bytes")
        );

        let mut reader = AnswerReader::new(&b"{\"id\":1"[..], 1024);
        assert!(reader.next_batch().unwrap_err().contains("middle of a line"));
    }

    proptest::proptest! {
        #[test]
        fn any_line_decodes_to_an_answer_or_an_error(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_answer(&line);
            let mut reader = AnswerReader::new(&line[..], 64);
            while let Ok(Some(_)) = reader.next_batch() {}
        }
    }
}
