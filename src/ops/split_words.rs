//! `split_words`: one output per word of the value, keyed by the word.
//!
//! A word is a run of ASCII letters and digits or of non-ASCII bytes (so UTF-8 words stay
//! whole); ASCII letters are lowercased. Everything else separates words.

use crate::ops::{Carry, Input, OpError, Operator, Output};

pub struct SplitWords;

impl Operator for SplitWords {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError> {
        for word in words(input.value) {
            let word = word.to_ascii_lowercase();
            out.push(Output {
                timestamp_ms: input.timestamp_ms,
                key: Some(word.clone()),
                value: word,
            });
        }
        Ok(())
    }

    /// Each word is made from its line: it carries the client's headers.
    fn carries(&self) -> Carry {
        Carry::Headers
    }
}

/// The words of `text`, as slices of it.
pub fn words(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| !is_word_byte(b)).filter(|w| !w.is_empty())
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let input = Input {
            offset: 0,
            timestamp_ms: 7,
            now_ms: 0,
            key: None,
            value: text.as_bytes(),
        };
        SplitWords.on_record(&input, &mut out).unwrap();
        assert!(
            out.iter()
                .all(|o| o.key.as_deref() == Some(&o.value[..]) && o.timestamp_ms == 7)
        );
        out.into_iter()
            .map(|o| String::from_utf8(o.value).unwrap())
            .collect()
    }

    #[test]
    fn splits_as_specified() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("one", &["one"]),
            ("The cat, the HAT.", &["the", "cat", "the", "hat"]),
            ("don't stop", &["don", "t", "stop"]),
            ("a1 b2\tc3\nd4", &["a1", "b2", "c3", "d4"]),
            ("Grüße aus Köln", &["grüße", "aus", "köln"]),
            ("--x--", &["x"]),
        ];
        for (text, expected) in cases {
            assert_eq!(run(text), *expected, "input {text:?}");
        }
    }
}
