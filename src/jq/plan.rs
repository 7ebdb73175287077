//! The fast path's plan: a jq program, as jaq's own parser reads it (so precedence
//! and grammar are jaq's), turned into the few forms `fast.rs` evaluates, or `None`
//! when it uses anything else (the whole program then runs in jaq).
//!
//! Each form gives at most one output, so a plan never needs a stream: paths, literals,
//! `select`, comparisons, `and`/`or`/`not`, arithmetic, `//`, object and array
//! construction (commas only between array elements), string interpolation, `has`,
//! `length`, `tostring`, `tonumber` and `|`.

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Term};
use jaq_core::ops::{Cmp, Math};
use jaq_core::path::{Opt, Part};

use super::tape::FIELDS_MAX;

#[derive(Clone, Debug)]
pub enum Expr {
    /// `.`
    Id,
    Null,
    Bool(bool),
    Int(i64),
    /// A number that is not a 64-bit integer, as written (jaq keeps it so).
    Dec(String),
    /// A string without interpolation, escaped as in JSON.
    Str(String),
    /// `"a\(f)b"`: literal pieces (escaped as in JSON) and interpolated expressions.
    Interp(Vec<Piece>),
    /// `f.k`, `f[i]`: the key or index is itself an expression.
    Index(Box<Expr>, Box<Expr>),
    /// `.k` with a key without escapes: the most common form, looked up directly.
    Field(String),
    /// `[f, g, ...]`
    Arr(Vec<Expr>),
    /// `{k: v, ...}` (keys are expressions too).
    Obj(Vec<(Expr, Expr)>),
    /// `{k: v, ...}` whose keys are fixed strings, each given once (escaped as in JSON):
    /// the most common construction, written straight out.
    Record(Vec<(String, Expr)>),
    Neg(Box<Expr>),
    Math(Math, Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Alt(Box<Expr>, Box<Expr>),
    Pipe(Box<Expr>, Box<Expr>),
    Select(Box<Expr>),
    Not,
    Length,
    ToString,
    ToNumber,
    Has(Box<Expr>),
}

#[derive(Clone, Debug)]
pub enum Piece {
    Lit(String),
    Expr(Expr),
}

/// A program's plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub expr: Expr,
    /// The keys the program reads off its input when it reads nothing else of it (its
    /// input used only as `.k` and `has("k")`, at most `FIELDS_MAX` keys): then only
    /// the values under them need laying out (`Tape::read_fields`).
    pub fields: Option<Vec<String>>,
}

/// The plan of `code`, if every part of it is one the fast path evaluates.
pub fn plan(code: &str) -> Option<Plan> {
    // A module header (`import`, `include`) does not read as a term: left to jaq.
    let term = jaq_core::load::parse(code, |p| p.term())?;
    let expr = expr(&term)?;
    let mut fields = Vec::new();
    let fields = reads(&expr, true, &mut fields)
        .filter(|()| fields.len() <= FIELDS_MAX)
        .map(|()| fields);
    Some(Plan { expr, fields })
}

/// Collects into `fields` the keys `e` reads off the program's input (`input`: `e`'s
/// input is the program's); `None` when it reads that input in any other way, or
/// gives it as its output (whoever takes it may read it whole).
fn reads(e: &Expr, input: bool, fields: &mut Vec<String>) -> Option<()> {
    let field = |k: &String, fields: &mut Vec<String>| {
        if input && !fields.contains(k) {
            fields.push(k.clone());
        }
    };
    match e {
        Expr::Field(k) => field(k, fields),
        Expr::Has(k) => match &**k {
            Expr::Str(k) if !k.contains('\\') => field(k, fields),
            _ if !input => reads(k, input, fields)?,
            _ => return None,
        },
        Expr::Id | Expr::Not | Expr::Length | Expr::ToString | Expr::ToNumber => {
            return (!input).then_some(());
        }
        Expr::Select(f) => {
            reads(f, input, fields)?;
            return (!input).then_some(());
        }
        Expr::Pipe(l, r) => {
            // What the left side gives is only the right side's input.
            match &**l {
                Expr::Id => {}
                Expr::Select(f) => reads(f, input, fields)?,
                l => reads(l, input, fields)?,
            }
            return reads(r, input && gives_input(l), fields);
        }
        Expr::Null | Expr::Bool(_) | Expr::Int(_) | Expr::Dec(_) | Expr::Str(_) => {}
        Expr::Interp(pieces) => {
            for piece in pieces {
                if let Piece::Expr(e) = piece {
                    reads(e, input, fields)?;
                }
            }
        }
        Expr::Arr(items) => {
            for e in items {
                reads(e, input, fields)?;
            }
        }
        Expr::Obj(entries) => {
            for (k, v) in entries {
                reads(k, input, fields)?;
                reads(v, input, fields)?;
            }
        }
        Expr::Record(entries) => {
            for (_, v) in entries {
                reads(v, input, fields)?;
            }
        }
        Expr::Neg(f) => reads(f, input, fields)?,
        Expr::Index(l, r)
        | Expr::Math(_, l, r)
        | Expr::Cmp(_, l, r)
        | Expr::And(l, r)
        | Expr::Or(l, r)
        | Expr::Alt(l, r) => {
            reads(l, input, fields)?;
            reads(r, input, fields)?;
        }
    }
    Some(())
}

