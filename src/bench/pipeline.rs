//! `flowd bench pipeline`: records produced into a dataflow's input topic, followed out
//! of its output topic; throughput is outputs per second and latency is end to end, from
//! a record's produce to its output being readable.
//!
//! Values are JSON, `{"t":MICROS,"n":SEQ,"p":"aaa…"}` padded to `--size`, so that jq
//! stages of a user's dataflow can read them; `t` is the send time in µs since the run
//! began, and every output whose value still starts with `{"t":` gives one latency.
//! Where every input makes one output (no `--expect`), the readers also check that each
//! `n` comes out exactly once: a duplicate or a missing output fails the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bench::ingest::{Produce, acked};
use crate::bench::load::{self, Measured, Plan, Workload};
use crate::bench::progress::Progress;
use crate::bench::target::Endpoint;
use crate::bench::{BenchError, Target, histogram, warmup_requests};
use crate::protocol::message::{Response, encode_produce};
use crate::protocol::{FetchFrom, FetchRequest, OwnedWireRecord};

/// An output topic that stays this long without a new record ends the run with an error.
const STALL: Duration = Duration::from_secs(30);

pub struct PipelineOptions {
    pub records: u64,
    pub size: usize,
    pub batch: usize,
    /// The topic the dataflow's last stage writes.
    pub output: String,
    /// Outputs the run waits for (default: one per input record).
    pub expect: Option<u64>,
}

/// Produce requests whose values carry their send time.
struct Timed {
    epoch: Instant,
    topic: String,
    batch: usize,
    size: usize,
}

impl Timed {
    /// A batch's values, written straight as bytes: the client shares the machine with
    /// the engine it measures, so it spends as little as it can (`format!` and padding
    /// a character at a time took a tenth of a 2-core run's CPU).
    fn records(&self, id: u64) -> Vec<OwnedWireRecord> {
        let t = self.epoch.elapsed().as_micros();
        let mut t_text = itoa::Buffer::new();
        let t_text = t_text.format(t).as_bytes();
        let mut n_text = itoa::Buffer::new();
        (0..self.batch)
            .map(|j| {
                let n = id * self.batch as u64 + j as u64;
                let mut value = Vec::with_capacity(self.size.max(48));
                value.extend_from_slice(b"{\"t\":");
                value.extend_from_slice(t_text);
                value.extend_from_slice(b",\"n\":");
                value.extend_from_slice(n_text.format(n).as_bytes());
                value.extend_from_slice(b",\"p\":\"");
                let pad = self.size.saturating_sub(value.len() + 2);
                value.resize(value.len() + pad, b'a');
                value.extend_from_slice(b"\"}");
                OwnedWireRecord::value(value)
            })
            .collect()
    }
}

impl Workload for Timed {
    fn encode(&self, id: u64, out: &mut Vec<u8>) {
        encode_produce(out, id, &self.topic, None, &self.records(id));
    }

    fn check(&self, response: Response) -> Result<u64, BenchError> {
        acked(response, self.batch as u64)
    }
}

