//! An `exec` stage on one core: reads every input partition of the stage this shard
//! owns, hands the records to the core's worker pool, and writes each input's answer in
//! input order, so that provenance and progress work as for any other stage.
//!
//! Answers come back in any order; each partition keeps a window of the records read
//! but not yet written (bounded by the pool's capacity), and writes from its front as
//! far as it is answered. A record whose worker crashed, hung or refused it is retried
//! on any worker; after `on_error.max_reclaims` retries the stage's policy decides:
//! skip it, dead-letter it, or stop the partition there (disable).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use crate::config::{DataflowSpec, ErrorPolicy, ExecSpec, OnFailure, OpSpec};
use crate::exec::pool::{Outcome, Pool};
use crate::exec::{AnswerRecord, OutKey};
use crate::ops::{Carry, Output};
use crate::runtime::commit::Committer;
use crate::runtime::emitter::Emitter;
use crate::runtime::error::Result;
use crate::runtime::failure::{FailedInput, Failures, Verdict};
use crate::runtime::placement::owner;
use crate::runtime::progress::Progress;
use crate::runtime::provenance::end_marker;
use crate::runtime::reader::PartitionReader;
use crate::runtime::reply::{FailedJobs, REPLY_HEADER};
use crate::runtime::shard::{Backoff, Shard};
use crate::runtime::stage::{READ_BATCH_RECORDS, StageOutput, StageTask, open_output};
use crate::runtime::takeover::{self, Lead};

/// Records one partition may hold read but not yet written, at most.
const WINDOW_MAX: usize = 1 << 16;

/// Every input partition of one exec stage that one shard owns.
pub struct ExecTask {
    pub stage: usize,
    pub parts: Vec<StageTask>,
}

/// `(part index, input offset)`: what the pool hands back with each outcome.
type Ticket = (usize, u64);

enum State {
    /// With a worker, or waiting to be retried; `attempts` failed so far.
    Pending {
        attempts: u32,
    },
    Answered(Vec<AnswerRecord>),
    /// Nothing to write: an end marker of another producer, or a record given up on.
    Empty,
    /// An end-of-input marker of this producer.
    End(String),
    /// Given up on, because of why: the stage's `on_error` decides what it becomes when
    /// the window's front reaches it (so nothing after it is written before it).
    Failed(String),
}

/// A header of an input its outputs carry: name, value.
type CarriedHeader = (Box<str>, Box<[u8]>);

struct Slot {
    timestamp_ms: i64,
    key: Option<Box<[u8]>>,
    reply: Option<Box<[u8]>>,
    /// The client's headers, which its outputs carry (`Carry::Headers`, as `map`'s do).
    headers: Box<[CarriedHeader]>,
    state: State,
}

struct Part {
    place: String,
    /// The stage's name, as readers of the input know it.
    stage: String,
    /// Its input partition, and what it writes as (`provenance`).
    topic: usize,
    partition: u32,
    producer: String,
    /// The epoch of the input's lead its reading was rebuilt for (`takeover`).
    led: Option<u32>,
    /// Its reading of the input; it stands at the window's front, for lag and status.
    reader: PartitionReader,
    next_read: u64,
    /// The offset of `window[0]`.
    base: u64,
    window: VecDeque<Slot>,
    emitter: Emitter,
    committer: Committer,
    ends_seen: HashMap<String, u64>,
    ends_read: HashSet<String>,
    expected_ends: HashSet<String>,
    /// Every end marker was read: nothing after them is read.
    input_ended: bool,
    finished: bool,
    /// The snapshot that marks the partition done was taken.
    end_snapshot: bool,
    /// Where the last snapshot stood: a commit is due only once `base` moved on.
    snapped: u64,
    /// Skips, dead letters and disabling under the stage's `on_error`.
    failures: Failures,
    /// A record will disable the partition once the window's front reaches it: nothing
    /// more is read meanwhile.
    halted: bool,
}