/// Whether `e` may give its own input as its output.
fn gives_input(e: &Expr) -> bool {
    match e {
        Expr::Id | Expr::Select(_) => true,
        Expr::Alt(l, r) => gives_input(l) || gives_input(r),
        Expr::Pipe(l, r) => gives_input(l) && gives_input(r),
        _ => false,
    }
}

fn expr(term: &Term<&str>) -> Option<Expr> {
    Some(field(term_expr(term)?))
}

/// `.k` as a `Field` when its key has no escapes.
fn field(e: Expr) -> Expr {
    match e {
        Expr::Index(base, key) => match (*base, *key) {
            (Expr::Id, Expr::Str(k)) if !k.contains('\\') => Expr::Field(k),
            (base, key) => Expr::Index(Box::new(base), Box::new(key)),
        },
        e => e,
    }
}

fn term_expr(term: &Term<&str>) -> Option<Expr> {
    Some(match term {
        Term::Id => Expr::Id,
        Term::Num(n) => number(n)?,
        Term::Str(None, parts) => string(parts)?,
        Term::Arr(None) => Expr::Arr(Vec::new()),
        Term::Arr(Some(items)) => {
            let mut out = Vec::new();
            commas(items, &mut out)?;
            Expr::Arr(out)
        }
        Term::Obj(entries) => record(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = expr(k)?;
                    let value = match v {
                        Some(v) => expr(v)?,
                        // `{a}` is `{a: .a}`: only a fixed key may stand alone.
                        None => match &key {
                            Expr::Str(_) => field(Expr::Index(Box::new(Expr::Id), Box::new(key.clone()))),
                            _ => return None,
                        },
                    };
                    Some((key, value))
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        Term::Neg(f) => Expr::Neg(Box::new(expr(f)?)),
        Term::BinOp(l, op, r) => {
            let (l, r) = (Box::new(expr(l)?), Box::new(expr(r)?));
            match op {
                BinaryOp::Pipe(None) => Expr::Pipe(l, r),
                BinaryOp::Alt => Expr::Alt(l, r),
                BinaryOp::Or => Expr::Or(l, r),
                BinaryOp::And => Expr::And(l, r),
                BinaryOp::Math(m) => Expr::Math(*m, l, r),
                BinaryOp::Cmp(c) => Expr::Cmp(*c, l, r),
                _ => return None,
            }
        }
        Term::Call(name, args) => match (*name, args.as_slice()) {
            ("null", []) => Expr::Null,
            ("true", []) => Expr::Bool(true),
            ("false", []) => Expr::Bool(false),
            ("not", []) => Expr::Not,
            ("length", []) => Expr::Length,
            ("tostring", []) => Expr::ToString,
            ("tonumber", []) => Expr::ToNumber,
            ("select", [f]) => Expr::Select(Box::new(expr(f)?)),
            ("has", [k]) => Expr::Has(Box::new(expr(k)?)),
            _ => return None,
        },
        Term::Path(head, path) => {
            let mut out = expr(head)?;
            for (part, opt) in &path.0 {
                match (part, opt) {
                    (Part::Index(i), Opt::Essential) => {
                        out = field(Expr::Index(Box::new(out), Box::new(expr(i)?)))
                    }
                    _ => return None,
                }
            }
            out
        }
        _ => return None,
    })
}

/// An object construction as a `Record` when its keys are fixed and each given once
/// (the plan escapes a key one way only, so the same key is the same text).
fn record(entries: Vec<(Expr, Expr)>) -> Expr {
    let key = |k: &Expr| match k {
        Expr::Str(k) => Some(k.clone()),
        _ => None,
    };
    let keys: Vec<String> = entries.iter().filter_map(|(k, _)| key(k)).collect();
    let once = keys.iter().enumerate().all(|(n, k)| !keys[..n].contains(k));
    if keys.len() < entries.len() || !once {
        return Expr::Obj(entries);
    }
    Expr::Record(
        keys.into_iter()
            .zip(entries.into_iter().map(|(_, v)| v))
            .collect(),
    )
}

/// `f, g, ...` inside an array's brackets.
fn commas(term: &Term<&str>, out: &mut Vec<Expr>) -> Option<()> {
    if let Term::BinOp(l, BinaryOp::Comma, r) = term {
        commas(l, out)?;
        commas(r, out)
    } else {
        out.push(expr(term)?);
        Some(())
    }
}

fn number(text: &str) -> Option<Expr> {
    // As jaq reads a number in a program: an integer if it is one, else its text.
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Expr::Int);
    }
    // A decimal as jaq keeps it must also read as a number here.
    text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    Some(Expr::Dec(text.to_string()))
}

