//! The write side of a producer: routes outputs to partitions, drops the ones a replay
//! already wrote, checks that each fits, batches per partition, and sends batches to
//! their owner shards.
//!
//! A batch holds the outputs of whole inputs where it can: a flush comes between inputs.
//! An output that would take its partition's batch past `BATCH_BYTES_MAX` (or past what
//! one segment holds) goes in a batch of its own, sealed at once; when that splits one
//! input's outputs, the sealed batch's provenance point says how many of that input's
//! outputs it holds, so a replay writes each output once all the same. An output over
//! its topic's record bound is refused here, with `TooLarge`, and never sent.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::{Part, Route, Selector};
use crate::jq::JqProgram;
use crate::ops::key_by::select;
use crate::ops::{OpError, Output};
use crate::protocol::routing::partition_of_bytes;
use crate::runtime::bounds::{self, Bounds, RECORD_HINT, TooLarge};
use crate::runtime::error::Result;
use crate::runtime::mesh::{Ack, Batch, Generation, HeaderName, Mesh, OwnedRecord, Payload};
use crate::runtime::placement::spread_partition;
use crate::runtime::provenance::{self, END_HEADER, Point, REPLAY_HEADER, SOURCE_HEADER};
use crate::runtime::reply::REPLY_HEADER;

/// Records buffered for one partition before a flush is due.
pub const BATCH_RECORDS_MAX: usize = 4096;
/// Bytes buffered for one partition before a flush is due; also the size past which an
/// output starts a batch of its own.
pub const BATCH_BYTES_MAX: usize = 1 << 20;

enum Router {
    Spread,
    /// Every output to this partition.
    Forward(u32),
    Broadcast,
    Part(Part),
    Jq(JqProgram),
}

/// Why an output was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmitError {
    /// The route's jq selector failed on it.
    #[error("cannot route it: {0}")]
    Route(OpError),
    #[error(transparent)]
    TooLarge(TooLarge),
}

/// One partition's records waiting to be sent.
#[derive(Default)]
struct Buffer {
    records: Vec<OwnedRecord>,
    /// Frame bytes the records take on disk at most.
    frame_bytes: u64,
    /// `(input offset, output index)` of the last record.
    last: (u64, u32),
    /// Batches sealed because the next output did not fit, with their provenance point.
    sealed: VecDeque<(Vec<OwnedRecord>, Point)>,
    /// Records in the last batch handed on: the next one is sized for as many when its
    /// first record comes, rather than grown from nothing, copied at each doubling.
    hint: usize,
}

impl Buffer {
    /// The records so far, handed on; the buffer starts again empty, unallocated.
    fn take(&mut self) -> Vec<OwnedRecord> {
        self.frame_bytes = 0;
        self.hint = self.records.len();
        std::mem::take(&mut self.records)
    }

    fn push(&mut self, record: OwnedRecord) {
        if self.records.capacity() == 0 {
            self.records.reserve(self.hint);
        }
        self.records.push(record);
    }
}

pub struct Emitter {
    producer: String,
    partitions: u32,
    topic: usize,
    topic_name: String,
    bounds: Bounds,
    /// What this producer's provenance stamp can add to a batch's last record.
    stamp_bytes: u64,
    mesh: Mesh,
    router: Router,
    /// Per partition: outputs this point covers are already there (replay).
    skip: Vec<Point>,
    /// Outputs of inputs below this may be written already, past `skip` (a stage took
    /// its input's lead over: `takeover.rs`): each carries its own point, and their
    /// batches go marked uncertain from `replayed_from[partition]` on (`already.rs`).
    replayed_below: u64,
    replayed_from: Vec<u64>,
    /// Per partition, outputs carry their own point until a batch of this producer's
    /// lead there is acked: a source that took the lead (`source.rs`), whose previous
    /// lead's batches may still land until this lead's first one fences them.
    replay_open: Vec<bool>,
    /// Per partition, the generation of the first such batch sent, and the end its
    /// partition had there before: acked once that end moves.
    replay_watch: Vec<Option<(Arc<Generation>, u64)>>,
    /// Per partition, whether the batch being buffered carries its points.
    marking: Vec<bool>,
    /// The epoch of the input's lead this producer writes for (`Batch::lead`).
    lead: Option<u32>,
    /// Per partition, where its last batch went (`None` inside: this peer's shard);
    /// `None` before the first.
    routes: Vec<Option<Option<std::net::SocketAddr>>>,
    /// The generations of batches sent and maybe not acked yet.
    sent: Vec<Arc<Generation>>,
    buffers: Vec<Buffer>,
    generation: Arc<Generation>,
    /// The reply address of the job the current input belongs to, copied onto every
    /// output so that a `reply` stage downstream can answer it.
    reply: Option<Vec<u8>>,
    /// Headers copied onto every output from here on: a dead letter's reason and
    /// origin, the headers a stage's input carries to its outputs.
    headers: Vec<(HeaderName, Vec<u8>)>,
    /// Records this producer wrote (not counting replayed ones it dropped).
    pub records_out: u64,
}