/// The worker processes this shard runs for a stage: `workers` shared out over the
/// cores that own its input partitions, at least one each.
pub fn workers_here(spec: &DataflowSpec, stage: usize, shard: usize, shards: usize) -> usize {
    let stage = &spec.stages[stage];
    let OpSpec::Exec(exec) = &stage.op else {
        return 0;
    };
    let mut cores: Vec<usize> = stage
        .from
        .iter()
        .flat_map(|&t| (0..spec.topics[t].partitions).map(move |p| owner(p, shards)))
        .collect();
    cores.sort_unstable();
    cores.dedup();
    let Some(rank) = cores.iter().position(|&c| c == shard) else {
        return 0;
    };
    match exec.workers {
        None => 1,
        Some(total) => (total / cores.len() + usize::from(rank < total % cores.len())).max(1),
    }
}

pub async fn run(shard: Rc<Shard>, task: ExecTask) -> Result<()> {
    let spec = Arc::clone(&shard.shared.spec);
    let stage = &spec.stages[task.stage];
    let OpSpec::Exec(exec) = &stage.op else {
        unreachable!("an exec task runs an exec stage");
    };
    let exec: &ExecSpec = exec;
    let control = &shard.shared.control;
    let workers = workers_here(&spec, task.stage, shard.index, shard.shared.shards);
    let window_max = (workers * exec.concurrency).clamp(1, WINDOW_MAX);
    let mut parts = Vec::new();
    for t in task.parts {
        parts.push(open_part(&shard, &spec, task.stage, t)?);
    }
    let mut pool: Pool<Ticket> = Pool::start(&stage.name, shard.index, workers, exec);
    let mut outcomes = Vec::new();
    let mut retry: VecDeque<Ticket> = VecDeque::new();
    let mut failed_jobs = FailedJobs::default();
    // While snapshots wait for their batches to become durable: how soon to look again.
    let mut settling = Backoff::default();
    let mut first = 0;
    // Set when a destination shard stopped (the engine is going down): no more flushes.
    let mut closed = false;
    while !closed && !control.is_stopping() && parts.iter().any(|p| !p.finished) {
        let now = Instant::now();
        pool.maintain(now, &mut outcomes);
        while let Ok(event) = pool.events().try_recv() {
            pool.handle(event, now, &mut outcomes);
        }
        let mut progressed = !outcomes.is_empty();
        for outcome in outcomes.drain(..) {
            if let Some((reply, why)) = settle(&mut parts, outcome, &mut retry, stage.on_error, &stage.name) {
                failed_jobs.fail(&shard, Some(&reply), format!("stage \"{}\": {why}", stage.name));
            }
        }
        failed_jobs.answer(&shard).await;
        progressed |= assign_retries(&mut parts, &mut pool, &mut retry, now);
        let mut caught_up = Vec::new();
        for k in 0..parts.len() {
            let i = (first + k) % parts.len();
            match lead(&shard, task.stage, &mut parts[i]).await? {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    closed = true;
                    break;
                }
            }
            parts[i].reader.begin();
            match read(&shard, &mut parts[i], i, &mut pool, window_max, now) {
                0 if parts[i].reader.input().appends() == parts[i].reader.seen()
                    && readable(&parts[i], window_max) =>
                {
                    caught_up.push(i)
                }
                0 => {}
                _ => progressed = true,
            }
        }
        first = (first + 1) % parts.len();
        pool.flush();
        for part in &mut parts {
            progressed |= write_answered(&shard, part, &mut failed_jobs);
            part.reader.publish(part.base);
            if part.emitter.flush().await.is_err() {
                closed = true;
                break;
            }
            if let Some(dead) = &mut part.failures.dead
                && dead.flush().await.is_err()
            {
                closed = true;
                break;
            }
            if (part.committer.is_due() && part.base != part.snapped) || (part.finished && !part.end_snapshot)
            {
                let candidate = snapshot(part);
                // Refused (too many wait for their batches), it is taken again once due.
                if part
                    .committer
                    .snapshot_with(&mut part.emitter, part.failures.dead.as_mut(), candidate)
                {
                    part.end_snapshot = part.finished;
                    part.snapped = part.base;
                }
            }
            part.committer.complete(part.emitter.partitions())?;
        }
        if closed {
            break;
        }
        if progressed {
            settling.reset();
            continue;
        }
        // Nothing to do: wait for an answer, an append to a partition that was read to
        // its end, the stop or the stage's own next deadline.
        let mut listeners: Vec<_> = caught_up
            .iter()
            .map(|&i| parts[i].reader.input().on_append())
            .collect();
        // The stage's own next deadline: the pool's (a timeout, a restart), a commit of
        // where a partition moved, snapshots' batches becoming durable. With none of
        // them no timer runs: an idle exec stage sleeps until a worker or an append.
        let unsettled = parts.iter().any(|p| !p.committer.is_settled());
        let until = pool
            .next_due()
            .into_iter()
            .chain(
                parts
                    .iter()
                    .filter(|p| p.base != p.snapped)
                    .map(|p| p.committer.due_at()),
            )
            .chain(unsettled.then(|| {
                let pause = settling.pause();
                settling.grow();
                Instant::now() + pause
            }))
            .min();
        let until = crate::runtime::reader::recheck_in_cluster(&shard, until);
        let event = futures_lite::future::or(
            async { pool.events().recv_async().await.ok() },
            futures_lite::future::or(
                async {
                    futures_lite::future::poll_fn(|cx| {
                        for listener in listeners.iter_mut() {
                            if Pin::new(listener).poll(cx).is_ready() {
                                return Poll::Ready(None);
                            }
                        }
                        Poll::Pending
                    })
                    .await
                },
                async {
                    control.until_stopping_or(until).await;
                    None
                },
            ),
        )
        .await;
        if let Some(event) = event {
            pool.handle(event, Instant::now(), &mut outcomes);
        }
    }
    pool.stop().await;
    for part in &mut parts {
        if !part.committer.stored().done {
            let flushed = !closed && part.emitter.flush().await.is_ok();
            let dead_flushed = match &mut part.failures.dead {
                Some(dead) => dead.flush().await.is_ok(),
                None => true,
            };
            if flushed && dead_flushed {
                let candidate = snapshot(part);
                part.committer
                    .last_snapshot(&mut part.emitter, part.failures.dead.as_mut(), candidate);
            }
            part.committer.settle(part.emitter.partitions()).await?;
        }
        part.failures.report(&control.records_failed);
        if part.committer.stored().done {
            control.finish_one();
        }
    }
    Ok(())
}

