//! One named consumer's place in one partition, as a pure state machine: the committed
//! offset, the claimed-but-unacked range, the reclaim count and the state. No clock, no
//! disk: the caller passes the time and the log's bounds, and persists what changed.

use serde::{Deserialize, Serialize};

use crate::consumer::error::ConsumerError;

/// Where a new consumer starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// `>`: from the oldest record the log holds.
    Earliest,
    /// `$>`: only records that arrive after the consumer is created.
    New,
    /// The record after this offset.
    After(u64),
    /// The first record at or after this time (ms since the epoch).
    Time(i64),
}

/// Where a reset moves a consumer's committed offset (the next record it takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// This offset (a Kafka group's commit): one past the end names no record, refused.
    Offset(u64),
    /// The oldest record the log holds.
    Earliest,
    /// The partition's next offset: everything held counts as consumed.
    Latest,
    /// The first record at or after this time (ms since the epoch); the end if none.
    Time(i64),
    /// This many records past the committed offset, at most to the end.
    Skip(u64),
}

impl Position {
    /// The wire's code (SEEK's optional `how` byte) and its value.
    pub fn code(self) -> (u8, u64) {
        match self {
            Position::Offset(n) => (0, n),
            Position::Earliest => (1, 0),
            Position::Latest => (2, 0),
            Position::Time(t) => (3, t as u64),
            Position::Skip(n) => (4, n),
        }
    }

    pub fn from_code(code: u8, value: u64) -> Option<Position> {
        Some(match code {
            0 => Position::Offset(value),
            1 => Position::Earliest,
            2 => Position::Latest,
            3 => Position::Time(value as i64),
            4 => Position::Skip(value),
            _ => return None,
        })
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// `earliest`, `latest`, an offset, or `@MS` (the first record at or after a time).
    fn from_str(text: &str) -> Result<Position, String> {
        match text {
            "earliest" => Ok(Position::Earliest),
            "latest" => Ok(Position::Latest),
            t => match t.strip_prefix('@') {
                Some(ms) => ms.parse().map(Position::Time),
                None => t.parse().map(Position::Offset),
            }
            .map_err(|_| format!("\"{t}\" is not earliest, latest, an offset, or @MS (a time in ms)")),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Offset(n) => write!(f, "offset {n}"),
            Position::Earliest => f.write_str("earliest"),
            Position::Latest => f.write_str("latest"),
            Position::Time(t) => write!(f, "time {t} ms"),
            Position::Skip(n) => write!(f, "skip {n}"),
        }
    }
}

/// What happens to a claim reclaimed more than `max_reclaims` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMax {
    /// The consumer stops; the records stay unacked until it is resumed.
    Disable,
    /// The records are skipped (acked unprocessed).
    Continue,
    /// The records are copied to this topic with the reason in a header, then acked.
    DeadLetter(String),
}

/// How a consumer behaves; given when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub start: Start,
    /// A claim not acked within this many ms is reclaimed by the engine.
    pub reclaim_timeout_ms: Option<u64>,
    /// Reclaims of one claim allowed before `on_max` applies; `None`: unlimited.
    pub max_reclaims: Option<u32>,
    pub on_max: OnMax,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            start: Start::Earliest,
            reclaim_timeout_ms: None,
            max_reclaims: None,
            on_max: OnMax::Disable,
        }
    }
}

/// Offsets `from..to` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub from: u64,
    pub to: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub range: Range,
    /// When it was claimed (ms), for `reclaim_timeout`.
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum State {
    Active,
    Disabled(String),
}

impl State {
    /// `active` or `disabled`, as clients and the status show it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Active => "active",
            State::Disabled(_) => "disabled",
        }
    }
}

/// Why a claim went back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A client asked.
    Asked,
    /// Not acked within `reclaim_timeout`.
    Timeout,
}

/// What a reclaim did with the claimed records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// They will be delivered again by the next claim.
    Redeliver,
    /// `max_reclaims` was passed: the consumer is disabled, the records stay unacked.
    Disabled,
    /// `max_reclaims` was passed: the records were skipped.
    Skipped,
    /// `max_reclaims` was passed: the records go to this dead-letter topic, with `reason`.
    DeadLetter { topic: String, reason: String },
}

