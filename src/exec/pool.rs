//! A stage's worker pool on one core: keeps its workers running, hands out records up to
//! `concurrency` per worker, and reports what became of each record it was given.
//!
//! Faults are the pool's to handle and the stage's to judge: a worker that exits, breaks
//! the protocol or leaves a record unanswered past `timeout` is killed (with its process
//! group), every record it had in flight comes back as [`Outcome::Lost`], and the worker
//! is started again: at once if it had answered anything, else after a backoff that
//! doubles from 100 ms to 10 s. Ids are unique per pool and an answer from a process
//! that was already replaced is ignored, so a record is never answered twice.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{ExecProtocol, ExecSpec};
use crate::exec::process::{EventKind, WorkerEvent, WorkerProcess};
use crate::exec::{AnswerRecord, Request, batched, json_lines};

/// What became of a record the pool was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    Answered(T, Vec<AnswerRecord>),
    /// The worker answered with an error.
    Refused(T, String),
    /// The worker died, hung or broke the protocol with the record in flight.
    Lost(T, String),
}

/// A request chunk is handed to the worker's stdin thread at this size at the latest.
const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Answer batches queued from all workers' stdout threads to the shard.
const EVENTS_MAX: usize = 64;
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a recycled or stopping worker gets to exit after its stdin closes.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

enum Process {
    Running(WorkerProcess),
    Down { restart_at: Instant },
}

struct Slot<T> {
    generation: u64,
    process: Process,
    inflight: HashMap<u64, T>,
    /// `(deadline, id)` in the order written; entries already answered are skipped lazily.
    deadlines: VecDeque<(Instant, u64)>,
    /// Records given to the current process, and answered by it.
    assigned: u64,
    answered: u64,
    /// Processes in a row that ended without answering anything.
    failed_starts: u32,
    /// Given `restart_after` records: gets no more, and is replaced once they are answered.
    retiring: bool,
    chunk: Vec<u8>,
    chunk_records: u32,
}

pub struct Pool<T> {
    stage: String,
    /// Worker names are `STAGE#SHARD.INDEX`.
    shard: usize,
    spec: ExecSpec,
    slots: Vec<Slot<T>>,
    events_tx: flume::Sender<WorkerEvent>,
    events_rx: flume::Receiver<WorkerEvent>,
    next_id: u64,
    cursor: usize,
    /// Recycled workers: stdin closed, waiting (until the instant) for them to exit.
    draining: Vec<(WorkerProcess, Instant)>,
}

impl<T: Copy> Pool<T> {
    /// A pool of `workers` processes, started now.
    pub fn start(stage: &str, shard: usize, workers: usize, spec: &ExecSpec) -> Pool<T> {
        let (events_tx, events_rx) = flume::bounded(EVENTS_MAX);
        let now = Instant::now();
        let mut pool = Pool {
            stage: stage.to_owned(),
            shard,
            spec: spec.clone(),
            slots: (0..workers.max(1))
                .map(|_| Slot {
                    generation: 0,
                    process: Process::Down { restart_at: now },
                    inflight: HashMap::new(),
                    deadlines: VecDeque::new(),
                    assigned: 0,
                    answered: 0,
                    failed_starts: 0,
                    retiring: false,
                    chunk: Vec::new(),
                    chunk_records: 0,
                })
                .collect(),
            events_tx,
            events_rx,
            next_id: 0,
            cursor: 0,
            draining: Vec::new(),
        };
        for i in 0..pool.slots.len() {
            pool.launch(i, now);
        }
        pool
    }

    fn name(&self, i: usize) -> String {
        format!("{}#{}.{i}", self.stage, self.shard)
    }

    fn launch(&mut self, i: usize, now: Instant) {
        let name = self.name(i);
        let slot = &mut self.slots[i];
        slot.generation += 1;
        slot.assigned = 0;
        slot.answered = 0;
        slot.retiring = false;
        match WorkerProcess::spawn(
            &self.spec,
            name,
            i,
            slot.generation,
            self.spec.concurrency + 1,
            self.events_tx.clone(),
        ) {
            Ok(process) => {
                tracing::debug!(worker = %process.name, pid = process.pid, "worker started");
                slot.process = Process::Running(process);
            }
            Err(error) => {
                slot.failed_starts += 1;
                let delay = backoff(slot.failed_starts);
                tracing::error!("{error}; trying again in {}", humantime::format_duration(delay));
                slot.process = Process::Down {
                    restart_at: now + delay,
                };
            }
        }
    }

