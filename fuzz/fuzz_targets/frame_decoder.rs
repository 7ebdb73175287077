//! Fuzzes the server's read path: frames out of arbitrary bytes, then every request
//! and response body decoder on them. Nothing may panic, hang or over-read.
#![no_main]

use flowd::protocol::message::Response;
use flowd::protocol::{Request, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(frame)) = parse_frame(rest, 1 << 20) {
        let _ = Request::decode(&frame.header, frame.body);
        let _ = Response::decode(&frame.header, frame.body);
        rest = &rest[frame.len..];
    }
});
