//! `count`, `sum`, `min`, `max` per key over tumbling windows, or over the whole input.
//!
//! Record time: a window closes when the watermark (the newest timestamp seen minus
//! `lateness`) reaches its end; a record for a closed window is late: an error naming
//! the window, so the stage's `on_error` handles it (skipped and counted by default, or
//! dead-lettered) and it never vanishes unseen.
//! Processing time: a window closes when the clock passes its end. Without a window
//! length there is one window, emitted when the input ends. Each closed window emits one
//! record per key, in key order: the key, the aggregate as decimal text, and the
//! window's start as timestamp (for the whole-input window, the newest timestamp seen).

use std::collections::{BTreeMap, HashMap};

use crate::config::{Aggregate, TimeKind};
use crate::jq::{JqProgram, to_f64};
use crate::ops::{Checkpoint, Input, OpError, Operator, Output};

pub struct WindowOptions {
    pub aggregate: Aggregate,
    /// The number to aggregate, for sum/min/max.
    pub of: Option<JqProgram>,
    /// `None`: one window over the whole input.
    pub length_ms: Option<i64>,
    pub time: TimeKind,
    pub lateness_ms: i64,
}

pub struct Window {
    options: WindowOptions,
    /// Open windows by start.
    panes: BTreeMap<i64, Pane>,
    /// Record time: windows ending at or before this are closed.
    watermark_ms: i64,
    /// Inputs below this were handled before a restart (see `replaying_until`).
    replay_end: u64,
}

struct Pane {
    /// The first input offset that went into this window.
    first_offset: u64,
    max_timestamp_ms: i64,
    groups: HashMap<Option<Vec<u8>>, f64>,
}

impl Window {
    pub fn new(options: WindowOptions) -> Window {
        Window {
            options,
            panes: BTreeMap::new(),
            watermark_ms: i64::MIN,
            replay_end: 0,
        }
    }

    fn start_of(&self, t: i64) -> i64 {
        match self.options.length_ms {
            Some(length) => t.div_euclid(length) * length,
            None => i64::MIN,
        }
    }

    fn end_of(&self, start: i64) -> i64 {
        match self.options.length_ms {
            Some(length) => start.saturating_add(length),
            None => i64::MAX,
        }
    }

    fn amount(&self, value: &[u8]) -> Result<f64, OpError> {
        let Some(program) = &self.options.of else {
            return Ok(1.0);
        };
        let mut number = None;
        let mut non_number = false;
        program
            .run(value, |v| {
                if number.is_none() && !non_number {
                    number = to_f64(v);
                    non_number = number.is_none();
                }
            })
            .map_err(OpError)?;
        number.ok_or_else(|| OpError("the `of` expression did not give a number".into()))
    }

    /// Emits and forgets every window ending at or before `until`.
    fn close_until(&mut self, until: i64, out: &mut Vec<Output>) {
        while let Some((&start, _)) = self.panes.first_key_value() {
            if self.end_of(start) > until {
                break;
            }
            let pane = self.panes.remove(&start).expect("just seen");
            self.emit(start, pane, out);
        }
    }

    fn emit(&self, start: i64, pane: Pane, out: &mut Vec<Output>) {
        let timestamp_ms = if self.options.length_ms.is_some() {
            start
        } else {
            pane.max_timestamp_ms
        };
        let mut groups: Vec<_> = pane.groups.into_iter().collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, amount) in groups {
            out.push(Output {
                timestamp_ms,
                key,
                value: format_number(amount).into_bytes(),
            });
        }
    }
}

impl Operator for Window {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError> {
        let t = match self.options.time {
            TimeKind::Record => input.timestamp_ms,
            TimeKind::Processing => input.now_ms,
        };
        let start = self.start_of(t);
        if self.options.time == TimeKind::Record && self.end_of(start) <= self.watermark_ms {
            if input.offset < self.replay_end {
                // Handled before the restart: counted in a window emitted then (or
                // reported late then). Replayed only for the windows still open.
                return Ok(());
            }
            return Err(OpError(format!(
                "late: its time {t} ms falls in the window [{start}, {}) ms, which closed when \
                 the watermark reached {} ms (newest time seen minus lateness {} ms); raise \
                 lateness to count such records",
                self.end_of(start),
                self.watermark_ms,
                self.options.lateness_ms
            )));
        }
        let amount = self.amount(input.value)?;
        let aggregate = self.options.aggregate;
        let pane = self.panes.entry(start).or_insert_with(|| Pane {
            first_offset: input.offset,
            max_timestamp_ms: i64::MIN,
            groups: HashMap::new(),
        });
        pane.max_timestamp_ms = pane.max_timestamp_ms.max(input.timestamp_ms);
        let key = input.key.map(<[u8]>::to_vec);
        pane.groups
            .entry(key)
            .and_modify(|acc| *acc = combine(aggregate, *acc, amount))
            .or_insert(amount);
        if self.options.time == TimeKind::Record {
            self.watermark_ms = self
                .watermark_ms
                .max(input.timestamp_ms.saturating_sub(self.options.lateness_ms));
            self.close_until(self.watermark_ms, out);
        }
        Ok(())
    }

