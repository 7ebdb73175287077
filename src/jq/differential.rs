//! The fast path against jaq: generated documents and expressions of the forms the
//! fast path takes (and documents it must give up on), each pair run both ways. Where
//! the fast path answers, jaq must give the same outputs (compared as JSON values:
//! numbers by value, objects by key) and no error; where it gives up, jaq runs it.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use super::{JqProgram, fast, to_json};
use serde::Deserialize;

/// A deserializer that fails on a key given twice in one object.
mod once {
    use std::collections::HashSet;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    pub struct Keys<D>(pub D);

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Keys<D> {
        type Error = D::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.deserialize_any(Walk(visitor))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct enum identifier ignored_any
        }
    }

    /// Visits as `V` would, checking every nested value on the way.
    struct Walk<V>(V);

    impl<'de, V: Visitor<'de>> Visitor<'de> for Walk<V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
            self.0.visit_bool(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
            self.0.visit_i64(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
            self.0.visit_u64(v)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
            self.0.visit_f64(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
            self.0.visit_str(v)
        }
        fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_unit()
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
            self.0.visit_seq(Seq(seq))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            self.0.visit_map(Map(map, HashSet::new()))
        }
    }

    struct Seq<A>(A);

    impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
        type Error = A::Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, A::Error> {
            self.0.next_element_seed(Nested(seed))
        }
    }

    struct Map<A>(A, HashSet<String>);

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
            let Some(key) = self.0.next_key::<String>()? else {
                return Ok(None);
            };
            if !self.1.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} stands twice in one object"
                )));
            }
            seed.deserialize(de::value::StringDeserializer::new(key))
                .map(Some)
        }

        fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
            self.0.next_value_seed(Nested(seed))
        }
    }

    /// A nested value, checked as the whole is.
    struct Nested<T>(T);

    impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Nested<T> {
        type Value = T::Value;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
            self.0.deserialize(Keys(d))
        }
    }
}

const FIELDS: &[&str] = &["a", "b", "kind", "user", "price", "qty", "s", "arr", "obj"];

struct Gen(SmallRng);

impl Gen {
    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[self.0.random_range(0..from.len())]
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.0.random_range(0..100) < percent
    }

    /// `i64::MIN` is left out: jaq's `length` of it overflows (a panic in a debug build).
    fn scalar(&mut self) -> String {
        self.pick(&[
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1",
            "2",
            "-3",
            "7",
            "42",
            "12.5",
            "1.50",
            "-2.25",
            "1e3",
            "2E-2",
            "0.1",
            "9223372036854775807",
            "-9223372036854775807",
            "99999999999999999999",
            "\"buy\"",
            "\"view\"",
            "\"u1\"",
            "\"\"",
            "\"42\"",
            "\" 7 \"",
            "\"1.5\"",
            "\"abc\"",
            "\"é漢\"",
            "\"a\\nb\"",
            "\"q\\\"z\"",
            "\"\\u00e9\"",
            "\"NaN\"",
            "\"1e400\"",
        ])
        .to_string()
    }

    fn value(&mut self, depth: u32) -> String {
        if depth >= 2 || self.chance(70) {
            return self.scalar();
        }
        if self.chance(50) {
            let n = self.0.random_range(0..4);
            let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
            format!("[{}]", items.join(self.pick(&[",", ", "])))
        } else {
            self.object(depth + 1)
        }
    }

    fn object(&mut self, depth: u32) -> String {
        let n = self.0.random_range(0..6);
        let mut entries = Vec::new();
        for _ in 0..n {
            let key = if self.chance(3) {
                "k\\u0061".to_string()
            } else {
                self.pick(FIELDS).to_string()
            };
            entries.push(format!(
                "\"{key}\":{}{}",
                self.pick(&["", " "]),
                self.value(depth)
            ));
        }
        format!("{{{}}}", entries.join(","))
    }

    fn document(&mut self) -> String {
        match self.0.random_range(0..100) {
            0..=84 => self.object(0),
            85..=89 => self.value(0),
            90..=93 => format!("  {}\n", self.object(0)),
            94..=96 => format!("{} x", self.object(0)),
            _ => self
                .pick(&["{\"a\":1,}", "NaN", "[1 2]", "{\"a\":01}", "\"\\ud83d\\ude00\""])
                .to_string(),
        }
    }

    fn path(&mut self) -> String {
        let mut p = format!(".{}", self.pick(FIELDS));
        if self.chance(30) {
            p.push_str(&format!(".{}", self.pick(FIELDS)));
        }
        if self.chance(15) {
            p.push_str(self.pick(&["[0]", "[1]", "[-1]", "[5]"]));
        }
        p
    }

    fn expr(&mut self, depth: u32) -> String {
        if depth >= 3 || self.chance(30) {
            return match self.0.random_range(0..10) {
                0..=4 => self.path(),
                5 => ".".into(),
                6 => self
                    .pick(&[
                        "1", "-2", "2.5", "0", "\"buy\"", "\"u1\"", "null", "true", "false", "1.50",
                    ])
                    .into(),
                7 => format!(
                    "({} | {})",
                    self.path(),
                    self.pick(&["length", "tostring", "tonumber", "not"])
                ),
                8 => format!("has(\"{}\")", self.pick(FIELDS)),
                _ => format!(".[{}]", self.pick(&["0", "-1", "\"a\"", "\"kind\""])),
            };
        }
        let (l, r) = (self.expr(depth + 1), self.expr(depth + 1));
        match self.0.random_range(0..14) {
            0..=4 => {
                let op = self.pick(&[
                    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "//",
                ]);
                if self.chance(70) {
                    format!("({l} {op} {r})")
                } else {
                    format!("{l} {op} {r}")
                }
            }
            5 => format!("select({l})"),
            6 => format!("({l} | {r})"),
            7 => format!(
                "{{{}, {}: {l}, \"{}\": {r}}}",
                self.pick(FIELDS),
                self.pick(FIELDS),
                self.pick(FIELDS)
            ),
            8 => format!("[{l}, {r}]"),
            9 => format!("\"x\\({l})-\\({r}) \\n\""),
            10 => format!("-({l})"),
            11 => format!("({l} | length)"),
            12 => format!("({l} | tostring)"),
            _ => format!("{l}[{r}]"),
        }
    }
}

