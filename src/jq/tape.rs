//! A borrowed view of one JSON document for the fast path (`fast.rs`): one strict pass
//! over the bytes (RFC 8259, nothing more) lays its values out in document order as
//! `Node`s that point into the bytes, so a path is a walk over a flat list and an
//! untouched value is written out as the bytes it came as.
//!
//! Whatever this reader is not sure to read as jaq reads it, it gives up on (`None`),
//! and the caller hands the document to jaq: invalid UTF-8, `\u` escapes of surrogates,
//! integers beyond 64 bits, numbers beyond a float's range, `NaN` and other extensions
//! jaq accepts, nesting deeper
//! than `DEPTH_MAX`. A string keeps its escapes as written (`plain` says it has none).

/// Nesting deeper than this is left to jaq.
pub const DEPTH_MAX: usize = 128;

/// Most keys a projection (`Tape::read_fields`) looks for.
pub const FIELDS_MAX: usize = 8;

/// No value under this key (`Tape::field`).
const ABSENT: u32 = u32::MAX;

/// The bytes inside a string that need a look: its end, an escape, control characters
/// and the start of a character beyond ASCII.
const LOOK: [bool; 256] = {
    let mut look = [false; 256];
    let mut b = 0;
    while b < 256 {
        look[b] = b == b'"' as usize || b == b'\\' as usize || b < 0x20 || b >= 0x80;
        b += 1;
    }
    look
};