fn open_part(shard: &Rc<Shard>, spec: &DataflowSpec, stage_index: usize, task: StageTask) -> Result<Part> {
    let stage = &spec.stages[stage_index];
    let topic_name = &spec.topics[task.topic].name;
    let StageOutput {
        producer,
        emitter,
        progress_path: path,
    } = open_output(shard, &task)?;
    let failures = Failures::open(shard, stage_index, &producer, topic_name, task.partition)?;
    let resume = task.progress.resume;
    let reader = PartitionReader::new(
        Rc::clone(shard.partition(task.topic, task.partition)),
        stage.name.clone(),
        resume,
    );
    let ends_seen: HashMap<String, u64> = task.progress.ends_seen.iter().cloned().collect();
    let finished = task.progress.done;
    Ok(Part {
        place: format!("{topic_name}/{}", task.partition),
        stage: stage.name.clone(),
        topic: task.topic,
        partition: task.partition,
        producer,
        led: None,
        reader,
        next_read: resume,
        base: resume,
        window: VecDeque::new(),
        emitter,
        committer: Committer::new(
            path,
            task.progress,
            shard.shared.durable(),
            spec.engine.commit_interval,
        ),
        ends_read: ends_seen.keys().cloned().collect(),
        ends_seen,
        expected_ends: task.expected_ends,
        input_ended: finished,
        finished,
        end_snapshot: finished,
        snapped: resume,
        failures,
        halted: false,
    })
}

