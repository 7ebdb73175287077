//! The load driver every request-shaped scenario shares: connections that each send a
//! fixed number of requests, closed loop (as fast as `inflight` allows) or open loop at
//! a fixed rate, with latencies corrected for coordinated omission.
//!
//! Closed loop, a connection is one thread and a request's latency runs from the moment
//! it was written. At a fixed rate the connection is split, a writer thread sending and
//! its own thread reading; request `i` of a connection is due at `start + i / rate`, and
//! its latency runs from that due time, not from when it was written: a stalled server
//! delays the sends behind it, and those delays count (the wrk2 way; hdrhistogram's
//! back-filled samples are not needed).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bench::progress::Progress;
use crate::bench::target::Endpoint;
use crate::bench::{BenchError, histogram};
use crate::client::{Client, ClientWriter};
use crate::protocol::message::Response;

/// One kind of request: how to encode request `id` and what its answer is worth.
pub trait Workload: Send + Sync + 'static {
    /// Appends the whole frame of request `id` to `out`.
    fn encode(&self, id: u64, out: &mut Vec<u8>);
    /// Checks an answer; returns the records it completed.
    fn check(&self, response: Response) -> Result<u64, BenchError>;
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub connections: usize,
    /// Requests per connection.
    pub requests: u64,
    /// Requests in flight per connection, at most.
    pub inflight: usize,
    /// Requests per second over all connections; `None` is closed loop.
    pub rate: Option<f64>,
    /// Closed loop: spin this long for each answer before sleeping in `read`
    /// (`Client::spin_until_readable`); `None` sleeps at once.
    pub spin: Option<Duration>,
}

/// What a run measured.
pub struct Measured {
    pub seconds: f64,
    pub records: u64,
    pub latency: Histogram<u64>,
}

/// Runs `plan` against `addr`; the progress bar counts completed records.
pub fn drive(
    at: &Endpoint,
    plan: Plan,
    workload: Arc<dyn Workload>,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let connections = plan.connections.max(1);
    // Connect all first, so that connecting is not timed.
    let clients = (0..connections)
        .map(|_| at.connect())
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let (workload, progress) = (workload.clone(), progress.clone());
            // Connections at a fixed rate start staggered, so that their sends interleave.
            let pace = plan.rate.map(|rate| {
                let interval = Duration::from_secs_f64(connections as f64 / rate.max(1e-9));
                (interval, interval.mul_f64(c as f64 / connections as f64))
            });
            std::thread::spawn(move || connection(client, plan, pace, started, &*workload, &progress))
        })
        .collect();
    let mut latency = histogram();
    let mut records = 0;
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok((h, n))) => {
                latency.add(&h).expect("same bounds");
                records += n;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(BenchError::Run("a load thread panicked".into()));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        records,
        latency,
    })
}

/// One connection: `(latencies, records)`.
fn connection(
    client: Client,
    plan: Plan,
    pace: Option<(Duration, Duration)>,
    started: Instant,
    workload: &dyn Workload,
    progress: &Progress,
) -> Result<(Histogram<u64>, u64), BenchError> {
    match pace {
        None => closed_loop(client, plan, workload, progress),
        Some(pace) => open_loop(client, plan, pace, started, workload, progress),
    }
}

/// Closed loop on one thread: fill the window, then one answer frees one slot. A
/// second thread would add a wake-up to every round trip.
fn closed_loop(
    mut client: Client,
    plan: Plan,
    workload: &dyn Workload,
    progress: &Progress,
) -> Result<(Histogram<u64>, u64), BenchError> {
    let mut h = histogram();
    let mut records = 0;
    let mut frame = Vec::new();
    // Requests in flight: (id, written at); answers may come out of order.
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(plan.inflight.max(1));
    let mut next = 0;
    let mut done = 0;
    while done < plan.requests {
        while next < plan.requests && inflight.len() < plan.inflight.max(1) {
            frame.clear();
            workload.encode(next, &mut frame);
            client.send_raw(&frame)?;
            inflight.push_back((next, Instant::now()));
            next += 1;
        }
        if let Some(spin) = plan.spin {
            client.spin_until_readable(spin)?;
        }
        let (id, response) = client.recv()?;
        let at = inflight
            .iter()
            .position(|(i, _)| *i == id)
            .ok_or_else(|| BenchError::Run(format!("an answer to unknown request {id}")))?;
        let (_, sent) = inflight.remove(at).expect("present");
        h.saturating_record((sent.elapsed().as_micros() as u64).max(1));
        let n = workload.check(response)?;
        records += n;
        progress.add(n);
        done += 1;
    }
    Ok((h, records))
}

/// Open loop: a writer thread sends each request when it is due (and a window slot is
/// free), this thread reads the answers. Latency runs from the due time.
fn open_loop(
    client: Client,
    plan: Plan,
    (interval, offset): (Duration, Duration),
    started: Instant,
    workload: &dyn Workload,
    progress: &Progress,
) -> Result<(Histogram<u64>, u64), BenchError> {
    let n = plan.requests;
    let due = |id: u64| offset + interval.mul_f64(id as f64);
    let (mut writer, mut reader) = client.split()?;
    // The in-flight bound: a token per request sent, returned by its answer.
    let (tokens, returned) = flume::bounded::<()>(plan.inflight.max(1));
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || -> Result<(), BenchError> {
            let result = send_due(&mut writer, &tokens, n, &due, started, workload);
            if result.is_err() {
                writer.shutdown(); // so that the reader, blocked on an answer, returns
            }
            result
        });
        let mut h = histogram();
        let mut records = 0;
        let received = (|| -> Result<(), BenchError> {
            for _ in 0..n {
                let (id, response) = reader.recv()?;
                if id >= n {
                    return Err(BenchError::Run(format!("an answer to unknown request {id}")));
                }
                let late = started.elapsed().saturating_sub(due(id));
                h.saturating_record((late.as_micros() as u64).max(1));
                let done = workload.check(response)?;
                records += done;
                progress.add(done);
                let _ = returned.recv();
            }
            Ok(())
        })();
        drop(returned); // a sender waiting for a slot stops
        let sent = sender
            .join()
            .map_err(|_| BenchError::Run("a sender thread panicked".into()))?;
        received?;
        sent?;
        Ok((h, records))
    })
}

/// The writer of an open loop: each request when it is due and a window slot is free.
fn send_due(
    writer: &mut ClientWriter,
    tokens: &flume::Sender<()>,
    n: u64,
    due: &dyn Fn(u64) -> Duration,
    started: Instant,
    workload: &dyn Workload,
) -> Result<(), BenchError> {
    let mut frame = Vec::new();
    for id in 0..n {
        if tokens.send(()).is_err() {
            return Ok(()); // the reader stopped; it reports why
        }
        let wait = due(id).saturating_sub(started.elapsed());
        if !wait.is_zero() {
            writer.flush()?;
            std::thread::sleep(wait);
        }
        frame.clear();
        workload.encode(id, &mut frame);
        writer.send_raw(&frame)?;
        // Never block on a full window with requests still in the buffer.
        if tokens.is_full() || id + 1 == n {
            writer.flush()?;
        }
    }
    Ok(())
}
