//! `state`: a value kept per key (a counter, a map, a small document), changed by each
//! record with that key through a jq expression, and written out after every change.
//!
//! The expression sees `{"key": K, "state": S, "value": V}` (`S` is `null` for a new key;
//! `V` is the record's value as JSON, or as a string when it is not JSON) and its first
//! output is the key's new state. Every change is emitted as a record `(K, new state)`:
//! the output topic is the state's changelog. A restarted stage starts from the state
//! the changelog holds, and skips the inputs whose change is already in it (those below
//! the replay's skip point of the change's partition), so every record changes its key
//! exactly once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::value::RawValue;

use crate::jq::{JqProgram, to_json};
use crate::ops::{Input, OpError, Operator, Output};
use crate::protocol::routing::partition_of_bytes;

/// The states of one stage on one input partition, shared with whoever reads them by key.
pub type States = Rc<RefCell<HashMap<Vec<u8>, Vec<u8>>>>;

pub struct State {
    program: JqProgram,
    states: States,
    /// Per output partition: the changes of inputs below this are in the changelog.
    skip: Vec<u64>,
    /// The most bytes a change (key and new state) may take: it must fit one changelog
    /// record. A bigger one is refused and the state stays as it was.
    change_bytes_max: usize,
}

impl State {
    /// `states` as rebuilt from the changelog; `skip` as the replay computed it (one
    /// entry per output partition).
    pub fn new(program: JqProgram, states: States, skip: Vec<u64>, change_bytes_max: usize) -> State {
        State {
            program,
            states,
            skip,
            change_bytes_max,
        }
    }
}

