//! Validation of the `exec` operator's pool options and of a stage's `on_error` policy.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::error::suggest;
use crate::config::spec::{ErrorPolicy, ExecProtocol, ExecSpec, OnFailure, OpSpec};

const WORKERS_MAX: i64 = 1024;
const CONCURRENCY_MAX: i64 = 65_536;
const TIMEOUT_MIN: Duration = Duration::from_millis(10);
const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
const ANSWER_BYTES_MIN: u64 = 1 << 10;
const ANSWER_BYTES_MAX: u64 = 1 << 30;
const MAX_RECLAIMS_MAX: i64 = 1_000_000;

/// Records in flight per worker unless `concurrency` says otherwise: enough to keep a
/// worker busy while its answers travel back; more for the batched protocol, whose
/// frames hold many records.
pub const CONCURRENCY_JSON: usize = 64;
pub const CONCURRENCY_BATCHED: usize = 1024;
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
pub const ANSWER_BYTES_DEFAULT: usize = 16 << 20;

impl Validator<'_, '_> {
    pub(super) fn exec(&mut self, p: &toml::Table, span: Range<usize>, key: &str) -> OpSpec {
        let at = |k: &str| format!("{key}.{k}");
        let command = match p.get("command") {
            Some(toml::Value::Array(items))
                if !items.is_empty()
                    && items.iter().all(toml::Value::is_str)
                    && items[0].as_str().is_some_and(|s| !s.is_empty()) =>
            {
                items
                    .iter()
                    .map(|i| i.as_str().unwrap_or_default().to_owned())
                    .collect()
            }
            Some(toml::Value::String(s)) => {
                self.error(
                    span.clone(),
                    at("command"),
                    format!("command is a list of the program and its arguments, not one string \"{s}\""),
                    format!("write command = {:?}", s.split_whitespace().collect::<Vec<_>>()),
                );
                Vec::new()
            }
            _ => {
                self.error(
                    span.clone(),
                    at("command"),
                    "exec needs the command that starts a worker".into(),
                    "command = [\"python3\", \"worker.py\"] (a program and its arguments)".into(),
                );
                Vec::new()
            }
        };
        let protocol = match p.get("protocol") {
            None => ExecProtocol::JsonLines,
            Some(toml::Value::String(s)) if ExecProtocol::from_name(s).is_some() => {
                ExecProtocol::from_name(s).expect("just checked")
            }
            Some(other) => {
                let hint = match other.as_str() {
                    Some(s) => suggest(s, &ExecProtocol::NAMES),
                    None => "protocol = \"json\" or \"batched\"".into(),
                };
                self.error(
                    span.clone(),
                    at("protocol"),
                    format!("unknown worker protocol {other}"),
                    hint,
                );
                ExecProtocol::JsonLines
            }
        };
        let workers = self
            .count(p, "workers", 1, WORKERS_MAX, span.clone(), key)
            .map(|n| n as usize);
        let concurrency = self
            .count(p, "concurrency", 1, CONCURRENCY_MAX, span.clone(), key)
            .map_or(
                match protocol {
                    ExecProtocol::JsonLines => CONCURRENCY_JSON,
                    ExecProtocol::Batched => CONCURRENCY_BATCHED,
                },
                |n| n as usize,
            );
        let restart_after = self
            .count(p, "restart_after", 1, i64::MAX, span.clone(), key)
            .map(|n| n as u64);
        let timeout = match p.get("timeout") {
            None => TIMEOUT_DEFAULT,
            Some(toml::Value::String(s)) => {
                let d = self.duration_text(s, span.clone(), &at("timeout"));
                if !(TIMEOUT_MIN..=TIMEOUT_MAX).contains(&d) {
                    self.error(
                        span.clone(),
                        at("timeout"),
                        format!("timeout {s} is out of range"),
                        "use from 10ms to 24h".into(),
                    );
                }
                d.clamp(TIMEOUT_MIN, TIMEOUT_MAX)
            }
            Some(other) => {
                self.error(
                    span.clone(),
                    at("timeout"),
                    format!("{other} is not a duration"),
                    "write e.g. timeout = \"30s\"".into(),
                );
                TIMEOUT_DEFAULT
            }
        };
        let env = match p.get("env") {
            None => Vec::new(),
            Some(toml::Value::Table(vars)) => {
                let mut env = Vec::new();
                for (name, value) in vars {
                    match value.as_str() {
                        Some(v) if !name.is_empty() && !name.contains('=') => {
                            env.push((name.clone(), v.to_owned()))
                        }
                        _ => self.error(
                            span.clone(),
                            at(&format!("env.{name}")),
                            "an environment variable is a name (no `=`) and a string".into(),
                            "env = { PYTHONUNBUFFERED = \"1\" }".into(),
                        ),
                    }
                }
                env
            }
            Some(_) => {
                self.error(
                    span.clone(),
                    at("env"),
                    "env is a table of variable names and string values".into(),
                    "env = { PYTHONUNBUFFERED = \"1\" }".into(),
                );
                Vec::new()
            }
        };
        let dir = match p.get("dir") {
            None => self.base_dir.clone(),
            Some(toml::Value::String(d)) => self.base_dir.join(d),
            Some(_) => {
                self.error(
                    span.clone(),
                    at("dir"),
                    "dir is a path".into(),
                    "dir = \"workers\" (relative to the dataflow file)".into(),
                );
                self.base_dir.clone()
            }
        };
        let max_answer_bytes = match p.get("max_answer_bytes") {
            None => ANSWER_BYTES_DEFAULT,
            Some(v) => {
                let size = self.size(&Spanned::new(span.clone(), v.clone()), &at("max_answer_bytes"));
                match size {
                    Some(n) if (ANSWER_BYTES_MIN..=ANSWER_BYTES_MAX).contains(&n) => n as usize,
                    Some(_) => {
                        self.error(
                            span.clone(),
                            at("max_answer_bytes"),
                            "max_answer_bytes is out of range".into(),
                            "use from 1KiB to 1GiB".into(),
                        );
                        ANSWER_BYTES_DEFAULT
                    }
                    None => ANSWER_BYTES_DEFAULT,
                }
            }
        };
        OpSpec::Exec(Box::new(ExecSpec {
            command,
            workers,
            concurrency,
            restart_after,
            timeout,
            env,
            dir,
            protocol,
            max_answer_bytes,
        }))
    }