impl Outcome {
    pub fn code(&self) -> u8 {
        match self {
            Outcome::Redeliver => 0,
            Outcome::Disabled => 1,
            Outcome::Skipped => 2,
            Outcome::DeadLetter { .. } => 3,
        }
    }

    pub fn name(&self) -> &'static str {
        ["redeliver", "disabled", "skipped", "dead_letter"][self.code() as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub range: Range,
    /// Reclaims of this range so far (0 after a disable, skip or dead letter).
    pub reclaims: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub options: Options,
    /// Everything below is acked; the next claim starts here.
    pub committed: u64,
    pub claim: Option<Claim>,
    /// Reclaims since the last ack.
    pub reclaims: u32,
    pub state: State,
    /// Records that retention deleted before they were acked.
    pub skipped: u64,
}

impl Cursor {
    /// A consumer created now on a partition holding `start..end`; `at_time` finds the
    /// first offset at or after a time.
    pub fn new(options: Options, start: u64, end: u64, at_time: impl Fn(i64) -> Option<u64>) -> Cursor {
        let committed = match options.start {
            Start::Earliest => start,
            Start::New => end,
            Start::After(offset) => offset.saturating_add(1).clamp(start, end),
            Start::Time(t) => at_time(t).unwrap_or(end),
        };
        Cursor {
            options,
            committed,
            claim: None,
            reclaims: 0,
            state: State::Active,
            skipped: 0,
        }
    }

    /// Keeps the cursor within a log that ends at `end` (a power loss may have taken back
    /// records it had claimed or acked, in `none` mode or with data written before reads
    /// were committed): the committed offset goes no further, and a claim reaching past
    /// it is dropped (its records are delivered again). Returns the committed offset it
    /// had when it moved, so the caller can say so.
    pub fn clamp_to(&mut self, end: u64) -> Option<u64> {
        let before = self.committed;
        if self.claim.is_some_and(|c| c.range.to > end) {
            self.claim = None;
        }
        if self.committed > end {
            self.committed = end;
            return Some(before);
        }
        None
    }

    /// Whether a claim is pending past `reclaim_timeout` at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms().is_some_and(|at| now_ms >= at)
    }

    /// When its claim expires (wall clock, ms), if it holds one that can.
    pub fn expires_at_ms(&self) -> Option<i64> {
        match (self.claim, self.options.reclaim_timeout_ms) {
            (Some(claim), Some(timeout)) => Some(
                claim
                    .at_ms
                    .saturating_add(i64::try_from(timeout).unwrap_or(i64::MAX)),
            ),
            _ => None,
        }
    }

    /// Where a claim would start, given that the log now begins at `start`: `None` when
    /// a claim is pending (nothing new until it is acked or reclaimed).
    pub fn claimable(&mut self, start: u64) -> Result<Option<u64>, ConsumerError> {
        if let State::Disabled(reason) = &self.state {
            return Err(ConsumerError::Disabled(reason.clone()));
        }
        if self.claim.is_some() {
            return Ok(None);
        }
        if self.committed < start {
            // Retention deleted records this consumer never acked: say so, go on.
            self.skipped += start - self.committed;
            self.committed = start;
        }
        Ok(Some(self.committed))
    }

    /// Records `committed..to` are now claimed; `to` comes from what was read.
    pub fn claim(&mut self, to: u64, now_ms: i64) -> Option<Range> {
        (to > self.committed).then(|| {
            let range = Range {
                from: self.committed,
                to,
            };
            self.claim = Some(Claim { range, at_ms: now_ms });
            range
        })
    }

    /// Acks the pending claim: the committed offset moves past it; reclaims reset.
    pub fn ack(&mut self) -> Result<Range, ConsumerError> {
        let claim = self.claim.take().ok_or(ConsumerError::NothingClaimed)?;
        self.committed = claim.range.to;
        self.reclaims = 0;
        Ok(claim.range)
    }