/// The index of the first byte of `rest` that needs a look (`LOOK`), eight bytes at a
/// time: in each word, a byte equal to `"` or `\`, below 0x20 or from 0x80 on. The
/// usual tricks flag bytes above a word's first match spuriously too (a borrow runs
/// up), never below it, so the lowest flag is exact.
///
/// On x86_64, sixteen bytes at a time first (SSE2, part of every x86_64): there a
/// signed compare below 0x20 flags the control characters and every byte from 0x80 on.
fn first_look(rest: &[u8]) -> Option<usize> {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        while let Some(chunk) = rest.get(at..at + 16) {
            // SAFETY: SSE2 is part of every x86_64 target, and `chunk` is sixteen
            // readable bytes (the load needs no alignment).
            let flags = unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let escape = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                let below = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, escape), below)) as u32
            };
            if flags != 0 {
                return Some(at + flags.trailing_zeros() as usize);
            }
            at += 16;
        }
    }
    let mut words = rest[at..].chunks_exact(8);
    for word in words.by_ref() {
        let flags = look_flags(word.try_into().expect("eight bytes"));
        if flags != 0 {
            return Some(at + (flags.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter().position(|&b| LOOK[usize::from(b)]).map(|p| at + p)
}

/// The high bit of each byte of `word` that needs a look (`LOOK`), and spurious ones
/// above the first only (`first_look`).
fn look_flags(word: [u8; 8]) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let w = u64::from_le_bytes(word);
    zero_in(w ^ (ONES * u64::from(b'"')))
        | zero_in(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
        | (w & HIGH)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    True,
    False,
    /// An integer that fits 64 bits (`Node::int`).
    Int,
    /// Any other number, kept as its text (`start..end`), as jaq keeps it.
    Dec,
    /// A string: `start..end` is what lies between the quotes.
    Str,
    /// `start..end` spans the brackets; its elements follow it.
    Arr,
    /// `start..end` spans the braces; its keys and values follow it, key before value.
    Obj,
}

/// One value of the document, 24 bytes (documents are under 4 GiB: `Tape::read`).
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub kind: Kind,
    /// A string without escapes (its text is its value).
    pub plain: bool,
    start: u32,
    end: u32,
    /// The node after this one and everything inside it.
    next: u32,
    /// An integer's value; how many elements (an array) or keys (an object) it holds.
    number: i64,
}

const _: () = assert!(std::mem::size_of::<Node>() == 24);

impl Node {
    /// The node after this one and everything inside it.
    pub fn next(&self) -> usize {
        self.next as usize
    }

    /// How many elements (an array) or keys (an object) it holds.
    pub fn len(&self) -> usize {
        self.number as usize
    }

    /// An integer's value.
    pub fn int(&self) -> i64 {
        self.number
    }

    fn span(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A document's nodes; the first is the document itself.
///
/// Read for a projection (`read_fields`, a top-level object only), the nodes of the
/// top-level object are only those of the values under the keys looked for: everything
/// else in it was checked as strictly but laid out nowhere, so the object itself must
/// not be walked or written (`projected`), only asked for those keys (`field`).
pub struct Tape<'a> {
    /// Private, as `text` relies on them being what the reader accepted and laid out.
    src: &'a [u8],
    nodes: &'a [Node],
    fields: &'a [String],
    /// The node of the last value under each of `fields` (`ABSENT`: none).
    found: [u32; FIELDS_MAX],
    projected: bool,
}

impl<'a> Tape<'a> {
    /// Reads `src`, or `None` for anything this reader leaves to jaq (invalid JSON
    /// included: jaq then says what is wrong with it).
    pub fn read(src: &'a [u8], nodes: &'a mut Vec<Node>) -> Option<Tape<'a>> {
        Tape::read_fields(src, nodes, None)
    }

    /// Reads `src` as `read` does; with `fields` (at most `FIELDS_MAX` keys without
    /// escapes) and a top-level object, laying out of that object only the values under
    /// those keys (the projection a plan that reads nothing else of its input asks
    /// for). Every byte is checked as `read` checks it, so the same documents are read
    /// and the same are left to jaq, but one whose top-level object has a key with
    /// escapes is left to jaq too (a key looked for might be written that way).
    /// `nodes` is a buffer to lay them out in (its old nodes are dropped).
    pub fn read_fields(
        src: &'a [u8],
        nodes: &'a mut Vec<Node>,
        fields: Option<&'a [String]>,
    ) -> Option<Tape<'a>> {
        // Offsets and node indices (at most one node per byte, and the one after) fit.
        if src.len() >= u32::MAX as usize {
            return None;
        }
        let mut reader = Reader {
            src,
            at: 0,
            nodes,
            skip: false,
        };
        reader.nodes.clear();
        reader.ws();
        let mut found = [ABSENT; FIELDS_MAX];
        let projected = match fields {
            Some(fields) if src.get(reader.at) == Some(&b'{') && fields.len() <= FIELDS_MAX => {
                reader.projected_object(fields, &mut found)?;
                true
            }
            _ => {
                reader.value(0)?;
                false
            }
        };
        reader.ws();
        (reader.at == src.len()).then_some(Tape {
            src,
            nodes: reader.nodes,
            fields: fields.unwrap_or_default(),
            found,
            projected,
        })
    }

    /// The document's nodes, in document order.
    pub fn nodes(&self) -> &'a [Node] {
        self.nodes
    }

    /// Whether the top-level object was read for a projection: only `field` may be
    /// asked of it.
    pub fn projected(&self) -> bool {
        self.projected
    }

    /// The node of the last value under `key` in a projected top-level object; `Err`
    /// for a key it was not read for.
    pub fn field(&self, key: &[u8]) -> Result<Option<usize>, ()> {
        let slot = self
            .fields
            .iter()
            .position(|f| same(f.as_bytes(), key))
            .ok_or(())?;
        let node = self.found[slot];
        Ok((node != ABSENT).then_some(node as usize))
    }

    /// The text of a node (a string's without its quotes).
    pub fn text(&self, node: usize) -> &'a str {
        let bytes = &self.src[self.nodes[node].span()];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: a tape exists only over a whole document its reader accepted, and
        // every byte the reader accepts is ASCII or inside a string it checked is UTF-8
        // (`scan_string`); a span starts and ends at ASCII (a quote, a bracket, a digit,
        // a literal), so it never splits a character.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The bytes of a node's text (a string's without its quotes).
    pub fn bytes(&self, node: usize) -> &'a [u8] {
        &self.src[self.nodes[node].span()]
    }

    /// The bytes a node was written as (a string's with its quotes).
    pub fn raw(&self, node: usize) -> &'a [u8] {
        let n = &self.nodes[node];
        match n.kind {
            Kind::Str => &self.src[n.start as usize - 1..n.end as usize + 1],
            Kind::Null => b"null",
            Kind::True => b"true",
            Kind::False => b"false",
            _ => &self.src[n.span()],
        }
    }

    /// The children of an array or object node, in order (an object's alternate key,
    /// value).
    pub fn children(&self, node: usize) -> Children<'_, 'a> {
        Children {
            tape: self,
            at: node + 1,
            end: self.nodes[node].next(),
        }
    }
}

