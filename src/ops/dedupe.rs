//! `dedupe`: drops a record whose key (or value) was seen among the last `capacity`
//! distinct ones; the oldest entry is forgotten first.

use std::collections::{HashSet, VecDeque};

use crate::config::Part;
use crate::ops::{Carry, Checkpoint, Input, OpError, Operator, Output};

pub struct Dedupe {
    by: Part,
    capacity: usize,
    seen: HashSet<Vec<u8>>,
    /// Entries in the order first seen, with the offset that brought them.
    order: VecDeque<(Vec<u8>, u64)>,
}

impl Dedupe {
    pub fn new(by: Part, capacity: usize) -> Dedupe {
        Dedupe {
            by,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }
}

impl Operator for Dedupe {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError> {
        let probe = match self.by {
            Part::Key => input.key,
            Part::Value => Some(input.value),
        };
        if let Some(probe) = probe {
            if self.seen.contains(probe) {
                return Ok(());
            }
            if self.order.len() == self.capacity {
                let (oldest, _) = self.order.pop_front().expect("capacity is at least 1");
                self.seen.remove(&oldest);
            }
            self.seen.insert(probe.to_vec());
            self.order.push_back((probe.to_vec(), input.offset));
        }
        out.push(Output {
            timestamp_ms: input.timestamp_ms,
            key: input.key.map(<[u8]>::to_vec),
            value: input.value.to_vec(),
        });
        Ok(())
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            state_start: self.order.front().map(|(_, offset)| *offset),
            watermark_ms: i64::MIN,
        }
    }

    /// A record seen first goes on as it came.
    fn carries(&self) -> Carry {
        Carry::HeadersAndNull
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_cases() {
        // (by, capacity, [(key, value)], kept values)
        type Case<'a> = (Part, usize, &'a [(Option<&'a str>, &'a str)], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (
                Part::Value,
                10,
                &[(None, "a"), (None, "b"), (None, "a")],
                &["a", "b"],
            ),
            (
                Part::Key,
                10,
                &[(Some("k"), "1"), (Some("k"), "2"), (Some("j"), "3")],
                &["1", "3"],
            ),
            (Part::Key, 10, &[(None, "1"), (None, "1")], &["1", "1"]),
            // Capacity 2: "a" is forgotten when "c" arrives, so it passes again.
            (
                Part::Value,
                2,
                &[(None, "a"), (None, "b"), (None, "c"), (None, "a"), (None, "c")],
                &["a", "b", "c", "a"],
            ),
        ];
        for (by, capacity, records, kept) in cases {
            let mut op = Dedupe::new(*by, *capacity);
            let mut out = Vec::new();
            for (offset, (key, value)) in records.iter().enumerate() {
                let input = Input {
                    offset: offset as u64,
                    timestamp_ms: 0,
                    now_ms: 0,
                    key: key.map(str::as_bytes),
                    value: value.as_bytes(),
                };
                op.on_record(&input, &mut out).unwrap();
            }
            let got: Vec<&str> = out
                .iter()
                .map(|o| std::str::from_utf8(&o.value).unwrap())
                .collect();
            assert_eq!(got, *kept, "{by:?} cap {capacity} {records:?}");
        }
    }

    #[test]
    fn checkpoint_names_the_oldest_remembered_offset() {
        let mut op = Dedupe::new(Part::Value, 2);
        let mut out = Vec::new();
        for (offset, v) in ["a", "b", "c"].iter().enumerate() {
            let input = Input {
                offset: offset as u64 + 10,
                timestamp_ms: 0,
                now_ms: 0,
                key: None,
                value: v.as_bytes(),
            };
            op.on_record(&input, &mut out).unwrap();
        }
        assert_eq!(op.checkpoint().state_start, Some(11));
    }
}
