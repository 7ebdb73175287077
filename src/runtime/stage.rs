//! A stage task: one operator instance reading one input partition on the shard that
//! owns it, writing through an `Emitter`, committing its progress. An input it cannot
//! write (its operator fails, or an output does not fit its topic) goes to the stage's
//! `on_error` (`failure`) whole: none of its outputs is written then.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;

use crate::config::OpSpec;
use crate::jq::JqProgram;
use crate::ops::state::States;
use crate::ops::{self, Carry, Checkpoint, Input, Output};
use crate::runtime::bounds::Bounds;
use crate::runtime::commit::Committer;
use crate::runtime::emitter::Emitter;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::failure::{FailedInput, Failures, Verdict};
use crate::runtime::progress::{self, Progress};
use crate::runtime::provenance::{Point, end_marker, stage_producer};
use crate::runtime::reader::PartitionReader;
use crate::runtime::reply::{FailedJobs, REPLY_HEADER};
use crate::runtime::shard::{Backoff, Shard, at_wall_ms};
use crate::runtime::takeover::{self, Lead};
use crate::storage::layout::now_ms;

/// Records read from the input per round.
pub const READ_BATCH_RECORDS: usize = 1024;
/// The longest a round of one stage runs before it lets the core's other tasks (front
/// doors, inboxes, other stages) run: an expensive operator must not hold a core for
/// the whole of a round.
pub const READ_ROUND_TIME_MAX: std::time::Duration = std::time::Duration::from_millis(2);
/// A round reads the clock after every this many records, not after each (reading it
/// after each was about 2% of a two-stage jq pipeline's time): a round may run past
/// `READ_ROUND_TIME_MAX` by the work of at most this many records less one.
const ROUND_CLOCK_EVERY: usize = 8;

/// One stage on one input partition, as planned at start.
pub struct StageTask {
    pub stage: usize,
    pub topic: usize,
    pub partition: u32,
    pub progress: Progress,
    /// Per output partition: the outputs this point covers were written before a restart.
    pub skip: Vec<Point>,
    /// Producers whose end markers end this input; empty for an endless input.
    pub expected_ends: HashSet<String>,
    /// A `state` stage's states of this partition's keys, as its changelog holds them.
    pub states: HashMap<Vec<u8>, Vec<u8>>,
}

