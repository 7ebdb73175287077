//! Fuzzes a worker's stdout in both exec protocols: single JSON-line answers, batched
//! answer frames, and the readers that cut a stream into them (bounded lines and frames).
//! A worker can write anything; nothing may panic, hang or allocate past its bounds.
#![no_main]

use flowd::exec::{batched, json_lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = json_lines::decode_answer(bytes);
    let _ = batched::decode_answers(bytes);
    let _ = batched::decode_requests(bytes);
    let mut lines = json_lines::AnswerReader::new(bytes, 4096);
    while let Ok(Some(_)) = lines.next_batch() {}
    let mut frames = batched::AnswerReader::new(bytes, 4096);
    while let Ok(Some(_)) = frames.next_batch() {}
});
