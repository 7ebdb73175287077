//! The fast path: a plan (`plan.rs`) evaluated over a borrowed view of the record's
//! JSON (`tape.rs`), its output written straight as JSON text. Values the record holds
//! stay nodes of its tape; an array or object passed through is copied as written.
//!
//! Whatever the fast path is not sure to do exactly as jaq does, it gives up on
//! (`Bail`) and the record runs in jaq: errors of every kind (a key of a number, a
//! division by zero, an integer overflow), strings whose escapes would need decoding
//! to compare, measure or look up, arrays and objects compared or turned into text,
//! numbers that are not finite. So its outputs are jaq's, or it has none of its own.

use std::cell::{OnceCell, RefCell};
use std::cmp::Ordering;

use jaq_core::ops::{Cmp, Math};
use typed_arena::Arena;

use super::plan::{Expr, Piece, Plan};
use super::tape::{Kind, Node, Tape, same};

/// The fast path gives up on this record: jaq runs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Bail;

type R<T> = Result<T, Bail>;

thread_local! {
    /// The nodes of the last record read on this thread, reused.
    static NODES: RefCell<Vec<Node>> = const { RefCell::new(Vec::new()) };
}

/// Runs `plan` on the JSON document `json`: its output as JSON text, or `None` when
/// it has none (`select` said no).
pub fn run(plan: &Plan, json: &[u8]) -> R<Option<Vec<u8>>> {
    with_tape(json, plan, |tape| {
        let made = Made::default();
        let eval = Eval { tape, made: &made };
        let mut out = Vec::with_capacity(json.len().min(256));
        Ok(eval.emit(&plan.expr, eval.input(), &mut out)?.then_some(out))
    })
}

/// Whether `plan`'s output on `json` is true in jq's sense; `None` when it has none.
pub fn truth(plan: &Plan, json: &[u8]) -> R<Option<bool>> {
    with_tape(json, plan, |tape| {
        let made = Made::default();
        let eval = Eval { tape, made: &made };
        Ok(eval.eval(&plan.expr, eval.input())?.map(truthy))
    })
}