    /// An optional whole number from `min` to `max`.
    fn count(
        &mut self,
        p: &toml::Table,
        name: &str,
        min: i64,
        max: i64,
        span: Range<usize>,
        key: &str,
    ) -> Option<i64> {
        match p.get(name)? {
            toml::Value::Integer(n) if (min..=max).contains(n) => Some(*n),
            _ => {
                let range = if max == i64::MAX {
                    format!("at least {min}")
                } else {
                    format!("from {min} to {max}")
                };
                self.error(
                    span,
                    format!("{key}.{name}"),
                    format!("{name} must be a whole number {range}"),
                    format!("write e.g. {name} = {min}"),
                );
                None
            }
        }
    }

    /// A stage's `on_error`: what becomes of a record it cannot write (an exec worker's
    /// failures, retried `max_reclaims` times first; an operator error or an output too
    /// large for its topic, at once, for every stage).
    pub(super) fn on_error(
        &mut self,
        raw: &Spanned<toml::Value>,
        key: &str,
        topics: &[&str],
        is_exec: bool,
    ) -> ErrorPolicy {
        let span = raw.span();
        let toml::Value::Table(p) = raw.get_ref() else {
            self.error(
                span,
                key,
                "on_error is a table".into(),
                "on_error = { max_reclaims = 5, then = \"dead_letter\", dead_letter = \"failed\" }".into(),
            );
            return ErrorPolicy::default_for(is_exec);
        };
        let mut policy = ErrorPolicy::default_for(is_exec);
        if !is_exec && p.contains_key("max_reclaims") {
            self.error(
                span.clone(),
                format!("{key}.max_reclaims"),
                "max_reclaims applies to exec stages: a built-in operator fails the same way every time"
                    .into(),
                "remove max_reclaims".into(),
            );
        } else if let Some(n) = self.count(p, "max_reclaims", 0, MAX_RECLAIMS_MAX, span.clone(), key) {
            policy.max_reclaims = n as u32;
        }
        let dead_letter = p.get("dead_letter");
        let then = match p.get("then") {
            None => None,
            Some(toml::Value::String(then)) => Some(then.as_str()),
            Some(other) => Some(other.as_str().unwrap_or("(not a string)")),
        };
        policy.then = match (then, dead_letter) {
            (None, None) => policy.then,
            (Some("disable"), None) => OnFailure::Disable,
            (Some("continue"), None) => OnFailure::Continue,
            (Some("dead_letter"), Some(toml::Value::String(topic))) => OnFailure::DeadLetter(
                self.topic_name_ref(topic, span.clone(), &format!("{key}.dead_letter"), topics),
            ),
            (Some("dead_letter"), _) => {
                self.error(
                    span,
                    format!("{key}.dead_letter"),
                    "then = \"dead_letter\" needs the topic the failed records go to".into(),
                    "add dead_letter = \"failed\" and declare [[topic]] name = \"failed\"".into(),
                );
                OnFailure::Disable
            }
            (None | Some("disable" | "continue"), Some(_)) => {
                self.error(
                    span,
                    format!("{key}.dead_letter"),
                    "a dead-letter topic is used only with then = \"dead_letter\"".into(),
                    "add then = \"dead_letter\", or remove dead_letter".into(),
                );
                OnFailure::Disable
            }
            (Some(other), _) => {
                let hint = suggest(other, &["disable", "continue", "dead_letter"]);
                self.error(
                    span,
                    format!("{key}.then"),
                    format!("unknown then \"{other}\""),
                    hint,
                );
                OnFailure::Disable
            }
        };
        policy
    }
}
