//! What fits where: the bounds a record and a batch of a topic live within, the room
//! every record keeps for the headers the engine adds, and the one check every producer
//! runs before a record goes to its partition (client doors, stages, exec answers, state
//! changes, scatter merges, sources, ack-and-commit and dead letters).
//!
//! The rule that keeps a pass-through stage from losing anything: a record a client (or
//! a source) hands in may take at most `record_bytes_max - ENGINE_HEADERS_RESERVE`, so
//! that the same record with the engine's headers added (provenance, a reply address, a
//! dead letter's reason and origin, a transaction mark) still fits a record of a topic
//! with the same segments. What does not fit is refused where it is made, with an error
//! that says so: a client hears `too_large`, a stage applies its `on_error`.

use crate::config::TopicSpec;
use crate::runtime::provenance::SOURCE_HEADER;
use crate::storage::{batch_bytes_max_for, header_bytes_bound, record_bytes_max_for, stored_bytes_bound};

/// Bytes every record leaves free for the headers the engine adds on its way.
pub const ENGINE_HEADERS_RESERVE: u64 = 4096;
/// Longest dead-letter reason kept in its header; a longer one is cut (and says so).
pub const DEAD_REASON_BYTES_MAX: usize = 1024;
/// Digits a provenance stamp's offsets take at most: `u64`, `+`, `u32`, a space.
const STAMP_DIGITS_MAX: usize = 20 + 1 + 10 + 1;

const _: () = assert!(
    (header_bytes_bound(64, DEAD_REASON_BYTES_MAX) + 3 * header_bytes_bound(64, 512)) as u64
        <= ENGINE_HEADERS_RESERVE
);

/// The limits of one topic's records and batches, as its logs enforce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The largest frame (record and framing) a partition takes.
    pub record_bytes_max: u64,
    /// The most frame bytes one atomic batch can take: it never spans segments.
    pub batch_bytes_max: u64,
}

impl Bounds {
    pub fn of(topic: &TopicSpec) -> Bounds {
        Bounds {
            record_bytes_max: record_bytes_max_for(topic.segment_bytes),
            batch_bytes_max: batch_bytes_max_for(topic.segment_bytes),
        }
    }

    /// The largest frame a client or a source may hand in: the engine's headers must
    /// still fit on top of it.
    pub fn ingest_record_bytes_max(&self) -> u64 {
        self.record_bytes_max.saturating_sub(ENGINE_HEADERS_RESERVE)
    }

    /// The longest value a keyless record without headers may have at ingest: how long
    /// a source's line may be before it is cut into pieces.
    pub fn ingest_value_bytes_max(&self) -> usize {
        let overhead = stored_record_bytes(None, &[], []) as usize;
        (self.ingest_record_bytes_max() as usize).saturating_sub(overhead) & !7
    }
}

/// The most bytes a record with this key, value and headers takes in a segment.
pub fn stored_record_bytes<'a>(
    key: Option<&[u8]>,
    value: &[u8],
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> u64 {
    let headers: usize = headers
        .into_iter()
        .map(|(name, value)| header_bytes_bound(name.len(), value.len()))
        .sum();
    stored_bytes_bound(key.map(<[u8]>::len), value.len(), headers) as u64
}

/// What the provenance stamp of `producer` can add to the last record of a batch.
pub fn stamp_bytes(producer: &str) -> u64 {
    header_bytes_bound(SOURCE_HEADER.len(), STAMP_DIGITS_MAX + producer.len()) as u64
}

/// A dead letter's reason, cut to `DEAD_REASON_BYTES_MAX` (at a character boundary).
pub fn dead_reason(why: &str) -> String {
    if why.len() <= DEAD_REASON_BYTES_MAX {
        return why.to_owned();
    }
    let mut end = DEAD_REASON_BYTES_MAX - 20;
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ... (cut)", &why[..end])
}

/// A record (or a batch) that does not fit where it goes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} takes {bytes} bytes, more than the {max} bytes topic \"{topic}\" takes{hint}")]
pub struct TooLarge {
    /// What was measured: "a record", "an output", "the records for partition 3", ...
    pub what: String,
    pub bytes: u64,
    pub max: u64,
    pub topic: String,
    /// What to do about it, starting with "; ".
    pub hint: &'static str,
}

/// The hint for a single record over its bound.
pub const RECORD_HINT: &str =
    "; records take at most 1 MiB with their headers (less in segments under 1 MiB + 8 KiB): split it";
/// The hint for a batch over a segment.
pub const BATCH_HINT: &str =
    "; one batch must fit one segment: send fewer records at once, or raise segment_bytes";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_at_the_ingest_bound_still_fits_with_every_engine_header() {
        let bounds = Bounds {
            record_bytes_max: record_bytes_max_for(256 << 10),
            batch_bytes_max: batch_bytes_max_for(256 << 10),
        };
        // The largest value a client may send, keyless, without headers.
        let mut value_len = bounds.ingest_record_bytes_max() as usize;
        while stored_record_bytes(None, &vec![0; value_len], []) > bounds.ingest_record_bytes_max() {
            value_len -= 1;
        }
        let value = vec![0; value_len];
        let producer = format!("stage:{}:{}:4294967295", "s".repeat(128), "t".repeat(128));
        let stamp = format!("{} {producer}", u64::MAX);
        let reason = dead_reason(&"x".repeat(5000));
        let from = format!("{}/4294967295/{}", "t".repeat(128), u64::MAX);
        let headers = [
            (SOURCE_HEADER, stamp.as_bytes()),
            ("flowd-reply", &[0u8; 20][..]),
            ("flowd-dead-reason", reason.as_bytes()),
            ("flowd-dead-from", from.as_bytes()),
            ("flowd-txn", &[b'x'; 64][..]),
        ];
        assert!(stored_record_bytes(None, &value, headers) <= bounds.record_bytes_max);
        assert!(stamp_bytes(&producer) >= header_bytes_bound(SOURCE_HEADER.len(), stamp.len()) as u64);
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(dead_reason("short"), "short");
        let long = "é".repeat(2000);
        let cut = dead_reason(&long);
        assert!(cut.len() <= DEAD_REASON_BYTES_MAX, "{}", cut.len());
        assert!(cut.ends_with("... (cut)"));
    }
}
