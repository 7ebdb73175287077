//! Provenance headers: how a restarted producer knows which of its outputs already
//! landed, so that replaying its input writes each output exactly once.
//!
//! Every batch a producer (a source, or a stage reading one input partition) sends to
//! an output partition is appended atomically, in send order, and its last record
//! carries `flowd-src = "<point> <producer>"`, where the point says how far the
//! producer's outputs are in that partition: `<end>` means every output of the inputs
//! below `end`; `<input>+<index>` means those and the first `index` outputs of input
//! `input` too (one input's outputs took more than one batch). After a crash the
//! runtime scans each output partition from the producer's last committed end position
//! and, on replay, drops every output the point found covers. End-of-input markers are
//! records with a `flowd-end` header naming the producer that ended.

use std::collections::HashMap;

use crate::storage::{PartitionLog, RecordView};

pub const SOURCE_HEADER: &str = "flowd-src";
/// A replayed output's own point (`already.rs`): the outputs of its input up to and with
/// it, as `<input>+<index + 1>`; the batch's producer is its last record's `flowd-src`.
pub const REPLAY_HEADER: &str = "flowd-re";
pub const END_HEADER: &str = crate::protocol::wire::END_MARKER_HEADER;

/// The producer id of a stage reading one input partition.
pub fn stage_producer(stage: &str, topic: &str, partition: u32) -> String {
    format!("stage:{stage}:{topic}:{partition}")
}

/// The producer id of an exec stage's dead letters from one input partition.
pub fn dead_letter_producer(stage_producer: &str) -> String {
    format!("{stage_producer}:dead")
}

/// The producer id of a file source (`file` is set for directory sources). A source read
/// on every peer of a cluster (`per_peer`) is one producer per peer: `peer` is the
/// peer's storage id, the same across its restarts.
pub fn source_producer(source: &str, peer: Option<u64>, file: Option<&str>) -> String {
    let on = peer.map(|p| format!("@{p:016x}")).unwrap_or_default();
    match file {
        Some(file) => format!("source:{source}{on}:{file}"),
        None => format!("source:{source}{on}"),
    }
}

/// How far a producer's outputs are in one partition: every output of the inputs below
/// `input`, and the first `index` outputs of input `input`. Ordered as the outputs are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Point {
    pub input: u64,
    pub index: u32,
}

impl Point {
    /// Every output of the inputs below `end`.
    pub fn whole(end: u64) -> Point {
        Point { input: end, index: 0 }
    }

    /// Whether output `index` of the input at `input` is among those this point covers.
    pub fn covers(&self, input: u64, index: u32) -> bool {
        (input, index) < (self.input, self.index)
    }

    /// The first input not wholly covered, for a producer with at most one output per
    /// input (a covered first output means the input is done).
    pub fn next_input(&self) -> u64 {
        self.input + u64::from(self.index > 0)
    }
}

pub fn encode(producer: &str, point: Point) -> Vec<u8> {
    let mut out = encode_point(point);
    out.push(b' ');
    out.extend_from_slice(producer.as_bytes());
    out
}

pub fn decode(value: &[u8]) -> Option<(Point, &str)> {
    let text = std::str::from_utf8(value).ok()?;
    let (point, producer) = text.split_once(' ')?;
    Some((decode_point(point.as_bytes())?, producer))
}

/// A point alone: `<input>` or `<input>+<index>`.
pub fn encode_point(point: Point) -> Vec<u8> {
    match point.index {
        0 => point.input.to_string().into_bytes(),
        index => format!("{}+{index}", point.input).into_bytes(),
    }
}

pub fn decode_point(value: &[u8]) -> Option<Point> {
    let point = std::str::from_utf8(value).ok()?;
    Some(match point.split_once('+') {
        None => Point::whole(point.parse().ok()?),
        Some((input, index)) => Point {
            input: input.parse().ok()?,
            index: index.parse().ok().filter(|i| *i > 0)?,
        },
    })
}

/// The producer whose end this record marks, if it is an end-of-input marker.
pub fn end_marker<'a>(view: &RecordView<'a>) -> Option<&'a str> {
    ended_by(view.headers())
}

/// The producer an end-of-input marker with these headers names, if they make one.
pub fn ended_by<'a>(mut headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Option<&'a str> {
    headers
        .find(|(name, _)| *name == END_HEADER)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

/// Per producer, the furthest provenance point found in `log` from offset `from` on.
pub fn scan(log: &PartitionLog, from: u64) -> HashMap<String, Point> {
    let mut found: HashMap<String, Point> = HashMap::new();
    for view in log.read(from) {
        for (name, value) in view.headers() {
            if name == SOURCE_HEADER
                && let Some((point, producer)) = decode(value)
            {
                let slot = found.entry(producer.to_owned()).or_default();
                *slot = (*slot).max(point);
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
        let whole = Point::whole(42);
        let part = Point { input: 41, index: 7 };
        assert_eq!(
            decode(&encode(&producer, whole)),
            Some((whole, "stage:split:lines:3"))
        );
        assert_eq!(
            decode(&encode(&producer, part)),
            Some((part, "stage:split:lines:3"))
        );
        assert_eq!(encode("p", whole), b"42 p", "whole points keep the old form");
        for bad in [
            &b"x y"[..],
            b"12",
            b"1+ p",
            b"1+0 p",
            b"+1 p",
            b"1+x p",
            &[0xff, b' ', b'a'],
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn points_order_as_outputs_do() {
        let part = Point { input: 5, index: 2 };
        assert!(Point::whole(5) < part && part < Point::whole(6));
        assert!(part.covers(4, 1000) && part.covers(5, 1) && !part.covers(5, 2) && !part.covers(6, 0));
        assert_eq!((part.next_input(), Point::whole(5).next_input()), (6, 5));
    }
}
