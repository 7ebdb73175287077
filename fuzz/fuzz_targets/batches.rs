//! Fuzzes a batch as a client sends it (PRODUCE_BATCH) or a server answers it (BATCHES):
//! `CheckedBatch::check` on arbitrary bytes, then every view of a batch it passes. A
//! batch it passes must read back whole; nothing may panic, hang or over-read.
#![no_main]

use flowd::protocol::CheckedBatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut batch) = CheckedBatch::check(data) {
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
});
