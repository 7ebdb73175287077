//! Provenance headers: how a restarted producer knows which of its outputs already
//! landed, so that replaying its input writes each output exactly once.
//!
//! Every batch a producer (a source, or a stage reading one input partition) sends to
//! an output partition is appended atomically, in send order, and its last record
//! carries `flowd-src = "<end> <producer>"`: every output of the producer's inputs
//! below `end` is in that partition. After a crash the runtime scans each output
//! partition from the producer's last committed end position and, on replay, drops the
//! outputs of inputs below the `end` found. End-of-input markers are records with a
//! `flowd-end` header naming the producer that ended.

use std::collections::HashMap;

use crate::storage::{PartitionLog, RecordView};

pub const SOURCE_HEADER: &str = "flowd-src";
pub const END_HEADER: &str = "flowd-end";

/// The producer id of a stage reading one input partition.
pub fn stage_producer(stage: &str, topic: &str, partition: u32) -> String {
    format!("stage:{stage}:{topic}:{partition}")
}

/// The producer id of an exec stage's dead letters from one input partition.
pub fn dead_letter_producer(stage_producer: &str) -> String {
    format!("{stage_producer}:dead")
}

/// The producer id of a file source (`file` is set for directory sources).
pub fn source_producer(source: &str, file: Option<&str>) -> String {
    match file {
        Some(file) => format!("source:{source}:{file}"),
        None => format!("source:{source}"),
    }
}

pub fn encode(producer: &str, end: u64) -> Vec<u8> {
    format!("{end} {producer}").into_bytes()
}

pub fn decode(value: &[u8]) -> Option<(u64, &str)> {
    let text = std::str::from_utf8(value).ok()?;
    let (end, producer) = text.split_once(' ')?;
    Some((end.parse().ok()?, producer))
}

/// The producer whose end this record marks, if it is an end-of-input marker.
pub fn end_marker<'a>(view: &RecordView<'a>) -> Option<&'a str> {
    view.headers()
        .find(|(name, _)| *name == END_HEADER)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

/// Per producer, the highest provenance end found in `log` from offset `from` on.
pub fn scan(log: &PartitionLog, from: u64) -> HashMap<String, u64> {
    let mut found: HashMap<String, u64> = HashMap::new();
    for view in log.read(from) {
        for (name, value) in view.headers() {
            if name == SOURCE_HEADER
                && let Some((end, producer)) = decode(value)
            {
                let slot = found.entry(producer.to_owned()).or_default();
                *slot = (*slot).max(end);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let producer = stage_producer("split", "lines", 3);
        assert_eq!(decode(&encode(&producer, 42)), Some((42, "stage:split:lines:3")));
        assert_eq!(decode(b"x y"), None);
        assert_eq!(decode(b"12"), None);
        assert_eq!(decode(&[0xff, b' ', b'a']), None);
    }
}