/// Reads `json` (only the values under `plan`'s fields of a top-level object, when it
/// has them) and runs `f` over it.
fn with_tape<T>(json: &[u8], plan: &Plan, f: impl FnOnce(&Tape<'_>) -> R<T>) -> R<T> {
    NODES.with(|nodes| {
        // Nothing `f` does reads another record on this thread (`number` has its own).
        let mut nodes = nodes.borrow_mut();
        let tape = Tape::read_fields(json, &mut nodes, plan.fields.as_deref()).ok_or(Bail)?;
        f(&tape)
    })
}

/// A value during evaluation: two words and `Copy`, so that it goes to and comes back
/// from calls in registers and is never dropped. What the record holds is a node of its
/// tape; what the program holds, or evaluation makes, is borrowed from the plan or from
/// `Made`. Strings are their JSON-escaped text (`plain`: it has no escapes, so it is
/// also the string's value).
#[derive(Clone, Copy, Debug)]
enum V<'t> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A number that is not a 64-bit integer, as written: the text of a node of the
    /// record (a number, or a string `tonumber` read).
    Dec(usize),
    /// Such a number of the program's, or made (`-`).
    DecMade(&'t String),
    /// A string of the record (a node; its `plain` says whether it has escapes).
    Str(usize),
    /// A string of the program's, or made (interpolation, `+`, `tostring`), and
    /// whether it is plain.
    Made(&'t String, bool),
    /// An array or object of the record (a node of the tape).
    Node(usize),
    /// The record's top-level object read for a projection: only its keys read for
    /// may be looked up (`Tape::read_fields`), nothing else done with it.
    Root,
    Arr(&'t Vec<V<'t>>),
    Obj(&'t Vec<(&'t str, V<'t>)>),
}

// Two words, and so is what `eval` gives back (the niches of its tag hold `None` and
// `Bail`).
const _: () = assert!(std::mem::size_of::<V<'static>>() == 16);
const _: () = assert!(std::mem::size_of::<R<Option<V<'static>>>>() == 16);

/// What evaluating one record makes that neither the record nor the program holds,
/// kept until the record is done (each arena is made on its first use: most records
/// make nothing).
#[derive(Default)]
struct Made<'t> {
    strings: OnceCell<Arena<String>>,
    arrays: OnceCell<Arena<Vec<V<'t>>>>,
    objects: OnceCell<Arena<Vec<(&'t str, V<'t>)>>>,
}

/// Values made per arena chunk at first (they grow as needed).
const MADE_FIRST: usize = 8;

fn truthy(v: V<'_>) -> bool {
    !matches!(v, V::Null | V::Bool(false))
}

fn is_num(v: V<'_>) -> bool {
    matches!(v, V::Int(_) | V::Float(_) | V::Dec(_) | V::DecMade(_))
}

/// jq's order: null, false, true, numbers, strings, arrays, objects.
fn rank(v: V<'_>) -> u8 {
    match v {
        V::Null => 0,
        V::Bool(false) => 1,
        V::Bool(true) => 2,
        V::Int(_) | V::Float(_) | V::Dec(_) | V::DecMade(_) => 3,
        V::Str(_) | V::Made(..) => 4,
        V::Arr(_) => 5,
        V::Obj(_) => 6,
        // Which of the two a node is does not matter: comparing one bails below.
        V::Node(_) => 5,
        V::Root => 6,
    }
}

struct Eval<'t, 'a> {
    tape: &'t Tape<'a>,
    made: &'t Made<'t>,
}

impl<'t> Eval<'t, '_> {
    /// The record as the program's input.
    fn input(&self) -> V<'t> {
        if self.tape.projected() {
            V::Root
        } else {
            self.node(0)
        }
    }

    /// A node of the record as a value.
    fn node(&self, i: usize) -> V<'t> {
        let n = &self.tape.nodes()[i];
        match n.kind {
            Kind::Null => V::Null,
            Kind::True => V::Bool(true),
            Kind::False => V::Bool(false),
            Kind::Int => V::Int(n.int()),
            Kind::Dec => V::Dec(i),
            Kind::Str => V::Str(i),
            Kind::Arr | Kind::Obj => V::Node(i),
        }
    }

    /// A string made during evaluation.
    fn string(&self, text: String, plain: bool) -> V<'t> {
        V::Made(self.text(text), plain)
    }

    /// Text made during evaluation (a string's, a decimal's), kept for the record.
    fn text(&self, text: String) -> &'t String {
        let strings = self.made.strings.get_or_init(|| Arena::with_capacity(MADE_FIRST));
        strings.alloc(text)
    }

    /// A string's text and whether it is plain; `None` for anything else.
    fn str(&self, v: V<'t>) -> Option<(&'t str, bool)> {
        match v {
            V::Str(i) => Some((self.tape.text(i), self.tape.nodes()[i].plain)),
            V::Made(s, plain) => Some((s.as_str(), plain)),
            _ => None,
        }
    }

    /// A decimal's text; `None` for anything else.
    fn dec(&self, v: V<'t>) -> Option<&'t str> {
        match v {
            V::Dec(i) => Some(self.tape.text(i)),
            V::DecMade(d) => Some(d.as_str()),
            _ => None,
        }
    }

    /// The output of `e` on `input`, if any: the forms most records run through here,
    /// the rest in `eval_more` (kept apart, so that these stay small and quick).
    fn eval(&self, e: &'t Expr, input: V<'t>) -> R<Option<V<'t>>> {
        Ok(Some(match e {
            Expr::Field(k) => self.get(input, k)?,
            Expr::Str(s) => V::Made(s, !s.contains('\\')),
            Expr::Int(i) => V::Int(*i),
            Expr::Math(op, l, r) => {
                let (Some(l), Some(r)) = (self.eval(l, input)?, self.eval(r, input)?) else {
                    return Ok(None);
                };
                self.math(*op, l, r)?
            }
            Expr::Cmp(op, l, r) => {
                let (Some(l), Some(r)) = (self.eval(l, input)?, self.eval(r, input)?) else {
                    return Ok(None);
                };
                let ord = self.compare(l, r)?;
                V::Bool(match op {
                    Cmp::Eq => ord == Ordering::Equal,
                    Cmp::Ne => ord != Ordering::Equal,
                    Cmp::Lt => ord == Ordering::Less,
                    Cmp::Le => ord != Ordering::Greater,
                    Cmp::Gt => ord == Ordering::Greater,
                    Cmp::Ge => ord != Ordering::Less,
                })
            }
            _ => return self.eval_more(e, input),
        }))
    }

    #[inline(never)]
    fn eval_more(&self, e: &'t Expr, input: V<'t>) -> R<Option<V<'t>>> {
        Ok(Some(match e {
            Expr::Field(_) | Expr::Str(_) | Expr::Int(_) | Expr::Math(..) | Expr::Cmp(..) => {
                return self.eval(e, input);
            }
            Expr::Id => input,
            Expr::Null => V::Null,
            Expr::Bool(b) => V::Bool(*b),
            Expr::Dec(d) => V::DecMade(d),
            Expr::Interp(pieces) => {
                let mut text = Vec::new();
                if !self.interp(pieces, input, &mut text)? {
                    return Ok(None);
                }
                // Every piece is text, so this never fails.
                let text = String::from_utf8(text).map_err(|_| Bail)?;
                let plain = !text.contains('\\');
                self.string(text, plain)
            }
            Expr::Index(base, key) => {
                let Some(base) = self.eval(base, input)? else {
                    return Ok(None);
                };
                let Some(key) = self.eval(key, input)? else {
                    return Ok(None);
                };
                self.index(base, key)?
            }
            Expr::Arr(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(v) = self.eval(item, input)? {
                        out.push(v);
                    }
                }
                let arrays = self.made.arrays.get_or_init(|| Arena::with_capacity(MADE_FIRST));
                V::Arr(arrays.alloc(out))
            }
            Expr::Obj(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let Some(key) = self.eval(k, input)? else {
                        return Ok(None);
                    };
                    // Keys are compared as written when repeated ones are merged
                    // (`write`): one with escapes goes to jaq unless it is alone.
                    let Some((key, plain)) = self.str(key) else {
                        return Err(Bail);
                    };
                    if !plain && entries.len() > 1 {
                        return Err(Bail);
                    }
                    let Some(value) = self.eval(v, input)? else {
                        return Ok(None);
                    };
                    out.push((key, value));
                }
                self.object(out)
            }
            Expr::Record(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let Some(value) = self.eval(v, input)? else {
                        return Ok(None);
                    };
                    out.push((k.as_str(), value));
                }
                self.object(out)
            }
            Expr::Neg(f) => match self.eval(f, input)? {
                None => return Ok(None),
                Some(V::Int(i)) => V::Int(i.checked_neg().ok_or(Bail)?),
                Some(V::Float(x)) => V::Float(-x),
                // jaq turns the sign of a decimal's text.
                Some(v) => {
                    let d = self.dec(v).ok_or(Bail)?;
                    let text = match d.strip_prefix('-') {
                        Some(pos) => pos.to_string(),
                        None => format!("-{d}"),
                    };
                    V::DecMade(self.text(text))
                }
            },
            Expr::And(l, r) => match self.eval(l, input)? {
                None => return Ok(None),
                Some(l) if !truthy(l) => V::Bool(false),
                Some(_) => match self.eval(r, input)? {
                    None => return Ok(None),
                    Some(r) => V::Bool(truthy(r)),
                },
            },
            Expr::Or(l, r) => match self.eval(l, input)? {
                None => return Ok(None),
                Some(l) if truthy(l) => V::Bool(true),
                Some(_) => match self.eval(r, input)? {
                    None => return Ok(None),
                    Some(r) => V::Bool(truthy(r)),
                },
            },
            Expr::Alt(l, r) => match self.eval(l, input)? {
                Some(l) if truthy(l) => l,
                _ => return self.eval(r, input),
            },
            Expr::Pipe(l, r) => match self.eval(l, input)? {
                None => return Ok(None),
                Some(v) => return self.eval(r, v),
            },
            Expr::Select(f) => match self.eval(f, input)? {
                Some(c) if truthy(c) => input,
                _ => return Ok(None),
            },
            Expr::Not => V::Bool(!truthy(input)),
            Expr::Length => self.length(input)?,
            Expr::ToString => match input {
                V::Str(_) | V::Made(..) => input,
                v => {
                    let mut text = Vec::new();
                    self.scalar_text(v, &mut text)?;
                    self.string(String::from_utf8(text).map_err(|_| Bail)?, true)
                }
            },
            Expr::ToNumber => match input {
                V::Int(_) | V::Float(_) | V::Dec(_) | V::DecMade(_) => input,
                v => match self.str(v) {
                    Some((s, true)) => self.number(s, v)?,
                    _ => return Err(Bail),
                },
            },
            Expr::Has(k) => {
                let Some(key) = self.eval(k, input)? else {
                    return Ok(None);
                };
                match (input, self.str(key)) {
                    (V::Node(i), Some((k, true))) if self.tape.nodes()[i].kind == Kind::Obj => {
                        V::Bool(self.lookup(i, k)?.is_some())
                    }
                    (V::Root, Some((k, true))) => V::Bool(self.field(k)?.is_some()),
                    _ => return Err(Bail),
                }
            }
        }))
    }

    /// An object made during evaluation.
    fn object(&self, entries: Vec<(&'t str, V<'t>)>) -> V<'t> {
        let objects = self.made.objects.get_or_init(|| Arena::with_capacity(MADE_FIRST));
        V::Obj(objects.alloc(entries))
    }

    /// Evaluates `e` and writes its output as JSON into `out`; `false` when it has
    /// none, and whatever was written then is to be dropped (an output is the whole
    /// program's or nothing: `run`). A record, a string interpolation, a `select` and a
    /// pipe's last step are written as they are evaluated, with no value built for them.
    fn emit(&self, e: &'t Expr, input: V<'t>, out: &mut Vec<u8>) -> R<bool> {
        match e {
            Expr::Record(entries) => {
                out.push(b'{');
                for (n, (k, v)) in entries.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(k.as_bytes());
                    out.extend_from_slice(b"\":");
                    if !self.emit(v, input, out)? {
                        return Ok(false);
                    }
                }
                out.push(b'}');
                Ok(true)
            }
            Expr::Pipe(l, r) => match self.eval(l, input)? {
                None => Ok(false),
                Some(v) => self.emit(r, v, out),
            },
            Expr::Interp(pieces) => {
                out.push(b'"');
                if !self.interp(pieces, input, out)? {
                    return Ok(false);
                }
                out.push(b'"');
                Ok(true)
            }
            Expr::Select(f) => match self.eval(f, input)? {
                Some(c) if truthy(c) => self.write(input, out).map(|()| true),
                _ => Ok(false),
            },
            _ => match self.eval(e, input)? {
                None => Ok(false),
                Some(v) => self.write(v, out).map(|()| true),
            },
        }
    }

    /// The last value under `key` in object node `obj` (jaq keeps the last of a
    /// repeated key), if any.
    fn lookup(&self, obj: usize, key: &str) -> R<Option<usize>> {
        let mut found = None;
        let mut children = self.tape.children(obj);
        while let (Some(k), Some(v)) = (children.next(), children.next()) {
            if !self.tape.nodes()[k].plain {
                return Err(Bail);
            }
            if same(self.tape.bytes(k), key.as_bytes()) {
                found = Some(v);
            }
        }
        Ok(found)
    }

    /// The value under `key` in the projected top-level object, if any.
    fn field(&self, key: &str) -> R<Option<usize>> {
        self.tape.field(key.as_bytes()).map_err(|()| Bail)
    }

    /// `.k` of `base`, for a key without escapes.
    fn get(&self, base: V<'t>, k: &str) -> R<V<'t>> {
        let at = match base {
            V::Null => return Ok(V::Null),
            V::Root => self.field(k)?,
            V::Node(i) if self.tape.nodes()[i].kind == Kind::Obj => self.lookup(i, k)?,
            _ => return Err(Bail),
        };
        Ok(at.map_or(V::Null, |v| self.node(v)))
    }

    fn index(&self, base: V<'t>, key: V<'t>) -> R<V<'t>> {
        if let Some((k, plain)) = self.str(key) {
            return match base {
                _ if plain => self.get(base, k),
                V::Null => Ok(V::Null),
                _ => Err(Bail),
            };
        }
        match (base, key) {
            (V::Null, V::Int(_)) => Ok(V::Null),
            (V::Node(i), V::Int(at)) if self.tape.nodes()[i].kind == Kind::Arr => {
                let len = self.tape.nodes()[i].len() as i64;
                let at = if at < 0 { len + at } else { at };
                if at < 0 || at >= len {
                    return Ok(V::Null);
                }
                let element = self.tape.children(i).nth(at as usize).ok_or(Bail)?;
                Ok(self.node(element))
            }
            _ => Err(Bail),
        }
    }

    fn length(&self, v: V<'t>) -> R<V<'t>> {
        Ok(match v {
            V::Null => V::Int(0),
            V::Int(i) => V::Int(i.checked_abs().ok_or(Bail)?),
            V::Float(x) => V::Float(x.abs()),
            V::Dec(_) | V::DecMade(_) => {
                let d = self.dec(v).ok_or(Bail)?;
                V::Float(d.parse::<f64>().map_err(|_| Bail)?.abs())
            }
            V::Str(_) | V::Made(..) => match self.str(v) {
                Some((s, true)) => V::Int(s.chars().count() as i64),
                _ => return Err(Bail),
            },
            V::Node(i) => {
                let node = &self.tape.nodes()[i];
                if node.kind == Kind::Obj {
                    // jaq counts a repeated key once.
                    self.keys_once(i)?;
                }
                V::Int(node.len() as i64)
            }
            V::Arr(items) => V::Int(items.len() as i64),
            _ => return Err(Bail),
        })
    }

    /// Gives up on an object of the record whose keys are not each there once, or not
    /// each without escapes (so that the same key is the same bytes): jaq reads such an
    /// object into one entry per key, which is not what the record says as written.
    fn keys_once(&self, obj: usize) -> R<()> {
        let tape = self.tape;
        let keys = || tape.children(obj).step_by(2);
        let len = tape.nodes()[obj].len();
        if len <= 1 {
            return Ok(());
        }
        if keys().any(|k| !tape.nodes()[k].plain) {
            return Err(Bail);
        }
        if len <= 16 {
            for (n, a) in keys().enumerate() {
                if keys().take(n).any(|b| tape.bytes(a) == tape.bytes(b)) {
                    return Err(Bail);
                }
            }
        } else {
            let mut sorted: Vec<&[u8]> = keys().map(|k| tape.bytes(k)).collect();
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(Bail);
            }
        }
        Ok(())
    }

    /// Writes the text of a string interpolation (JSON-escaped, without its quotes) into
    /// `out`; `false` when a piece has no output (then nothing written counts).
    fn interp(&self, pieces: &'t [Piece], input: V<'t>, out: &mut Vec<u8>) -> R<bool> {
        for piece in pieces {
            match piece {
                Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Expr(e) => match self.eval(e, input)? {
                    None => return Ok(false),
                    Some(v) => match self.str(v) {
                        Some((s, _)) => out.extend_from_slice(s.as_bytes()),
                        None => self.scalar_text(v, out)?,
                    },
                },
            }
        }
        Ok(true)
    }

    /// A value that is not a string as jq writes it into a string (`tostring`, `"\(.)"`).
    fn scalar_text(&self, v: V<'t>, out: &mut Vec<u8>) -> R<()> {
        match v {
            V::Null => out.extend_from_slice(b"null"),
            V::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            V::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
            V::Float(x) => write_float(x, out)?,
            V::Dec(_) | V::DecMade(_) => out.extend_from_slice(self.dec(v).ok_or(Bail)?.as_bytes()),
            _ => return Err(Bail),
        }
        Ok(())
    }

    fn write(&self, v: V<'t>, out: &mut Vec<u8>) -> R<()> {
        match v {
            V::Null => out.extend_from_slice(b"null"),
            V::Bool(true) => out.extend_from_slice(b"true"),
            V::Bool(false) => out.extend_from_slice(b"false"),
            V::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
            V::Float(x) => write_float(x, out)?,
            V::Dec(i) => out.extend_from_slice(self.tape.bytes(i)),
            V::DecMade(d) => out.extend_from_slice(d.as_bytes()),
            V::Str(i) => {
                out.push(b'"');
                out.extend_from_slice(self.tape.bytes(i));
                out.push(b'"');
            }
            V::Made(s, _) => {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
            // Its nodes are not all there.
            V::Root => return Err(Bail),
            V::Node(i) => {
                // Written as it came, so every object in it must read as jaq reads it.
                for n in i..self.tape.nodes()[i].next() {
                    if self.tape.nodes()[n].kind == Kind::Obj {
                        self.keys_once(n)?;
                    }
                }
                out.extend_from_slice(self.tape.raw(i))
            }
            V::Arr(items) => {
                out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    self.write(*item, out)?;
                }
                out.push(b']');
            }
            V::Obj(entries) => {
                out.push(b'{');
                let mut first = true;
                for (n, (k, _)) in entries.iter().enumerate() {
                    // jaq keeps a repeated key where it first stood, with the last
                    // value given to it (keys here are without escapes or alone).
                    if entries[..n].iter().any(|(seen, _)| seen == k) {
                        continue;
                    }
                    let v = entries[n..]
                        .iter()
                        .rev()
                        .find_map(|(key, v)| (key == k).then_some(*v))
                        .expect("the entry itself");
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.push(b'"');
                    out.extend_from_slice(k.as_bytes());
                    out.extend_from_slice(b"\":");
                    self.write(v, out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// A string that is a JSON number (`s`, the text of the string value `v`), as jaq
    /// reads one; anything else is left to jaq.
    fn number(&self, s: &str, v: V<'t>) -> R<V<'t>> {
        let mut nodes = Vec::new();
        let tape = Tape::read(s.as_bytes(), &mut nodes).ok_or(Bail)?;
        let node = tape.nodes()[0];
        match (node.kind, v) {
            (Kind::Int, _) => Ok(V::Int(node.int())),
            // The string's text is the number's.
            (Kind::Dec, V::Str(i)) => Ok(V::Dec(i)),
            (Kind::Dec, V::Made(m, _)) => Ok(V::DecMade(m)),
            _ => Err(Bail),
        }
    }

    fn as_f64(&self, v: V<'t>) -> R<f64> {
        match v {
            V::Int(i) => Ok(i as f64),
            V::Float(x) => Ok(x),
            V::Dec(_) | V::DecMade(_) => self.dec(v).ok_or(Bail)?.parse().map_err(|_| Bail),
            _ => Err(Bail),
        }
    }

    fn math(&self, op: Math, l: V<'t>, r: V<'t>) -> R<V<'t>> {
        if let Math::Add = op {
            match (l, r) {
                (V::Null, _) => return Ok(r),
                (_, V::Null) => return Ok(l),
                _ => {}
            }
            if let (Some((a, pa)), Some((b, pb))) = (self.str(l), self.str(r)) {
                return Ok(self.string(format!("{a}{b}"), pa && pb));
            }
        }
        if !is_num(l) || !is_num(r) {
            return Err(Bail);
        }
        let out = match (op, l, r) {
            (Math::Add, V::Int(a), V::Int(b)) => V::Int(a.checked_add(b).ok_or(Bail)?),
            (Math::Sub, V::Int(a), V::Int(b)) => V::Int(a.checked_sub(b).ok_or(Bail)?),
            (Math::Mul, V::Int(a), V::Int(b)) => V::Int(a.checked_mul(b).ok_or(Bail)?),
            (Math::Rem, V::Int(a), V::Int(b)) if b != 0 => V::Int(a.checked_rem(b).unwrap_or(0)),
            (Math::Rem, ..) => return Err(Bail),
            (Math::Div, ..) => {
                let (a, b) = (self.as_f64(l)?, self.as_f64(r)?);
                if b == 0.0 {
                    return Err(Bail);
                }
                V::Float(a / b)
            }
            (Math::Add, ..) => V::Float(self.as_f64(l)? + self.as_f64(r)?),
            (Math::Sub, ..) => V::Float(self.as_f64(l)? - self.as_f64(r)?),
            (Math::Mul, ..) => V::Float(self.as_f64(l)? * self.as_f64(r)?),
        };
        match out {
            V::Float(x) if !x.is_finite() => Err(Bail),
            out => Ok(out),
        }
    }

    fn compare(&self, l: V<'t>, r: V<'t>) -> R<Ordering> {
        let (a, b) = (rank(l), rank(r));
        if matches!(l, V::Node(_) | V::Root) || matches!(r, V::Node(_) | V::Root) || a >= 5 || b >= 5 {
            return Err(Bail);
        }
        if a != b {
            return Ok(a.cmp(&b));
        }
        match (l, r) {
            (V::Int(x), V::Int(y)) => Ok(x.cmp(&y)),
            _ if a == 4 => match (self.str(l), self.str(r)) {
                (Some((x, true)), Some((y, true))) => Ok(x.as_bytes().cmp(y.as_bytes())),
                _ => Err(Bail),
            },
            _ if a == 3 => self.as_f64(l)?.partial_cmp(&self.as_f64(r)?).ok_or(Bail),
            _ => Ok(Ordering::Equal),
        }
    }
}

/// A float as jaq writes it (`jaq_json::Num`'s `Display`: ryu's shortest form, written
/// here straight, without the formatting machinery); finite ones only: jaq's `NaN` and
/// `Infinity` are not JSON. The floats jq programs make most (`.price * .qty`: a few
/// decimals) are written without ryu (`short_float`), a tenth of a map's time.
fn write_float(x: f64, out: &mut Vec<u8>) -> R<()> {
    if !x.is_finite() {
        return Err(Bail);
    }
    if !short_float(x, out) {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    }
    Ok(())
}

/// The powers of ten `short_float` tries.
const SCALES: [f64; 7] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6];

/// While `|x| * p` stays below this, `x`'s unit in the last place times `p` is under a
/// quarter, so at most one decimal of `p`'s places rounds to `x`, and it is the integer
/// nearest `|x| * p` over `p`.
const SCALED_MAX: f64 = (1u64 << 50) as f64;

/// Writes a finite `x` that is the double nearest some decimal of at most six places as
/// ryu writes it, and says so; writes nothing and says `false` otherwise.
///
/// At each scale `p` from 1 up, `n`, the integer nearest `|x| * p`, is the only integer
/// that could be the decimal's digits (`SCALED_MAX`), and `n / p`, an IEEE division of
/// two exact numbers, is the double nearest `n / p`: if it is `|x|`, that decimal reads
/// back as `x`. The first scale to find one gives the shortest such decimal (one with
/// fewer places would have been found at its own, smaller scale, so its digits never
/// end in a zero after the point), which is ryu's answer; ryu's plain notation
/// (`0.0001` and up, below 10^16) is the only one written here.
fn short_float(x: f64, out: &mut Vec<u8>) -> bool {
    let a = x.abs();
    for (places, &p) in SCALES.iter().enumerate() {
        let scaled = a * p;
        if scaled >= SCALED_MAX {
            return false;
        }
        // The nearest integer, without a call to `round` (a candidate only: the
        // division checks it).
        let n = (scaled + 0.5) as u64;
        if n as f64 / p != a {
            continue;
        }
        let mut buffer = itoa::Buffer::new();
        let digits = buffer.format(n).as_bytes();
        // Where the point goes, counted from the first digit (ryu's `kk`).
        let point = digits.len() as isize - places as isize;
        if point <= -5 {
            // ryu writes it with an exponent.
            return false;
        }
        if x.is_sign_negative() {
            out.push(b'-');
        }
        if places == 0 {
            out.extend_from_slice(digits);
            out.extend_from_slice(b".0");
        } else if point > 0 {
            let (whole, fraction) = digits.split_at(point as usize);
            out.extend_from_slice(whole);
            out.push(b'.');
            out.extend_from_slice(fraction);
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', point.unsigned_abs()));
            out.extend_from_slice(digits);
        }
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jq::{JqProgram, plan, to_json};

    fn jaq(code: &str, doc: &str) -> String {
        let mut out = Vec::new();
        JqProgram::compile(code)
            .unwrap()
            .run(doc.as_bytes(), |v| to_json(v, &mut out))
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn fast(code: &str, doc: &str) -> R<String> {
        let plan = plan::plan(code).unwrap_or_else(|| panic!("no plan for {code}"));
        run(&plan, doc.as_bytes()).map(|out| String::from_utf8(out.expect(code)).unwrap())
    }

    #[test]
    fn a_key_given_twice_is_one_entry_as_in_jaq_or_the_record_goes_to_jaq() {
        let many = |repeat: bool| {
            let mut keys: Vec<String> = (0..20).map(|i| format!("\"k{i}\":{i}")).collect();
            if repeat {
                keys.push("\"k7\":0".into());
            }
            format!("{{\"o\":{{{}}}}}", keys.join(","))
        };
        // Built objects: the first place, the last value, as jaq's.
        for (code, doc) in [
            ("{a: 1, b: 2, a: 3}", "null".to_string()),
            ("{a, b, a: 5}", r#"{"a":1,"b":2}"#.to_string()),
            (r#"{a: 1, "\u0061": 2, b: {c: 1, c: [2]}}"#, "null".to_string()),
            (".", r#"{"a":{"x":1},"b":[{"y":2,"z":3}]}"#.to_string()),
            (".o", many(false)),
        ] {
            assert_eq!(fast(code, &doc), Ok(jaq(code, &doc)), "{code} on {doc}");
        }
        // The record's own objects are written as they came: one with a repeated key, or
        // with escaped keys that might be one, is left to jaq.
        for (code, doc) in [
            (".o", r#"{"o":{"x":1,"x":2}}"#.to_string()),
            (".", r#"{"a":[{"y":2,"y":3}]}"#.to_string()),
            ("select(.n > 0)", r#"{"n":1,"n":2}"#.to_string()),
            (".", r#"{"ab":1,"a\u0062":2}"#.to_string()),
            ("{(.k): 1, ab: 2}", r#"{"k":"a\u0062"}"#.to_string()),
            (".o", many(true)),
        ] {
            assert_eq!(fast(code, &doc), Err(Bail), "{code} on {doc}");
        }
    }

    #[test]
    fn numbers_are_written_as_jaq_writes_them() {
        // Finite floats from every part of the range (random bit patterns, a seeded
        // xorshift), the edges, and the ones jq programs make most: small halves.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut floats: Vec<f64> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                f64::from_bits(state)
            })
            .filter(|x| x.is_finite())
            .collect();
        floats.extend((-2000..2000).map(|i| f64::from(i) * 0.5));
        floats.extend([
            0.0,
            -0.0,
            f64::MIN,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            1e21,
            1e-7,
        ]);
        // Decimals of up to nine places over the whole range `short_float` takes and
        // beyond, what arithmetic on them gives (`.price * .qty`, sums, quotients), and
        // the edges of its scales and of ryu's plain notation.
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300_000 {
            let digits = 10f64.powi((next() % 17) as i32);
            let n = (next() % 1_000_000_000_000_000) as f64 % digits;
            let places = 10f64.powi((next() % 10) as i32);
            let sign = if next() % 2 == 0 { 1.0 } else { -1.0 };
            let decimal = sign * n / places;
            let int = (next() % 1000) as f64;
            floats.extend([decimal, decimal * int, decimal + 0.1, decimal / (int + 1.0)]);
        }
        for i in 0..90 {
            for q in 0..4 {
                floats.push((f64::from(i) + 0.5) * f64::from(q));
            }
        }
        let edge = SCALED_MAX;
        floats.extend([
            0.1 + 0.2,
            1e-4,
            -1e-4,
            1e-5,
            1.2345e-4,
            9.9999e-5,
            0.000_123_456,
            edge,
            edge - 1.0,
            edge + 1.0,
            edge / 10.0,
            edge / 1e6,
            (edge - 1.0) / 1e6,
            1e15,
            1e16 - 2.0,
            1e16,
            123_456.789_012,
        ]);
        let mut short = 0;
        for x in floats {
            let mut written = Vec::new();
            assert_eq!(write_float(x, &mut written), Ok(()), "{x:e}");
            assert_eq!(
                String::from_utf8(written).unwrap(),
                jaq_json::Num::Float(x).to_string(),
                "{x:e}"
            );
            short += usize::from(short_float(x, &mut Vec::new()));
        }
        // Most of them took the short way: this test is about it.
        assert!(short > 500_000, "{short} written without ryu");
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(write_float(x, &mut Vec::new()), Err(Bail), "{x}");
        }
        for i in [0, 1, -1, 42, i64::MIN, i64::MAX, 1_000_000_007] {
            assert_eq!(
                itoa::Buffer::new().format(i),
                jaq_json::Num::Int(i as isize).to_string()
            );
        }
    }
}
