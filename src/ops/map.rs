//! `map` and `filter`: jq expressions over a record's JSON value.
//!
//! `map` emits one record per output of the expression (none drops the record, several
//! fan it out), keeping key and timestamp. `filter` keeps the record unchanged when the
//! expression's first output is true in jq's sense (anything but false and null).

use crate::jq::JqProgram;
use crate::ops::{Carry, Input, OpError, Operator, Output};

pub struct Map {
    program: JqProgram,
}

impl Map {
    pub fn new(program: JqProgram) -> Map {
        Map { program }
    }
}

impl Operator for Map {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError> {
        let start = out.len();
        let result = self.program.run_json(input.value, |value| {
            out.push(Output {
                timestamp_ms: input.timestamp_ms,
                key: input.key.map(<[u8]>::to_vec),
                value,
            });
        });
        if let Err(e) = result {
            // All or nothing per record, so a replay emits the same.
            out.truncate(start);
            return Err(OpError(e));
        }
        Ok(())
    }

    /// Each output is made from its input: it carries the client's headers.
    fn carries(&self) -> Carry {
        Carry::Headers
    }
}

pub struct Filter {
    program: JqProgram,
}

impl Filter {
    pub fn new(program: JqProgram) -> Filter {
        Filter { program }
    }
}

impl Operator for Filter {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError> {
        if self.program.test(input.value).map_err(OpError)? {
            out.push(Output {
                timestamp_ms: input.timestamp_ms,
                key: input.key.map(<[u8]>::to_vec),
                value: input.value.to_vec(),
            });
        }
        Ok(())
    }

    /// A kept record goes on as it came.
    fn carries(&self) -> Carry {
        Carry::HeadersAndNull
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(value: &str) -> Input<'_> {
        Input {
            offset: 0,
            timestamp_ms: 5,
            now_ms: 0,
            key: Some(b"k"),
            value: value.as_bytes(),
        }
    }

    fn values(out: &[Output]) -> Vec<String> {
        out.iter()
            .map(|o| String::from_utf8(o.value.clone()).unwrap())
            .collect()
    }

    #[test]
    fn map_cases() {
        type Case<'a> = (&'a str, &'a str, Result<&'a [&'a str], &'a str>);
        let cases: &[Case<'_>] = &[
            (".a", r#"{"a":1}"#, Ok(&["1"])),
            (".a", r#"{"b":1}"#, Ok(&["null"])),
            (
                "{x: .a, y: (.b + 1)}",
                r#"{"a":"s","b":2}"#,
                Ok(&[r#"{"x":"s","y":3}"#]),
            ),
            (".[]", "[1,2,3]", Ok(&["1", "2", "3"])),
            ("empty", "1", Ok(&[])),
            (".name | ascii_upcase", r#"{"name":"ann"}"#, Ok(&["\"ANN\""])),
            (".a", "not json", Err("not JSON")),
            (".a + 1", r#"{"a":"x"}"#, Err("jq error")),
            ("1, error(\"boom\")", "null", Err("jq error")),
        ];
        for (code, value, expected) in cases {
            let mut op = Map::new(JqProgram::compile(code).unwrap());
            let mut out = Vec::new();
            let got = op.on_record(&input(value), &mut out);
            match expected {
                Ok(want) => {
                    assert_eq!(got, Ok(()), "{code} on {value}");
                    assert_eq!(values(&out), *want, "{code} on {value}");
                    assert!(
                        out.iter()
                            .all(|o| o.key.as_deref() == Some(b"k") && o.timestamp_ms == 5)
                    );
                }
                Err(fragment) => {
                    let error = got.expect_err(code).0;
                    assert!(error.contains(fragment), "{code} on {value}: {error}");
                    assert!(out.is_empty(), "a failed record emits nothing");
                }
            }
        }
    }

    #[test]
    fn filter_cases() {
        let cases: &[(&str, &str, Result<bool, ()>)] = &[
            (".n > 3", r#"{"n":5}"#, Ok(true)),
            (".n > 3", r#"{"n":2}"#, Ok(false)),
            (".ok", r#"{"ok":null}"#, Ok(false)),
            (".ok", r#"{"ok":0}"#, Ok(true)),
            ("empty", "{}", Ok(false)),
            (".kind == \"click\"", r#"{"kind":"click"}"#, Ok(true)),
            (".n > 3", "{", Err(())),
        ];
        for (code, value, expected) in cases {
            let mut op = Filter::new(JqProgram::compile(code).unwrap());
            let mut out = Vec::new();
            let got = op.on_record(&input(value), &mut out).map_err(|_| ());
            assert_eq!(got.map(|()| !out.is_empty()), *expected, "{code} on {value}");
            if let Some(o) = out.first() {
                assert_eq!(
                    o.value,
                    value.as_bytes(),
                    "filter passes the value through unchanged"
                );
            }
        }
    }
}