impl Operator for State {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError> {
        let key = input.key.ok_or_else(|| {
            OpError("a state stage keeps one state per key, and this record has no key".into())
        })?;
        let partitions = self.skip.len() as u32;
        if partitions > 0 && input.offset < self.skip[partition_of_bytes(key, partitions) as usize] {
            // Its change is in the changelog already, and so in the state rebuilt from it.
            return Ok(());
        }
        let mut document = Vec::with_capacity(input.value.len() + 64);
        document.extend_from_slice(b"{\"key\":");
        serde_json::to_writer(&mut document, &String::from_utf8_lossy(key)).expect("writing to a Vec");
        document.extend_from_slice(b",\"state\":");
        match self.states.borrow().get(key) {
            Some(state) => document.extend_from_slice(state),
            None => document.extend_from_slice(b"null"),
        }
        document.extend_from_slice(b",\"value\":");
        match std::str::from_utf8(input.value)
            .ok()
            .filter(|text| serde_json::from_str::<&RawValue>(text).is_ok())
        {
            Some(json) => document.extend_from_slice(json.as_bytes()),
            None if input.value.is_empty() => document.extend_from_slice(b"null"),
            None => serde_json::to_writer(&mut document, &String::from_utf8_lossy(input.value))
                .expect("writing to a Vec"),
        }
        document.push(b'}');
        let mut new_state = None;
        self.program
            .run(&document, |v| {
                if new_state.is_none() {
                    let mut bytes = Vec::new();
                    to_json(v, &mut bytes);
                    new_state = Some(bytes);
                }
            })
            .map_err(OpError)?;
        let new_state =
            new_state.ok_or_else(|| OpError("the state's update expression gave no output".into()))?;
        if key.len() + new_state.len() > self.change_bytes_max {
            // The changelog could not hold it: changing the state anyway would lose the
            // change at the next restart.
            return Err(OpError(format!(
                "the new state of key \"{}\" takes {} bytes, more than one changelog record holds ({} with its key); the state is unchanged",
                String::from_utf8_lossy(key),
                new_state.len(),
                self.change_bytes_max
            )));
        }
        self.states.borrow_mut().insert(key.to_vec(), new_state.clone());
        out.push(Output {
            timestamp_ms: input.timestamp_ms,
            key: Some(key.to_vec()),
            value: new_state,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(offset: u64, key: Option<&'a [u8]>, value: &'a [u8]) -> Input<'a> {
        Input {
            offset,
            timestamp_ms: 7,
            now_ms: 0,
            key,
            value,
        }
    }

    #[test]
    fn a_counter_counts_per_key_and_writes_each_change() {
        let states = States::default();
        let program = JqProgram::compile("(.state // 0) + 1").unwrap();
        let mut op = State::new(program, states.clone(), vec![0, 0], 1 << 20);
        let mut out = Vec::new();
        for (i, key) in [b"a", b"b", b"a"].iter().enumerate() {
            op.on_record(&input(i as u64, Some(&key[..]), b"{}"), &mut out)
                .unwrap();
        }
        let written: Vec<(&[u8], &[u8])> = out
            .iter()
            .map(|o| (o.key.as_deref().unwrap(), o.value.as_slice()))
            .collect();
        assert_eq!(written, [(&b"a"[..], &b"1"[..]), (b"b", b"1"), (b"a", b"2")]);
        assert_eq!(states.borrow().get(&b"a"[..]).map(Vec::as_slice), Some(&b"2"[..]));
    }

    #[test]
    fn documents_see_key_state_and_value() {
        let program = JqProgram::compile(r#"(.state // {}) + {(.value.field): .key}"#).unwrap();
        let mut op = State::new(program, States::default(), vec![0], 1 << 20);
        let mut out = Vec::new();
        op.on_record(&input(0, Some(b"k"), br#"{"field":"x"}"#), &mut out)
            .unwrap();
        op.on_record(&input(1, Some(b"k"), br#"{"field":"y"}"#), &mut out)
            .unwrap();
        assert_eq!(out[1].value, br#"{"x":"k","y":"k"}"#);
        // Text that is not JSON arrives as a string.
        let program = JqProgram::compile(".value").unwrap();
        let mut op = State::new(program, States::default(), vec![0], 1 << 20);
        op.on_record(&input(0, Some(b"k"), b"plain text"), &mut out)
            .unwrap();
        assert_eq!(out[2].value, br#""plain text""#);
    }

    #[test]
    fn replayed_inputs_whose_change_is_in_the_changelog_change_nothing() {
        let states = States::default();
        states.borrow_mut().insert(b"a".to_vec(), b"5".to_vec());
        let program = JqProgram::compile("(.state // 0) + 1").unwrap();
        let q = partition_of_bytes(b"a", 2) as usize;
        let mut skip = vec![0, 0];
        skip[q] = 10;
        let mut op = State::new(program, states.clone(), skip, 1 << 20);
        let mut out = Vec::new();
        op.on_record(&input(9, Some(b"a"), b""), &mut out).unwrap();
        assert!(out.is_empty());
        op.on_record(&input(10, Some(b"a"), b""), &mut out).unwrap();
        assert_eq!(out[0].value, b"6");
    }

    #[test]
    fn records_without_a_key_or_an_answer_are_errors() {
        let program = JqProgram::compile("empty").unwrap();
        let mut op = State::new(program, States::default(), vec![0], 1 << 20);
        let mut out = Vec::new();
        assert!(
            op.on_record(&input(0, None, b"1"), &mut out)
                .unwrap_err()
                .0
                .contains("no key")
        );
        assert!(
            op.on_record(&input(0, Some(b"k"), b"1"), &mut out)
                .unwrap_err()
                .0
                .contains("no output")
        );
    }

    #[test]
    fn a_change_too_large_for_the_changelog_is_refused_and_the_state_stays() {
        let states = States::default();
        let program = JqProgram::compile(r#"(.state // "") + .value"#).unwrap();
        let mut op = State::new(program, states.clone(), vec![0], 16);
        let mut out = Vec::new();
        op.on_record(&input(0, Some(b"k"), br#""12345""#), &mut out)
            .unwrap();
        let error = op
            .on_record(&input(1, Some(b"k"), br#""1234567890""#), &mut out)
            .unwrap_err();
        assert!(error.0.contains("the state is unchanged"), "{}", error.0);
        assert_eq!(out.len(), 1, "no change written");
        assert_eq!(states.borrow()[&b"k"[..]], br#""12345""#.to_vec());
    }
}