    /// Gives the pending claim back; past `max_reclaims` the `on_max` rule applies.
    pub fn reclaim(&mut self, why: Why) -> Result<Reclaimed, ConsumerError> {
        let claim = self.claim.take().ok_or(ConsumerError::NothingClaimed)?;
        let range = claim.range;
        self.reclaims += 1;
        let over = self.options.max_reclaims.is_some_and(|max| self.reclaims > max);
        if !over {
            return Ok(Reclaimed {
                range,
                reclaims: self.reclaims,
                outcome: Outcome::Redeliver,
            });
        }
        let reason = format!(
            "offsets {}..{} were reclaimed {} times (max_reclaims {}), the last by {}",
            range.from,
            range.to,
            self.reclaims,
            self.options.max_reclaims.unwrap_or(0),
            match why {
                Why::Asked => "request",
                Why::Timeout => "reclaim_timeout",
            }
        );
        self.reclaims = 0;
        let outcome = match &self.options.on_max {
            OnMax::Disable => {
                self.state = State::Disabled(reason);
                Outcome::Disabled
            }
            OnMax::Continue => {
                self.committed = range.to;
                Outcome::Skipped
            }
            OnMax::DeadLetter(topic) => {
                self.committed = range.to;
                Outcome::DeadLetter {
                    topic: topic.clone(),
                    reason,
                }
            }
        };
        Ok(Reclaimed {
            range,
            reclaims: 0,
            outcome,
        })
    }

    /// Sets the committed offset to `to` in a log that ends at `end` (a Kafka group's
    /// commit, which may move it either way): a pending claim is dropped (its records
    /// are delivered again from `to`), reclaims reset. An offset past the end names no
    /// record and is refused.
    pub fn seek(&mut self, to: u64, end: u64) -> Result<(), ConsumerError> {
        if to > end {
            return Err(ConsumerError::Invalid(format!(
                "offset {to} is past the partition's end ({end}): commit an offset of a record read"
            )));
        }
        self.committed = to;
        self.claim = None;
        self.reclaims = 0;
        Ok(())
    }

    /// Records a log holding `start..end` has past the committed offset: never the ones
    /// below `start` (retention deleted them; they are `skipped` once claimed), so lag is
    /// never phantom.
    pub fn lag(&self, start: u64, end: u64) -> u64 {
        end.saturating_sub(self.committed.max(start))
    }

    /// Resets the consumer to `to` in a log holding `start..end` (`at_time` finds the
    /// first offset at or after a time) and returns the committed offset it lands on: a
    /// pending claim is dropped (its records are delivered again unless skipped), reclaims
    /// reset. An offset past `end` is refused, as in [`Cursor::seek`].
    pub fn reset(
        &mut self,
        to: Position,
        start: u64,
        end: u64,
        at_time: impl Fn(i64) -> Option<u64>,
    ) -> Result<u64, ConsumerError> {
        let offset = match to {
            Position::Offset(n) if n > end => {
                return Err(ConsumerError::Invalid(format!(
                    "offset {n} is past the partition's end ({end}): reset to an offset of a record held, or to latest"
                )));
            }
            // As a Kafka commit: kept as given; below `start`, the next claim counts
            // what retention deleted as skipped.
            Position::Offset(n) => n,
            Position::Earliest => start,
            Position::Latest => end,
            Position::Time(t) => at_time(t).unwrap_or(end).clamp(start, end),
            Position::Skip(n) => self.committed.max(start).saturating_add(n).min(end),
        };
        self.seek(offset, end)?;
        Ok(offset)
    }

    /// Stops the consumer; a pending claim goes back unacked (not counted as a reclaim).
    pub fn disable(&mut self, reason: &str) -> Result<(), ConsumerError> {
        if let State::Disabled(_) = self.state {
            return Err(ConsumerError::AlreadyDisabled);
        }
        self.claim = None;
        self.state = State::Disabled(reason.to_owned());
        Ok(())
    }

