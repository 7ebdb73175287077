//! `flowd bench fetch`: fill a topic, then read all of it back from the start as stored
//! batches (FETCH_BATCHES), with no consumer and no acks: one connection per partition,
//! one fetch in flight on each, every batch checked (CRC, archive) as a client must.

use std::time::Instant;

use crate::bench::ingest::fill;
use crate::bench::progress::Progress;
use crate::bench::{BenchError, Measured, Target, histogram};
use crate::protocol::FetchFrom;
use crate::protocol::message::FetchRequest;

/// Fills the topic with `records` records of `size` bytes, then reads every record it
/// holds back, `batch` records per fetch at most (whole batches: a fetch may bring up to
/// a batch more). Fails unless each record of the topic is read exactly once.
pub fn fetch(
    target: &Target,
    records: u64,
    size: usize,
    batch: u32,
    progress: bool,
) -> Result<Measured, BenchError> {
    fill(target, records, size)?;
    let partitions = target.partitions(&target.topic)?;
    // A warm-up read of the first batches of each partition, not timed.
    for p in 0..partitions {
        read_partition(target, p, batch, Some(1), &Progress::hidden())?;
    }
    let bar = if progress {
        Progress::new(records, "fetch")
    } else {
        Progress::hidden()
    };
    let started = Instant::now();
    let results: Vec<Result<Read, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..partitions)
            .map(|p| {
                let bar = &bar;
                s.spawn(move || read_partition(target, p, batch, None, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Run("a reader panicked".into())))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    bar.finish();
    let mut latency = histogram();
    let mut read = 0;
    for result in results {
        let r = result?;
        if r.records != r.held {
            return Err(BenchError::Run(format!(
                "partition {} holds {} records but {} were read",
                r.partition, r.held, r.records
            )));
        }
        read += r.records;
        latency
            .add(&r.latency)
            .map_err(|e| BenchError::Run(e.to_string()))?;
    }
    Ok(Measured {
        seconds,
        records: read,
        latency,
    })
}

/// What reading one partition found.
struct Read {
    partition: u32,
    records: u64,
    /// Records the partition held when the read began.
    held: u64,
    latency: hdrhistogram::Histogram<u64>,
}

/// Reads partition `p` from its start to its end as it was at the first fetch (or
/// `fetches` fetches, for a warm-up), checking that offsets come each once, in order.
fn read_partition(
    target: &Target,
    p: u32,
    batch: u32,
    fetches: Option<u64>,
    bar: &Progress,
) -> Result<Read, BenchError> {
    let mut client = target.at.connect()?;
    let mut latency = histogram();
    let (mut from, mut end, mut start) = (0u64, None, 0u64);
    let mut records = 0u64;
    let mut disorder = None;
    // Bounded: each round reads at least one record or stops, and ends at `end`.
    for _ in 0..fetches.unwrap_or(u64::MAX) {
        let request = FetchRequest {
            topic: &target.topic,
            partition: p,
            from: FetchFrom::Offset(from),
            max_records: batch,
            max_bytes: 1 << 20,
            wait_ms: 0,
        };
        let t0 = Instant::now();
        let mut next = from;
        let mut count = 0u64;
        let ends = client.fetch_batches_each(&request, |view| {
            if view.offset() != next && disorder.is_none() {
                disorder = Some((next, view.offset()));
            }
            next = view.offset() + 1;
            count += 1;
            std::hint::black_box(view.value());
        })?;
        latency.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        if let Some((wanted, got)) = disorder {
            return Err(BenchError::Run(format!(
                "partition {p}: offset {got} came where {wanted} was next"
            )));
        }
        let end = *end.get_or_insert_with(|| {
            start = ends.0;
            ends.1
        });
        records += count;
        bar.add(count);
        from = next;
        if count == 0 || from >= end {
            break;
        }
    }
    let held = end.map_or(0, |end| end - start);
    Ok(Read {
        partition: p,
        records,
        held: if fetches.is_some() { records } else { held },
        latency,
    })
}