pub struct Children<'t, 'a> {
    tape: &'t Tape<'a>,
    at: usize,
    end: usize,
}

impl Iterator for Children<'_, '_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        (self.at < self.end).then(|| {
            let this = self.at;
            self.at = self.tape.nodes[this].next();
            this
        })
    }
}

/// Whether two keys are the same bytes: keys are short, so a loop the compiler keeps
/// inline beats a call to `memcmp` (5% of a map's time went there).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

struct Reader<'a> {
    src: &'a [u8],
    at: usize,
    nodes: &'a mut Vec<Node>,
    /// Check what is read but lay out no nodes for it (a value a projection skips).
    skip: bool,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.at) {
            self.at += 1;
        }
    }

    /// Lays out a node (none while skipping); its index.
    fn push(&mut self, kind: Kind, start: usize, end: usize, plain: bool, number: i64) -> usize {
        let index = self.nodes.len();
        if self.skip {
            return index;
        }
        // The document is under 4 GiB (`Tape::read`), so are its node count and offsets.
        self.nodes.push(Node {
            kind,
            plain,
            start: start as u32,
            end: end as u32,
            next: index as u32 + 1,
            number,
        });
        index
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Option<()> {
        if self.src[self.at..].starts_with(word) {
            let start = self.at;
            self.at += word.len();
            self.push(kind, start, self.at, true, 0);
            Some(())
        } else {
            None
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > DEPTH_MAX {
            return None;
        }
        match *self.src.get(self.at)? {
            b'n' => self.literal(b"null", Kind::Null),
            b't' => self.literal(b"true", Kind::True),
            b'f' => self.literal(b"false", Kind::False),
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' => self.array(depth),
            b'{' => self.object(depth),
            _ => None,
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.src.get(self.at) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Option<()> {
        let start = self.at;
        let negative = self.src[self.at] == b'-';
        if negative {
            self.at += 1;
        }
        let first = *self.src.get(self.at)?;
        let whole_start = self.at;
        let whole = self.digits();
        if whole == 0 || (first == b'0' && whole > 1) {
            return None;
        }
        let whole_end = self.at;
        let mut int = true;
        if self.src.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
            int = false;
        }
        if let Some(b'e' | b'E') = self.src.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.src.get(self.at) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            int = false;
        }
        if int {
            // Beyond 64 bits jaq keeps a big integer: left to it.
            let mut value: i64 = 0;
            for &d in &self.src[whole_start..whole_end] {
                let d = i64::from(d - b'0');
                value = value
                    .checked_mul(10)?
                    .checked_add(if negative { -d } else { d })?;
            }
            self.push(Kind::Int, start, self.at, true, value);
        } else {
            // One beyond a float's range (`1e400`) is left to jaq; without an exponent
            // and under 300 digits a number is well inside it.
            let text = &self.src[start..self.at];
            if text.len() >= 300 || text.iter().any(|b| matches!(b, b'e' | b'E')) {
                let text = std::str::from_utf8(text).ok()?;
                text.parse::<f64>().ok().filter(|f| f.is_finite())?;
            }
            self.push(Kind::Dec, start, self.at, true, 0);
        }
        Some(())
    }

    /// A string at the opening quote.
    fn string(&mut self) -> Option<()> {
        let start = self.at + 1;
        let (end, plain) = self.scan_string()?;
        self.push(Kind::Str, start, end, plain, 0);
        Some(())
    }

    /// Checks a string at the opening quote and goes past it: where its closing quote
    /// stands, and whether it is without escapes. (Two words, so the answer comes back
    /// in registers: the caller knows where the string starts.)
    fn scan_string(&mut self) -> Option<(usize, bool)> {
        self.at += 1;
        let start = self.at;
        // Most strings (keys above all) end within their first eight bytes with nothing
        // before the quote that needs a look.
        if let Some(word) = self.src.get(start..start + 8) {
            let flags = look_flags(word.try_into().expect("eight bytes"));
            let first = (flags.trailing_zeros() / 8) as usize;
            if flags != 0 && word[first] == b'"' {
                self.at = start + first + 1;
                return Some((start + first, true));
            }
        }
        let mut plain = true;
        let mut ascii = true;
        loop {
            // Most bytes are none of the four kinds that need a look.
            let rest = self.src.get(self.at..)?;
            self.at += first_look(rest)?;
            let b = self.src[self.at];
            match b {
                b'"' => break,
                b'\\' => {
                    plain = false;
                    self.at += 1;
                    match *self.src.get(self.at)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.src.get(self.at + 1..self.at + 5)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            let code = u16::from_str_radix(hex, 16).ok()?;
                            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) || (0xD800..0xE000).contains(&code)
                            {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                0x80.. => {
                    ascii = false;
                    self.at += 1;
                }
                _ => self.at += 1,
            }
        }
        if !ascii {
            std::str::from_utf8(&self.src[start..self.at]).ok()?;
        }
        let end = self.at;
        self.at += 1;
        Some((end, plain))
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.sequence(Kind::Arr, b']', |r| r.value(depth + 1))
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.sequence(Kind::Obj, b'}', |r| {
            r.key()?;
            r.value(depth + 1)
        })
    }

    /// An object's key at its opening quote, and the colon after it.
    fn key(&mut self) -> Option<()> {
        let (start, end, plain) = self.key_span()?;
        self.push(Kind::Str, start, end, plain, 0);
        Some(())
    }

    /// An object's key at its opening quote and the colon after it, laid out nowhere.
    fn key_span(&mut self) -> Option<(usize, usize, bool)> {
        if self.src.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at + 1;
        let (end, plain) = self.scan_string()?;
        self.ws();
        if self.src.get(self.at) != Some(&b':') {
            return None;
        }
        self.at += 1;
        self.ws();
        Some((start, end, plain))
    }

    /// The top-level object at its opening brace, for a projection: its node, and the
    /// nodes of the values under `fields` only (`found`: where the last of each is).
    fn projected_object(&mut self, fields: &[String], found: &mut [u32; FIELDS_MAX]) -> Option<()> {
        self.sequence(Kind::Obj, b'}', |r| {
            let (start, end, plain) = r.key_span()?;
            if !plain {
                return None;
            }
            let key = &r.src[start..end];
            match fields.iter().position(|f| same(f.as_bytes(), key)) {
                Some(slot) => {
                    found[slot] = r.nodes.len() as u32;
                    r.value(1)
                }
                None => {
                    r.skip = true;
                    let read = r.value(1);
                    r.skip = false;
                    read
                }
            }
        })
    }

    /// An array or object at its opening bracket: `item`s (an element, or a key and its
    /// value) separated by commas up to `closing`.
    fn sequence(
        &mut self,
        kind: Kind,
        closing: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        let node = self.push(kind, self.at, self.at, true, 0);
        self.at += 1;
        self.ws();
        let mut len = 0;
        if self.src.get(self.at) == Some(&closing) {
            self.at += 1;
        } else {
            loop {
                item(self)?;
                len += 1;
                self.ws();
                match *self.src.get(self.at)? {
                    b',' => {
                        self.at += 1;
                        self.ws();
                    }
                    b if b == closing => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        if !self.skip {
            self.close(node, len);
        }
        Some(())
    }

    fn close(&mut self, node: usize, len: usize) {
        let next = self.nodes.len();
        let n = &mut self.nodes[node];
        n.end = self.at as u32;
        n.next = next as u32;
        n.number = len as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Option<Tape<'_>> {
        // Each test's few documents may keep their nodes.
        Tape::read(text.as_bytes(), Box::leak(Box::default()))
    }

    #[test]
    fn an_object_is_laid_out_key_before_value_and_children_skip_whole_values() {
        let tape = read(r#" {"a": [1, {"b": null}], "c\n": -2.5e3, "d": "x"} "#).unwrap();
        let top: Vec<usize> = tape.children(0).collect();
        assert_eq!(top.len(), 6);
        assert_eq!(tape.text(top[0]), "a");
        assert_eq!(tape.nodes[top[1]].kind, Kind::Arr);
        assert_eq!(tape.nodes[top[1]].len(), 2);
        assert_eq!(tape.raw(top[1]), br#"[1, {"b": null}]"#);
        assert!(!tape.nodes[top[2]].plain);
        assert_eq!(tape.nodes[top[3]].kind, Kind::Dec);
        assert_eq!(tape.text(top[3]), "-2.5e3");
        assert_eq!(tape.raw(top[5]), br#""x""#);
        assert_eq!(tape.nodes[0].len(), 3);
    }

    #[test]
    fn a_projection_lays_out_only_the_values_looked_for_and_finds_the_last_of_a_key() {
        let fields = ["b".to_string(), "c".to_string(), "none".to_string()];
        let doc = br#"{"a": [1, {"x": 2}], "b": {"k": "v"}, "s": "a long string, not looked for", "b": [7], "c": 3}"#;
        let mut nodes = Vec::new();
        let tape = Tape::read_fields(doc, &mut nodes, Some(&fields)).unwrap();
        assert!(tape.projected());
        // The object, both values under "b" (three nodes and two) and `3`: nothing of
        // "a" or "s".
        assert_eq!(tape.nodes.len(), 7);
        assert_eq!(tape.nodes[0].len(), 5);
        assert_eq!(tape.raw(tape.field(b"b").unwrap().unwrap()), b"[7]");
        assert_eq!(tape.nodes[tape.field(b"c").unwrap().unwrap()].int(), 3);
        assert_eq!(tape.field(b"none"), Ok(None));
        assert_eq!(tape.field(b"a"), Err(()), "not read for");
        // Anything but an object is read whole; a key with escapes goes to jaq.
        assert!(
            !Tape::read_fields(b"[1]", &mut nodes, Some(&fields))
                .unwrap()
                .projected()
        );
        assert!(Tape::read_fields(br#"{"\u0062": 1}"#, &mut nodes, Some(&fields)).is_none());
    }

    #[test]
    fn the_word_at_a_time_scan_finds_the_first_byte_a_byte_at_a_time_scan_finds() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Mostly plain bytes, each kind that needs a look now and then, at every length
        // and alignment.
        let pick = [
            b'a', b'z', b' ', b'!', b'#', b'[', b']', b'~', 0x7f, b'"', b'\\', 0x1f, 0x00, 0x80, 0xff, 0x21,
            0x5b, 0x5d,
        ];
        for _ in 0..200_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 16 {
                    0 => pick[(next() % pick.len() as u64) as usize],
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            let expected = bytes.iter().position(|&b| LOOK[usize::from(b)]);
            assert_eq!(first_look(&bytes), expected, "{bytes:?}");
        }
        for b in 0..=255u8 {
            let mut bytes = vec![b'a'; 17];
            bytes[11] = b;
            let expected = LOOK[usize::from(b)].then_some(11);
            assert_eq!(first_look(&bytes), expected, "byte {b:#x}");
            bytes[3] = b;
            assert_eq!(
                first_look(&bytes),
                LOOK[usize::from(b)].then_some(3),
                "byte {b:#x} twice"
            );
        }
    }

    #[test]
    fn what_jaq_reads_otherwise_or_not_at_all_is_left_to_it() {
        for text in [
            "",
            "01",
            "1.",
            "-",
            "1e",
            "[1,]",
            "{\"a\" 1}",
            "{a:1}",
            "NaN",
            "Infinity",
            "+1",
            "\"\\ud800\"",
            "\"\\x41\"",
            "\"a\u{1}\"",
            "[1] 2",
            "99999999999999999999",
            "tru",
            "{\"a\":1,}",
            "b\"x\"",
        ] {
            assert!(read(text).is_none(), "{text:?} must be left to jaq");
            // A projection checks what it skips as strictly.
            let doc = format!("{{\"skipped\": {text}, \"y\": 1}}");
            let fields = ["y".to_string()];
            assert!(
                Tape::read_fields(doc.as_bytes(), &mut Vec::new(), Some(&fields)).is_none(),
                "{doc:?} must be left to jaq"
            );
        }
        let deep = "[".repeat(DEPTH_MAX + 2) + &"]".repeat(DEPTH_MAX + 2);
        assert!(read(&deep).is_none());
        assert!(Tape::read(b"\"\xff\"", &mut Vec::new()).is_none());
        assert_eq!(read("-0").unwrap().nodes[0].int(), 0);
        assert_eq!(read("9223372036854775807").unwrap().nodes[0].int(), i64::MAX);
        assert!(read("\"\\u00e9 \\ud83d\"").is_none());
        assert!(read("\"é\\u00e9\"").is_some());
    }
}
