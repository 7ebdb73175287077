//! The merges of a `scatter_gather` stage: its branches' answers, in branch order, into
//! one value. Answers are JSON when they parse, strings otherwise.

use serde_json::Value;

use crate::config::Merge;
use crate::jq::{JqProgram, to_json};

/// A compiled merge.
pub enum Merger {
    Concat,
    Sum,
    Max,
    Jq(JqProgram),
}

impl Merger {
    pub fn new(merge: &Merge) -> Result<Merger, String> {
        Ok(match merge {
            Merge::Concat => Merger::Concat,
            Merge::Sum => Merger::Sum,
            Merge::Max => Merger::Max,
            Merge::Jq(code) => Merger::Jq(JqProgram::compile(code)?),
        })
    }

    /// Merges `answers` (each a record value) into one value, as JSON text.
    pub fn merge(&self, answers: &[&[u8]]) -> Result<Vec<u8>, String> {
        let values: Vec<Value> = answers.iter().map(|a| as_json(a)).collect();
        let merged = match self {
            Merger::Concat => Value::Array(
                values
                    .into_iter()
                    .flat_map(|v| match v {
                        Value::Array(items) => items,
                        other => vec![other],
                    })
                    .collect(),
            ),
            Merger::Sum => {
                let numbers = numbers(&values, "sum")?;
                if numbers.iter().all(|n| n.is_i64()) {
                    let mut total: i64 = 0;
                    for n in &numbers {
                        total = total
                            .checked_add(n.as_i64().unwrap_or_default())
                            .ok_or("the sum overflows a 64-bit integer")?;
                    }
                    Value::from(total)
                } else {
                    Value::from(numbers.iter().filter_map(|n| n.as_f64()).sum::<f64>())
                }
            }
            Merger::Max => {
                let numbers = numbers(&values, "max")?;
                numbers
                    .into_iter()
                    .max_by(|a, b| {
                        let (a, b) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
                        a.total_cmp(&b)
                    })
                    .map_or(Value::Null, Value::Number)
            }
            Merger::Jq(program) => {
                let input = serde_json::to_vec(&Value::Array(values)).expect("JSON serializes");
                let mut first = None;
                program.run(&input, |v| {
                    if first.is_none() {
                        let mut bytes = Vec::new();
                        to_json(v, &mut bytes);
                        first = Some(bytes);
                    }
                })?;
                return first.ok_or_else(|| "the merge expression gave no output".to_owned());
            }
        };
        Ok(serde_json::to_vec(&merged).expect("JSON serializes"))
    }
}

fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn numbers(values: &[Value], merge: &str) -> Result<Vec<serde_json::Number>, String> {
    values
        .iter()
        .map(|v| match v {
            Value::Number(n) => Ok(n.clone()),
            other => Err(format!(
                "merge \"{merge}\" takes numbers, and a branch answered {other}"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(merge: Merge, answers: &[&str]) -> Result<String, String> {
        let answers: Vec<&[u8]> = answers.iter().map(|a| a.as_bytes()).collect();
        Merger::new(&merge)?
            .merge(&answers)
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn each_merge_gives_one_value() {
        assert_eq!(
            merge(Merge::Concat, &["[1,2]", "3", "text"]).unwrap(),
            r#"[1,2,3,"text"]"#
        );
        assert_eq!(merge(Merge::Concat, &[]).unwrap(), "[]");
        assert_eq!(merge(Merge::Sum, &["1", "2", "39"]).unwrap(), "42");
        assert_eq!(merge(Merge::Sum, &["1.5", "2"]).unwrap(), "3.5");
        assert_eq!(merge(Merge::Max, &["1", "7.5", "3"]).unwrap(), "7.5");
        assert_eq!(merge(Merge::Max, &[]).unwrap(), "null");
        assert_eq!(
            merge(
                Merge::Jq("add | sort_by(-.score) | .[:2]".into()),
                &[r#"[{"score":1},{"score":5}]"#, r#"[{"score":3}]"#]
            )
            .unwrap(),
            r#"[{"score":5},{"score":3}]"#
        );
    }

    #[test]
    fn bad_answers_for_a_merge_are_errors() {
        assert!(
            merge(Merge::Sum, &["1", "\"x\""])
                .unwrap_err()
                .contains("takes numbers")
        );
        assert!(
            merge(Merge::Sum, &["9223372036854775807", "1"])
                .unwrap_err()
                .contains("overflows")
        );
        assert!(
            merge(Merge::Jq("empty".into()), &["1"])
                .unwrap_err()
                .contains("no output")
        );
    }
}
