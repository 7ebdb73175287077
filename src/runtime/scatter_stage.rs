//! A `scatter_gather` stage on one input partition: each record goes as a job to every
//! branch (to every partition of it with `every_partition`), the branches' `reply`
//! stages answer back to this shard, and the answers that came within the timeout are
//! merged into the record's one output, written in input order.
//!
//! Up to `WINDOW_MAX` records are in flight at once, so one slow record holds back the
//! writing of later ones but not their scattering. What a record whose branches did not
//! all answer becomes is the stage's `partial` policy: the merge of what came, or a
//! failure (a job's caller hears why). A replay after a crash scatters again: the stage
//! is at least once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::config::{OpSpec, Partial};
use crate::ops::merge::Merger;
use crate::ops::{Carry, OpError, Output};
use crate::protocol::routing::partition_of_bytes;
use crate::runtime::commit::Committer;
use crate::runtime::error::Result;
use crate::runtime::failure::{FailedInput, Failures, Verdict};
use crate::runtime::mesh::{Ack, Batch, HeaderName, owned_header};
use crate::runtime::progress::Progress;
use crate::runtime::provenance::end_marker;
use crate::runtime::reader::PartitionReader;
use crate::runtime::reply::{FailedJobs, REPLY_HEADER, ReplyAddress, job_batch};
use crate::runtime::service::JobOutcome;
use crate::runtime::shard::{Backoff, Shard};
use crate::runtime::stage::{StageOutput, StageTask, open_output, operator_error};
use crate::runtime::takeover::{self, Lead};

/// Records of one partition scattered and not yet written, at most.
const WINDOW_MAX: usize = 256;

enum Slot {
    /// Scattered: one answer per copy, in branch order, until the deadline.
    Scattered {
        timestamp_ms: i64,
        key: Option<Vec<u8>>,
        reply: Option<Vec<u8>>,
        /// The input's client headers: every copy and the merged output carry them
        /// (`Carry::Headers`, as `map`'s outputs do).
        headers: Vec<(HeaderName, Vec<u8>)>,
        ids: Vec<u64>,
        answers: Vec<Option<JobOutcome>>,
        deadline: Instant,
    },
    /// An end-of-input marker of this producer.
    End(String, i64),
}

/// Where one copy of a record goes: a branch topic and its partition (`None`: by key).
type Target = (usize, Option<u32>);