    /// Starts a disabled consumer again, from its committed offset, reclaims reset.
    pub fn resume(&mut self) -> Result<(), ConsumerError> {
        if self.state == State::Active {
            return Err(ConsumerError::AlreadyActive);
        }
        self.state = State::Active;
        self.reclaims = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!("earliest".parse(), Ok(Position::Earliest));
        assert_eq!("latest".parse(), Ok(Position::Latest));
        assert_eq!("42".parse(), Ok(Position::Offset(42)));
        assert_eq!("@1700000000000".parse(), Ok(Position::Time(1_700_000_000_000)));
        assert!(
            "soon"
                .parse::<Position>()
                .unwrap_err()
                .contains("earliest, latest")
        );
        assert!("@x".parse::<Position>().is_err());
        for p in [
            Position::Offset(7),
            Position::Earliest,
            Position::Latest,
            Position::Time(-3),
            Position::Skip(9),
        ] {
            let (code, value) = p.code();
            assert_eq!(Position::from_code(code, value), Some(p));
        }
        assert_eq!(Position::from_code(5, 0), None);
    }

    #[test]
    fn a_reset_lands_where_it_says_and_drops_the_claim() {
        // A log holding 10..50 whose records were written at time = offset * 100.
        let at_time = |t: i64| (t <= 4900).then(|| (t.max(0) as u64).div_ceil(100).max(10));
        let mut c = Cursor::new(Options::default(), 10, 50, at_time);
        assert_eq!(c.claim(20, 0), Some(Range { from: 10, to: 20 }));
        assert_eq!(c.reset(Position::Skip(5), 10, 50, at_time), Ok(15));
        assert_eq!(c.claim, None, "a reset drops the pending claim");
        assert_eq!(
            c.reset(Position::Skip(100), 10, 50, at_time),
            Ok(50),
            "a skip stops at the end"
        );
        assert_eq!(c.reset(Position::Earliest, 10, 50, at_time), Ok(10));
        assert_eq!(c.reset(Position::Latest, 10, 50, at_time), Ok(50));
        assert_eq!(c.reset(Position::Time(2550), 10, 50, at_time), Ok(26));
        assert_eq!(
            c.reset(Position::Time(99_999), 10, 50, at_time),
            Ok(50),
            "no record that late: the end"
        );
        assert_eq!(c.reset(Position::Offset(30), 10, 50, at_time), Ok(30));
        assert!(c.reset(Position::Offset(51), 10, 50, at_time).is_err());
        assert_eq!(c.committed, 30, "a refused reset changes nothing");
        // Below the start (retention deleted it), a skip counts from the start.
        c.committed = 3;
        assert_eq!(c.reset(Position::Skip(2), 10, 50, at_time), Ok(12));
    }

