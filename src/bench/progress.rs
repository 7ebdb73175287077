//! The progress bar of a benchmark run: drawn on stderr when it is a terminal, hidden
//! otherwise (pipes, CI, `--json` into a file), so it never mixes into a report.

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar counting `total` records, labelled `what` (`ingest`, `warm-up`, ...).
    pub fn new(total: u64, what: &str) -> Progress {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>8} [{bar:40}] {human_pos}/{human_len} records, {per_sec}, {eta} left",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        Progress { bar }
    }

    /// A bar that is never drawn.
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    pub fn add(&self, records: u64) {
        self.bar.inc(records);
    }

    /// Sets the count outright (scenarios that observe progress rather than cause it).
    pub fn set(&self, records: u64) {
        self.bar.set_position(records);
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
