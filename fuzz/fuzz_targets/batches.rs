//! Fuzzes a batch as a client sends it (PRODUCE_BATCH) or a server answers it (BATCHES):
//! `CheckedBatch::check` on arbitrary bytes, and on the same bytes with both CRCs made
//! right (so the fuzzer reaches the archive's checks behind them), then every view of a
//! batch it passes. A batch it passes must read back whole and check again once
//! stamped; nothing may panic, hang or over-read.
#![no_main]

use flowd::protocol::CheckedBatch;
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 48;

fn exercise(bytes: &[u8]) {
    if let Ok(mut batch) = CheckedBatch::check(bytes) {
        let mut count = 0u32;
        for view in batch.records() {
            let _ = (view.key(), view.value().len(), view.timestamp_ms());
            for (name, value) in view.headers() {
                let _ = (name.len(), value.len());
            }
            count += 1;
        }
        assert_eq!(count, batch.record_count());
        batch.stamp_time(1);
        assert!(CheckedBatch::check(batch.stamp(7, 3)).is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= HEADER {
        let mut fixed = data.to_vec();
        // batch_len: the bytes given, so that the CRCs cover what is there.
        let len = fixed.len() as u32;
        fixed[4..8].copy_from_slice(&len.to_le_bytes());
        fixed[40] = 2;
        let body = crc32c::crc32c(&fixed[HEADER..]);
        fixed[44..48].copy_from_slice(&body.to_le_bytes());
        let head = crc32c::crc32c(&fixed[4..HEADER]);
        fixed[0..4].copy_from_slice(&head.to_le_bytes());
        exercise(&fixed);
    }
});