    fn on_clock(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.options.time == TimeKind::Processing {
            self.close_until(now_ms, out);
        }
    }

    fn next_clock_ms(&self) -> Option<i64> {
        if self.options.time != TimeKind::Processing || self.options.length_ms.is_none() {
            return None;
        }
        self.panes.first_key_value().map(|(&start, _)| self.end_of(start))
    }

    fn on_end(&mut self, out: &mut Vec<Output>) {
        self.close_until(i64::MAX, out);
        if self.options.time == TimeKind::Record && self.options.length_ms.is_some() {
            self.watermark_ms = i64::MAX;
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            state_start: self.panes.values().map(|p| p.first_offset).min(),
            watermark_ms: self.watermark_ms,
        }
    }

    fn restore(&mut self, checkpoint: &Checkpoint) {
        self.watermark_ms = checkpoint.watermark_ms;
    }

    fn replaying_until(&mut self, offset: u64) {
        self.replay_end = offset;
    }
}

fn combine(aggregate: Aggregate, acc: f64, amount: f64) -> f64 {
    match aggregate {
        Aggregate::Count | Aggregate::Sum => acc + amount,
        Aggregate::Min => acc.min(amount),
        Aggregate::Max => acc.max(amount),
    }
}

/// Whole numbers print without a fraction (`3`, not `3.0`).
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(
        aggregate: Aggregate,
        of: Option<&str>,
        length_ms: Option<i64>,
        time: TimeKind,
    ) -> WindowOptions {
        WindowOptions {
            aggregate,
            of: of.map(|c| JqProgram::compile(c).unwrap()),
            length_ms,
            time,
            lateness_ms: 0,
        }
    }

    /// Feeds (timestamp, key, value) records; returns the emitted `key=value@ts` lines.
    fn feed(window: &mut Window, records: &[(i64, &str, &str)], end: bool) -> Vec<String> {
        feed_all(window, records, end).0
    }

    /// What `records` emit, and the errors of those refused (as `offset: error`).
    fn feed_all(window: &mut Window, records: &[(i64, &str, &str)], end: bool) -> (Vec<String>, Vec<String>) {
        let mut out = Vec::new();
        let mut refused = Vec::new();
        for (offset, (ts, key, value)) in records.iter().enumerate() {
            let input = Input {
                offset: offset as u64,
                timestamp_ms: *ts,
                now_ms: *ts,
                key: Some(key.as_bytes()),
                value: value.as_bytes(),
            };
            if let Err(error) = window.on_record(&input, &mut out) {
                refused.push(format!("{offset}: {error}"));
            }
        }
        if end {
            window.on_end(&mut out);
        }
        let emitted = out
            .iter()
            .map(|o| {
                let key = String::from_utf8_lossy(o.key.as_deref().unwrap_or(b"-"));
                format!("{key}={}@{}", String::from_utf8_lossy(&o.value), o.timestamp_ms)
            })
            .collect();
        (emitted, refused)
    }

    #[test]
    fn aggregates() {
        let records = [
            (1, "a", r#"{"n":2}"#),
            (2, "b", r#"{"n":5}"#),
            (3, "a", r#"{"n":-1.5}"#),
        ];
        let cases: &[(Aggregate, Option<&str>, &[&str])] = &[
            (Aggregate::Count, None, &["a=2@3", "b=1@3"]),
            (Aggregate::Sum, Some(".n"), &["a=0.5@3", "b=5@3"]),
            (Aggregate::Min, Some(".n"), &["a=-1.5@3", "b=5@3"]),
            (Aggregate::Max, Some(".n"), &["a=2@3", "b=5@3"]),
        ];
        for (aggregate, of, expected) in cases {
            let mut w = Window::new(options(*aggregate, *of, None, TimeKind::Record));
            assert_eq!(feed(&mut w, &records, true), *expected, "{aggregate:?}");
        }
    }

    #[test]
    fn tumbling_record_time() {
        let mut w = Window::new(options(Aggregate::Count, None, Some(10), TimeKind::Record));
        // [0,10): a a b; the record at 12 closes it; 5 is then late (refused, saying why);
        // [10,20) closes at end.
        let records = [
            (1, "a", ""),
            (9, "b", ""),
            (3, "a", ""),
            (12, "a", ""),
            (5, "a", ""),
            (19, "a", ""),
        ];
        let (emitted, refused) = feed_all(&mut w, &records, false);
        assert_eq!(emitted, ["a=2@0", "b=1@0"]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with("4: late: its time 5 ms falls in the window [0, 10) ms")
                && refused[0].contains("watermark reached 12 ms"),
            "{refused:?}"
        );
        assert_eq!(
            w.checkpoint(),
            Checkpoint {
                state_start: Some(3),
                watermark_ms: 19
            }
        );
        let mut out = Vec::new();
        w.on_end(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, b"2");
        assert_eq!(w.checkpoint().state_start, None);
    }

    #[test]
    fn lateness_keeps_windows_open() {
        let mut opts = options(Aggregate::Count, None, Some(10), TimeKind::Record);
        opts.lateness_ms = 5;
        let mut w = Window::new(opts);
        let records = [(1, "a", ""), (12, "a", ""), (8, "a", ""), (16, "a", "")];
        assert_eq!(feed(&mut w, &records, false), ["a=2@0"]);
    }

    #[test]
    fn restore_drops_what_was_emitted_before() {
        let mut w = Window::new(options(Aggregate::Count, None, Some(10), TimeKind::Record));
        w.restore(&Checkpoint {
            state_start: Some(0),
            watermark_ms: 10,
        });
        w.replaying_until(1);
        // The window [0,10) was emitted before the restart: its records are not counted
        // again, and one handled before (offset 0) is no error; one new (offset 2) is late.
        let (emitted, refused) = feed_all(&mut w, &[(5, "a", ""), (15, "a", ""), (6, "a", "")], true);
        assert_eq!(emitted, ["a=1@10"]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].starts_with("2: late"), "{refused:?}");
    }

    #[test]
    fn processing_time_closes_on_clock() {
        let mut w = Window::new(options(Aggregate::Count, None, Some(100), TimeKind::Processing));
        assert_eq!(w.next_clock_ms(), None, "nothing open: no wake-up needed");
        assert!(feed(&mut w, &[(10, "a", ""), (20, "a", "")], false).is_empty());
        // The stage sleeps until the open window's end, and no longer.
        assert_eq!(w.next_clock_ms(), Some(100));
        let mut out = Vec::new();
        w.on_clock(99, &mut out);
        assert!(out.is_empty());
        w.on_clock(100, &mut out);
        assert_eq!(out[0].value, b"2");
        assert_eq!(w.next_clock_ms(), None);
    }

    #[test]
    fn record_time_needs_no_clock() {
        let mut w = Window::new(options(Aggregate::Count, None, Some(100), TimeKind::Record));
        feed(&mut w, &[(10, "a", "")], false);
        assert_eq!(w.next_clock_ms(), None);
    }

    #[test]
    fn bad_amounts_are_errors() {
        let mut w = Window::new(options(Aggregate::Sum, Some(".n"), None, TimeKind::Record));
        let input = |v: &'static str| Input {
            offset: 0,
            timestamp_ms: 0,
            now_ms: 0,
            key: None,
            value: v.as_bytes(),
        };
        assert!(w.on_record(&input(r#"{"n":"x"}"#), &mut Vec::new()).is_err());
        assert!(w.on_record(&input("garbage"), &mut Vec::new()).is_err());
        assert_eq!(
            w.checkpoint().state_start,
            None,
            "a failed record leaves no state"
        );
    }

    #[test]
    fn numbers_print_plainly() {
        for (x, s) in [
            (3.0, "3"),
            (-2.0, "-2"),
            (0.5, "0.5"),
            (1e20, "100000000000000000000"),
        ] {
            assert_eq!(format_number(x), s);
        }
    }
}