/// A JSON text as a value to compare: numbers as floats, objects by key. A key that
/// stands twice in one object fails: jaq never writes one, and serde_json would keep
/// the last and hide it.
fn normal(text: &[u8]) -> Value {
    let mut de = serde_json::Deserializer::from_slice(text);
    if let Err(e) = serde::de::IgnoredAny::deserialize(once::Keys(&mut de)) {
        panic!("{e}: {}", String::from_utf8_lossy(text));
    }
    fn walk(v: Value) -> Value {
        match v {
            Value::Number(n) => Value::from(n.as_f64().expect("a finite number")),
            Value::Array(items) => Value::Array(items.into_iter().map(walk).collect()),
            Value::Object(map) => {
                let sorted: BTreeMap<String, Value> = map.into_iter().map(|(k, v)| (k, walk(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            other => other,
        }
    }
    walk(
        serde_json::from_slice(text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(text))),
    )
}

#[test]
fn the_fast_path_gives_jaqs_outputs_on_a_hundred_thousand_generated_pairs() {
    let seed = std::env::var("FLOWD_JQ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f10d_u64);
    let mut make = Gen(SmallRng::seed_from_u64(seed));
    let (programs, per_program) = (500, 200);
    let (mut answered, mut outputs, mut jaq_ok) = (0u64, 0u64, 0u64);
    // Answers over a projection (only the values under the keys read laid out).
    let mut projected = 0u64;
    for _ in 0..programs {
        let code = make.expr(0);
        let program = JqProgram::compile(&code).unwrap_or_else(|e| panic!("{code}: {e}"));
        let plan = program
            .plan
            .as_ref()
            .unwrap_or_else(|| panic!("no plan for {code}"));
        for _ in 0..per_program {
            let doc = make.document();
            let mut jaq = Vec::new();
            let jaq_result = program.run(doc.as_bytes(), |v| {
                let mut out = Vec::new();
                to_json(v, &mut out);
                jaq.push(out);
            });
            let context = || {
                format!(
                    "seed {seed}\nprogram: {code}\ndocument: {doc}\njaq: {jaq_result:?} {:?}",
                    jaq.iter()
                        .map(|o| String::from_utf8_lossy(o).into_owned())
                        .collect::<Vec<_>>()
                )
            };
            jaq_ok += u64::from(jaq_result.is_ok());
            let Ok(fast_out) = fast::run(plan, doc.as_bytes()) else {
                if std::env::var_os("FLOWD_JQ_SHOW_BAILS").is_some() && jaq_result.is_ok() {
                    eprintln!("gave up: {code} on {doc}");
                }
                continue;
            };
            answered += 1;
            projected += u64::from(plan.fields.is_some() && doc.trim_start().starts_with('{'));
            assert!(
                jaq_result.is_ok(),
                "the fast path answered where jaq fails\n{}",
                context()
            );
            match fast_out {
                None => assert!(jaq.is_empty(), "the fast path gave nothing\n{}", context()),
                Some(out) => {
                    outputs += 1;
                    assert_eq!(jaq.len(), 1, "{}", context());
                    assert_eq!(
                        normal(&out),
                        normal(&jaq[0]),
                        "fast: {}\n{}",
                        String::from_utf8_lossy(&out),
                        context()
                    );
                }
            }
            // The filter's question, too.
            let truth = fast::truth(plan, doc.as_bytes()).expect("answered once, answered again");
            let first = jaq
                .first()
                .map(|o| !matches!(normal(o), Value::Null | Value::Bool(false)));
            assert_eq!(truth, first, "{}", context());
        }
    }
    let total = programs * per_program;
    eprintln!(
        "seed {seed}: {total} pairs, jaq answered {jaq_ok}, the fast path {answered} ({outputs} with an output, {projected} over a projection)"
    );
    // Generated pairs often fail in jaq too (a key of a string, a string minus a
    // number), and some need escapes decoded or big numbers; of those jaq answers, the
    // fast path must still answer most, or this test proves little.
    assert!(
        answered * 100 >= jaq_ok * 60,
        "the fast path answered only {answered} of jaq's {jaq_ok}"
    );
    assert!(
        outputs * 100 >= total as u64 * 15,
        "only {outputs} of {total} answers had an output"
    );
    assert!(
        projected * 100 >= answered * 20,
        "only {projected} of {answered} answers were over a projection"
    );
}
