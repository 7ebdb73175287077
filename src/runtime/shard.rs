//! One shard: the partitions a core owns, the inbox tasks that append batches sent to
//! them, and the acker that reports batches durable. Shard state is `Rc`/`RefCell`:
//! only this core's executor ever touches it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::DataflowSpec;
use crate::metrics::Metrics;
use crate::protocol::status::Standing;
use crate::runtime::acks::{Again, Look, PendingAck, look, ours, whole_copy};
use crate::runtime::cluster::replica::ReplicaState;
use crate::runtime::consumers::Consumers;
use crate::runtime::error::EngineError;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::journal_recovery::ShardJournal;
use crate::runtime::mesh::{Batch, Mesh, Payload, with_payload};
use crate::runtime::service::{JobOutcome, ShardRequest};
use crate::runtime::sink::SinkChunk;
use crate::storage::{Durability, PartitionLog, StorageError};

/// What every shard shares: the spec, the mesh, and the control flags.
pub struct Shared {
    pub spec: Arc<DataflowSpec>,
    pub shards: usize,
    pub data_dir: PathBuf,
    pub mesh: Mesh,
    /// Per sink, the channel to its writer.
    pub sinks: Vec<flume::Sender<SinkChunk>>,
    pub control: Control,
    /// Tells this run's job reply addresses from those of runs before a restart.
    pub epoch: u64,
    /// Per shard, the channel of its service task (fetches, status, job answers).
    pub services: Vec<flume::Sender<ShardRequest>>,
    pub metrics: Arc<Metrics>,
    /// `ends[topic][partition]`: the partition's next offset, published by its owner
    /// after each append, so that any shard can tell where a batch will land at least.
    pub ends: Vec<Vec<AtomicU64>>,
    /// In a cluster: who owns what, and the links to the other peers.
    pub peers: Option<Arc<crate::runtime::cluster::peers::Peers>>,
}

impl Shared {
    /// Whether progress files must be fsynced (every mode but `none`).
    pub fn durable(&self) -> bool {
        self.spec.engine.durability != Durability::None
    }
}

/// Stop flags, the first fatal error, and counters the main thread reads.
#[derive(Default)]
pub struct Control {
    stopping: AtomicBool,
    failure: Mutex<Option<RuntimeError>>,
    /// Stage tasks and sink writers that finished their whole (bounded) input.
    pub finished: AtomicUsize,
    /// Sources and stage tasks still running; shards sync and exit when it is zero.
    pub producers_live: AtomicUsize,
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub records_failed: AtomicU64,
    /// Told once the engine starts stopping: what only waits for that sleeps on it
    /// instead of looking at the flag on a timer (idle means idle).
    stopped: event_listener::Event,
    /// Told whenever what the main thread waits for may have changed (the stop, a
    /// finished task, a signal): it sleeps on it instead of looking on a timer.
    news: event_listener::Event,
}