/// Whether `part` reads now: always on one machine; in a cluster, while this peer
/// leads its input. A part whose input this peer took the lead of goes on from what
/// the stage wrote while others led it (`takeover`), once what it read before is
/// written (its window is empty). `None`: the engine stops.
async fn lead(shard: &Rc<Shard>, stage: usize, part: &mut Part) -> Result<Option<bool>> {
    let (epoch, start) = match takeover::lead(shard, part.topic, part.partition) {
        Lead::Always => return Ok(Some(true)),
        Lead::Epoch { epoch, .. } if part.led == Some(epoch) => return Ok(Some(true)),
        Lead::Not => {
            part.led = None;
            return Ok(Some(false));
        }
        Lead::Epoch { .. } if !part.window.is_empty() => return Ok(Some(false)),
        Lead::Epoch { epoch, start } => (epoch, start),
    };
    let taking = takeover::take_over(
        shard,
        stage,
        part.topic,
        part.partition,
        &mut part.emitter,
        &mut part.committer,
    );
    let Some((stored, mut resumed)) = taking.await? else {
        return Ok(None);
    };
    let task = StageTask {
        stage,
        topic: part.topic,
        partition: part.partition,
        progress: stored.clone(),
        skip: resumed.skip.clone(),
        expected_ends: HashSet::new(),
        states: HashMap::new(),
    };
    part.emitter = open_output(shard, &task)?.emitter;
    resumed.resume(&mut part.emitter, epoch, start);
    part.next_read = stored.resume;
    part.base = stored.resume;
    part.reader.publish(part.base);
    part.ends_seen = stored.ends_seen.iter().cloned().collect();
    part.ends_read = part.ends_seen.keys().cloned().collect();
    part.input_ended = stored.done;
    part.finished = stored.done;
    part.end_snapshot = stored.done;
    part.halted = false;
    part.led = Some(epoch);
    tracing::info!(
        "{} goes on at offset {} as this peer leads its input in epoch {epoch}; outputs of inputs below {start} are written only where they are not yet",
        part.producer,
        part.base
    );
    Ok(Some(true))
}

fn readable(part: &Part, window_max: usize) -> bool {
    !part.finished
        && !part.halted
        && part.failures.disabled_at.is_none()
        && !part.input_ended
        && part.window.len() < window_max
}

/// Reads new records of `part` into its window and the pool; returns how many.
fn read(
    shard: &Shard,
    part: &mut Part,
    index: usize,
    pool: &mut Pool<Ticket>,
    window_max: usize,
    now: Instant,
) -> usize {
    if !readable(part, window_max) {
        return 0;
    }
    if part.window.is_empty() {
        part.next_read = part.reader.resume(shard, part.next_read);
        part.base = part.next_read;
    }
    let log = part.reader.log();
    let mut read = 0;
    for view in part.reader.readable(&log, part.next_read) {
        if part.window.len() >= window_max || read >= READ_BATCH_RECORDS {
            break;
        }
        let offset = view.offset();
        let state = if let Some(ended) = end_marker(&view) {
            part.ends_read.insert(ended.to_owned());
            State::End(ended.to_owned())
        } else if pool.assign((index, offset), view.key(), view.value(), now) {
            State::Pending { attempts: 0 }
        } else {
            break;
        };
        let is_end = matches!(state, State::End(_));
        // One pass over the headers: the reply address, and those its outputs carry.
        let mut reply = None;
        let mut carried = Vec::new();
        for (name, value) in view.headers() {
            if name == REPLY_HEADER {
                reply = reply.or_else(|| Some(Box::from(value)));
            } else if Carry::Headers.keeps(name) {
                carried.push((Box::from(name), Box::from(value)));
            }
        }
        part.window.push_back(Slot {
            timestamp_ms: view.timestamp_ms(),
            key: view.key().map(Box::from),
            reply,
            headers: carried.into_boxed_slice(),
            state,
        });
        part.next_read = offset + 1;
        read += 1;
        if is_end
            && !part.expected_ends.is_empty()
            && part.expected_ends.iter().all(|p| part.ends_read.contains(p))
        {
            part.input_ended = true;
            break;
        }
    }
    read
}