pub async fn run(shard: Rc<Shard>, task: StageTask) -> Result<()> {
    let spec = Arc::clone(&shard.shared.spec);
    let stage = &spec.stages[task.stage];
    let OpSpec::ScatterGather(scatter) = &stage.op else {
        unreachable!("a scatter task runs a scatter_gather stage");
    };
    let control = &shard.shared.control;
    let merger = Merger::new(&scatter.merge).map_err(|e| operator_error(&stage.name, OpError(e)))?;
    let StageOutput {
        mut emitter,
        progress_path,
        producer,
    } = open_output(&shard, &task)?;
    let targets: Vec<Target> = scatter
        .branches
        .iter()
        .flat_map(|&t| {
            let partitions = spec.topics[t].partitions;
            if scatter.every_partition {
                (0..partitions).map(|p| (t, Some(p))).collect::<Vec<_>>()
            } else {
                vec![(t, None)]
            }
        })
        .collect();
    let mut position = task.progress.resume;
    let mut base = position;
    let mut reader = PartitionReader::new(
        Rc::clone(shard.partition(task.topic, task.partition)),
        stage.name.clone(),
        position,
    );
    let mut ends_seen: HashMap<String, u64> = task.progress.ends_seen.iter().cloned().collect();
    let expected_ends: HashSet<String> = task.expected_ends;
    let mut finished = task.progress.done;
    let mut committer = Committer::new(
        progress_path,
        task.progress,
        shard.shared.durable(),
        spec.engine.commit_interval,
    );
    let topic_name = &spec.topics[task.topic].name;
    let mut failures = Failures::open(&shard, task.stage, &producer, topic_name, task.partition)?;
    let mut failed_jobs = FailedJobs::default();
    let (answers_tx, answers_rx) = flume::bounded::<(u64, JobOutcome)>(WINDOW_MAX * targets.len().max(1));
    let mut window: VecDeque<Slot> = VecDeque::new();
    let mut copies_of: HashMap<u64, (u64, usize)> = HashMap::new();
    // While snapshots wait for their batches to become durable: how soon to look again.
    let mut settling = Backoff::default();
    // Where the last snapshot stood: a commit is due only once the window moved on.
    let mut snapped_base = base;
    let mut end_snapshot = finished;
    // Acks of the copies' writes are not waited on: a copy that cannot be written is a
    // branch that does not answer in time.
    let (ack_tx, _) = flume::bounded(1);
    // The epoch of the input's lead this peer's reading was rebuilt for (`takeover`).
    let mut led: Option<u32> = None;
    while !finished && !control.is_stopping() {
        // Scatters only while this peer leads the input (always on one machine); one
        // that took the lead goes on from its stored progress once its window is empty.
        let reading = match takeover::lead(&shard, task.topic, task.partition) {
            Lead::Always => true,
            Lead::Epoch { epoch, .. } if led == Some(epoch) => true,
            Lead::Not => {
                led = None;
                false
            }
            Lead::Epoch { .. } if !window.is_empty() => false,
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
                resumed.resume(&mut emitter, epoch, start);
                position = stored.resume;
                base = position;
                reader.publish(base);
                ends_seen = stored.ends_seen.iter().cloned().collect();
                finished = stored.done;
                end_snapshot = finished;
                led = Some(epoch);
                tracing::info!(
                    "{producer} goes on at offset {position} as this peer leads its input in epoch {epoch}"
                );
                continue;
            }
        };
        if failures.disabled_at.is_some() {
            // Disabled: nothing more is scattered or written here until a restart.
            control.until_stopping().await;
            continue;
        }
        let now = Instant::now();
        let mut progressed = false;
        while let Ok((id, outcome)) = answers_rx.try_recv() {
            file(&mut window, base, &mut copies_of, id, outcome);
            progressed = true;
        }
        // Read what the window has room for; the copies go out after the log is let go.
        reader.begin();
        let mut copies: Vec<(usize, Batch)> = Vec::new();
        let mut read = 0;
        if window.is_empty() {
            position = reader.resume(&shard, position);
            base = position;
        }
        {
            let log = reader.log();
            let room = if reading { WINDOW_MAX - window.len() } else { 0 };
            for view in reader.readable(&log, position).take(room) {
                let offset = view.offset();
                position = offset + 1;
                read += 1;
                if let Some(ended) = end_marker(&view) {
                    window.push_back(Slot::End(ended.to_owned(), view.timestamp_ms()));
                    continue;
                }
                let mut ids = Vec::with_capacity(targets.len());
                let headers: Vec<(&str, &[u8])> = Carry::Headers.select(view.headers()).collect();
                for (copy, &(topic, partition)) in targets.iter().enumerate() {
                    let partitions = spec.topics[topic].partitions;
                    let partition = partition.unwrap_or_else(|| match view.key() {
                        Some(key) => partition_of_bytes(key, partitions),
                        None => shard.next_spread(partitions),
                    });
                    let id = shard.next_job_id();
                    let address = ReplyAddress::here(&shard, id);
                    shard.gathers.borrow_mut().insert(id, answers_tx.clone());
                    copies_of.insert(id, (offset, copy));
                    ids.push(id);
                    let ack = Ack::Client(ack_tx.clone(), 0);
                    copies.push((
                        topic,
                        job_batch(partition, view.key(), view.value(), &headers, &address, ack),
                    ));
                }
                window.push_back(Slot::Scattered {
                    timestamp_ms: view.timestamp_ms(),
                    key: view.key().map(<[u8]>::to_vec),
                    reply: view
                        .headers()
                        .find(|(name, _)| *name == REPLY_HEADER)
                        .map(|(_, value)| value.to_vec()),
                    headers: headers.iter().copied().map(owned_header).collect(),
                    answers: vec![None; ids.len()],
                    ids,
                    deadline: now + scatter.timeout,
                });
            }
        }
        for (topic, batch) in copies {
            if shard.shared.mesh.send(topic, batch).await.is_err() {
                break;
            }
        }
        progressed |= read > 0;
        // Write the front of the window as far as it is settled.
        let now = Instant::now();
        while let Some(front) = window.front() {
            let settled = match front {
                Slot::End(..) => true,
                Slot::Scattered {
                    answers, deadline, ..
                } => answers.iter().all(Option::is_some) || *deadline <= now,
            };
            let dead_full = failures.dead.as_ref().is_some_and(|d| d.is_full());
            if !settled || emitter.is_full() || dead_full {
                break;
            }
            let offset = base;
            base += 1;
            progressed = true;
            match window.pop_front().expect("just looked") {
                Slot::End(producer, timestamp_ms) => {
                    ends_seen.insert(producer, offset);
                    if !expected_ends.is_empty() && expected_ends.iter().all(|p| ends_seen.contains_key(p)) {
                        emitter.set_reply(None);
                        emitter.carry(std::iter::empty());
                        emitter.emit_end(offset, timestamp_ms);
                        if let Some(dead) = &mut failures.dead {
                            dead.emit_end(offset, timestamp_ms);
                        }
                        finished = true;
                        break;
                    }
                }
                Slot::Scattered {
                    timestamp_ms,
                    key,
                    reply,
                    headers,
                    ids,
                    answers,
                    ..
                } => {
                    for id in &ids {
                        shard.gathers.borrow_mut().remove(id);
                        copies_of.remove(id);
                    }
                    emitter.set_reply(reply.as_deref());
                    emitter.set_headers(headers);
                    let merged =
                        gather(&merger, &answers, scatter.partial, scatter.timeout).and_then(|value| {
                            let output = Output {
                                timestamp_ms,
                                key,
                                value,
                            };
                            emitter.check(&output).map_err(|e| e.to_string())?;
                            Ok(output)
                        });
                    match merged {
                        Ok(output) => {
                            if let Err(error) = emitter.emit(offset, 0, output) {
                                failures.skip(offset, &error.to_string());
                            }
                        }
                        Err(why) => {
                            failed_jobs.fail(
                                &shard,
                                reply.as_deref(),
                                format!("stage \"{}\": {why}", stage.name),
                            );
                            let log = reader.log();
                            let verdict = match log.get(offset) {
                                Some(view) => failures.fail(
                                    &FailedInput {
                                        offset,
                                        timestamp_ms,
                                        key: view.key(),
                                        value: view.value(),
                                        headers: view.headers().collect(),
                                    },
                                    &why,
                                ),
                                None => {
                                    failures.skip(
                                        offset,
                                        &format!(
                                            "{why}; and it could not be dead-lettered: {}",
                                            log.why_not_held(offset)
                                        ),
                                    );
                                    Verdict::Skipped
                                }
                            };
                            if verdict == Verdict::Disabled {
                                // Nothing from it on is written: a restart scatters it again.
                                base = offset;
                                break;
                            }
                        }
                    }
                }
            }
        }
        reader.publish(base);
        if emitter.flush().await.is_err() {
            break;
        }
        if let Some(dead) = &mut failures.dead
            && dead.flush().await.is_err()
        {
            break;
        }
        failed_jobs.answer(&shard).await;
        if (committer.is_due() && base != snapped_base) || (finished && !end_snapshot) {
            let candidate = Progress::at(base, &ends_seen, finished);
            // Refused (too many wait for their batches), it is taken again once due.
            if committer.snapshot_with(&mut emitter, failures.dead.as_mut(), candidate) {
                end_snapshot = finished;
                snapped_base = base;
            }
        }
        committer.complete(emitter.partitions())?;
        if progressed {
            settling.reset();
            continue;
        }
        // Wait for an answer, an append (if the window has room), the stop, or the
        // task's own next deadline: the front's, a commit of where the window moved, its
        // snapshots' batches becoming durable. With none of them, no timer runs.
        let until = [
            match window.front() {
                Some(Slot::Scattered { deadline, .. }) => Some(*deadline),
                _ => None,
            },
            (base != snapped_base).then(|| committer.due_at()),
            (!committer.is_settled()).then(|| {
                let pause = settling.pause();
                settling.grow();
                Instant::now() + pause
            }),
        ]
        .into_iter()
        .flatten()
        .min();
        let until = crate::runtime::reader::recheck_in_cluster(&shard, until);
        let input = reader.input();
        let mut listener =
            (window.len() < WINDOW_MAX && input.appends() == reader.seen()).then(|| input.on_append());
        let answer = futures_lite::future::or(
            async { answers_rx.recv_async().await.ok() },
            futures_lite::future::or(
                async {
                    futures_lite::future::poll_fn(|cx| match listener.as_mut() {
                        Some(l) => Pin::new(l).poll(cx).map(|()| None),
                        None => Poll::Pending,
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
        if let Some((id, outcome)) = answer {
            file(&mut window, base, &mut copies_of, id, outcome);
        }
    }
    // Copies still out are forgotten: their records were not written, so they are
    // scattered again by the next run.
    for slot in &window {
        if let Slot::Scattered { ids, .. } = slot {
            for id in ids {
                shard.gathers.borrow_mut().remove(id);
            }
        }
    }
    if !committer.stored().done {
        let dead_flushed = match &mut failures.dead {
            Some(dead) => dead.flush().await.is_ok(),
            None => true,
        };
        if emitter.flush().await.is_ok() && dead_flushed {
            let candidate = Progress::at(base, &ends_seen, finished);
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

/// Files a branch's answer (or failure) into its record's slot.
fn file(
    window: &mut VecDeque<Slot>,
    base: u64,
    copies_of: &mut HashMap<u64, (u64, usize)>,
    id: u64,
    outcome: JobOutcome,
) {
    let Some((offset, copy)) = copies_of.remove(&id) else {
        return; // its record was already written (the answer came after the deadline)
    };
    if let Some(Slot::Scattered { answers, .. }) = window.get_mut((offset - base) as usize) {
        answers[copy] = Some(outcome);
    }
}

/// The merged value of a record's answers, or why it fails under `partial`.
fn gather(
    merger: &Merger,
    answers: &[Option<JobOutcome>],
    partial: Partial,
    timeout: Duration,
) -> std::result::Result<Vec<u8>, String> {
    let values: Vec<&[u8]> = answers
        .iter()
        .filter_map(|a| match a {
            Some(Ok(answer)) => Some(answer.value.as_slice()),
            _ => None,
        })
        .collect();
    let errors: Vec<&str> = answers
        .iter()
        .filter_map(|a| match a {
            Some(Err(reason)) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    if values.is_empty() && !errors.is_empty() {
        return Err(format!(
            "every branch that answered failed: {}",
            errors.join("; ")
        ));
    }
    if values.len() < answers.len() && partial == Partial::Fail {
        let mut why = format!(
            "{} of {} branches answered within {} (partial = \"fail\")",
            values.len(),
            answers.len(),
            humantime::format_duration(timeout)
        );
        if !errors.is_empty() {
            why.push_str(&format!("; failed: {}", errors.join("; ")));
        }
        return Err(why);
    }
    merger
        .merge(&values)
        .map_err(|e| format!("cannot merge the answers: {e}"))
}