impl Emitter {
    /// The write side of `producer` into `topic`; `from_partition` is the input partition
    /// a stage's producer reads (`None` for a source), which `Route::Forward` needs.
    pub fn new(
        producer: String,
        topic: usize,
        spec: &crate::config::DataflowSpec,
        route: &Route,
        from_partition: Option<u32>,
        mesh: &Mesh,
    ) -> Result<Emitter, OpError> {
        let topic_spec = &spec.topics[topic];
        let router = match route {
            Route::Spread => Router::Spread,
            Route::Forward => match from_partition {
                Some(p) => Router::Forward(p % topic_spec.partitions),
                None => {
                    return Err(OpError(
                        "route \"forward\" needs an input partition: a source has none".into(),
                    ));
                }
            },
            Route::Broadcast => Router::Broadcast,
            Route::ShardBy(Selector::Part(part)) => Router::Part(*part),
            Route::ShardBy(Selector::Jq(code)) => Router::Jq(JqProgram::compile(code).map_err(OpError)?),
        };
        let partitions = topic_spec.partitions;
        let n = partitions as usize;
        Ok(Emitter {
            stamp_bytes: bounds::stamp_bytes(&producer),
            producer,
            partitions,
            topic,
            topic_name: topic_spec.name.clone(),
            bounds: Bounds::of(topic_spec),
            mesh: mesh.clone(),
            router,
            skip: vec![Point::default(); n],
            replayed_below: 0,
            replayed_from: vec![0; n],
            replay_open: vec![false; n],
            replay_watch: vec![None; n],
            marking: vec![false; n],
            lead: None,
            routes: vec![None; n],
            sent: Vec::new(),
            buffers: (0..n).map(|_| Buffer::default()).collect(),
            generation: Generation::new(partitions),
            reply: None,
            headers: Vec::new(),
            records_out: 0,
        })
    }

    /// Outputs `skip[partition]` covers are dropped: a replay already wrote them.
    pub fn set_skip(&mut self, skip: Vec<Point>) {
        assert_eq!(
            skip.len(),
            self.partitions as usize,
            "one skip point per partition"
        );
        self.skip = skip;
    }

    /// The outputs of inputs below `below` may be in their partitions already past the
    /// skip points (another peer's run of this producer wrote them and its reads did not
    /// see them yet): each goes with its own provenance point, in batches that the
    /// partition's leader trims to what it does not hold, looking from `from[partition]`.
    pub fn set_replayed(&mut self, below: u64, from: Vec<u64>) {
        assert_eq!(from.len(), self.partitions as usize, "one offset per partition");
        self.replayed_below = below;
        self.replayed_from = from;
    }

    /// Every output carries its own point, its batches marked uncertain from
    /// `from[partition]` on, until a batch of this producer's lead to that partition is
    /// acked: from then its partition's leader refuses the earlier lead's (`stale.rs`).
    /// For a producer whose earlier lead's writes have no bound in its input (a source).
    pub fn set_replayed_until_acked(&mut self, from: Vec<u64>) {
        assert_eq!(from.len(), self.partitions as usize, "one offset per partition");
        self.replayed_from = from;
        self.replay_open = vec![true; self.partitions as usize];
        self.replay_watch = vec![None; self.partitions as usize];
    }

