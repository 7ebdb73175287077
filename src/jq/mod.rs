//! jq expressions: compiled once by jaq, run per JSON value. The common forms run on
//! a fast path (`plan.rs`, `fast.rs`, over `tape.rs`'s borrowed view of the value's
//! bytes) that gives up to jaq on anything it is not sure to do as jaq does.

#[cfg(test)]
mod differential;
mod fast;
mod plan;
mod tape;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq program.
pub struct JqProgram {
    filter: Filter,
    /// The fast path's plan, when every form of the program has one.
    plan: Option<plan::Plan>,
}

impl std::fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JqProgram")
    }
}

/// Most outputs one run may give; a runaway expression (`range(1e9)`) is cut off.
pub const JQ_OUTPUTS_MAX: usize = 10_000;

impl JqProgram {
    /// Compiles `code`; the error says where and what, in words.
    pub fn compile(code: &str) -> Result<JqProgram, String> {
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errors| describe_load_errors(code, errors))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let mut out = Vec::new();
                for (_file, errs) in errors {
                    for (name, undefined) in errs {
                        out.push(format!("undefined {} `{name}`", undefined.as_str()));
                    }
                }
                out.join("; ")
            })?;
        Ok(JqProgram {
            filter,
            plan: plan::plan(code),
        })
    }

    /// Runs the program on a JSON document, giving every output as JSON text, in order.
    pub fn run_json(&self, json: &[u8], mut each: impl FnMut(Vec<u8>)) -> Result<(), String> {
        if let Some(plan) = &self.plan
            && let Ok(out) = fast::run(plan, json)
        {
            out.into_iter().for_each(each);
            return Ok(());
        }
        self.run(json, |v| {
            let mut out = Vec::new();
            to_json(v, &mut out);
            each(out);
        })
    }

    /// Whether the program's first output on a JSON document is true in jq's sense
    /// (false when it has none).
    pub fn test(&self, json: &[u8]) -> Result<bool, String> {
        if let Some(plan) = &self.plan
            && let Ok(truth) = fast::truth(plan, json)
        {
            return Ok(truth == Some(true));
        }
        let mut first = None;
        self.run(json, |v| {
            first.get_or_insert(truthy(v));
        })?;
        Ok(first == Some(true))
    }

    /// Runs the program on a JSON document, calling `each` with every output in order.
    pub fn run(&self, json: &[u8], each: impl FnMut(&Val)) -> Result<(), String> {
        let input = jaq_json::read::parse_single(json).map_err(|e| format!("the value is not JSON: {e}"))?;
        self.run_val(input, each)
    }

    /// Runs the program on a parsed value.
    pub fn run_val(&self, input: Val, mut each: impl FnMut(&Val)) -> Result<(), String> {
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        for (n, out) in self.filter.id.run((ctx, input)).map(unwrap_valr).enumerate() {
            if n >= JQ_OUTPUTS_MAX {
                return Err(format!("the expression gave more than {JQ_OUTPUTS_MAX} outputs"));
            }
            match out {
                Ok(v) => each(&v),
                Err(e) => return Err(format!("jq error: {e}")),
            }
        }
        Ok(())
    }
}

/// Whether jq counts a value as true (everything but `false` and `null`).
pub fn truthy(v: &Val) -> bool {
    !matches!(v, Val::Null | Val::Bool(false))
}

/// A value as record bytes: strings without quotes, everything else as JSON text.
pub fn to_bytes(v: &Val, out: &mut Vec<u8>) {
    use std::io::Write;
    match v {
        Val::TStr(s) | Val::BStr(s) => out.extend_from_slice(s),
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// A value as JSON text (strings quoted).
pub fn to_json(v: &Val, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{v}");
}

/// A value as a number, if it is one.
pub fn to_f64(v: &Val) -> Option<f64> {
    match v {
        Val::Num(jaq_json::Num::Int(i)) => Some(*i as f64),
        Val::Num(jaq_json::Num::Float(f)) => Some(*f),
        Val::Num(jaq_json::Num::Dec(d)) => d.parse().ok(),
        Val::Num(other) => other.to_string().parse().ok(),
        _ => None,
    }
}

fn describe_load_errors(code: &str, errors: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_file, error) in errors {
        match error {
            Error::Io(errs) => out.extend(
                errs.into_iter()
                    .map(|(path, e)| format!("cannot load {path}: {e}")),
            ),
            Error::Lex(errs) => {
                out.extend(errs.into_iter().map(|(expect, at)| {
                    format!("expected {} at column {}", expect.as_str(), column(code, at))
                }))
            }
            Error::Parse(errs) => out.extend(errs.into_iter().map(|(expect, at)| {
                let found = if at.is_empty() {
                    "the end".to_owned()
                } else {
                    format!("`{}`", first_token(at))
                };
                format!(
                    "expected {} but found {found} at column {}",
                    expect.as_str(),
                    column(code, at)
                )
            })),
        }
    }
    out.join("; ")
}

fn column(code: &str, at: &str) -> usize {
    jaq_core::load::span(code, at).start + 1
}

fn first_token(at: &str) -> &str {
    at.split_whitespace().next().unwrap_or(at)
}
