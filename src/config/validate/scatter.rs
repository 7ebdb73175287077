//! Validation of `scatter_gather` stages: branch topics that lead to a reply, a merge, a
//! timeout and a partial-result policy.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{Validator, reaches_reply};
use crate::config::error::suggest;
use crate::config::raw::RawStage;
use crate::config::spec::{Merge, OpSpec, Partial, ScatterSpec, StageSpec};

pub const SCATTER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

impl Validator<'_, '_> {
    pub(super) fn scatter(
        &mut self,
        p: &toml::Table,
        span: Range<usize>,
        key: &str,
        topics: &[&str],
    ) -> OpSpec {
        let at = |k: &str| format!("{key}.{k}");
        let branches = match p.get("branches") {
            Some(toml::Value::Array(items)) if !items.is_empty() && items.iter().all(toml::Value::is_str) => {
                items
                    .iter()
                    .map(|t| {
                        self.topic_name_ref(
                            t.as_str().unwrap_or_default(),
                            span.clone(),
                            &at("branches"),
                            topics,
                        )
                    })
                    .collect()
            }
            _ => {
                self.error(
                    span.clone(),
                    at("branches"),
                    "scatter_gather needs the topics its copies go to".into(),
                    "branches = [\"search-parts\"] (each leading to a reply stage)".into(),
                );
                Vec::new()
            }
        };
        let every_partition = match p.get("every_partition") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => {
                self.error(
                    span.clone(),
                    at("every_partition"),
                    "every_partition is true or false".into(),
                    "every_partition = true sends a copy to every partition of each branch".into(),
                );
                false
            }
        };
        let merge = match p.get("merge") {
            Some(toml::Value::String(m)) if m == "concat" => Merge::Concat,
            Some(toml::Value::String(m)) if m == "sum" => Merge::Sum,
            Some(toml::Value::String(m)) if m == "max" => Merge::Max,
            Some(toml::Value::Table(t)) if t.len() == 1 && t.get("jq").is_some_and(toml::Value::is_str) => {
                let code = t.get("jq").and_then(toml::Value::as_str).unwrap_or_default();
                self.jq(code, span.clone(), &at("merge.jq"));
                Merge::Jq(code.to_owned())
            }
            other => {
                let hint = match other.and_then(toml::Value::as_str) {
                    Some(s) => suggest(s, &["concat", "sum", "max"]),
                    None => {
                        "merge = \"concat\", \"sum\", \"max\" or { jq = \"add\" } (over the array of answers)"
                            .into()
                    }
                };
                self.error(
                    span.clone(),
                    at("merge"),
                    "scatter_gather needs a merge of its branches' answers".into(),
                    hint,
                );
                Merge::Concat
            }
        };
        let timeout = match p.get("timeout") {
            None => SCATTER_TIMEOUT_DEFAULT,
            Some(toml::Value::String(t)) => self.duration_text(t, span.clone(), &at("timeout")),
            Some(_) => {
                self.error(
                    span.clone(),
                    at("timeout"),
                    "timeout is a duration".into(),
                    "timeout = \"200ms\"".into(),
                );
                SCATTER_TIMEOUT_DEFAULT
            }
        };
        let partial = match p.get("partial").and_then(toml::Value::as_str) {
            None if p.get("partial").is_none() => Partial::Answer,
            Some("answer") => Partial::Answer,
            Some("fail") => Partial::Fail,
            other => {
                let hint = suggest(other.unwrap_or_default(), &["answer", "fail"]);
                self.error(
                    span,
                    at("partial"),
                    "partial is what a record gets when not every branch answered in time".into(),
                    hint,
                );
                Partial::Answer
            }
        };
        OpSpec::ScatterGather(Box::new(ScatterSpec {
            branches,
            every_partition,
            merge,
            timeout,
            partial,
        }))
    }

    /// Every branch must lead to a reply stage, or no copy would ever be answered.
    pub(super) fn scatter_branches(&mut self, raw: &[Spanned<RawStage>], stages: &[StageSpec]) {
        for (i, stage) in stages.iter().enumerate() {
            let OpSpec::ScatterGather(scatter) = &stage.op else {
                continue;
            };
            for &branch in &scatter.branches {
                if !reaches_reply(branch, stages) {
                    self.error(
                        raw[i].get_ref().op.span(),
                        format!("stage \"{}\".op.scatter_gather.branches", stage.name),
                        "a branch topic has no reply stage downstream, so no copy would ever be answered"
                            .into(),
                        "add a stage with op = \"reply\" that reads the branch topic (or a topic after it)"
                            .into(),
                    );
                }
            }
        }
    }
}