    /// Gives a record to a worker with room; `false` when none has any.
    pub fn assign(&mut self, ticket: T, key: Option<&[u8]>, value: &[u8], now: Instant) -> bool {
        let n = self.slots.len();
        let concurrency = self.spec.concurrency;
        let Some(i) = (0..n).map(|k| (self.cursor + k) % n).find(|&i| {
            let s = &self.slots[i];
            matches!(s.process, Process::Running(_)) && !s.retiring && s.inflight.len() < concurrency
        }) else {
            return false;
        };
        self.cursor = (i + 1) % n;
        let id = self.next_id;
        self.next_id += 1;
        let request = Request { id, key, value };
        let slot = &mut self.slots[i];
        match self.spec.protocol {
            ExecProtocol::JsonLines => json_lines::encode_request(&mut slot.chunk, &request),
            ExecProtocol::Batched => {
                if slot.chunk.is_empty() {
                    batched::start_frame(&mut slot.chunk);
                }
                batched::push_request(&mut slot.chunk, &request);
            }
        }
        slot.chunk_records += 1;
        slot.inflight.insert(id, ticket);
        slot.deadlines.push_back((now + self.spec.timeout, id));
        slot.assigned += 1;
        if self.spec.restart_after.is_some_and(|n| slot.assigned >= n) {
            slot.retiring = true;
        }
        if slot.chunk.len() >= CHUNK_BYTES_MAX {
            self.flush_slot(i);
        }
        true
    }

    /// Hands every chunk built since the last flush to its worker's stdin.
    pub fn flush(&mut self) {
        for i in 0..self.slots.len() {
            self.flush_slot(i);
        }
    }

    fn flush_slot(&mut self, i: usize) {
        let protocol = self.spec.protocol;
        let slot = &mut self.slots[i];
        if slot.chunk.is_empty() {
            return;
        }
        let mut chunk = std::mem::take(&mut slot.chunk);
        if protocol == ExecProtocol::Batched {
            batched::finish_frame(&mut chunk, slot.chunk_records);
        }
        slot.chunk_records = 0;
        if let Process::Running(process) = &slot.process {
            // A worker that stopped reading is found out by its stdout reader (closed)
            // or by the timeout; its records stay in flight until then.
            process.send(chunk);
        }
    }

    /// Where worker events arrive: await one, then hand it to [`Pool::handle`].
    pub fn events(&self) -> &flume::Receiver<WorkerEvent> {
        &self.events_rx
    }

    /// Takes in one event from a worker's stdout reader.
    pub fn handle(&mut self, event: WorkerEvent, now: Instant, out: &mut Vec<Outcome<T>>) {
        let i = event.slot;
        if self.slots[i].generation != event.generation
            || !matches!(self.slots[i].process, Process::Running(_))
        {
            return; // from a process already replaced
        }
        match event.kind {
            EventKind::Answers(answers) => {
                for answer in answers {
                    let slot = &mut self.slots[i];
                    let Some(ticket) = slot.inflight.remove(&answer.id) else {
                        let what = format!(
                            "answered id {}, which it was not given or had answered already",
                            answer.id
                        );
                        self.fault(i, &what, now, out);
                        return;
                    };
                    slot.answered += 1;
                    slot.failed_starts = 0;
                    out.push(match answer.outcome {
                        Ok(records) => Outcome::Answered(ticket, records),
                        Err(reason) => Outcome::Refused(ticket, reason),
                    });
                }
            }
            EventKind::Bad(reason) => self.fault(i, &format!("wrote {reason}"), now, out),
            EventKind::Closed => {
                let slot = &mut self.slots[i];
                let status = match &mut slot.process {
                    Process::Running(p) => exit_status(p),
                    Process::Down { .. } => None,
                };
                let what = match status {
                    Some(status) => format!("exited ({status})"),
                    None => "closed its stdout".to_owned(),
                };
                self.fault(i, &what, now, out);
            }
        }
    }

    /// Kills worker `i`, gives back its records as lost, and schedules its restart.
    fn fault(&mut self, i: usize, what: &str, now: Instant, out: &mut Vec<Outcome<T>>) {
        let name = self.name(i);
        let slot = &mut self.slots[i];
        let Process::Running(mut process) =
            std::mem::replace(&mut slot.process, Process::Down { restart_at: now })
        else {
            return;
        };
        let pid = process.pid;
        process.reap();
        if slot.answered == 0 {
            slot.failed_starts += 1;
        }
        let delay = backoff(slot.failed_starts);
        slot.process = Process::Down {
            restart_at: now + delay,
        };
        let lost = slot.inflight.len();
        tracing::warn!(
            "worker {name} (pid {pid}) {what}, after answering {} records; {lost} records it held \
             are retried; restarting it {}",
            slot.answered,
            if delay.is_zero() {
                "now".to_owned()
            } else {
                format!("in {}", humantime::format_duration(delay))
            }
        );
        let reason = format!("worker {name} {what}");
        for (_, ticket) in slot.inflight.drain() {
            out.push(Outcome::Lost(ticket, reason.clone()));
        }
        slot.deadlines.clear();
        slot.chunk.clear();
        slot.chunk_records = 0;
        if delay.is_zero() {
            self.launch(i, now);
        }
    }

