//! Fuzzes everything a peer can send: whole peer frames, then every body decoder (HELLO,
//! PRODUCE with the records it carries, FETCH, ACKED, ANSWER, PRODUCE_AGAIN, ERROR, and the hand-over bodies
//! CLAIM/CLAIMED/COPY/COPIED, the replication bodies REPLICA_FETCH/REPLICA_DATA with the
//! batches it carries/FENCE/FENCED) on the same bytes. Nothing may panic, hang or over-read.
#![no_main]

use flowd::cluster::{data, frame, handover, replication, transport};
use flowd::protocol::wire::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = frame::decode(bytes);
    if let Ok(head) = bytes.get(..4).unwrap_or_default().try_into() {
        let _ = frame::frame_len(head);
    }
    let _ = transport::decode_hello(bytes);
    if let Ok(produce) = data::decode_produce(bytes) {
        // What the owner does with a PRODUCE: every record is validated before the batch
        // is handed on; a lying count fails on the bytes, not on an allocation.
        let mut cursor = Cursor::new(produce.records);
        for _ in 0..produce.count {
            if cursor.record().is_err() {
                break;
            }
        }
    }
    let _ = data::decode_fetch(bytes);
    let _ = data::decode_acked(bytes);
    let _ = data::decode_stale(bytes);
    let _ = data::decode_answer(bytes);
    let _ = data::decode_produce_again(bytes);
    let _ = data::decode_produce_led(bytes);
    let _ = frame::read_error(bytes);
    let _ = handover::decode_claim(bytes);
    let count = bytes.first().copied().unwrap_or(0) as usize;
    let _ = handover::decode_claimed(bytes.get(1..).unwrap_or_default(), count);
    let _ = handover::decode_copy(bytes);
    let _ = replication::decode_fetch(bytes);
    let _ = replication::decode_fence(bytes);
    let _ = replication::decode_fenced(bytes);
    if let Ok(replication::ReplicaData::Batches { batches, .. }) = replication::decode_data(bytes) {
        // What a follower does with each before appending it.
        for batch in batches {
            let _ = flowd::protocol::CheckedBatch::check(batch);
        }
    }
    if let Ok(copied) = handover::decode_copied(bytes) {
        let mut cursor = Cursor::new(copied.records);
        for _ in 0..copied.count {
            if cursor.record().is_err() {
                break;
            }
        }
    }
});