    /// Whether partition `q`'s replay (`set_replayed_until_acked`) is still open.
    fn replay_still_open(&mut self, q: usize) -> bool {
        if self.replay_open[q]
            && let Some((generation, before)) = &self.replay_watch[q]
            && generation.end(q as u32) > *before
        {
            self.replay_open[q] = false;
            self.replay_watch[q] = None;
        }
        self.replay_open[q]
    }

    /// This producer writes for its input's lead in `epoch`: each batch says so, and
    /// its partition's leader takes none of an earlier lead's once a later lead's came.
    pub fn set_lead(&mut self, epoch: u32) {
        self.lead = Some(epoch);
    }

    /// Sets the reply address of the input whose outputs come next (`None`: not a job).
    pub fn set_reply(&mut self, reply: Option<&[u8]>) {
        match (reply, &mut self.reply) {
            (None, slot) => *slot = None,
            (Some(new), Some(old)) if old.as_slice() == new => {}
            (Some(new), slot) => *slot = Some(new.to_vec()),
        }
    }

    /// Sets headers copied onto the outputs that come next (empty: none).
    pub fn set_headers(&mut self, headers: Vec<(HeaderName, Vec<u8>)>) {
        self.headers = headers;
    }

    /// Copies `headers` (an input's, those its outputs carry) onto the outputs that come
    /// next, in place of the ones set before; none: nothing is copied.
    pub fn carry<'h>(&mut self, headers: impl Iterator<Item = (&'h str, &'h [u8])>) {
        self.headers.clear();
        self.headers
            .extend(headers.map(crate::runtime::mesh::owned_header));
    }

    /// Switches to another producer id (a directory source moving to its next file).
    pub fn set_producer(&mut self, producer: String, skip: Vec<Point>) {
        assert!(
            self.buffers
                .iter()
                .all(|b| b.records.is_empty() && b.sealed.is_empty()),
            "flush before switching producers"
        );
        self.stamp_bytes = bounds::stamp_bytes(&producer);
        self.producer = producer;
        self.set_skip(skip);
    }

    /// The frame bytes `output` takes as this emitter writes it (with the reply address
    /// and extra headers in force, and room for a provenance stamp), or why it cannot
    /// be written at all. Check every output of an input before emitting any, so that
    /// an input is written whole or not at all.
    pub fn check(&self, output: &Output) -> Result<u64, TooLarge> {
        let reply = self.reply.as_deref().map(|r| (REPLY_HEADER, r));
        let extra = self.headers.iter().map(|(n, v)| (n.as_ref(), v.as_slice()));
        let frame = bounds::stored_record_bytes(
            output.key.as_deref(),
            &output.value,
            reply.into_iter().chain(extra),
        );
        let bytes = frame + self.stamp_bytes;
        if bytes > self.bounds.record_bytes_max {
            return Err(TooLarge {
                what: "an output".into(),
                bytes,
                max: self.bounds.record_bytes_max,
                topic: self.topic_name.clone(),
                hint: RECORD_HINT,
            });
        }
        Ok(frame)
    }

    /// Routes one output of the input at `produced_by`; `index` counts the outputs of
    /// that input so far. An output that does not fit, or that the route's selector
    /// fails on, is not written.
    pub fn emit(&mut self, produced_by: u64, index: usize, output: Output) -> Result<(), EmitError> {
        let frame = self.check(&output).map_err(EmitError::TooLarge)?;
        let index = u32::try_from(index).unwrap_or(u32::MAX - 1);
        match &self.router {
            Router::Broadcast => {
                for q in 0..self.partitions {
                    if !self.skip[q as usize].covers(produced_by, index) {
                        let record = to_record(output.clone(), self.reply.as_deref(), &self.headers);
                        self.buffer(q, (produced_by, index), frame, record);
                    }
                }
                return Ok(());
            }
            Router::Spread => {
                let q = spread_partition(produced_by, index as usize, self.partitions);
                self.push(q, produced_by, index, frame, output);
            }
            Router::Forward(q) => self.push(*q, produced_by, index, frame, output),
            Router::Part(part) => {
                let bytes = match part {
                    Part::Key => output.key.as_deref().unwrap_or_default(),
                    Part::Value => &output.value,
                };
                let q = partition_of_bytes(bytes, self.partitions);
                self.push(q, produced_by, index, frame, output);
            }
            Router::Jq(program) => {
                let selected = select(program, &output.value).map_err(EmitError::Route)?;
                let q = partition_of_bytes(&selected, self.partitions);
                self.push(q, produced_by, index, frame, output);
            }
        }
        Ok(())
    }

    /// Writes an end-of-input marker into every partition.
    pub fn emit_end(&mut self, produced_by: u64, timestamp_ms: i64) {
        for q in 0..self.partitions {
            // A marker follows every output of its input: it is there once the point
            // passes the input.
            if produced_by < self.skip[q as usize].input {
                continue;
            }
            let marker = OwnedRecord {
                timestamp_ms,
                key: None,
                value: Vec::new(),
                headers: vec![(END_HEADER.into(), self.producer.as_bytes().to_vec())],
            };
            let frame = bounds::stored_record_bytes(None, &[], [(END_HEADER, self.producer.as_bytes())]);
            self.buffer(q, (produced_by, u32::MAX - 1), frame, marker);
        }
    }

    fn push(&mut self, q: u32, produced_by: u64, index: u32, frame: u64, output: Output) {
        if !self.skip[q as usize].covers(produced_by, index) {
            let record = to_record(output, self.reply.as_deref(), &self.headers);
            self.buffer(q, (produced_by, index), frame, record);
        }
    }

    fn buffer(&mut self, q: u32, at: (u64, u32), mut frame: u64, mut record: OwnedRecord) {
        let limit = self.bounds.batch_bytes_max.min(BATCH_BYTES_MAX as u64);
        let stamp = self.stamp_bytes;
        // Whether a batch carries its points is decided as it begins, for all of it.
        if self.buffers[q as usize].records.is_empty() {
            self.marking[q as usize] = self.replay_still_open(q as usize);
        }
        if at.0 < self.replayed_below || self.marking[q as usize] {
            let own = Point {
                input: at.0,
                index: at.1.saturating_add(1),
            };
            record
                .headers
                .push((REPLAY_HEADER.into(), provenance::encode_point(own)));
            frame += stamp;
        }
        let buffer = &mut self.buffers[q as usize];
        if !buffer.records.is_empty() && buffer.frame_bytes + frame + stamp > limit {
            // Seal what is there; its point says how far it goes, within this input
            // too when the input's earlier outputs are in it.
            let (input, index) = buffer.last;
            let point = if input == at.0 {
                Point {
                    input,
                    index: index + 1,
                }
            } else {
                Point::whole(input + 1)
            };
            let records = buffer.take();
            buffer.sealed.push_back((records, point));
        }
        buffer.frame_bytes += frame;
        buffer.last = at;
        buffer.push(record);
    }

    /// Whether a flush is due; checked between inputs, never inside one.
    pub fn is_full(&self) -> bool {
        self.buffers.iter().any(|b| {
            !b.sealed.is_empty()
                || b.records.len() >= BATCH_RECORDS_MAX
                || b.frame_bytes >= BATCH_BYTES_MAX as u64
        })
    }

    /// Sends every buffered batch to its owner shard, waiting while a channel is full.
    /// Called between inputs: the last input buffered is whole.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        for q in 0..self.partitions as usize {
            while let Some((records, point)) = self.buffers[q].sealed.pop_front() {
                self.send(q as u32, records, point).await?;
            }
            if self.buffers[q].records.is_empty() {
                continue;
            }
            let records = self.buffers[q].take();
            let point = Point::whole(self.buffers[q].last.0 + 1);
            self.send(q as u32, records, point).await?;
        }
        Ok(())
    }

    async fn send(&mut self, q: u32, mut records: Vec<OwnedRecord>, point: Point) -> Result<(), Closed> {
        // Before this batch counts in its generation: the wait is for the ones before.
        let route = self.keep_order(q).await;
        let stamp = provenance::encode(&self.producer, point);
        let replayed = records[0].headers.iter().any(|(name, _)| *name == REPLAY_HEADER);
        records
            .last_mut()
            .expect("batches are never empty")
            .headers
            .push((SOURCE_HEADER.into(), stamp));
        self.records_out += records.len() as u64;
        self.generation.sent();
        let mut batch = Batch::new(
            q,
            Payload::Owned(records),
            Ack::Generation(Arc::clone(&self.generation)),
        );
        if replayed {
            batch.uncertain = Some(self.replayed_from[q as usize]);
            let watch = &mut self.replay_watch[q as usize];
            if self.replay_open[q as usize] && watch.is_none() {
                *watch = Some((Arc::clone(&self.generation), self.generation.end(q)));
            }
        }
        batch.lead = self.lead;
        self.sent.retain(|g| !g.is_durable());
        if !self.sent.last().is_some_and(|g| Arc::ptr_eq(g, &self.generation)) {
            self.sent.push(Arc::clone(&self.generation));
        }
        self.mesh
            .send_to(self.topic, batch, route)
            .await
            .map_err(|_| Closed)
    }

    /// Keeps this producer's batches to partition `q` in send order across a change of
    /// its owner (provenance and the replay's trimming rely on it): the first batch to
    /// a new owner waits until every batch sent before is acked. Those in flight to the
    /// old owner are acked there, or lost with it and sent on to the new one
    /// (`Batch::uncertain`), or the engine stops. So does a batch sent while one to `q`
    /// goes round the rerouter (refused while its partition was taken over, on the
    /// same route): sent straight, it would be written before that one. On one machine
    /// neither happens. The route, for the batch to take.
    async fn keep_order(&mut self, q: u32) -> Option<std::net::SocketAddr> {
        let route = self.mesh.route_of(self.topic, q);
        let last = &mut self.routes[q as usize];
        let changed = last.is_some_and(|last| last != route);
        *last = Some(route);
        let behind_rerouted = self.sent.iter().any(|g| !g.is_durable() && g.was_rerouted(q));
        if changed || behind_rerouted {
            while self.sent.iter().any(|g| !g.is_durable()) {
                glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
            }
        }
        route
    }

    /// Starts a new generation and returns the old one, whose batches the caller waits
    /// on before storing progress that covers them.
    pub fn rotate(&mut self) -> Arc<Generation> {
        std::mem::replace(&mut self.generation, Generation::new(self.partitions))
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The name of the topic it writes.
    pub fn topic_name(&self) -> &str {
        &self.topic_name
    }
}

