//! Fuzzes what an HTTP client sends besides the head hyper parses: record bodies (a JSON
//! array or NDJSON lines) and query strings. Nothing may panic.
#![no_main]

use flowd::server::api::parse_from;
use flowd::server::http::{parse_records, query_param};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = parse_records(bytes);
    if let Ok(query) = std::str::from_utf8(bytes) {
        for name in [
            "partition",
            "offset",
            "limit",
            "key",
            "timeout",
            "create",
            "count",
        ] {
            if let Some(value) = query_param(query, name) {
                let _ = parse_from(&value);
                let _ = humantime::parse_duration(&value);
            }
        }
    }
});
