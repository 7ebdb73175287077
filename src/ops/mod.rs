//! Built-in operators: sans-io transformations from input records to output records.
//!
//! An operator never touches files, sockets or clocks: the stage hands it records (with
//! the processing time) and collects what it emits. That keeps each one a pure state
//! machine, tested with tables, and lets exactly-once recovery replay it.

pub mod dedupe;
pub mod key_by;
pub mod map;
pub mod merge;
pub mod split_words;
pub mod state;
pub mod window;

use crate::config::{OpSpec, WindowSpec};
use crate::jq;
use crate::protocol::wire::{RESERVED_HEADER_PREFIX, goes_with_value};

/// One input record, borrowed from the log.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Its offset in the input partition.
    pub offset: u64,
    pub timestamp_ms: i64,
    /// Processing time when the stage read it.
    pub now_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// One output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// What an operator must get back after a restart to replay its input exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The oldest input offset its state still depends on; `None` when it holds none.
    pub state_start: Option<u64>,
    /// Record-time watermark: windows ending at or before it are closed and emitted.
    pub watermark_ms: i64,
}

/// A record an operator could not handle. The stage skips it and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpError(pub String);

pub trait Operator {
    /// Handles one record, appending what it emits to `out`.
    fn on_record(&mut self, input: &Input<'_>, out: &mut Vec<Output>) -> Result<(), OpError>;

    /// Processing time moved to `now_ms` (called when the stage is idle too).
    fn on_clock(&mut self, _now_ms: i64, _out: &mut Vec<Output>) {}

    /// The processing time (ms) at which `on_clock` next has something to emit, if any:
    /// an idle stage sleeps until then (and not at all, with `None`, until records come).
    fn next_clock_ms(&self) -> Option<i64> {
        None
    }

    /// The input ended: emit everything still held.
    fn on_end(&mut self, _out: &mut Vec<Output>) {}

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::default()
    }

    /// Called once before any record, with the checkpoint the stage stored last.
    fn restore(&mut self, _checkpoint: &Checkpoint) {}

    /// Called once before any record: the inputs below `offset` were handled before a
    /// restart, and come again only to rebuild the operator's state.
    fn replaying_until(&mut self, _offset: u64) {}

    /// Which of an input's headers the outputs `on_record` makes of it carry.
    fn carries(&self) -> Carry {
        Carry::Nothing
    }
}

/// Which of an input record's headers its outputs carry. Only a client's own headers and
/// the null mark ever go on: the engine's (provenance, reply address, end marker, a dead
/// letter's reason) belong to the record where they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// None: an output stands for many inputs (a window, a key's state).
    Nothing,
    /// The client's headers: an output made from its input (`map`, `split_words`).
    Headers,
    /// Those and the null mark (`flowd-null`, a Kafka tombstone's): the input's own
    /// value passed on (`filter`, `key_by`, `dedupe`, a dead letter).
    HeadersAndNull,
}

impl Carry {
    /// The headers of `headers` an output carries.
    pub fn select<'h>(
        self,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) -> impl Iterator<Item = (&'h str, &'h [u8])> {
        headers.filter(move |(name, _)| self.keeps(name))
    }

    /// Whether an output carries its input's header `name`.
    pub fn keeps(self, name: &str) -> bool {
        match self {
            Carry::Nothing => false,
            Carry::Headers => !name.starts_with(RESERVED_HEADER_PREFIX),
            Carry::HeadersAndNull => goes_with_value(name),
        }
    }
}

/// Builds the operator a stage runs. The spec was validated, so jq compiles.
pub fn build(spec: &OpSpec) -> Result<Box<dyn Operator>, OpError> {
    let compile = |code: &str| jq::JqProgram::compile(code).map_err(OpError);
    Ok(match spec {
        OpSpec::Map(code) => Box::new(map::Map::new(compile(code)?)),
        OpSpec::Filter(code) => Box::new(map::Filter::new(compile(code)?)),
        OpSpec::SplitWords => Box::new(split_words::SplitWords),
        OpSpec::KeyBy(selector) => Box::new(key_by::KeyBy::new(selector)?),
        OpSpec::Window(window) => Box::new(window::Window::new(window_of(window)?)),
        OpSpec::Dedupe { by, capacity } => Box::new(dedupe::Dedupe::new(*by, *capacity)),
        OpSpec::Reply => {
            return Err(OpError(
                "reply answers jobs; it is run by the runtime, not as an operator".into(),
            ));
        }
        OpSpec::Exec(_) => {
            return Err(OpError(
                "exec runs worker processes; it is run by the runtime, not as an operator".into(),
            ));
        }
        OpSpec::ScatterGather(_) => {
            return Err(OpError(
                "scatter_gather sends jobs to its branches; it is run by the runtime, not as an operator"
                    .into(),
            ));
        }
        OpSpec::State { .. } => {
            return Err(OpError(
                "state starts from its changelog; the runtime builds it with state::State::new".into(),
            ));
        }
    })
}

fn window_of(spec: &WindowSpec) -> Result<window::WindowOptions, OpError> {
    Ok(window::WindowOptions {
        aggregate: spec.aggregate,
        of: spec
            .of
            .as_deref()
            .map(jq::JqProgram::compile)
            .transpose()
            .map_err(OpError)?,
        length_ms: spec.window.map(|w| w.as_millis() as i64),
        time: spec.time,
        lateness_ms: spec.lateness.as_millis() as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_carries_the_clients_headers_and_the_null_mark_only_where_its_value_is_the_inputs() {
        let headers: [(&str, &[u8]); 5] = [
            ("trace", b"t1"),
            ("flowd-null", b""),
            ("flowd-src", b"7 p"),
            ("flowd-reply", b"r"),
            ("trace", b"t2"),
        ];
        let carried = |carry: Carry| carry.select(headers.iter().copied()).collect::<Vec<_>>();
        assert_eq!(carried(Carry::Nothing), []);
        assert_eq!(carried(Carry::Headers), [("trace", &b"t1"[..]), ("trace", b"t2")]);
        assert_eq!(
            carried(Carry::HeadersAndNull),
            [("trace", &b"t1"[..]), ("flowd-null", b""), ("trace", b"t2")]
        );
    }
}