impl Control {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify(usize::MAX);
        self.news.notify(usize::MAX);
    }

    /// A stage task or sink writer finished its whole (bounded) input.
    pub fn finish_one(&self) {
        self.finished.fetch_add(1, Ordering::AcqRel);
        self.news.notify(usize::MAX);
    }

    /// Wakes whoever waits in [`Control::block_until`] to look again (a signal came).
    pub fn nudge(&self) {
        self.news.notify(usize::MAX);
    }

    /// Blocks this (non-shard) thread until `done` holds, looking again each time the
    /// engine has news: no polling.
    pub fn block_until(&self, done: impl Fn() -> bool) {
        loop {
            let listener = self.news.listen();
            if done() {
                return;
            }
            event_listener::Listener::wait(listener);
        }
    }

    /// Returns once the engine is stopping (woken from any thread: glommio takes
    /// foreign wake-ups).
    pub async fn until_stopping(&self) {
        while !self.is_stopping() {
            let listener = self.stopped.listen();
            if self.is_stopping() {
                return;
            }
            listener.await;
        }
    }

    /// Returns once the engine is stopping or `until` passed (never, when `None`).
    pub async fn until_stopping_or(&self, until: Option<Instant>) {
        let timer = async {
            match until {
                Some(at) => {
                    glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        futures_lite::future::or(self.until_stopping(), timer).await;
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Records the first fatal error and stops the engine.
    pub fn fail(&self, error: RuntimeError) {
        let mut slot = self.failure.lock().expect("failure lock");
        if slot.is_none() {
            *slot = Some(error);
        }
        drop(slot);
        self.stop();
    }

    pub fn take_failure(&self) -> Option<RuntimeError> {
        self.failure.lock().expect("failure lock").take()
    }
}

/// A partition this shard owns.
pub struct LocalPartition {
    pub topic: usize,
    pub partition: u32,
    pub log: RefCell<PartitionLog>,
    /// Read positions of the stages and sinks consuming it, by name, for the lag bound
    /// and the status page.
    readers: RefCell<Vec<(String, Rc<Cell<u64>>)>>,
    max_lag: u64,
    /// Appends (and moves of the durable point) so far, and the event each fires: readers
    /// that caught up wait on it instead of polling, so a record reaches them as soon as
    /// it is durable (they read committed).
    appends: Cell<u64>,
    appended: event_listener::Event,
    /// `[first, next)` ranges copied in from the peers that held the partition before
    /// this one took it over: their records were processed there, so this peer's stages
    /// step over them (in memory: a restart forgets them, see docs/decisions.md, what is known).
    copied: RefCell<Vec<(u64, u64)>>,
    /// How far the log holds the outputs of producers that sent batches again
    /// (`already.rs`); forgotten when the log is cut back or this peer's role changes.
    pub held: RefCell<crate::runtime::already::Held>,
    /// Per stage producer, the latest lead of its input a batch came with (`stale.rs`);
    /// kept across role changes (epochs only grow).
    leads: RefCell<crate::runtime::stale::Leads>,
}

impl LocalPartition {
    pub fn new(topic: usize, partition: u32, log: PartitionLog, max_lag: u64) -> LocalPartition {
        LocalPartition {
            topic,
            partition,
            log: RefCell::new(log),
            readers: RefCell::new(Vec::new()),
            max_lag,
            appends: Cell::new(0),
            appended: event_listener::Event::new(),
            copied: RefCell::new(Vec::new()),
            held: RefCell::default(),
            leads: RefCell::default(),
        }
    }

    fn note_copied(&self, first: u64, next: u64) {
        let mut copied = self.copied.borrow_mut();
        match copied.last_mut() {
            Some(last) if last.1 == first => last.1 = next,
            _ => copied.push((first, next)),
        }
    }

    /// Whether `offset` was copied in from another peer (a stage here steps over it).
    pub fn is_copied(&self, offset: u64) -> bool {
        self.copied
            .borrow()
            .iter()
            .any(|&(a, b)| (a..b).contains(&offset))
    }

    /// `position`, moved past the copied range it falls in, if any.
    pub fn past_copied(&self, position: u64) -> u64 {
        self.copied
            .borrow()
            .iter()
            .find(|&&(a, b)| (a..b).contains(&position))
            .map_or(position, |&(_, b)| b)
    }

    /// A count that changes with every append: take it before reading, and hand it to
    /// [`Backoff::wait_for_append`] when the read found nothing.
    pub fn appends(&self) -> u64 {
        self.appends.get()
    }

    /// The event of the next append; check [`LocalPartition::appends`] before listening.
    pub fn on_append(&self) -> event_listener::EventListener {
        self.appended.listen()
    }

    /// Wakes whoever waits on the partition (readers, fetches): its readable end or its
    /// replication role moved.
    pub fn woken(&self) {
        self.note_append();
    }

    fn note_append(&self) {
        self.appends.set(self.appends.get().wrapping_add(1));
        self.appended.notify(usize::MAX);
    }

    /// Registers a consumer starting at `position` (or finds the one registered under
    /// `name`, when the shard registered it before its task ran); it moves the returned
    /// cell on.
    pub fn reader(&self, name: &str, position: u64) -> Rc<Cell<u64>> {
        if let Some((_, cell)) = self.readers.borrow().iter().find(|(n, _)| n == name) {
            return Rc::clone(cell);
        }
        let cell = Rc::new(Cell::new(position));
        self.readers
            .borrow_mut()
            .push((name.to_owned(), Rc::clone(&cell)));
        cell
    }

    /// `(name, position)` of every consumer.
    pub fn readers(&self) -> Vec<(String, u64)> {
        self.readers
            .borrow()
            .iter()
            .map(|(n, c)| (n.clone(), c.get()))
            .collect()
    }

    /// Whether a writer may append: the slowest reader is within `max_lag` records.
    fn has_room(&self) -> bool {
        let slowest = self.readers.borrow().iter().map(|(_, c)| c.get()).min();
        slowest.is_none_or(|slowest| self.log.borrow().next_offset().saturating_sub(slowest) < self.max_lag)
    }
}

/// The next of a follower's copies in `copies`; never, once that lane is closed (the
/// engine stops: the other lane ends the inbox).
async fn next_copy(copies: &flume::Receiver<Batch>) -> Batch {
    match copies.recv_async().await {
        Ok(copy) => copy,
        Err(_) => std::future::pending().await,
    }
}

/// The longest a batch waits for this peer's role as the leader the metadata names it.
const ROLE_WAIT: Duration = Duration::from_millis(500);

/// Whether the metadata applied here names this peer the leader of `partition` of
/// `topic` in an epoch its role here has not reached yet (and no fence promised a
/// later one: the role then stays none until that election ends).
fn named_leader(
    peers: &crate::runtime::cluster::peers::Peers,
    state: &ReplicaState,
    topic: usize,
    partition: u32,
) -> bool {
    let metadata = peers.cluster.consensus.metadata().get();
    metadata
        .assignment(peers.topic_name(topic), partition)
        .is_some_and(|a| {
            a.leader == peers.replication.me.addr && a.epoch > state.epoch() && a.epoch >= state.promised()
        })
}

/// Storage errors a client's batch causes (too big), as opposed to the disk failing.
pub fn is_client_error(error: &StorageError) -> bool {
    matches!(
        error,
        StorageError::RecordTooLarge { .. }
            | StorageError::BatchTooLarge { .. }
            | StorageError::TooManyHeaders { .. }
            | StorageError::HeaderNameTooLong { .. }
    )
}

pub struct Shard {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub partitions: HashMap<(usize, u32), Rc<LocalPartition>>,
    acks: RefCell<Vec<PendingAck>>,
    /// Wakes the acker when an ack starts waiting: idle, it sleeps on this, not a timer.
    ack_waiting: (flume::Sender<()>, flume::Receiver<()>),
    /// Jobs taken on this shard, waiting for their answer.
    pub jobs: RefCell<HashMap<u64, flume::Sender<JobOutcome>>>,
    /// Time spent running tasks and polling I/O, as glommio counted it until the last
    /// [`Shard::load`] (glommio hands its count over and starts again).
    busy: Cell<Duration>,
    /// The states of the `state` stages running here, by (stage, input partition).
    pub states: RefCell<HashMap<(usize, u32), crate::ops::state::States>>,
    /// Copies scattered by `scatter_gather` stages here, by job id: where their answer goes.
    pub gathers: RefCell<HashMap<u64, flume::Sender<(u64, JobOutcome)>>>,
    next_job: Cell<u64>,
    pub consumers: Consumers,
    /// Round robin for records sent without a key or partition.
    spread: Cell<u64>,
    /// Every task running on this shard.
    pub tasks: Rc<Tasks>,
}

impl Shard {
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        partitions: Vec<LocalPartition>,
        journal: ShardJournal,
    ) -> Shard {
        Shard {
            index,
            shared,
            partitions: partitions
                .into_iter()
                .map(|p| ((p.topic, p.partition), Rc::new(p)))
                .collect(),
            acks: RefCell::new(Vec::new()),
            ack_waiting: flume::bounded(1),
            jobs: RefCell::new(HashMap::new()),
            busy: Cell::new(Duration::ZERO),
            states: RefCell::new(HashMap::new()),
            gathers: RefCell::new(HashMap::new()),
            next_job: Cell::new(0),
            consumers: Consumers::new(journal),
            spread: Cell::new(index as u64),
            tasks: Rc::new(Tasks::default()),
        }
    }

    pub fn next_job_id(&self) -> u64 {
        let id = self.next_job.get();
        self.next_job.set(id + 1);
        id
    }

    /// Where a reader named `who` at `position` of `partition` goes on: past the ranges
    /// copied in from another peer, and, when retention deleted records it had not read
    /// yet, at the partition's start, counted and logged (never silently).
    pub fn resume_at(&self, partition: &LocalPartition, who: &str, position: u64) -> u64 {
        let start = partition.log.borrow().start_offset();
        if position < start {
            let skipped = start - position;
            self.shared.metrics.records_skipped.add(skipped);
            tracing::warn!(
                topic = %self.shared.spec.topics[partition.topic].name,
                partition = partition.partition,
                reader = who,
                skipped,
                "retention deleted records {position}..{start} before {who} read them; it goes on at {start}"
            );
        }
        partition.past_copied(position.max(start))
    }

    /// The next partition of `partitions` for keyless records.
    pub fn next_spread(&self, partitions: u32) -> u32 {
        let n = self.spread.get();
        self.spread.set(n.wrapping_add(1));
        (n % u64::from(partitions)) as u32
    }

    pub fn partition(&self, topic: usize, partition: u32) -> &Rc<LocalPartition> {
        self.partitions
            .get(&(topic, partition))
            .expect("placement sends a partition only to its owner")
    }

    /// Why a client may not read the partition here yet, in a cluster whose new leader
    /// of it has not confirmed its epoch's start (`Replication::unconfirmed`).
    pub fn unconfirmed(&self, topic: usize, partition: u32) -> Option<EngineError> {
        self.shared
            .peers
            .as_ref()
            .and_then(|peers| peers.replication.unconfirmed(topic, partition))
    }

    /// For a stage's batch (`Batch::lead`): the later lead of its input that writes its
    /// outputs, if a batch of that lead came before it or the metadata names that lead
    /// (`stale.rs`), so that it is not written.
    fn stale(&self, partition: &LocalPartition, batch: &Batch) -> Option<u32> {
        let epoch = batch.lead?;
        let stamp = batch.last_source()?;
        let (_, producer) = crate::runtime::provenance::decode(&stamp)?;
        let current = self.shared.peers.as_ref().and_then(|peers| {
            let (topic, partition) = crate::runtime::stale::input_of(producer)?;
            let metadata = peers.cluster.consensus.metadata().get();
            metadata.assignment(topic, partition).map(|a| a.epoch)
        });
        let latest = partition
            .leads
            .borrow_mut()
            .admit(producer, epoch, current)
            .err()?;
        self.shared.metrics.stale_lead_batches.add(1);
        tracing::info!(
            "a batch of {producer} for partition {} of \"{}\" was made for its input's lead in epoch {epoch}, and its input is led in epoch {latest} by now: not written (that lead writes its outputs)",
            batch.partition,
            self.shared.spec.topics[partition.topic].name
        );
        Some(latest)
    }

    /// For a batch that may be written already (`Batch::uncertain`): drops what the
    /// log holds of it (`already.rs`), and says where its last record ends if the log
    /// holds all of it.
    fn already_written(&self, partition: &LocalPartition, batch: &mut Batch) -> Option<u64> {
        use crate::runtime::already::{self, Trimmed};
        let from = batch.uncertain?;
        let stamp = batch.last_source()?;
        let (last, producer) = crate::runtime::provenance::decode(&stamp)?;
        let topic = &self.shared.spec.topics[partition.topic].name;
        let log = partition.log.borrow();
        if !already::is_replayed(batch) {
            let at = already::holds_stamp(&log, from, &stamp)?;
            tracing::info!(
                "a batch of {producer} for partition {} of \"{topic}\", sent again, is written already (at offset {at}): not written twice",
                batch.partition
            );
            return Some(at + 1);
        }
        let (held, at) = partition.held.borrow_mut().of(&log, producer, from)?;
        match already::trim(batch, last, held) {
            Trimmed::All => {
                tracing::info!(
                    "a replayed batch of {producer} for partition {} of \"{topic}\" is written already (up to offset {at}): not written twice",
                    batch.partition
                );
                Some(at + 1)
            }
            Trimmed::Front(n) => {
                tracing::info!(
                    "a replayed batch of {producer} for partition {} of \"{topic}\": its first {n} records are written already (up to offset {at}), the rest is written now",
                    batch.partition
                );
                None
            }
            Trimmed::Nothing => None,
        }
    }

    /// Backpressure: holds `batch` (and so the inbox, and so its senders) while the
    /// slowest reader of `partition` is more than `max_lag` records behind, for as long
    /// as this peer writes the partition as its producers' writer (`writes_here`). Where
    /// it does not, its readers do not read here (a stage follows its input's lead), so
    /// they may lag for ever: a follower's copy held by them would stop `max_lag` records
    /// past where its idle stage last read (the leader's writes then find no quorum), and
    /// a producer's batch that came to a peer that does not lead the partition (or that
    /// stopped leading it while the batch waited) would never go on to its leader, and
    /// every copy queued behind it in the inbox would wait with it.
    /// Meanwhile the follower's copies of the topic's other partitions on this core go
    /// on (`copies`, served as they come): held behind it, they would leave those
    /// partitions' leaders without a quorum. False once the engine must stop.
    async fn wait_for_room(
        self: &Rc<Self>,
        topic: usize,
        partition: &LocalPartition,
        batch: &Batch,
        room: &mut crate::runtime::room::RoomWait,
        copies: &flume::Receiver<Batch>,
    ) -> bool {
        let mut idle = Backoff::default();
        let mut counted = false;
        while !partition.has_room() && self.writes_here(topic, batch) && !self.shared.control.is_stopping() {
            if !std::mem::replace(&mut counted, true) {
                self.shared.metrics.lag_waits.add(1);
            }
            let pause = async {
                idle.sleep().await;
                None
            };
            let copy = async { Some(next_copy(copies).await) };
            if let Some(copy) = futures_lite::future::or(copy, pause).await
                && !Box::pin(self.serve(topic, copy, room, copies)).await
            {
                return false;
            }
        }
        true
    }

    /// Whether `batch` would be written here as a producer's write: always on one
    /// machine; in a cluster, while this peer leads the partition (replicated) or serves
    /// it (one copy). Never a follower's copy, nor a copy into a partition taken over.
    fn writes_here(&self, topic: usize, batch: &Batch) -> bool {
        if batch.replica.is_some() || batch.copy_at.is_some() {
            return false;
        }
        let Some(peers) = &self.shared.peers else {
            return true;
        };
        if peers.replication.is_replicated(topic) {
            peers.replication.state(topic, batch.partition).leads().is_some()
        } else {
            peers.ownership.serving(topic, batch.partition)
        }
    }

    /// Appends every batch sent to this shard for `topic`: a follower's copies (their
    /// own lane, first: its leader's quorum waits for them) and the rest in arrival
    /// order; an engine producer's batch a full disk refused waits for room, and the
    /// engine batches that come after it wait behind it (`room.rs`).
    pub async fn run_inbox(
        self: Rc<Self>,
        topic: usize,
        receiver: flume::Receiver<Batch>,
        copies: flume::Receiver<Batch>,
    ) {
        // Engine producers' batches a full disk refused, tried again until there is room.
        let mut room = crate::runtime::room::RoomWait::default();
        loop {
            let next = match copies.try_recv() {
                Ok(copy) => Some(copy),
                Err(_) => {
                    let copy = async { Some(next_copy(&copies).await) };
                    let other = room.next(&receiver, || self.shared.control.is_stopping());
                    futures_lite::future::or(copy, other).await
                }
            };
            let Some(batch) = next else { return };
            if !self.serve(topic, batch, &mut room, &copies).await {
                return;
            }
        }
    }

    /// Appends one batch of `topic` (or sends it on, or fails it, as the partition's role
    /// here says); false once the engine must stop.
    async fn serve(
        self: &Rc<Self>,
        topic: usize,
        mut batch: Batch,
        room: &mut crate::runtime::room::RoomWait,
        copies: &flume::Receiver<Batch>,
    ) -> bool {
        let partition = Rc::clone(self.partition(topic, batch.partition));
        if !self.wait_for_room(topic, &partition, &batch, room, copies).await {
            return false;
        }
        // A replicated partition takes producers' batches while this peer leads it,
        // with a quorum of its replicas alive, and its leader's batches while it follows.
        let mut quorum = None;
        if let Some(peers) = &self.shared.peers
            && peers.replication.is_replicated(topic)
        {
            let state = Arc::clone(peers.replication.state(topic, batch.partition));
            // The metadata applied here names this peer the partition's leader in a
            // later epoch than its role here (the watch sets the role within a
            // round): the batch waits for the role rather than go round through the
            // rerouter, where its producer's next batch, coming once the role is
            // set, would overtake it.
            if batch.replica.is_none() && state.leads().is_none() {
                let deadline = Instant::now() + ROLE_WAIT;
                while state.leads().is_none()
                    && !peers.ownership.is_leaving()
                    && named_leader(peers, &state, topic, batch.partition)
                    && Instant::now() < deadline
                    && !self.shared.control.is_stopping()
                {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                // Led here now: its readers hold it back as any batch it writes.
                if !self.wait_for_room(topic, &partition, &batch, room, copies).await {
                    return false;
                }
            }
            match (batch.replica, state.leads()) {
                (Some(epoch), _) => {
                    if !state.follows(epoch) {
                        batch.ack.failed(EngineError::Unavailable(format!(
                            "this peer no longer follows partition {} in epoch {epoch}",
                            batch.partition
                        )));
                        return true;
                    }
                }
                // Not led here, or led by a peer that leaves: the batch is not
                // written, and goes to whichever peer leads next (a leaving leader
                // takes nothing new, so that its leadership moves with nothing in
                // flight).
                (None, None) => {
                    peers.refuse(topic, batch).await;
                    return true;
                }
                (None, Some(_)) if peers.ownership.is_leaving() => {
                    peers.refuse(topic, batch).await;
                    return true;
                }
                (None, Some(epoch)) => {
                    let (alive, needed) = crate::runtime::cluster::replica::replicas_alive(peers, &state);
                    if alive < needed {
                        self.shared.metrics.quorum_refusals.add(1);
                        if batch.ack.is_engine() {
                            // An engine producer's batch waits for the quorum (routed
                            // again until it lands, or the engine stops, loudly):
                            // failing it would lose it unseen.
                            peers.refuse(topic, batch).await;
                            return true;
                        }
                        batch.ack.failed(EngineError::Unavailable(format!(
                            "partition {} of \"{}\" has {alive} of its replicas alive and a write needs {needed}: refused rather than acked below its quorum; retry once its peers are back",
                            batch.partition, self.shared.spec.topics[topic].name
                        )));
                        return true;
                    }
                    quorum = Some((
                        state,
                        epoch,
                        std::time::Instant::now() + crate::runtime::cluster::leader::QUORUM_TIMEOUT,
                    ));
                }
            }
        } else if let Some(peers) = &self.shared.peers {
            // In a cluster, only a partition served here is written (and copies into
            // one being taken over); the check and the append have no wait between
            // them, so a fence (on this thread) falls between two appends.
            let standing = peers.ownership.standing(topic, batch.partition);
            match batch.copy_at {
                Some(at) => {
                    let end = partition.log.borrow().next_offset();
                    if standing != Standing::Claiming || end != at {
                        batch.ack.failed(EngineError::Unavailable(format!("a copy for offset {at} no longer fits (the partition ends at {end}, {standing:?} here)")));
                        return true;
                    }
                }
                None if standing != Standing::Serving => {
                    peers.refuse(topic, batch).await;
                    return true;
                }
                None => {}
            }
        }
        // A stage's batch made for a lead of its input that a later one followed:
        // the later lead writes its outputs (`stale.rs`), so it is not written, and
        // its producer is told so.
        if let Some(latest) = self.stale(&partition, &batch) {
            batch.ack.stale(latest);
            return true;
        }
        // An engine producer's batch to a replicated partition is kept until a
        // quorum holds it (`PendingAck::again`); whole, if a replay trims it below.
        let engine = batch.ack.is_engine() || batch.lead.is_some() || batch.uncertain.is_some();
        let keep = quorum.is_some() && batch.ack.is_engine();
        let whole = if keep && crate::runtime::already::is_replayed(&batch) {
            whole_copy(&batch.records)
        } else {
            None
        };
        // Sent again (its first leader was lost, or a stage took its input's lead
        // over): only what the log does not hold yet is written.
        if let Some(at) = self.already_written(&partition, &mut batch) {
            // Acked there, once that is durable (and held by a quorum).
            let (ack, again) = Again::keep(keep, topic, whole, batch);
            self.acks.borrow_mut().push(PendingAck {
                partition,
                first: at,
                end: at,
                ack,
                quorum,
                engine,
                again,
            });
            let _ = self.ack_waiting.0.try_send(());
            return true;
        }
        let segments_before = partition.log.borrow().segment_count();
        let appended = {
            let mut log = partition.log.borrow_mut();
            match &mut batch.records {
                Payload::Batch(checked) if batch.replica.is_some() => Some(log.append_replica(checked)),
                Payload::Batch(checked) => Some(log.append_checked(checked)),
                other => with_payload(other, |records| log.append(records)),
            }
        };
        // A roll is when a size bound can be passed: apply retention at once.
        if partition.log.borrow().segment_count() > segments_before
            && crate::runtime::retention::is_bounded(self, &partition)
        {
            crate::runtime::retention::apply(self, &partition);
        }
        match appended {
            Some(Ok(receipt)) => {
                if batch.copy_at.is_some() {
                    partition.note_copied(receipt.first_offset, receipt.next_offset);
                }
                partition.note_append();
                self.shared.ends[topic][batch.partition as usize]
                    .store(receipt.next_offset, Ordering::Release);
                // A replicated batch waits for its quorum in every mode, a group
                // commit's for the syncer; otherwise written is durable.
                if quorum.is_some() || self.shared.spec.engine.durability == Durability::Group {
                    let (ack, again) = Again::keep(keep, topic, whole, batch);
                    self.acks.borrow_mut().push(PendingAck {
                        partition,
                        first: receipt.first_offset,
                        end: receipt.next_offset,
                        ack,
                        quorum,
                        engine,
                        again,
                    });
                    // Full means the acker is already told.
                    let _ = self.ack_waiting.0.try_send(());
                } else {
                    batch
                        .ack
                        .durable(batch.partition, receipt.first_offset, receipt.next_offset)
                }
            }
            // A client's batch over a storage limit: its sender is told, nothing else.
            Some(Err(error)) if is_client_error(&error) && !batch.ack.is_engine() => {
                batch.ack.failed(EngineError::TooLarge(error.to_string()))
            }
            // An engine producer's batch is sized to fit before it is sent (`bounds`):
            // one refused is a bug, and it must not pass unnoticed.
            Some(Err(error)) if is_client_error(&error) => {
                let topic = &self.shared.spec.topics[topic].name;
                self.shared.control.fail(RuntimeError::Refused {
                    topic: topic.clone(),
                    partition: batch.partition,
                    reason: error.to_string(),
                });
                return false;
            }
            // A full disk: this batch is refused, the log is as it was, and the
            // engine goes on (reads, other partitions); in a cluster the peer says
            // so, and what it leads moves to a copy that can take writes.
            Some(Err(error)) if error.is_no_space() => {
                self.shared.metrics.no_space_refusals.add(1);
                if let Some(peers) = &self.shared.peers
                    && !peers.cluster.view.get().me.full
                {
                    tracing::error!("{error}; leadership moves to peers with room");
                    peers.cluster.set_full(true);
                }
                // An engine producer's batch cannot be told: dropped, its later
                // outputs would cover it on a replay (`room.rs`). It waits for room.
                if batch.ack.is_engine() {
                    room.hold(batch, &error.to_string(), &self.shared.spec.topics[topic].name);
                    return true;
                }
                batch.ack.failed(EngineError::Unavailable(error.to_string()));
            }
            // A follower's batch that does not continue its copy (one before it in
            // the same fetch was refused): nothing is written; it fetches again.
            Some(Err(error @ crate::storage::StorageError::ReplicaGap { .. })) => {
                batch.ack.failed(EngineError::Unavailable(error.to_string()));
            }
            Some(Err(error)) => {
                batch.ack.failed(EngineError::Unavailable(error.to_string()));
                self.shared.control.fail(error.into());
                return false;
            }
            None => batch.ack.failed(EngineError::Internal(
                "a validated batch no longer decodes (a bug); it was not written".into(),
            )),
        }
        true
    }

    /// Acks batches once the group-commit syncer has made them durable, and tells the
    /// partition's readers, who see durable records only.
    pub async fn run_acker(self: Rc<Self>) {
        loop {
            let me = self.shared.peers.as_ref().map(|p| p.replication.me.addr);
            let now = std::time::Instant::now();
            let pending_acks = std::mem::take(&mut *self.acks.borrow_mut());
            let mut waiting = Vec::with_capacity(pending_acks.len());
            let mut durable: Vec<Rc<LocalPartition>> = Vec::new();
            // Batches kept to go to their partition's next leader, in the order written.
            let mut again = Vec::new();
            let mut failed = None;
            for pending in pending_acks {
                crate::storage::faults::panic_point("acker-panic", self.index);
                match look(&pending, me, now) {
                    Look::Wait => waiting.push(pending),
                    Look::Acked => {
                        pending
                            .ack
                            .durable(pending.partition.partition, pending.first, pending.end);
                        if pending.quorum.is_none()
                            && !durable.iter().any(|p| Rc::ptr_eq(p, &pending.partition))
                        {
                            durable.push(Rc::clone(&pending.partition));
                        }
                    }
                    Look::Unsure(why) => {
                        self.shared.metrics.quorum_failures.add(1);
                        self.unsure(pending, why, &mut again);
                    }
                    Look::Failed(error) => {
                        pending.ack.failed(EngineError::Unavailable(error.to_string()));
                        failed = Some(error);
                    }
                }
            }
            // Acks pushed meanwhile (none: nothing above waits) go after those kept.
            {
                let mut acks = self.acks.borrow_mut();
                waiting.append(&mut acks);
                *acks = waiting;
            }
            self.send_again(again);
            for partition in durable {
                partition.note_append();
            }
            if let Some(error) = failed {
                self.shared.control.fail(error.into());
                return;
            }
            // Idle, it waits for an ack to wait (no timer runs: idle means idle); busy,
            // it looks at the durable points again soon (the syncers are threads).
            if self.acks.borrow().is_empty() {
                if self.ack_waiting.1.recv_async().await.is_err() {
                    return;
                }
            } else {
                glommio::timer::sleep(ACK_POLL).await;
            }
        }
    }

    /// A batch that cannot be acked here (`why`): a kept one goes to its partition's
    /// next leader (pushed onto `again`); any other's producer is told it may or may
    /// not have been written (a peer's engine producer then sends it on itself).
    fn unsure(&self, pending: PendingAck, why: &str, again: &mut Vec<(usize, Batch)>) {
        let PendingAck {
            partition: local,
            first,
            ack,
            again: kept,
            ..
        } = pending;
        let partition = local.partition;
        let topic = &self.shared.spec.topics[local.topic].name;
        match kept {
            Some(kept) => {
                tracing::info!(
                    "a batch for partition {partition} of \"{topic}\" goes to its next leader, written there only if it is not yet: {why}"
                );
                again.push(kept.batch(partition, first, ack));
            }
            None => ack.failed(EngineError::Unavailable(format!(
                "a batch for partition {partition}: {why}; it may or may not have been written"
            ))),
        }
    }

    /// Hands kept batches to the rerouter in their order, at once: a batch of their
    /// producer this shard takes after this goes behind them. (With the rerouter's
    /// queue full, the rest wait for room in a task of their own, still in order.)
    fn send_again(self: &Rc<Self>, again: Vec<(usize, Batch)>) {
        let Some(peers) = self.shared.peers.clone() else {
            return;
        };
        let mut again = again.into_iter();
        while let Some((topic, batch)) = again.next() {
            if let Some(batch) = peers.refuse_now(topic, batch) {
                let rest: Vec<(usize, Batch)> = std::iter::once((topic, batch)).chain(again).collect();
                tracing::warn!(
                    "{} batches to send on to their partitions' next leaders wait for room in the rerouter's queue",
                    rest.len()
                );
                self.tasks.spawn(async move {
                    for (topic, batch) in rest {
                        peers.refuse(topic, batch).await;
                    }
                });
                return;
            }
        }
    }

    /// The role of `partition` of `topic` here changed (`replica::set_role`): every
    /// batch of an engine producer there that this peer cannot ack now is settled at
    /// once, before this shard takes another batch, so that the producer's next batch
    /// cannot land at the partition's leader before it: a kept one goes to the next
    /// leader marked uncertain, a peer's producer is told to send its one on.
    pub fn role_changed(self: &Rc<Self>, topic: usize, partition: u32) {
        let mut again = Vec::new();
        let moved: Vec<PendingAck> = {
            let mut acks = self.acks.borrow_mut();
            let (moved, kept) = std::mem::take(&mut *acks).into_iter().partition(|pending| {
                pending.engine
                    && pending.partition.topic == topic
                    && pending.partition.partition == partition
                    && pending
                        .quorum
                        .as_ref()
                        .is_some_and(|(state, epoch, _)| ours(pending, state, *epoch) != Some(true))
            });
            *acks = kept;
            moved
        };
        for pending in moved {
            self.shared.metrics.quorum_failures.add(1);
            self.unsure(
                pending,
                "its leadership moved before a quorum of replicas held it",
                &mut again,
            );
        }
        self.send_again(again);
    }

    /// How busy this shard has been since it started. Call on the shard's own thread.
    pub fn load(&self) -> crate::protocol::status::ShardLoad {
        let stats = glommio::executor().executor_stats();
        self.busy.set(self.busy.get() + stats.total_runtime());
        crate::protocol::status::ShardLoad {
            shard: self.index,
            busy_secs: self.busy.get().as_secs_f64(),
            cpu_secs: thread_cpu().as_secs_f64(),
        }
    }

    /// Syncs and closes every partition log this shard owns, and its consumer journal:
    /// their files, locks and syncer threads are let go now, not when the last task
    /// holding the shard is dropped (glommio leaks the tasks still pending when its
    /// executor ends). Called last, on the way out of the shard.
    pub fn close(&self) -> Result<()> {
        let mut first = self
            .consumers
            .journal()
            .borrow_mut()
            .release()
            .map_err(RuntimeError::from);
        for partition in self.partitions.values() {
            let released = partition.log.borrow_mut().release();
            if first.is_ok() {
                first = released.map_err(RuntimeError::from);
            }
        }
        first
    }
}

/// Every task a shard runs, so that the shard can end them all when it stops: glommio
/// does not drop the tasks still pending when its executor ends, and they hold the
/// shard, its channels and (through their wakers) the executor's own descriptors.
#[derive(Default)]
pub struct Tasks {
    next: Cell<u64>,
    running: RefCell<HashMap<u64, glommio::Task<()>>>,
}

impl Tasks {
    /// Runs `future` on this shard's executor until it ends, or until `end_all`.
    pub fn spawn(self: &Rc<Self>, future: impl std::future::Future<Output = ()> + 'static) {
        let id = self.next.get();
        self.next.set(id + 1);
        let tasks = Rc::downgrade(self);
        let task = glommio::spawn_local(async move {
            future.await;
            // Done: let go of its handle (dropping a finished task's handle is harmless).
            if let Some(tasks) = tasks.upgrade() {
                let handle = tasks.running.borrow_mut().remove(&id);
                drop(handle);
            }
        });
        self.running.borrow_mut().insert(id, task);
    }

    /// Cancels every task still running; the executor drops them once the caller yields.
    pub async fn end_all(&self) {
        let running: Vec<glommio::Task<()>> = self.running.borrow_mut().drain().map(|(_, t)| t).collect();
        drop(running);
        // Each cancelled task is dropped when the executor next runs it.
        for _ in 0..3 {
            futures_lite::future::yield_now().await;
        }
    }
}

/// Waits until `partition` is appended to after `seen` (its [`LocalPartition::appends`]
/// before the read that found nothing: appends, durable points and replication roles
/// moving all count), the engine stops, or `until` passes. With no `until` no timer
/// runs at all: an idle reader costs nothing until something happens (idle means idle).
pub async fn until_append(partition: &LocalPartition, seen: u64, control: &Control, until: Option<Instant>) {
    if partition.appends() != seen || control.is_stopping() {
        return;
    }
    let appended = partition.appended.listen();
    futures_lite::future::or(appended, control.until_stopping_or(until)).await;
}

/// The CPU time the calling thread has used (user and system; zero if the clock cannot
/// be read).
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one passed.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The instant the wall clock reads `ms` (now, if that has passed): for deadlines kept
/// in wall-clock milliseconds (claims, processing-time windows).
pub fn at_wall_ms(ms: i64) -> Instant {
    let ahead = u64::try_from(ms.saturating_sub(crate::storage::layout::now_ms())).unwrap_or(0);
    Instant::now() + Duration::from_millis(ahead)
}

/// Sleeps that grow while there is nothing to do: fast pickup after a lull, little CPU
/// when idle for long.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

/// How often the acker looks at the durable points while acks wait.
const ACK_POLL: Duration = Duration::from_micros(100);
const BACKOFF_MIN: Duration = Duration::from_micros(50);
const BACKOFF_MAX: Duration = Duration::from_millis(5);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub async fn sleep(&mut self) {
        glommio::timer::sleep(self.next).await;
        self.grow();
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The next pause, for a caller that waits on more than one thing at a time.
    pub fn pause(&self) -> Duration {
        self.next
    }

    /// After a wait that found nothing to do: the next pause is longer.
    pub fn grow(&mut self) {
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}