/// The destination shard stopped: the engine is shutting down.
#[derive(Debug, Clone, Copy)]
pub struct Closed;

fn to_record(output: Output, reply: Option<&[u8]>, extra: &[(HeaderName, Vec<u8>)]) -> OwnedRecord {
    let mut headers: Vec<(HeaderName, Vec<u8>)> = reply
        .map(|r| vec![(REPLY_HEADER.into(), r.to_vec())])
        .unwrap_or_default();
    headers.extend(extra.iter().cloned());
    OwnedRecord {
        timestamp_ms: output.timestamp_ms,
        key: output.key,
        value: output.value,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::mesh;

    fn spec(segment_bytes: &str) -> crate::config::DataflowSpec {
        let text = format!(
            "[engine]\ndata_dir = \"/tmp/x\"\n[[topic]]\nname = \"in\"\n[[topic]]\nname = \"out\"\npartitions = 1\nsegment_bytes = \"{segment_bytes}\"\n[[stage]]\nname = \"s\"\nfrom = \"in\"\nop = {{ map = \".\" }}\nto = \"out\"\n"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).expect("valid")
    }

    fn output(bytes: usize, tag: u8) -> Output {
        Output {
            timestamp_ms: 1,
            key: None,
            value: vec![tag; bytes],
        }
    }

    /// Every batch sent so far: its records' first value bytes, and its stamp.
    fn sent(rx: &flume::Receiver<Batch>) -> Vec<(Vec<u8>, Point)> {
        rx.drain()
            .map(|batch| {
                let Payload::Owned(records) = batch.records else {
                    panic!("an emitter sends owned records");
                };
                let stamp = records
                    .last()
                    .unwrap()
                    .headers
                    .iter()
                    .find(|(n, _)| *n == SOURCE_HEADER)
                    .unwrap();
                let (point, producer) = provenance::decode(&stamp.1).unwrap();
                assert_eq!(producer, "p");
                (records.iter().map(|r| r.value[0]).collect(), point)
            })
            .collect()
    }

    fn emitter(spec: &crate::config::DataflowSpec) -> (Emitter, flume::Receiver<Batch>) {
        let (mesh, mut receivers) = mesh::build(2, 1);
        let (_, rx, _) = receivers[0].remove(1);
        let emitter = Emitter::new("p".into(), 1, spec, &Route::Spread, None, &mesh).unwrap();
        (emitter, rx)
    }

    #[test]
    fn one_inputs_outputs_over_a_batch_split_with_a_point_inside_the_input() {
        let spec = spec("64MiB");
        let (mut e, rx) = emitter(&spec);
        // Input 7: one small output; input 8: three outputs of 400 KB each.
        e.emit(7, 0, output(10, b'a')).unwrap();
        for (i, tag) in [b'b', b'c', b'd'].into_iter().enumerate() {
            e.emit(8, i, output(400_000, tag)).unwrap();
        }
        assert!(e.is_full(), "a sealed batch makes a flush due");
        futures_lite::future::block_on(e.flush()).unwrap();
        let batches = sent(&rx);
        assert_eq!(
            batches,
            vec![
                (b"abc".to_vec(), Point { input: 8, index: 2 }),
                (b"d".to_vec(), Point::whole(9)),
            ]
        );
        // A replay that found the first batch writes only what it lacked.
        let (mut replay, rx) = emitter(&spec);
        replay.set_skip(vec![Point { input: 8, index: 2 }]);
        replay.emit(7, 0, output(10, b'a')).unwrap();
        for (i, tag) in [b'b', b'c', b'd'].into_iter().enumerate() {
            replay.emit(8, i, output(400_000, tag)).unwrap();
        }
        futures_lite::future::block_on(replay.flush()).unwrap();
        assert_eq!(sent(&rx), vec![(b"d".to_vec(), Point::whole(9))]);
    }

    #[test]
    fn a_batch_sent_while_an_earlier_one_goes_round_the_rerouter_waits_until_that_one_is_written() {
        let order = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let spec = spec("64MiB");
                let (mut e, rx) = emitter(&spec);
                e.emit(1, 0, output(10, b'a')).unwrap();
                e.flush().await.unwrap();
                let first = rx.try_recv().expect("the first batch is sent at once");
                // Refused where its partition was being taken over, on the same route:
                // it goes round the rerouter.
                let (rerouter, queued) = crate::runtime::cluster::reroute::Queue::new();
                assert!(rerouter.try_send(1, first).is_none(), "the rerouter takes it");
                let (_, first) = queued.try_recv().unwrap();
                e.emit(2, 0, output(10, b'b')).unwrap();
                let flushing = glommio::spawn_local(async move { e.flush().await.map(|()| e) });
                let mut seen = Vec::new();
                for _ in 0..20 {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                    seen.extend(sent(&rx));
                }
                assert_eq!(
                    seen,
                    vec![],
                    "nothing goes before the batch in the rerouter is written"
                );
                first.ack.durable(0, 0, 1);
                let _e = flushing.await.unwrap();
                sent(&rx)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(order, vec![(b"b".to_vec(), Point::whole(3))]);
    }

    #[test]
    fn an_output_over_the_record_bound_is_refused_and_one_over_a_small_segment_goes_alone() {
        let spec = spec("256KiB");
        let (mut e, rx) = emitter(&spec);
        let max = Bounds::of(&spec.topics[1]).record_bytes_max as usize;
        let error = e.emit(1, 0, output(max, b'x')).unwrap_err();
        assert!(matches!(error, EmitError::TooLarge(_)), "{error}");
        assert!(error.to_string().contains("topic \"out\""), "{error}");
        // Two outputs of 200 KB of one input do not fit one 256 KiB segment together.
        e.emit(2, 0, output(200_000, b'a')).unwrap();
        e.emit(2, 1, output(200_000, b'b')).unwrap();
        futures_lite::future::block_on(e.flush()).unwrap();
        assert_eq!(
            sent(&rx),
            vec![
                (b"a".to_vec(), Point { input: 2, index: 1 }),
                (b"b".to_vec(), Point::whole(3)),
            ]
        );
    }
}