    /// Timeouts, recycling, restarts: call every round.
    pub fn maintain(&mut self, now: Instant, out: &mut Vec<Outcome<T>>) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            match &slot.process {
                Process::Down { restart_at } => {
                    if *restart_at <= now {
                        self.launch(i, now);
                    }
                    continue;
                }
                Process::Running(_) => {}
            }
            while let Some(&(_, id)) = slot.deadlines.front() {
                if slot.inflight.contains_key(&id) {
                    break;
                }
                slot.deadlines.pop_front();
            }
            if slot
                .deadlines
                .front()
                .is_some_and(|&(deadline, _)| deadline <= now)
            {
                let what = format!(
                    "did not answer a record within {} (timeout)",
                    humantime::format_duration(self.spec.timeout)
                );
                self.fault(i, &what, now, out);
                continue;
            }
            if slot.retiring && slot.inflight.is_empty() {
                let Process::Running(mut process) =
                    std::mem::replace(&mut slot.process, Process::Down { restart_at: now })
                else {
                    continue;
                };
                tracing::debug!(worker = %process.name, answered = slot.answered, "recycling worker (restart_after)");
                process.close_stdin();
                self.draining.push((process, now + EXIT_GRACE));
                self.launch(i, now);
            }
        }
        self.draining.retain_mut(|(process, until)| {
            if process.try_wait().is_some() {
                return false;
            }
            if *until <= now {
                tracing::warn!(
                    "recycled worker {} (pid {}) did not exit within {} of its stdin closing; killed",
                    process.name,
                    process.pid,
                    humantime::format_duration(EXIT_GRACE)
                );
                process.reap();
                return false;
            }
            true
        });
    }

    /// The next instant `maintain` has something to do, if any.
    pub fn next_due(&self) -> Option<Instant> {
        let slots = self.slots.iter().filter_map(|s| match &s.process {
            Process::Down { restart_at } => Some(*restart_at),
            Process::Running(_) => s.deadlines.front().map(|&(d, _)| d),
        });
        slots.chain(self.draining.iter().map(|(_, until)| *until)).min()
    }

    /// Closes every worker's stdin and waits (at most [`EXIT_GRACE`]) for them to exit,
    /// then kills what is left. Records in flight are dropped: the stage's progress never
    /// passed them, so they are replayed by the next run.
    pub async fn stop(&mut self) {
        let mut processes: Vec<WorkerProcess> = self.draining.drain(..).map(|(p, _)| p).collect();
        for slot in &mut self.slots {
            if let Process::Running(process) = std::mem::replace(
                &mut slot.process,
                Process::Down {
                    restart_at: Instant::now(),
                },
            ) {
                processes.push(process);
            }
            slot.inflight.clear();
            slot.deadlines.clear();
        }
        for process in &mut processes {
            process.close_stdin();
        }
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline && processes.iter_mut().any(|p| p.try_wait().is_none()) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        for mut process in processes {
            if process.try_wait().is_none() {
                tracing::warn!(
                    "worker {} (pid {}) did not exit within {} of its stdin closing; killed",
                    process.name,
                    process.pid,
                    humantime::format_duration(EXIT_GRACE)
                );
            }
            process.reap();
        }
    }
}

/// The status of a worker whose stdout just closed: it is usually exiting, so wait a
/// moment (bounded) for the kernel to have its exit status.
fn exit_status(process: &mut WorkerProcess) -> Option<std::process::ExitStatus> {
    for _ in 0..50 {
        if let Some(status) = process.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

fn backoff(failed_starts: u32) -> Duration {
    match failed_starts {
        0 => Duration::ZERO,
        n => RESTART_BACKOFF_MIN
            .saturating_mul(1 << (n - 1).min(16))
            .min(RESTART_BACKOFF_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_only_after_fruitless_starts() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(8), Duration::from_secs(10));
        assert_eq!(backoff(1000), Duration::from_secs(10));
    }
}