/// Gives records waiting for a retry to workers; returns whether any went.
fn assign_retries(
    parts: &mut [Part],
    pool: &mut Pool<Ticket>,
    retry: &mut VecDeque<Ticket>,
    now: Instant,
) -> bool {
    let mut any = false;
    while let Some(&(i, offset)) = retry.front() {
        let part = &mut parts[i];
        if part.failures.disabled_at.is_some() {
            retry.pop_front();
            continue;
        }
        let input = Rc::clone(part.reader.input());
        let log = input.log.borrow();
        let Some(view) = log.get(offset) else {
            // Retention deleted it while it waited (or it cannot be read): nothing is
            // left to retry.
            retry.pop_front();
            part.failures.skip(
                offset,
                &format!("it could not be retried: {}", log.why_not_held(offset)),
            );
            part.window[(offset - part.base) as usize].state = State::Empty;
            any = true;
            continue;
        };
        if !pool.assign((i, offset), view.key(), view.value(), now) {
            break;
        }
        retry.pop_front();
        any = true;
    }
    any
}

/// Files an outcome into its slot: an answer, or a failed attempt to retry or give up on.
/// Giving up on a job's record returns its reply address and why, for its caller.
fn settle(
    parts: &mut [Part],
    outcome: Outcome<Ticket>,
    retry: &mut VecDeque<Ticket>,
    policy: ErrorPolicy,
    stage: &str,
) -> Option<(Box<[u8]>, String)> {
    let ((i, offset), failure) = match outcome {
        Outcome::Answered(ticket, records) => {
            let part = &mut parts[ticket.0];
            part.window[(ticket.1 - part.base) as usize].state = State::Answered(records);
            return None;
        }
        Outcome::Refused(ticket, reason) => (ticket, format!("the worker refused it: {reason}")),
        Outcome::Lost(ticket, reason) => (ticket, reason),
    };
    let part = &mut parts[i];
    let slot = &mut part.window[(offset - part.base) as usize];
    let State::Pending { attempts } = &mut slot.state else {
        return None;
    };
    *attempts += 1;
    if *attempts <= policy.max_reclaims {
        tracing::debug!(stage, place = %part.place, offset, attempt = *attempts, "retrying: {failure}");
        retry.push_back((i, offset));
        return None;
    }
    let attempts = *attempts;
    let why = format!(
        "{failure} (attempt {attempts} of {attempts}, max_reclaims {})",
        policy.max_reclaims
    );
    let why_for_caller = why.clone();
    if policy.then == OnFailure::Disable {
        // Stop reading now: the window's front stops at this record once it gets there.
        part.halted = true;
    }
    tracing::debug!(stage, place = %part.place, offset, "given up on: {why}");
    slot.state = State::Failed(why);
    slot.reply.clone().map(|reply| (reply, why_for_caller))
}

/// Writes the front of the window as far as it is settled; returns whether any was. A
/// record given up on, or whose answer does not fit its topic, goes to the stage's
/// `on_error` in its turn; a disable stops the front there.
fn write_answered(shard: &Shard, part: &mut Part, failed_jobs: &mut FailedJobs) -> bool {
    let mut any = false;
    while let Some(front) = part.window.front() {
        let dead_full = part.failures.dead.as_ref().is_some_and(Emitter::is_full);
        if matches!(front.state, State::Pending { .. })
            || part.finished
            || part.failures.disabled_at.is_some()
            || part.emitter.is_full()
            || dead_full
        {
            break;
        }
        let mut slot = part.window.pop_front().expect("just looked");
        let offset = part.base;
        if matches!(slot.state, State::Answered(_)) {
            let State::Answered(records) = std::mem::replace(&mut slot.state, State::Empty) else {
                unreachable!("just matched");
            };
            match answer_outputs(part, &slot, records) {
                Ok(outputs) => {
                    for (index, output) in outputs.into_iter().enumerate() {
                        if let Err(error) = part.emitter.emit(offset, index, output) {
                            part.failures.skip(offset, &error.to_string());
                        }
                    }
                    slot.state = State::Empty;
                }
                Err(why) => {
                    let reason = format!("stage \"{}\": {why}", part.stage);
                    failed_jobs.fail(shard, slot.reply.as_deref(), reason);
                    slot.state = State::Failed(why);
                }
            }
        }
        if let State::Failed(why) = &slot.state
            && fail_record(part, offset, slot.timestamp_ms, why) == Verdict::Disabled
        {
            // Nothing after it is written: it stays the window's front.
            part.window.push_front(slot);
            break;
        }
        part.base += 1;
        any = true;
        match slot.state {
            State::Pending { .. } | State::Answered(_) => unreachable!("settled above"),
            State::Empty | State::Failed(_) => {}
            State::End(producer) => {
                part.ends_seen.insert(producer, offset);
                if part.expected_ends.iter().all(|p| part.ends_seen.contains_key(p)) {
                    part.emitter.set_reply(None);
                    part.emitter.carry(std::iter::empty());
                    part.emitter.emit_end(offset, slot.timestamp_ms);
                    if let Some(dead) = &mut part.failures.dead {
                        dead.emit_end(offset, slot.timestamp_ms);
                    }
                    part.finished = true;
                }
            }
        }
    }
    any
}

