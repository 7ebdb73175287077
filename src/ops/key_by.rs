//! `key_by`: sets each record's key from its value, or from a jq expression over it.
//!
//! A string result becomes the key's bytes; any other JSON result becomes its JSON text.
//! An expression with no output is an error for that record.

use crate::config::{Part, Selector};
use crate::jq::{JqProgram, to_bytes};
use crate::ops::{Carry, Input, OpError, Operator, Output};

pub struct KeyBy {
    selector: Compiled,
}

enum Compiled {
    Part(Part),
    Jq(JqProgram),
}

impl KeyBy {
    pub fn new(selector: &Selector) -> Result<KeyBy, OpError> {
        let selector = match selector {
            Selector::Part(part) => Compiled::Part(*part),
            Selector::Jq(code) => Compiled::Jq(JqProgram::compile(code).map_err(OpError)?),
        };
        Ok(KeyBy { selector })
    }
}

impl Operator for KeyBy {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError> {
        let key = match &self.selector {
            Compiled::Part(Part::Key) => input.key.map(<[u8]>::to_vec),
            Compiled::Part(Part::Value) => Some(input.value.to_vec()),
            Compiled::Jq(program) => Some(select(program, input.value)?),
        };
        out.push(Output {
            timestamp_ms: input.timestamp_ms,
            key,
            value: input.value.to_vec(),
        });
        Ok(())
    }

    /// The record goes on as it came, with a key.
    fn carries(&self) -> Carry {
        Carry::HeadersAndNull
    }
}

/// The bytes a jq selector picks out of a JSON value (its first output).
pub fn select(program: &JqProgram, value: &[u8]) -> Result<Vec<u8>, OpError> {
    let mut key = None;
    program
        .run(value, |v| {
            if key.is_none() {
                let mut bytes = Vec::new();
                to_bytes(v, &mut bytes);
                key = Some(bytes);
            }
        })
        .map_err(OpError)?;
    key.ok_or_else(|| OpError("the key expression gave no output".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_by_cases() {
        type Case<'a> = (Selector, Option<&'a str>, &'a str, Result<Option<&'a str>, ()>);
        let cases: &[Case<'_>] = &[
            (Selector::Part(Part::Value), None, "v", Ok(Some("v"))),
            (Selector::Part(Part::Key), Some("k"), "v", Ok(Some("k"))),
            (Selector::Part(Part::Key), None, "v", Ok(None)),
            (
                Selector::Jq(".user".into()),
                None,
                r#"{"user":"ann"}"#,
                Ok(Some("ann")),
            ),
            (Selector::Jq(".id".into()), None, r#"{"id":42}"#, Ok(Some("42"))),
            (
                Selector::Jq(".a".into()),
                None,
                r#"{"a":{"b":1}}"#,
                Ok(Some(r#"{"b":1}"#)),
            ),
            (Selector::Jq("empty".into()), None, "{}", Err(())),
            (Selector::Jq(".user".into()), None, "nope", Err(())),
        ];
        for (selector, key, value, expected) in cases {
            let mut op = KeyBy::new(selector).unwrap();
            let mut out = Vec::new();
            let input = Input {
                offset: 3,
                timestamp_ms: 1,
                now_ms: 0,
                key: key.map(str::as_bytes),
                value: value.as_bytes(),
            };
            let got = op.on_record(&input, &mut out).map_err(|_| ());
            let got = got.map(|()| out[0].key.clone().map(|k| String::from_utf8(k).unwrap()));
            assert_eq!(
                got,
                expected.map(|k| k.map(str::to_owned)),
                "{selector:?} on {value}"
            );
            if let Some(o) = out.first() {
                assert_eq!(o.value, value.as_bytes());
            }
        }
    }
}
