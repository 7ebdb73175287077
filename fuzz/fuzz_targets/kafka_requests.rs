//! Fuzzes what a Kafka client sends: a request frame's head and body for every API and
//! version the door serves (`server::kafka::request`), then, for a produce, each
//! partition's record batches through `records::from_kafka` (batch headers, CRCs, the
//! four codecs within a limit, every record). The same bytes go in once more as record
//! batches with their length, magic and CRC made right, so the fuzzer reaches the
//! records behind the CRC. Records a batch gives must encode back to Kafka and read
//! again to the same records. Nothing may panic, hang or take memory past the limit.
#![no_main]

use bytes::Bytes;
use flowd::protocol::OwnedWireRecord;
use flowd::server::kafka::records::from_kafka;
use flowd::server::kafka::records::to_kafka;
use flowd::server::kafka::request::{self, Body, Opened};
use libfuzzer_sys::fuzz_target;

/// What one partition's records may come to, decompressed (the door's
/// `ingest.max_frame_bytes`, smaller here so that bombs are cut short quickly).
const LIMIT: usize = 1 << 20;

/// A record batch's header before its records (format 2).
const BATCH_HEADER: usize = 61;

fn records(batches: &[u8]) {
    let Ok(encoded) = from_kafka(batches, LIMIT) else {
        return;
    };
    // The limit holds for the records in flowd's encoding too (one atomic append).
    assert!(
        encoded.bytes.len() <= LIMIT,
        "{} bytes encoded",
        encoded.bytes.len()
    );
    let first: Vec<OwnedWireRecord> = encoded
        .records()
        .expect("records a batch gave read back")
        .iter()
        .map(|r| r.to_owned())
        .collect();
    assert_eq!(first.len(), encoded.count);
    let items: Vec<(u64, OwnedWireRecord)> = first
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, r)| (i as u64, r))
        .collect();
    let again = to_kafka(&items).expect("records a batch gave encode to Kafka");
    if first.is_empty() {
        return;
    }
    let back = from_kafka(&again, usize::MAX).expect("a batch flowd wrote reads back");
    let second: Vec<OwnedWireRecord> = back.records().unwrap().iter().map(|r| r.to_owned()).collect();
    assert_eq!(first, second, "records through Kafka's format and back");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Opened::Served(head, rest)) = request::open(Bytes::copy_from_slice(data))
        && let Ok(Body::Produce(produce)) = request::body(head, rest)
    {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                if let Some(batches) = &partition.records {
                    records(batches);
                }
            }
        }
    }
    records(data);
    if data.len() >= BATCH_HEADER {
        let mut fixed = data.to_vec();
        let length = (fixed.len() - 12) as i32;
        fixed[8..12].copy_from_slice(&length.to_be_bytes());
        fixed[16] = 2;
        let crc = crc32c::crc32c(&fixed[21..]);
        fixed[17..21].copy_from_slice(&crc.to_be_bytes());
        records(&fixed);
    }
});