pub async fn run(shard: Rc<Shard>, mut task: StageTask) -> Result<()> {
    let spec = &shard.shared.spec;
    let stage = &spec.stages[task.stage];
    let control = &shard.shared.control;
    let topic_name = &spec.topics[task.topic].name;
    // A state stage's states were made readable when its shard started (plan.rs).
    let mut op = build_op(&shard, &task, &task.progress, None)?;
    let output = open_output(&shard, &task)?;
    let mut emitter = output.emitter;
    let producer = output.producer;
    let mut failures = Failures::open(&shard, task.stage, &producer, topic_name, task.partition)?;
    let mut position = task.progress.resume;
    let mut reader = PartitionReader::new(
        Rc::clone(shard.partition(task.topic, task.partition)),
        stage.name.clone(),
        position,
    );
    let mut ends_seen: HashMap<String, u64> = task.progress.ends_seen.iter().cloned().collect();
    let mut finished = task.progress.done;
    let path = output.progress_path;
    let mut committer = Committer::new(
        path,
        task.progress,
        shard.shared.durable(),
        spec.engine.commit_interval,
    );
    let mut out: Vec<Output> = Vec::new();
    let mut failed_jobs = FailedJobs::default();
    // Read or emitted since the last snapshot: only then is a commit due (an idle stage
    // stores nothing, and wakes for nothing, until something comes).
    let mut dirty = false;
    // While snapshots wait for their batches to become durable: how soon to look again.
    let mut settling = Backoff::default();
    // The epoch of the input's lead this peer's reading was rebuilt for (`takeover`).
    let mut led: Option<u32> = None;
    while !finished && !control.is_stopping() {
        match takeover::lead(&shard, task.topic, task.partition) {
            Lead::Always => {}
            Lead::Epoch { epoch, .. } if led == Some(epoch) => {}
            Lead::Not => {
                // Another peer leads the input (or none yet): what was read here goes
                // out and is committed; nothing more is read until this peer leads.
                led = None;
                if emitter.flush().await.is_err() {
                    break;
                }
                committer.complete(emitter.partitions())?;
                reader.begin();
                reader.pause(&shard, 0, None).await;
                continue;
            }
            Lead::Epoch { epoch, start } => {
                let taking = takeover::take_over(
                    &shard,
                    task.stage,
                    task.topic,
                    task.partition,
                    &mut emitter,
                    &mut committer,
                );
                let Some((stored, mut resumed)) = taking.await? else {
                    break;
                };
                task.progress = stored;
                task.skip = resumed.skip.clone();
                op = build_op(
                    &shard,
                    &task,
                    &task.progress,
                    Some(std::mem::take(&mut resumed.states)),
                )?;
                emitter = open_output(&shard, &task)?.emitter;
                resumed.resume(&mut emitter, epoch, start);
                position = task.progress.resume;
                reader.publish(position);
                ends_seen = task.progress.ends_seen.iter().cloned().collect();
                finished = task.progress.done;
                dirty = true;
                led = Some(epoch);
                tracing::info!(
                    "{producer} goes on at offset {position} as this peer leads its input in epoch {epoch}; outputs of inputs below {start} are written only where they are not yet"
                );
                continue;
            }
        }
        if failures.disabled_at.is_some() {
            // Disabled: nothing more is read or written here until a restart.
            control.until_stopping().await;
            continue;
        }
        let now = now_ms();
        let round_started = std::time::Instant::now();
        let mut read = 0;
        // The headers of an input its outputs carry (none, for a window or a state).
        let carry = op.carries();
        position = reader.start(&shard, position);
        {
            let log = reader.log();
            for view in reader.readable(&log, position) {
                let offset = view.offset();
                read += 1;
                position = offset + 1;
                if let Some(ended) = end_marker(&view) {
                    ends_seen.insert(ended.to_owned(), offset);
                    if task.expected_ends.iter().all(|p| ends_seen.contains_key(p)) {
                        emitter.set_reply(None);
                        emitter.carry(std::iter::empty());
                        op.on_end(&mut out);
                        emit_all(&mut emitter, offset, &mut out, &mut failures);
                        emitter.emit_end(offset, view.timestamp_ms());
                        if let Some(dead) = &mut failures.dead {
                            dead.emit_end(offset, view.timestamp_ms());
                        }
                        finished = true;
                        break;
                    }
                    continue;
                }
                let reply = view
                    .headers()
                    .find(|(name, _)| *name == REPLY_HEADER)
                    .map(|(_, value)| value);
                emitter.set_reply(reply);
                if carry != Carry::Nothing {
                    emitter.carry(carry.select(view.headers()));
                }
                let record = Input {
                    offset,
                    timestamp_ms: view.timestamp_ms(),
                    now_ms: now,
                    key: view.key(),
                    value: view.value(),
                };
                let why = match op.on_record(&record, &mut out) {
                    Err(error) => Some(error.0),
                    // Every output of the input fits, or none of them is written.
                    Ok(()) => out
                        .iter()
                        .find_map(|o| emitter.check(o).err())
                        .map(|e| e.to_string()),
                };
                if let Some(why) = why {
                    out.clear();
                    // A job's caller hears why at once instead of waiting for its timeout.
                    failed_jobs.fail(
                        &shard,
                        reply,
                        format!("stage \"{}\" could not handle it: {why}", stage.name),
                    );
                    let failed = FailedInput {
                        offset,
                        timestamp_ms: view.timestamp_ms(),
                        key: view.key(),
                        value: view.value(),
                        headers: view.headers().collect(),
                    };
                    if failures.fail(&failed, &why) == Verdict::Disabled {
                        position = offset;
                        break;
                    }
                }
                emit_all(&mut emitter, offset, &mut out, &mut failures);
                if read >= READ_BATCH_RECORDS
                    || emitter.is_full()
                    || failures.dead.as_ref().is_some_and(Emitter::is_full)
                    || (read % ROUND_CLOCK_EVERY == 0 && round_started.elapsed() >= READ_ROUND_TIME_MAX)
                {
                    break;
                }
            }
        }
        reader.publish(position);
        emitter.set_reply(None);
        emitter.carry(std::iter::empty());
        dirty |= read > 0;
        if failures.disabled_at.is_none() {
            op.on_clock(now, &mut out);
            dirty |= !out.is_empty();
            emit_all(&mut emitter, position.saturating_sub(1), &mut out, &mut failures);
        }
        if emitter.flush().await.is_err() {
            break;
        }
        if let Some(dead) = &mut failures.dead
            && dead.flush().await.is_err()
        {
            break;
        }
        failed_jobs.answer(&shard).await;
        if (dirty && committer.is_due()) || finished {
            let candidate = snapshot(&*op, position, &ends_seen, finished);
            // Refused (too many wait for their batches), it is taken again once due.
            dirty = !committer.snapshot_with(&mut emitter, failures.dead.as_mut(), candidate);
        }
        committer.complete(emitter.partitions())?;
        if read > 0 {
            settling.reset();
        }
        // Caught up, the task sleeps until an append, or its own next deadline: a
        // processing-time window's end, a commit of what it did, its snapshots' batches
        // becoming durable (looked at again and again, less and less often).
        let until = [
            op.next_clock_ms().map(at_wall_ms),
            dirty.then(|| committer.due_at()),
            (!committer.is_settled()).then(|| {
                let pause = settling.pause();
                settling.grow();
                std::time::Instant::now() + pause
            }),
        ]
        .into_iter()
        .flatten()
        .min();
        reader.pause(&shard, read, until).await;
    }
    if !committer.stored().done {
        let dead_flushed = match &mut failures.dead {
            Some(dead) => dead.flush().await.is_ok(),
            None => true,
        };
        if emitter.flush().await.is_ok() && dead_flushed {
            let candidate = snapshot(&*op, position, &ends_seen, finished);
            committer.last_snapshot(&mut emitter, failures.dead.as_mut(), candidate);
        }
        committer.settle(emitter.partitions()).await?;
    }
    failures.report(&control.records_failed);
    if committer.stored().done {
        control.finish_one();
    }
    Ok(())
}

