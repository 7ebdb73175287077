//! Configuration errors: each names FILE:LINE:COL, the key, what is wrong and a hint.

use std::ops::Range;
use std::path::PathBuf;

/// One problem found in a dataflow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line and column of the offending key or value.
    pub line: usize,
    pub column: usize,
    /// The key path, as a user would write it: `stage "count".op`.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Errors of the configuration layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the dataflow file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(path, diagnostics))]
    Invalid {
        path: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(path: &std::path::Path, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{}:{}:{}: {}: {}",
            path.display(),
            d.line,
            d.column,
            d.key,
            d.message
        ));
        if let Some(hint) = &d.hint {
            out.push_str(&format!("\n  hint: {hint}"));
        }
    }
    let n = diagnostics.len();
    out.push_str(&format!(
        "\n{n} error{} in {}",
        if n == 1 { "" } else { "s" },
        path.display()
    ));
    out
}

/// Collects diagnostics while validating one file, turning byte spans into lines.
pub struct Diagnostics<'a> {
    text: &'a str,
    found: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(text: &'a str) -> Diagnostics<'a> {
        Diagnostics {
            text,
            found: Vec::new(),
        }
    }

    pub fn push_hinted(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (line, column) = line_column(self.text, span.start);
        self.found.push(Diagnostic {
            line,
            column,
            key: key.into(),
            message: message.into(),
            hint,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub fn into_vec(mut self) -> Vec<Diagnostic> {
        self.found.sort_by_key(|d| (d.line, d.column));
        self.found
    }
}

/// 1-based line and column (in characters) of a byte position.
pub fn line_column(text: &str, position: usize) -> (usize, usize) {
    let position = position.min(text.len());
    let before = &text[..floor_char_boundary(text, position)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(text: &str, mut position: usize) -> usize {
    while !text.is_char_boundary(position) {
        position -= 1;
    }
    position
}

/// `did you mean "x"?` for the closest of `candidates`, when one is close enough.
pub fn did_you_mean<'c>(given: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), c))
        .filter(|(distance, c)| *distance <= (c.len().max(given.len()) / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| format!("did you mean \"{c}\"?"))
}

/// A hint listing what is allowed, or the closest of it.
pub fn suggest(given: &str, candidates: &[&str]) -> String {
    did_you_mean(given, candidates.iter().copied())
        .unwrap_or_else(|| format!("expected one of: {}", candidates.join(", ")))
}