/// The outputs of an answered record, or why they cannot be written: every one of them
/// must fit its topic, or none is written.
fn answer_outputs(
    part: &mut Part,
    slot: &Slot,
    records: Vec<AnswerRecord>,
) -> std::result::Result<Vec<Output>, String> {
    part.emitter.set_reply(slot.reply.as_deref());
    part.emitter
        .carry(slot.headers.iter().map(|(name, value)| (&**name, &**value)));
    let outputs: Vec<Output> = records
        .into_iter()
        .map(|record| Output {
            timestamp_ms: slot.timestamp_ms,
            key: match record.key {
                OutKey::Input => slot.key.as_deref().map(<[u8]>::to_vec),
                OutKey::Set(key) => key,
            },
            value: record.value,
        })
        .collect();
    match outputs.iter().find_map(|o| part.emitter.check(o).err()) {
        Some(too_large) => Err(format!("the worker's answer: {too_large}")),
        None => Ok(outputs),
    }
}

/// Applies the stage's `on_error` to the input record at `offset`, read again from the
/// log (retention may have deleted it meanwhile: then it is skipped, and says so).
fn fail_record(part: &mut Part, offset: u64, timestamp_ms: i64, why: &str) -> Verdict {
    let input = Rc::clone(part.reader.input());
    let log = input.log.borrow();
    let Some(view) = log.get(offset) else {
        part.failures.skip(
            offset,
            &format!(
                "{why}; and it could not be dead-lettered: {}",
                log.why_not_held(offset)
            ),
        );
        return Verdict::Skipped;
    };
    let failed = FailedInput {
        offset,
        timestamp_ms,
        key: view.key(),
        value: view.value(),
        headers: view.headers().collect(),
    };
    part.failures.fail(&failed, why)
}

fn snapshot(part: &Part) -> Progress {
    Progress::at(part.base, &part.ends_seen, part.finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_shared_out_over_the_cores_that_read_the_stage() {
        let text = r#"
[engine]
data_dir = "/tmp/x"
[[topic]]
name = "in"
partitions = 3
[[topic]]
name = "out"
partitions = 1
[[stage]]
name = "w"
from = "in"
op = { exec = { command = ["cat"], workers = 5 } }
to = "out"
[[stage]]
name = "one"
from = "out"
op = { exec = { command = ["cat"] } }
to = "in2"
[[topic]]
name = "in2"
"#;
        let spec = crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid");
        // Partitions 0, 1, 2 on 2 cores: cores 0 and 1 read the stage.
        assert_eq!(workers_here(&spec, 0, 0, 2), 3);
        assert_eq!(workers_here(&spec, 0, 1, 2), 2);
        // One partition: only core 0 runs workers, one by default.
        assert_eq!(workers_here(&spec, 1, 0, 2), 1);
        assert_eq!(workers_here(&spec, 1, 1, 2), 0);
        // Three cores read it: 5 workers are 2, 2 and 1.
        assert_eq!(workers_here(&spec, 0, 0, 8), 2);
        assert_eq!(workers_here(&spec, 0, 2, 8), 1);
        assert_eq!(workers_here(&spec, 0, 3, 8), 0);
    }
}