/// The operator of `task`'s stage, restored to `progress`; a state stage's with its
/// task's skip points and `states` (`None`: those its shard holds for it already),
/// readable by key while it runs.
fn build_op(
    shard: &Shard,
    task: &StageTask,
    progress: &Progress,
    states: Option<HashMap<Vec<u8>, Vec<u8>>>,
) -> Result<Box<dyn ops::Operator>> {
    let spec = &shard.shared.spec;
    let stage = &spec.stages[task.stage];
    let mut op: Box<dyn ops::Operator> = match &stage.op {
        OpSpec::State { update } => {
            let program =
                JqProgram::compile(update).map_err(|e| operator_error(&stage.name, ops::OpError(e)))?;
            // Readable by key (GET /state/STAGE/KEY) while the stage runs.
            let states: States = {
                let mut registry = shard.states.borrow_mut();
                let held = registry
                    .entry((task.stage, task.partition))
                    .or_insert_with(|| Rc::new(RefCell::new(HashMap::new())));
                if let Some(states) = states {
                    *held.borrow_mut() = states;
                }
                Rc::clone(held)
            };
            let skip = task.skip.iter().map(Point::next_input).collect();
            // A change must fit one changelog record with its key and the engine's headers.
            let changelog = &spec.topics[stage.to.expect("validated")];
            let change_bytes_max = Bounds::of(changelog).ingest_record_bytes_max() as usize;
            Box::new(ops::state::State::new(program, states, skip, change_bytes_max))
        }
        other => ops::build(other).map_err(|e| operator_error(&stage.name, e))?,
    };
    op.restore(&Checkpoint {
        state_start: None,
        watermark_ms: progress.watermark_ms,
    });
    op.replaying_until(progress.next);
    Ok(op)
}

pub fn operator_error(stage: &str, e: ops::OpError) -> RuntimeError {
    RuntimeError::Operator {
        stage: stage.to_owned(),
        reason: e.0,
    }
}

/// Where a stage reading one input partition writes: its producer id, an emitter to its
/// output topic (with the replay's skip points), and its progress file.
pub struct StageOutput {
    pub producer: String,
    pub emitter: Emitter,
    pub progress_path: PathBuf,
}

pub fn open_output(shard: &Shard, task: &StageTask) -> Result<StageOutput> {
    let spec = &shard.shared.spec;
    let stage = &spec.stages[task.stage];
    let topic_name = &spec.topics[task.topic].name;
    let producer = stage_producer(&stage.name, topic_name, task.partition);
    let to = stage.to.expect("validation requires `to`");
    let mut emitter = Emitter::new(
        producer.clone(),
        to,
        spec,
        &stage.route,
        Some(task.partition),
        &shard.shared.mesh,
    )
    .map_err(|e| operator_error(&stage.name, e))?;
    emitter.set_skip(task.skip.clone());
    let progress_path = progress::path(
        &shard.shared.data_dir,
        &stage.name,
        &format!("{topic_name}-{}", task.partition),
    );
    Ok(StageOutput {
        producer,
        emitter,
        progress_path,
    })
}

/// Emits the outputs of the input at `produced_by`; one the emitter refuses (its route's
/// selector failed; or, for outputs of the clock or the end of input, it does not fit)
/// is counted and logged.
fn emit_all(emitter: &mut Emitter, produced_by: u64, out: &mut Vec<Output>, failures: &mut Failures) {
    for (index, output) in out.drain(..).enumerate() {
        if let Err(error) = emitter.emit(produced_by, index, output) {
            failures.skip(produced_by, &error.to_string());
        }
    }
}

fn snapshot(op: &dyn ops::Operator, next: u64, ends_seen: &HashMap<String, u64>, done: bool) -> Progress {
    let checkpoint = op.checkpoint();
    let resume = checkpoint.state_start.map_or(next, |start| start.min(next));
    let ends = progress::ends_below(ends_seen, resume);
    Progress {
        resume,
        next,
        watermark_ms: checkpoint.watermark_ms,
        ends_seen: ends,
        done,
        ..Progress::default()
    }
}
