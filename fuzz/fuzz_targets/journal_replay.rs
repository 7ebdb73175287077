//! Fuzzes the consumer journal's replay on arbitrary records: the bytes are cut into
//! records by 2-byte length prefixes and replayed as a journal would be. A journal is
//! written by flowd itself, but a damaged or foreign one must give an error, never a
//! panic.
#![no_main]

use flowd::consumer::journal::{Replayed, replay_values};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut records = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        let len = len.min(rest.len());
        records.push(&rest[..len]);
        rest = &rest[len..];
    }
    let mut state = Replayed::default();
    let _ = replay_values(
        records.iter().enumerate().map(|(i, r)| (i as u64, *r)),
        &mut state,
    );
});