    /// One step of a specification and what it must give.
    #[derive(Debug)]
    enum Step {
        /// Claim up to `n` records from a log holding `0..end`: expect this range.
        Claim(u64, u64, Result<Option<(u64, u64)>, ConsumerError>),
        Ack(Result<(u64, u64), ConsumerError>),
        Reclaim(Why, Result<(u32, &'static str), ConsumerError>),
        Expired(i64, bool),
        Disable(Result<(), ConsumerError>),
        Resume(Result<(), ConsumerError>),
        /// Committed offset, reclaim count, active.
        Is(u64, u32, bool),
    }

    fn run(options: Options, start: (u64, u64), steps: &[Step]) {
        let mut cursor = Cursor::new(options, start.0, start.1, |t| Some(t as u64 / 10));
        for (i, step) in steps.iter().enumerate() {
            let at = format!("step {i}: {step:?}");
            match step {
                Step::Claim(n, end, want) => {
                    let got = cursor.claimable(0).map(|from| {
                        from.and_then(|from| cursor.claim((from + n).min(*end), 100))
                            .map(|r| (r.from, r.to))
                    });
                    // A disabled consumer's reason is prose; only the kind is specified.
                    let got = got.map_err(|e| match e {
                        ConsumerError::Disabled(_) => ConsumerError::Disabled(String::new()),
                        other => other,
                    });
                    assert_eq!(&got, want, "{at}");
                }
                Step::Ack(want) => assert_eq!(&cursor.ack().map(|r| (r.from, r.to)), want, "{at}"),
                Step::Reclaim(why, want) => {
                    let got = cursor.reclaim(*why).map(|r| (r.reclaims, r.outcome.name()));
                    assert_eq!(&got, want, "{at}");
                }
                Step::Expired(now, want) => assert_eq!(cursor.expired(*now), *want, "{at}"),
                Step::Disable(want) => assert_eq!(&cursor.disable("asked"), want, "{at}"),
                Step::Resume(want) => assert_eq!(&cursor.resume(), want, "{at}"),
                Step::Is(committed, reclaims, active) => assert_eq!(
                    (cursor.committed, cursor.reclaims, cursor.state == State::Active),
                    (*committed, *reclaims, *active),
                    "{at}"
                ),
            }
        }
    }

    fn max(n: u32, on_max: OnMax) -> Options {
        Options {
            max_reclaims: Some(n),
            on_max,
            reclaim_timeout_ms: Some(50),
            ..Options::default()
        }
    }

    #[test]
    fn start_positions() {
        let at = |start| {
            Cursor::new(
                Options {
                    start,
                    ..Options::default()
                },
                5,
                20,
                |t| Some(t as u64),
            )
        };
        assert_eq!(at(Start::Earliest).committed, 5, "> starts at what the log holds");
        assert_eq!(at(Start::New).committed, 20, "$> starts at the end");
        assert_eq!(
            at(Start::After(9)).committed,
            10,
            "an offset means the record after it"
        );
        assert_eq!(
            at(Start::After(2)).committed,
            5,
            "an offset below the log start clamps"
        );
        assert_eq!(
            at(Start::After(99)).committed,
            20,
            "an offset past the end clamps"
        );
        assert_eq!(at(Start::Time(12)).committed, 12, "a time finds its first record");
        let none = Cursor::new(
            Options {
                start: Start::Time(1),
                ..Options::default()
            },
            0,
            7,
            |_| None,
        );
        assert_eq!(none.committed, 7, "a time after every record starts at the end");
    }

    #[test]
    fn a_claim_expires_its_timeout_after_it_was_made() {
        let mut cursor = Cursor::new(max(3, OnMax::Disable), 0, 10, |_| None);
        assert_eq!(cursor.expires_at_ms(), None, "no claim, nothing to expire");
        assert!(cursor.claim(5, 1_000).is_some());
        assert_eq!(cursor.expires_at_ms(), Some(1_050));
        assert!(!cursor.expired(1_049));
        assert!(cursor.expired(1_050));
        let mut forever = Cursor::new(Options::default(), 0, 10, |_| None);
        assert!(forever.claim(5, 1_000).is_some());
        assert_eq!(
            forever.expires_at_ms(),
            None,
            "no reclaim_timeout: it never expires"
        );
    }

    #[test]
    fn claim_ack_reclaim_specifications() {
        use Step::*;
        let specs: Vec<(&str, Options, Vec<Step>)> = vec![
            (
                "claim, a second claim gives nothing new, ack returns the range",
                Options::default(),
                vec![
                    Claim(3, 10, Ok(Some((0, 3)))),
                    Claim(3, 10, Ok(None)),
                    Ack(Ok((0, 3))),
                    Claim(3, 10, Ok(Some((3, 6)))),
                    Ack(Ok((3, 6))),
                    Is(6, 0, true),
                ],
            ),
            (
                "a claim at the end is empty, an ack without a claim is an error",
                Options::default(),
                vec![
                    Claim(5, 0, Ok(None)),
                    Ack(Err(ConsumerError::NothingClaimed)),
                    Reclaim(Why::Asked, Err(ConsumerError::NothingClaimed)),
                ],
            ),
            (
                "reclaim re-delivers the same records, counts, and an ack resets the count",
                Options::default(),
                vec![
                    Claim(4, 10, Ok(Some((0, 4)))),
                    Reclaim(Why::Asked, Ok((1, "redeliver"))),
                    Claim(2, 10, Ok(Some((0, 2)))),
                    Reclaim(Why::Asked, Ok((2, "redeliver"))),
                    Is(0, 2, true),
                    Claim(4, 10, Ok(Some((0, 4)))),
                    Ack(Ok((0, 4))),
                    Is(4, 0, true),
                ],
            ),
            (
                "reclaim_timeout: a claim expires only after the timeout",
                max(5, OnMax::Disable),
                vec![
                    Expired(100, false),
                    Claim(1, 10, Ok(Some((0, 1)))),
                    Expired(149, false),
                    Expired(150, true),
                ],
            ),
            (
                "max_reclaims then disable: records stay unacked, resume re-delivers them",
                max(1, OnMax::Disable),
                vec![
                    Claim(2, 10, Ok(Some((0, 2)))),
                    Reclaim(Why::Timeout, Ok((1, "redeliver"))),
                    Claim(2, 10, Ok(Some((0, 2)))),
                    Reclaim(Why::Timeout, Ok((0, "disabled"))),
                    Is(0, 0, false),
                    Claim(2, 10, Err(ConsumerError::Disabled(String::new()))),
                    Resume(Ok(())),
                    Resume(Err(ConsumerError::AlreadyActive)),
                    Claim(2, 10, Ok(Some((0, 2)))),
                ],
            ),
            (
                "max_reclaims then continue: the records are skipped",
                max(0, OnMax::Continue),
                vec![
                    Claim(2, 10, Ok(Some((0, 2)))),
                    Reclaim(Why::Asked, Ok((0, "skipped"))),
                    Is(2, 0, true),
                    Claim(2, 10, Ok(Some((2, 4)))),
                ],
            ),
            (
                "max_reclaims then dead_letter: the records move on",
                max(1, OnMax::DeadLetter("dead".into())),
                vec![
                    Claim(3, 10, Ok(Some((0, 3)))),
                    Reclaim(Why::Asked, Ok((1, "redeliver"))),
                    Claim(3, 10, Ok(Some((0, 3)))),
                    Reclaim(Why::Asked, Ok((0, "dead_letter"))),
                    Is(3, 0, true),
                ],
            ),
            (
                "disable drops the claim, twice is an error",
                Options::default(),
                vec![
                    Claim(3, 10, Ok(Some((0, 3)))),
                    Disable(Ok(())),
                    Disable(Err(ConsumerError::AlreadyDisabled)),
                    Ack(Err(ConsumerError::NothingClaimed)),
                    Resume(Ok(())),
                    Claim(3, 10, Ok(Some((0, 3)))),
                ],
            ),
        ];
        for (name, options, steps) in specs {
            eprintln!("spec: {name}");
            run(options, (0, 0), &steps);
        }
    }

    #[test]
    fn retention_past_the_committed_offset_is_counted_as_skipped() {
        let mut cursor = Cursor::new(Options::default(), 0, 10, |_| None);
        assert_eq!(cursor.claimable(4), Ok(Some(4)));
        assert_eq!(cursor.skipped, 4);
    }

    #[test]
    fn a_cursor_past_the_recovered_end_is_brought_back_to_it() {
        let mut cursor = Cursor::new(Options::default(), 0, 10, |_| None);
        cursor.committed = 8;
        cursor.claim(10, 0);
        assert_eq!(cursor.clamp_to(9), None, "committed 8 is within 9");
        assert_eq!(cursor.claim, None, "a claim reaching past the end is dropped");
        assert_eq!(cursor.clamp_to(5), Some(8));
        assert_eq!(cursor.committed, 5);
        assert_eq!(cursor.clamp_to(5), None);
    }

    #[test]
    fn a_seek_moves_the_committed_offset_either_way_and_drops_the_claim() {
        let mut cursor = Cursor::new(Options::default(), 0, 10, |_| None);
        cursor.claim(6, 0);
        assert_eq!(cursor.seek(8, 10), Ok(()));
        assert_eq!((cursor.committed, cursor.claim), (8, None));
        assert_eq!(cursor.seek(2, 10), Ok(()));
        assert_eq!(cursor.committed, 2);
        assert!(matches!(cursor.seek(11, 10), Err(ConsumerError::Invalid(_))));
        assert_eq!(cursor.committed, 2);
    }
}