/// The send time a value carries, in µs since the epoch of the run.
fn sent_micros(value: &[u8]) -> Option<u64> {
    let digits = value.strip_prefix(b"{\"t\":")?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The sequence number a value carries (`"n":SEQ`), if it still does.
fn sequence(value: &[u8]) -> Option<u64> {
    let at = value.windows(5).position(|w| w == b",\"n\":")? + 5;
    let digits = &value[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Which of `0..n` came out, for the check that each did exactly once.
struct Seen {
    outputs: std::sync::Mutex<Vec<bool>>,
}

impl Seen {
    fn new(n: u64) -> Seen {
        Seen {
            outputs: std::sync::Mutex::new(vec![false; n as usize]),
        }
    }

    /// Notes output `n`; an error when it came out before, or is no input's.
    fn note(&self, n: Option<u64>) -> Result<(), BenchError> {
        let mut outputs = self.outputs.lock().expect("seen lock");
        match n.and_then(|n| outputs.get_mut(n as usize)) {
            Some(seen) if *seen => Err(BenchError::Run(format!(
                "input {} came out of the pipeline twice",
                n.expect("found")
            ))),
            Some(seen) => {
                *seen = true;
                Ok(())
            }
            None => Err(BenchError::Run(format!(
                "an output that is no input's (sequence {n:?}) came out of the pipeline"
            ))),
        }
    }

    fn missing(&self) -> usize {
        self.outputs
            .lock()
            .expect("seen lock")
            .iter()
            .filter(|s| !**s)
            .count()
    }
}

pub fn pipeline(target: &Target, o: &PipelineOptions, progress: bool) -> Result<Measured, BenchError> {
    target.partitions(&target.topic)?;
    let outputs = target.partitions(&o.output)?;
    let epoch = Instant::now();
    let timed = Timed {
        epoch,
        topic: target.topic.clone(),
        batch: o.batch.max(1),
        size: o.size,
    };
    // The frame limit is checked once, on the largest frame a request can make.
    Produce::of(
        &target.at,
        &target.topic,
        &timed.records(u64::MAX / 2 / o.batch.max(1) as u64),
        crate::bench::ProduceKind::Records,
    )?;
    let workload: Arc<dyn Workload> = Arc::new(timed);
    let requests = o.records.div_ceil(o.batch.max(1) as u64);
    let sent = requests * o.batch.max(1) as u64;
    let plan = Plan {
        connections: 1,
        requests,
        inflight: 32,
        rate: None,
        spin: None,
    };

    // Warm-up: a first part of the run goes all the way through, not measured.
    let warm = Plan {
        requests: warmup_requests(requests, o.batch),
        ..plan
    };
    let mut from = ends(&target.at, &o.output, outputs)?;
    let warm_sent = warm.requests * o.batch.max(1) as u64;
    let expect_warm = o.expect.map_or(warm_sent, |e| e * warm_sent / sent.max(1));
    let follow = Follow::start(
        &target.at,
        &o.output,
        &from,
        expect_warm,
        epoch,
        Progress::hidden(),
        None,
    );
    load::drive(&target.at, warm, workload.clone(), &Progress::hidden())?;
    follow.wait()?;
    from = ends(&target.at, &o.output, outputs)?;

    let expect = o.expect.unwrap_or(sent);
    let bar = if progress {
        Progress::new(expect, "pipeline")
    } else {
        Progress::hidden()
    };
    let started = Instant::now();
    let seen = o.expect.is_none().then(|| Arc::new(Seen::new(sent)));
    let follow = Follow::start(
        &target.at,
        &o.output,
        &from,
        expect,
        epoch,
        bar.clone(),
        seen.clone(),
    );
    let produced = load::drive(&target.at, plan, workload, &Progress::hidden());
    let followed = follow.wait();
    bar.finish();
    produced?;
    let (latency, records, last) = followed?;
    if let Some(seen) = seen
        && seen.missing() > 0
    {
        return Err(BenchError::Run(format!(
            "{} of the {sent} inputs never came out of the pipeline",
            seen.missing()
        )));
    }
    Ok(Measured {
        seconds: last.duration_since(started).as_secs_f64(),
        records,
        latency,
    })
}

/// The next offset of every partition of `topic`.
fn ends(at: &Endpoint, topic: &str, partitions: u32) -> Result<Vec<u64>, BenchError> {
    let mut client = at.connect()?;
    (0..partitions)
        .map(|p| Ok(client.fetch(topic, p, FetchFrom::Latest, 1, 0)?.next_offset))
        .collect()
}

/// What one partition's reader measured: latencies, and when it saw its last record.
type PartitionRead = (Histogram<u64>, Instant);

/// Readers of every partition of the output topic, until `expect` records came out.
struct Follow {
    threads: Vec<std::thread::JoinHandle<Result<PartitionRead, BenchError>>>,
    seen: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Follow {
    /// Readers from `from` on, until `expect` outputs came; each output is noted in
    /// `check`, when given.
    fn start(
        at: &Endpoint,
        topic: &str,
        from: &[u64],
        expect: u64,
        epoch: Instant,
        bar: Progress,
        check: Option<Arc<Seen>>,
    ) -> Follow {
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = from
            .iter()
            .enumerate()
            .map(|(p, &offset)| {
                let (at, topic, seen, stop, bar, check) = (
                    at.clone(),
                    topic.to_owned(),
                    seen.clone(),
                    stop.clone(),
                    bar.clone(),
                    check.clone(),
                );
                std::thread::spawn(move || {
                    let reader = Reader {
                        expect,
                        epoch,
                        seen: &seen,
                        stop: &stop,
                        bar: &bar,
                        check: check.as_deref(),
                    };
                    let result = read_partition(&at, &topic, p as u32, offset, &reader);
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        Follow { threads, seen, stop }
    }

    /// `(latencies, outputs seen, when the last one was seen)`.
    fn wait(self) -> Result<(Histogram<u64>, u64, Instant), BenchError> {
        let mut latency = histogram();
        let mut last = None::<Instant>;
        let mut error = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok((h, at))) => {
                    latency.add(&h).expect("same bounds");
                    last = Some(last.map_or(at, |l| l.max(at)));
                }
                Ok(Err(e)) => {
                    error.get_or_insert(e);
                }
                Err(_) => {
                    error.get_or_insert(BenchError::Run("a reader thread panicked".into()));
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(e) = error {
            return Err(e);
        }
        Ok((
            latency,
            self.seen.load(Ordering::Relaxed),
            last.unwrap_or_else(Instant::now),
        ))
    }
}

/// What the readers of one run share.
struct Reader<'a> {
    expect: u64,
    epoch: Instant,
    seen: &'a AtomicU64,
    stop: &'a AtomicBool,
    bar: &'a Progress,
    check: Option<&'a Seen>,
}

fn read_partition(
    at: &Endpoint,
    topic: &str,
    partition: u32,
    mut offset: u64,
    reader: &Reader<'_>,
) -> Result<PartitionRead, BenchError> {
    let Reader {
        expect,
        epoch,
        seen,
        stop,
        bar,
        check,
    } = *reader;
    let mut client = at.connect()?;
    let mut h = histogram();
    let mut last = Instant::now();
    while seen.load(Ordering::Relaxed) < expect && !stop.load(Ordering::Relaxed) {
        let request = FetchRequest::new(topic, partition, FetchFrom::Offset(offset), 10_000, 50);
        // Each record is read where it lies in the answer (checked, not copied): the
        // client shares the machine with the engine it measures.
        let mut arrived = None;
        let mut n = 0u64;
        let mut next = offset;
        let mut unexpected = Ok(());
        client.fetch_each(&request, |at, record| {
            // The clock is read once per answer, when it has come.
            let &mut (_, now_us) = arrived.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now.duration_since(epoch).as_micros() as u64)
            });
            if let Some(t) = sent_micros(record.value) {
                h.saturating_record(now_us.saturating_sub(t).max(1));
            }
            if let Some(check) = check
                && unexpected.is_ok()
            {
                unexpected = check.note(sequence(record.value));
            }
            n += 1;
            // (The answer's `next_offset` is the partition's end, not where this read
            // stopped.)
            next = at + 1;
        })?;
        unexpected?;
        let Some((now, _)) = arrived else {
            if last.elapsed() > STALL && seen.load(Ordering::Relaxed) < expect {
                return Err(BenchError::Run(format!(
                    "the output topic \"{topic}\" got {} of the {expect} records expected and then \
                     nothing for {}s; does every input reach it (pass --expect for a dataflow that \
                     filters or fans out)?",
                    seen.load(Ordering::Relaxed),
                    STALL.as_secs()
                )));
            }
            continue;
        };
        offset = next;
        last = now;
        bar.set(seen.fetch_add(n, Ordering::Relaxed) + n);
    }
    Ok((h, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_send_time_and_size() {
        let timed = Timed {
            epoch: Instant::now(),
            topic: "t".into(),
            batch: 3,
            size: 100,
        };
        let records = timed.records(7);
        assert_eq!(records.len(), 3);
        for (j, r) in records.iter().enumerate() {
            assert_eq!(r.value.len(), 100);
            let json: serde_json::Value = serde_json::from_slice(&r.value).expect("JSON");
            assert_eq!(json["n"], 21 + j as u64);
            assert_eq!(sent_micros(&r.value), json["t"].as_u64());
        }
        assert_eq!(sent_micros(b"{\"x\":1}"), None);
        assert_eq!(sent_micros(b"{\"t\":12,\"n\":1}"), Some(12));
    }

    #[test]
    fn each_output_is_checked_once() {
        assert_eq!(sequence(b"{\"t\":5,\"n\":42,\"p\":\"a\"}"), Some(42));
        assert_eq!(sequence(b"{\"x\":1}"), None);
        let seen = Seen::new(3);
        seen.note(Some(0)).unwrap();
        seen.note(Some(2)).unwrap();
        assert!(seen.note(Some(2)).unwrap_err().to_string().contains("twice"));
        assert!(seen.note(Some(3)).is_err(), "no input 3");
        assert!(seen.note(None).is_err(), "an output without a sequence");
        assert_eq!(seen.missing(), 1);
    }
}