fn string(parts: &[StrPart<&str, Term<&str>>]) -> Option<Expr> {
    let mut pieces: Vec<Piece> = Vec::new();
    for part in parts {
        match part {
            StrPart::Str(s) => lit(&mut pieces, |out| escape(s, out)),
            StrPart::Char(c) => lit(&mut pieces, |out| escape(c.encode_utf8(&mut [0; 4]), out)),
            StrPart::Term(t) => pieces.push(Piece::Expr(expr(t)?)),
        }
    }
    Some(match pieces.as_slice() {
        [] => Expr::Str(String::new()),
        [Piece::Lit(s)] => Expr::Str(s.clone()),
        _ => Expr::Interp(pieces),
    })
}

fn lit(pieces: &mut Vec<Piece>, write: impl FnOnce(&mut String)) {
    if let Some(Piece::Lit(s)) = pieces.last_mut() {
        write(s);
    } else {
        let mut s = String::new();
        write(&mut s);
        pieces.push(Piece::Lit(s));
    }
}

/// Text as the inside of a JSON string.
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reading_only_keys_of_its_input_names_them_and_any_other_reads_whole() {
        let fields = |code: &str| plan(code).expect("a plan").fields;
        let some = |keys: &[&str]| Some(keys.iter().map(|k| k.to_string()).collect::<Vec<_>>());
        assert_eq!(fields(".kind == \"buy\""), some(&["kind"]));
        assert_eq!(
            fields("select(.kind == \"buy\") | {user, total: (.price * .qty)}"),
            some(&["kind", "user", "price", "qty"])
        );
        assert_eq!(fields("has(\"a\") and (.b.c | length) > .a"), some(&["a", "b"]));
        assert_eq!(fields(". | .[\"a\"]"), some(&["a"]));
        assert_eq!(fields("{a: 1} | ."), some(&[]));
        assert_eq!(fields("\"\\(.a)-\\(.b)\""), some(&["a", "b"]));
        for code in [
            ".",
            "select(.a)",
            "length",
            ".[0]",
            ".a // .",
            "has(.k)",
            "(.a | not) or not",
            "{x: .}",
            ".a + .b + .c + .d + .e + .f + .g + .h + .i",
        ] {
            assert_eq!(fields(code), None, "{code} reads its input whole");
        }
    }

    #[test]
    fn the_common_forms_have_a_plan_and_the_rest_has_none() {
        for code in [
            ".",
            ".a.b",
            ".[0]",
            ".a[-1]",
            "select(.kind == \"buy\") | {user, total: (.price * .qty)}",
            "{a: 1, \"b\": .x, (.k): 2}",
            "[.a, .b, 1 + 2]",
            "\"\\(.a)-\\(.b) \\n\"",
            ".a // \"none\"",
            "(.a | length) > 3 and (has(\"b\") or (.c | not))",
            ".n | tostring",
            ".s | tonumber",
            "-(.a) % 3",
        ] {
            assert!(plan(code).is_some(), "{code} should have a plan");
        }
        for code in [
            ".[]",
            ".a?",
            ".a, .b",
            "map(.a)",
            "def f: .; f",
            ".a as $x | $x",
            "@base64",
            "if .a then 1 else 2 end",
            "reduce .[] as $x (0; . + $x)",
            ".a = 1",
            ".[1:2]",
            "try .a",
            "{$__loc__}",
        ] {
            assert!(plan(code).is_none(), "{code} should be left to jaq");
        }
    }
}
